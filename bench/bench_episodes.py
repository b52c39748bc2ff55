"""Episode sampling throughput: training tasks drawn as index arrays, episodes per second.

A task is K anomalies of one type plus normals for the support and the query; the sampler
draws a whole batch at once with numpy. Run on the synthetic default's meta-train pool:

    python bench/bench_episodes.py            # target: >= 100,000 episodes/s
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from metaad.data.synthetic import generate
from metaad.episodes.pool import Pool
from metaad.episodes.sampler import sample_task_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--shots", type=int, default=5)
    args = ap.parse_args()
    df = generate("card", args.rows, 7)
    feats = df.select_dtypes("number").drop(columns=["label"]).to_numpy(np.float32)
    pool = Pool(feats, df.label.to_numpy(np.int64), df.anomaly_type.to_numpy(dtype=str))
    rng = np.random.default_rng(0)
    kw = dict(
        batch_size=args.batch,
        shots=args.shots,
        n_support_normal=50,
        n_query_normal=64,
        n_query_anomaly=16,
    )
    sample_task_batch(pool, rng, **kw)  # warm-up (builds the type index)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        sample_task_batch(pool, rng, **kw)
    secs = time.perf_counter() - t0
    eps = args.batch * args.batches / secs
    # reference in the same process: one episode at a time with rng.choice
    index, normals = pool.type_index, pool.normal_idx
    types = pool.anomaly_types
    n_ref = 2000
    t0 = time.perf_counter()
    for i in range(n_ref):
        t = types[i % len(types)]
        rng.choice(index[t], size=args.shots + 16, replace=False)
        rng.choice(normals, size=114, replace=False)
    ref = n_ref / (time.perf_counter() - t0)
    print(f"pool {len(pool)} rows, K={args.shots}, support 50 normals, query 64+16")
    print(
        f"batched sampler : {eps:12,.0f} episodes/s (target >= 100,000: "
        f"{'meets' if eps >= 1e5 else 'MISSES'})"
    )
    print(f"per-episode rng.choice reference: {ref:12,.0f} episodes/s; ratio {eps / ref:.1f}x")


if __name__ == "__main__":
    main()
