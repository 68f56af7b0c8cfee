"""Accuracy of custos's anomaly scores, for bench/anomaly.sh (higher score = more anomalous).

    python evaluate.py auc FILE...           each FILE: `label|score` lines (psql -At), one file per
                                             seed; prints `auc MEAN SD MIN MAX`
    python evaluate.py audit LABELS_DIR SCORES
                                             SCORES: `tenant|seq|score` lines; LABELS_DIR/<tenant>.labels
                                             gives seq i its label on line i. Prints, per injected
                                             kind, the AUC against normal events, pooled over tenants,
                                             and how many of the kind are in their tenant's top 1 %;
                                             and the precision at the top 1 % (per tenant, pooled)

AUC is Mann-Whitney's: the chance that a random anomaly scores above a random normal row, ties
counting half (average ranks), the same as sklearn.metrics.roc_auc_score.
"""

import math
import os
import statistics
import sys

import numpy as np
from scipy.stats import rankdata


def auc(labels, scores):
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)  # ties get their average rank
    return (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def read_rows(path, columns):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                parts = line.split("|")
                if len(parts) != columns:
                    sys.exit(f"{path}: expected {columns} fields, got: {line}")
                rows.append(parts)
    return rows


def main_auc(paths):
    aucs = []
    for p in paths:
        rows = read_rows(p, 2)
        if not rows or any(r[1] == "" for r in rows):
            sys.exit(f"{p}: no rows, or a NULL score")
        aucs.append(auc([r[0] == "1" for r in rows], [float(r[1]) for r in rows]))
    sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
    print(f"auc {statistics.mean(aucs):.4f} {sd:.4f} {min(aucs):.4f} {max(aucs):.4f}")


def main_audit(labels_dir, scores_path):
    scored = {}
    for tenant, seq, score in read_rows(scores_path, 3):
        scored.setdefault(tenant, {})[int(seq)] = float(score) if score != "" else float("nan")
    all_kinds, all_scores = [], []
    top_hits = top_total = top_best = 0
    in_top = {}
    missing = 0
    for tenant in sorted(scored):
        with open(os.path.join(labels_dir, tenant + ".labels")) as f:
            labels = [line.strip() for line in f]
        s = scored[tenant]
        kinds, scores = [], []
        for seq, kind in enumerate(labels, start=1):
            if seq not in s or math.isnan(s[seq]):
                missing += 1
                continue
            kinds.append(kind)
            scores.append(s[seq])
        if len(s) > len(labels):
            sys.exit(f"tenant {tenant}: {len(s)} scores for {len(labels)} labelled events")
        k = max(1, math.ceil(0.01 * len(scores)))
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        top = [kinds[i] for i in order]
        top_hits += sum(1 for x in top if x != "normal")
        top_total += k
        top_best += min(k, sum(1 for x in kinds if x != "normal"))
        for x in top:
            in_top[x] = in_top.get(x, 0) + 1
        all_kinds += kinds
        all_scores += scores
    if missing:
        print(f"unscored {missing}  # labelled events with no score (left out)")
    kinds = np.asarray(all_kinds)
    scores = np.asarray(all_scores)
    normal = kinds == "normal"
    for kind in sorted(set(all_kinds) - {"normal"}):
        mask = normal | (kinds == kind)
        n = int((kinds == kind).sum())
        print(f"kind {kind} {auc(kinds[mask] == kind, scores[mask]):.4f} {in_top.get(kind, 0)} {n}")
    print(f"precision_top1 {top_hits / top_total:.4f} {top_hits} {top_total} {top_best / top_total:.4f}")
    print(f"auc_all {auc(~normal, scores):.4f}")


def main():
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "auc":
        main_auc(args[1:])
    elif len(args) == 3 and args[0] == "audit":
        main_audit(args[1], args[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
