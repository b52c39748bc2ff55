"""Meta-training speed per outer step: each meta-learner on CPU and on CUDA, one process.

The benchmark's settings (16 tasks per outer step, K drawn from {1, 5, 10}, 50 support
normals, 64 + 16 query, the metric learners' 512-row memory bank) on two input shapes of
the real data: rows of 122 features (NSL-KDD after one-hot) and windows of 5 x 52
(Tennessee Eastman). A step's time is ``(t(n2) - t(n1)) / (n2 - n1)`` over two fits, so
set-up (moving the pool, filling the memory bank) is not counted. On CUDA each learner runs
as training runs there (metric learners under bf16 autocast, the MAML family in fp32).
Prints seconds per step and the CPU / CUDA ratio.

    python bench/bench_train.py                          # CPU only where there is no GPU
    python bench/bench_train.py --threads 16 --steps 20 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from metaad.episodes.pool import Pool
from metaad.models.base import FitConfig
from metaad.models.maml import MAML_MODELS
from metaad.models.metric import METRIC_MODELS
from metaad.models.registry import create

SHAPES = {"rows 122": (122,), "windows 5x52": (5, 52)}
MEMORY = {name: {"memory": 512} for name in METRIC_MODELS}


def make_pool(shape: tuple[int, ...], n_normal: int = 6000, n_types: int = 12) -> Pool:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_normal + 200 * n_types, *shape)).astype(np.float32)
    for t in range(n_types):
        X[n_normal + 200 * t : n_normal + 200 * (t + 1)] += rng.normal(size=shape).astype(
            np.float32
        )
    y = np.r_[np.zeros(n_normal), np.ones(200 * n_types)].astype(np.int64)
    types = np.array(["normal"] * n_normal + [f"t{t}" for t in range(n_types) for _ in range(200)])
    return Pool(X, y, types)


def fit_seconds(method: str, pool: Pool, steps: int, device: str) -> float:
    torch.manual_seed(0)
    det = create(method, pool.input_shape, **MEMORY.get(method, {}))
    cfg = FitConfig(steps=steps, meta_batch=16, shots=(1, 5, 10), device=device, val_every=10**9)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    det.fit(pool, cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def per_step(method: str, pool: Pool, n1: int, n2: int, device: str) -> float:
    fit_seconds(method, pool, 2, device)  # warm-up: kernels, allocator, autotuning
    return (fit_seconds(method, pool, n2, device) - fit_seconds(method, pool, n1, device)) / (
        n2 - n1
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(sorted([*METRIC_MODELS, *MAML_MODELS])))
    ap.add_argument("--steps", type=int, nargs=2, default=(10, 30), metavar=("N1", "N2"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES)
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {name}")
    print(f"{'shape':<14}{'method':<11}" + "".join(f"{d + ' s/step':>14}" for d in devices)
          + ("   cpu/cuda" if len(devices) == 2 else ""))  # fmt: skip
    n1, n2 = args.steps
    for shape_name in args.shapes.split(","):
        pool = make_pool(SHAPES[shape_name])
        for method in args.methods.split(","):
            t = [per_step(method, pool, n1, n2, d) for d in devices]
            ratio = f"{t[0] / t[1]:>10.1f}x" if len(t) == 2 else ""
            print(f"{shape_name:<14}{method:<11}" + "".join(f"{x:>14.4f}" for x in t) + ratio)


if __name__ == "__main__":
    main()
