"""scikit-learn's IsolationForest as the anomaly benchmark's baseline, single-threaded.

    python sklearn_baseline.py accuracy CSV_DIR [SEEDS]   mean AUC over seeds 1..SEEDS (10) of each
                                                          data set: lines `auc NAME MEAN SD`
    python sklearn_baseline.py make-speed CSV             the synthetic speed table as CSV (id, f1..f8),
                                                          made once: kept if it exists
    python sklearn_baseline.py speed CSV                  fit and score_samples timings on it:
                                                          lines `sklearn_fit_s X`, `sklearn_score_s Y`,
                                                          `sklearn_score_one_us Z`

IsolationForest(n_estimators=100, max_samples=256, random_state=seed, n_jobs=1); the anomaly
score is -score_samples (higher = more anomalous), the paper's s(x, 256).
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_v] = "1"

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

DATASETS = ("breastw", "shuttle", "satellite")
SPEED_ROWS, SPEED_FEATURES, SPEED_ANOMALY_SHARE, SPEED_SEED = 1_000_000, 8, 0.01, 20261101


def forest(seed):
    return IsolationForest(n_estimators=100, max_samples=256, random_state=seed, n_jobs=1)


def read_labelled(path):
    df = pd.read_csv(path)
    features = [c for c in df.columns if c.startswith("f")]
    return df[features].to_numpy(dtype=float), df["label"].to_numpy()


def accuracy(csv_dir, seeds):
    for name in DATASETS:
        x, y = read_labelled(os.path.join(csv_dir, name + ".csv"))
        aucs = []
        for seed in range(1, seeds + 1):
            scores = -forest(seed).fit(x).score_samples(x)
            aucs.append(roc_auc_score(y, scores))
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        print(f"auc {name} {statistics.mean(aucs):.4f} {sd:.4f}", flush=True)


def make_speed(path):
    """99 % N(0, I), 1 % uniform on [-6, 6], shuffled; six decimals (what the CSV holds is the data)."""
    if os.path.exists(path):
        return
    rng = np.random.default_rng(SPEED_SEED)
    n_anomalies = int(SPEED_ROWS * SPEED_ANOMALY_SHARE)
    x = np.vstack([
        rng.standard_normal((SPEED_ROWS - n_anomalies, SPEED_FEATURES)),
        rng.uniform(-6.0, 6.0, (n_anomalies, SPEED_FEATURES)),
    ])[rng.permutation(SPEED_ROWS)]
    df = pd.DataFrame(x, columns=[f"f{j + 1}" for j in range(SPEED_FEATURES)])
    df.insert(0, "id", np.arange(1, SPEED_ROWS + 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    df.to_csv(path + ".tmp", index=False, float_format="%.6f")
    os.replace(path + ".tmp", path)
    print(f"  wrote {path}: {SPEED_ROWS} rows x {SPEED_FEATURES} features, {n_anomalies} uniform outliers")


def speed(path, rounds=3, single_calls=200):
    df = pd.read_csv(path)
    x = df[[c for c in df.columns if c.startswith("f")]].to_numpy(dtype=float)
    fits, scores = [], []
    model = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        model = forest(1).fit(x)
        fits.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = model.score_samples(x)
        scores.append(time.perf_counter() - t0)
        assert len(s) == len(x)
    ones = []
    model.score_samples(x[:1])  # warm
    for i in range(single_calls):
        row = x[i * 997 % len(x)].reshape(1, -1)
        t0 = time.perf_counter()
        model.score_samples(row)
        ones.append(time.perf_counter() - t0)
    print(f"sklearn_fit_s {statistics.median(fits):.3f}  # rounds: {' '.join(f'{v:.3f}' for v in fits)}")
    print(f"sklearn_score_s {statistics.median(scores):.3f}  # rounds: {' '.join(f'{v:.3f}' for v in scores)}")
    print(f"sklearn_score_one_us {statistics.median(ones) * 1e6:.0f}  # median of {single_calls} calls on one row")


def main():
    args = sys.argv[1:]
    if not args or args[0] not in ("accuracy", "make-speed", "speed") or len(args) < 2:
        sys.exit(__doc__)
    with threadpool_limits(limits=1):
        if args[0] == "accuracy":
            accuracy(args[1], int(args[2]) if len(args) > 2 else 10)
        elif args[0] == "make-speed":
            make_speed(args[1])
        else:
            speed(args[1])


if __name__ == "__main__":
    main()
