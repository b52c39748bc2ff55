"""The unseen-type benchmark's meta-learners trained on a GPU, for comparison with a CPU run.

Runs :func:`metaad.benchmark.run_benchmark` one seed at a time (so a time limit keeps the
seeds already done) on the frozen episodes that a CPU run with the same ``seeds``,
``n_episodes`` and ``split_seed`` scored, and writes every seed's per-episode rows to one CSV
and the fit and scoring seconds to one JSON. Compare the CSV with the CPU run's
``per_episode.csv`` on (seed, type, shots, rep): training on the GPU (bf16 autocast for the
metric learners) must land within the benchmark's confidence interval of the CPU numbers.

Validation (Great Expectations) and MLflow are off: a lent GPU machine has neither
installed, and neither changes a number.

    python bench/gpu_unseen_check.py --data-dir ../shared/datasets --dataset tep \\
        --methods triplet,proto --seeds 1 2 3 4 5 --n-episodes 20 --out /tmp/gpu_tep
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from metaad.benchmark import run_benchmark, with_overrides
from metaad.config import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--methods", required=True, help="comma-separated")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--n-episodes", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_params(
        args.params,
        {"benchmark.n_episodes": args.n_episodes, "benchmark.device": args.device},
    ).benchmark
    rows, timing = [], {"device": torch.cuda.get_device_name() if torch.cuda.is_available()
                        else "cpu", "seeds": {}}  # fmt: skip
    for seed in args.seeds:
        cfg = with_overrides(base, datasets=[args.dataset], methods=args.methods.split(","))
        cfg = with_overrides(cfg, seeds=[seed])
        t0 = time.perf_counter()
        res = run_benchmark(cfg, args.out / f"seed{seed}", data_dir=args.data_dir, validate=False)
        r = res.per_dataset[args.dataset]
        rows.append(r.per_episode)
        timing["seeds"][seed] = {
            "wall_s": round(time.perf_counter() - t0, 1),
            "fit_s": r.fit_seconds,
            "eval_s": r.eval_seconds,
        }
        pd.concat(rows).to_csv(args.out / f"{args.dataset}_per_episode.csv", index=False)
        (args.out / f"{args.dataset}_timing.json").write_text(json.dumps(timing, indent=1))
        print(f"seed {seed}: {timing['seeds'][seed]}", flush=True)


if __name__ == "__main__":
    main()
