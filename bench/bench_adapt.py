"""Adaptation latency: how long ``detector.adapt(X_support, y_support)`` takes per request.

Serving adapts inside the request, so this is the latency a user adds by sending labelled
examples. Each method has a setup function that returns a zero-argument call to time; add
a method by writing one such function and listing it in ``METHODS`` with its target.

    python bench/bench_adapt.py                       # every method, K=10 + 50 normals, CPU
    python bench/bench_adapt.py --methods maml --repeats 500
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from metaad.device import resolve_device

#: A setup function: (input_dim, shots, n_normal, device) -> a call that adapts once.
Setup = Callable[[int, int, int, torch.device], Callable[[], object]]


def support_set(input_dim: int, shots: int, n_normal: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(shots + n_normal, input_dim)).astype(np.float32)
    X[:shots] += 3.0
    y = np.r_[np.ones(shots), np.zeros(n_normal)].astype(np.int64)
    return X, y


def maml_adapt(
    input_dim: int, shots: int, n_normal: int, device: torch.device
) -> Callable[[], object]:
    """MAML with its default network (MLP 128-64, out 32) and 5 inner steps."""
    from metaad.models.maml import MAML

    det = MAML((input_dim,), inner_steps=5).to(device)
    X, y = support_set(input_dim, shots, n_normal)

    def call() -> object:
        adapted = det.adapt(X, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return adapted

    return call


def proto_adapt(
    input_dim: int, shots: int, n_normal: int, device: torch.device
) -> Callable[[], object]:
    """The prototypical learner with its defaults (memory of 512 meta-train normals,
    closed-form logistic heads): adaptation is a forward pass and two small solves."""
    return _metric_adapt(input_dim, shots, n_normal, device)


def prototypes_only_adapt(
    input_dim: int, shots: int, n_normal: int, device: torch.device
) -> Callable[[], object]:
    """The plain prototypical configuration (no memory, no fitted heads)."""
    return _metric_adapt(input_dim, shots, n_normal, device, ridge=False, memory=0)


def _metric_adapt(
    input_dim: int, shots: int, n_normal: int, device: torch.device, **hparams: object
) -> Callable[[], object]:
    from metaad.models.metric import MetricLearner

    det = MetricLearner((input_dim,), **hparams)  # type: ignore[arg-type]
    if len(det.net.memory):
        det.net.memory.copy_(torch.randn_like(det.net.memory))
        det.net.memory_filled.fill_(True)
    det.to(device)
    X, y = support_set(input_dim, shots, n_normal)

    def call() -> object:
        adapted = det.adapt(X, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return adapted

    return call


#: name -> (setup, target median in ms)
METHODS: dict[str, tuple[Setup, float]] = {
    "proto": (proto_adapt, 2.0),
    "proto_plain": (prototypes_only_adapt, 2.0),
    "maml": (maml_adapt, 20.0),
}


def time_calls(call: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        call()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        call()
        out[i] = 1e3 * (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--normals", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(
        f"device {device}, threads {torch.get_num_threads()}, K={args.shots} + "
        f"{args.normals} normals, {args.dim}-D rows, {args.repeats} timed calls"
    )
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; known: {sorted(METHODS)}")
        setup, target = METHODS[name]
        ms = time_calls(
            setup(args.dim, args.shots, args.normals, device), args.repeats, args.warmup
        )
        med, p90 = float(np.median(ms)), float(np.percentile(ms, 90))
        verdict = "meets" if med < target else "MISSES"
        print(
            f"{name:10s} median {med:7.2f} ms   p90 {p90:7.2f} ms   "
            f"(target < {target:g} ms: {verdict})"
        )


if __name__ == "__main__":
    main()
