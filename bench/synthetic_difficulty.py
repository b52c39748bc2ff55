"""How hard is the synthetic default for simple methods? (tuning aid for the knobs)

For each domain, per anomaly type and macro over types, AUPRC at 5% query contamination
(950 normals + 50 anomalies of one type per query; support = K=5 anomalies + 50 normals;
10 episodes per type) for:

* ``iforest``: Isolation Forest fitted on training normals (no labels);
* ``lr_sup``: logistic regression (C=1) fitted on the support set alone;
* ``proto_raw``: distance to the normal prototype minus distance to the anomaly prototype;
* ``maha_struct``: *type-agnostic oracle*: Mahalanobis distance fitted on training normals
  over the structured features only (it is told which columns are nuisance). This is the
  kind of metric a meta-learner could discover from the training types;
* ``oracle``: *type-aware oracle*: a model fitted on many labelled anomalies of the type
  (disjoint from the episodes' anomalies) plus training normals: QDA on the structured
  features for rows; for sensor windows, gradient boosting on per-sensor window statistics
  (level, spread, roughness, residual off the normal subspace), since a fault of a given
  kind may hit any sensor.

Features are standard-scaled on training normals; categoricals are one-hot encoded. Sensor
rows are cut into non-overlapping windows of 16 steps per series and flattened; a window is
anomalous if any of its rows is, and its type is the majority anomaly type. The sensor table
is generated with a 15% anomaly rate so each type has enough windows; the rate only sets how
many anomalies exist, the query contamination is 5% regardless.

Usage: ``python bench/synthetic_difficulty.py [--rows 60000] [--series 200] [--seed 0]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from metaad.data import synthetic as syn
from metaad.data.schema import LABEL, NORMAL, SERIES, TYPE

WINDOW = 16
K = 5
N_SUPPORT_NORMAL = 50
N_QUERY_NORMAL = 950
N_QUERY_ANOM = 50
N_EPISODES = 10
METHODS = ("iforest", "lr_sup", "proto_raw", "maha_struct", "oracle")


def row_arrays(domain: str, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (numeric + one-hot), types, and a mask of structured (non-nuisance) columns."""
    df = syn.generate(domain, n_rows, seed)
    num = syn.numeric_columns(domain)
    nuis = set(syn.nuisance_columns(domain))
    cats = syn.categorical_columns(domain)
    onehot = pd.get_dummies(df[cats].astype("category"), dtype=np.float64)
    X = np.concatenate([df[num].to_numpy(np.float64), onehot.to_numpy()], axis=1)
    struct = np.r_[[c not in nuis for c in num], np.zeros(onehot.shape[1], bool)]
    return X, df[TYPE].to_numpy(str), struct


def window_stats(X: np.ndarray, types: np.ndarray, n_cols: int, n_struct: int) -> np.ndarray:
    """Per-sensor window statistics for the sensor oracle, raw and sorted across sensors."""
    V = X.reshape(len(X), WINDOW, n_cols)[:, :, :n_struct]
    normal = V[types == NORMAL].reshape(-1, n_struct)
    mu, sd = normal.mean(0), normal.std(0)
    S = (V - mu) / sd
    _, _, vt = np.linalg.svd(normal[:20_000] - mu, full_matrices=False)
    P = (vt[:3] / 1.0).T
    P, _ = np.linalg.qr(P / sd[:, None])
    R = S - S @ P @ P.T
    stats = [
        S.mean(1),
        S.std(1),
        np.abs(np.diff(S, axis=1)).mean(1),
        R.mean(1),
        R.std(1),
        np.abs(R).max(1),
        np.abs(np.diff(R, axis=1)).mean(1),
    ]
    out = [np.concatenate(stats, axis=1)]
    out += [np.sort(st, axis=1) for st in stats]
    return np.concatenate(out, axis=1)


def sensor_arrays(n_series: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened non-overlapping windows of WINDOW steps, their types, structured mask."""
    mean_len = sum(syn.SENSOR_KNOBS.series_len) / 2
    df = syn.generate("sensor", int(n_series * mean_len), seed, anomaly_rate=0.15)
    cols = syn.numeric_columns("sensor")
    nuis = set(syn.nuisance_columns("sensor"))
    xs, ts = [], []
    for _, g in df.groupby(SERIES, sort=True):
        n_win = len(g) // WINDOW
        if n_win == 0:
            continue
        v = g[cols].to_numpy(np.float64)[: n_win * WINDOW].reshape(n_win, WINDOW * len(cols))
        lab = g[LABEL].to_numpy()[: n_win * WINDOW].reshape(n_win, WINDOW)
        typ = g[TYPE].to_numpy(str)[: n_win * WINDOW].reshape(n_win, WINDOW)
        for w in range(n_win):
            if lab[w].any():
                names, counts = np.unique(typ[w][lab[w] == 1], return_counts=True)
                ts.append(str(names[np.argmax(counts)]))
            else:
                ts.append(NORMAL)
        xs.append(v)
    struct = np.tile([c not in nuis for c in cols], WINDOW)
    return np.concatenate(xs), np.asarray(ts), struct


def evaluate(
    X: np.ndarray,
    types: np.ndarray,
    struct: np.ndarray,
    seed: int,
    oracle_X: np.ndarray | None = None,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(types == NORMAL)
    normal = rng.permutation(normal)
    n_train = int(0.4 * len(normal))
    train_n, eval_n = normal[:n_train], normal[n_train:]
    mu = X[train_n].mean(0)
    sd = X[train_n].std(0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd

    iforest = IsolationForest(n_estimators=100, random_state=seed, n_jobs=1)
    iforest.fit(Z[train_n[:10_000]])
    if_score = -iforest.score_samples(Z)
    lw = LedoitWolf().fit(Z[train_n][:, struct])
    diff = Z[:, struct] - lw.location_
    maha = np.einsum("ij,jk,ik->i", diff, lw.precision_, diff)

    rows = []
    for t in sorted(set(types) - {NORMAL}):
        idx = rng.permutation(np.flatnonzero(types == t))
        half = len(idx) // 2
        orc_idx, ep_idx = idx[:half], idx[half:]
        if len(ep_idx) < K + N_QUERY_ANOM:
            print(f"  skip {t}: only {len(ep_idx)} episode anomalies")
            continue
        fit_rows = np.r_[train_n[:5000], orc_idx]
        fit_y = np.r_[np.zeros(min(5000, n_train)), np.ones(len(orc_idx))]
        if oracle_X is None:
            qda = QuadraticDiscriminantAnalysis(solver="eigen", shrinkage="auto")
            qda.fit(Z[fit_rows][:, struct], fit_y)
            orc_score = qda.predict_log_proba(Z[:, struct])[:, 1]
        else:
            hgb = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
            hgb.fit(oracle_X[fit_rows], fit_y)
            orc_score = hgb.predict_proba(oracle_X)[:, 1]
        for e in range(N_EPISODES):
            a = rng.choice(ep_idx, K + N_QUERY_ANOM, replace=False)
            nrm = rng.choice(eval_n, N_SUPPORT_NORMAL + N_QUERY_NORMAL, replace=False)
            s_idx = np.r_[a[:K], nrm[:N_SUPPORT_NORMAL]]
            s_y = np.r_[np.ones(K), np.zeros(N_SUPPORT_NORMAL)]
            q_idx = np.r_[nrm[N_SUPPORT_NORMAL:], a[K:]]
            q_y = np.r_[np.zeros(N_QUERY_NORMAL), np.ones(N_QUERY_ANOM)]
            lr = LogisticRegression(C=1.0, max_iter=2000).fit(Z[s_idx], s_y)
            pa = Z[a[:K]].mean(0)
            pn = Z[nrm[:N_SUPPORT_NORMAL]].mean(0)
            Zq = Z[q_idx]
            scores = {
                "iforest": if_score[q_idx],
                "lr_sup": lr.decision_function(Zq),
                "proto_raw": np.linalg.norm(Zq - pn, axis=1) - np.linalg.norm(Zq - pa, axis=1),
                "maha_struct": maha[q_idx],
                "oracle": orc_score[q_idx],
            }
            for m, sc in scores.items():
                rows.append(
                    {
                        "type": t,
                        "episode": e,
                        "method": m,
                        "auprc": average_precision_score(q_y, sc),
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domains", nargs="*", default=list(syn.DOMAINS))
    args = ap.parse_args()
    pd.set_option("display.width", 140)
    summary = {}
    for domain in args.domains:
        t0 = time.time()
        oracle_X = None
        if syn.is_time_series(domain):
            X, types, struct = sensor_arrays(args.series, args.seed)
            n_cols = len(syn.numeric_columns(domain))
            oracle_X = window_stats(X, types, n_cols, n_cols - len(syn.nuisance_columns(domain)))
        else:
            X, types, struct = row_arrays(domain, args.rows, args.seed)
        res = evaluate(X, types, struct, args.seed, oracle_X)
        table = res.pivot_table(index="type", columns="method", values="auprc", aggfunc="mean")
        table = table[list(METHODS)]
        table.loc["MACRO"] = table.mean()
        summary[domain] = table.loc["MACRO"]
        print(
            f"\n== {domain}: {X.shape[0]} samples x {X.shape[1]} features "
            f"({time.time() - t0:.0f} s); AUPRC, 5% contamination, K={K}"
        )
        print(table.round(3).to_string())
    print("\n== macro AUPRC")
    print(pd.DataFrame(summary).T.round(3).to_string())


if __name__ == "__main__":
    main()
