"""mlbench's BreastCancer, Shuttle and Satellite as the anomaly data sets of Liu, Ting & Zhou 2008
(Isolation Forest) and the ODDS collection, written as CSV for COPY: columns id (1..n, file order),
label (1 = anomaly, 0 = normal), then the features f1..fk.

    python datasets.py MLBENCH_DATA_DIR OUT_DIR

- breastw: BreastCancer without Id and without the 16 rows with a missing value (683 rows); the
  nine ordered factors as their values 1..10; anomaly = malignant (239).
- shuttle: Shuttle (58,000 rows, 9 features) without class "High" (class 4; ODDS: 49,097 rows);
  anomaly = every class but "Rad.Flow" (class 1): 3,511.
- satellite: Satellite (6,435 rows, 36 features); anomaly = the three smallest classes (2,036).

Counts are checked against those numbers; any difference fails loudly.
"""

import os
import sys
import warnings

import numpy as np
import rdata

EXPECTED = {  # rows, anomalies, features
    "breastw": (683, 239, 9),
    "shuttle": (49097, 3511, 9),
    "satellite": (6435, 2036, 36),
}


def load(data_dir, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII." for these files
        return rdata.read_rda(os.path.join(data_dir, name + ".rda"))[name]


def class_counts(series):
    counts = series.value_counts(sort=False)
    return ", ".join(f"{i + 1}:{level}={counts[level]}" for i, level in enumerate(series.cat.categories))


def breastw(data_dir):
    df = load(data_dir, "BreastCancer")
    print(f"  BreastCancer: {len(df)} rows; Class {class_counts(df['Class'])}")
    df = df.drop(columns=["Id"]).dropna()
    features = [c for c in df.columns if c != "Class"]
    # Factor levels are the values' text ("1".."10"); Mitoses has no level "9", so the level's
    # name, not its position, is the value.
    x = np.column_stack([df[c].astype(str).astype(int).to_numpy() for c in features]).astype(float)
    y = (df["Class"].astype(str) == "malignant").to_numpy().astype(int)
    return x, y


def shuttle(data_dir):
    df = load(data_dir, "Shuttle")
    print(f"  Shuttle: {len(df)} rows; Class {class_counts(df['Class'])}")
    levels = list(df["Class"].cat.categories)
    if levels[0] != "Rad.Flow" or levels[3] != "High":
        sys.exit(f"Shuttle: class 1 should be Rad.Flow and class 4 High, levels are {levels}")
    cls = df["Class"].astype(str)
    df = df[cls != "High"]
    x = df[[f"V{i}" for i in range(1, 10)]].to_numpy(dtype=float)
    y = (df["Class"].astype(str) != "Rad.Flow").to_numpy().astype(int)
    return x, y


def satellite(data_dir):
    df = load(data_dir, "Satellite")
    print(f"  Satellite: {len(df)} rows; classes {class_counts(df['classes'])}")
    counts = df["classes"].value_counts()
    smallest = list(counts.sort_values(kind="stable").index[:3])
    print(f"    anomalies: the three smallest classes {smallest}")
    x = df[[f"x.{i}" for i in range(1, 37)]].to_numpy(dtype=float)
    y = df["classes"].astype(str).isin([str(s) for s in smallest]).to_numpy().astype(int)
    return x, y


def write_csv(path, x, y):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(",".join(["id", "label"] + [f"f{j + 1}" for j in range(x.shape[1])]) + "\n")
        for i in range(len(y)):
            f.write(f"{i + 1},{y[i]}," + ",".join(repr(float(v)) for v in x[i]) + "\n")
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    failed = False
    for name, make in (("breastw", breastw), ("shuttle", shuttle), ("satellite", satellite)):
        x, y = make(data_dir)
        if np.isnan(x).any():
            sys.exit(f"{name}: a missing value is left")
        got = (len(y), int(y.sum()), x.shape[1])
        ok = got == EXPECTED[name]
        failed |= not ok
        print(f"  {name}: {got[0]} rows, {got[1]} anomalies ({100 * got[1] / got[0]:.1f} %), {got[2]} features"
              + ("" if ok else f"  MISMATCH: expected {EXPECTED[name][0]} rows, {EXPECTED[name][1]} anomalies, "
                 f"{EXPECTED[name][2]} features"))
        if ok:
            write_csv(os.path.join(out_dir, name + ".csv"), x, y)
    if failed:
        sys.exit("datasets.py: counts differ from Liu, Ting & Zhou 2008 / ODDS (see above)")


if __name__ == "__main__":
    main()
