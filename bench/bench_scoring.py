"""Scoring throughput of an adapted detector against ``IsolationForest.score_samples``.

Both score the same 1M rows of the synthetic default (preprocessed), in the same process,
one thread each; the detector is adapted once (K=10 + 50 normals) and then scores in
chunks, as batch scoring does.

    python bench/bench_scoring.py            # target: >= 3x IsolationForest
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from metaad.data.synthetic import categorical_columns, generate
from metaad.episodes.pool import Pool
from metaad.episodes.preprocess import Preprocessor
from metaad.models.base import FitConfig
from metaad.models.registry import create


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--method", default="proto")
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--hparams", default="{}", help="JSON, e.g. '{\"memory\": 0}'")
    args = ap.parse_args()
    torch.set_num_threads(1)
    df = generate("card", args.rows, 3)
    pre = Preprocessor.fit(df.iloc[:50000], categorical=categorical_columns("card"))
    X = pre.transform(df)
    y = df.label.to_numpy(np.int64)
    types = df.anomaly_type.to_numpy(dtype=str)
    pool = Pool(X[:50000], y[:50000], types[:50000])
    det = create(args.method, pool.input_shape, **json.loads(args.hparams))
    det.fit(pool, FitConfig(steps=args.train_steps, meta_batch=8))
    normals = np.flatnonzero(y == 0)[:50]
    anoms = np.flatnonzero(y == 1)[:10]
    support = np.r_[anoms, normals]
    adapted = det.adapt(X[support], y[support])
    iforest = IsolationForest(n_estimators=100, random_state=0, n_jobs=1)
    iforest.fit(X[:20000][y[:20000] == 0])

    t0 = time.perf_counter()
    adapted.score(X)
    ours = args.rows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    iforest.score_samples(X)
    ref = args.rows / (time.perf_counter() - t0)
    print(f"{args.rows:,} rows x {X.shape[1]} features, 1 thread")
    print(f"{args.method} {args.hparams} adapted.score : {ours:12,.0f} rows/s")
    print(f"IsolationForest.score_samples : {ref:12,.0f} rows/s")
    print(f"ratio {ours / ref:.1f}x (target >= 3x: {'meets' if ours / ref >= 3 else 'MISSES'})")


if __name__ == "__main__":
    main()
