"""Meta-training throughput: metaad's vmapped MAML against a per-task loop with ``higher``.

Both run the same network (an MLP 2x64 on 32-D rows, LayerNorm + GELU, a linear head), the
same task batches (32 tasks of K=10 anomalies + 50 normals support, 64 + 16 query), the same
class-balanced BCE, 5 inner SGD steps and one Adam outer step with gradient clipping. The
``higher`` side is the usual reference loop: ``innerloop_ctx`` per task, ``diffopt.step``
per inner step, the query loss of each task backpropagated into the initial weights.
The ``metaad vmap + compile`` row is the same step with ``train.compile: true`` (the
meta-loss through ``torch.compile``); its warm-up time is mostly the compiling.

    python bench/bench_maml.py                  # CPU, second- and first-order
    python bench/bench_maml.py --no-compile     # without the torch.compile row
    python bench/bench_maml.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import higher
import numpy as np
import torch
from torch import Tensor, nn

from metaad.device import resolve_device
from metaad.episodes.pool import Pool
from metaad.episodes.sampler import sample_task_batch
from metaad.models.encoders import make_encoder
from metaad.models.maml import FOMAML, MAML, balanced_bce

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def make_batches(
    dim: int,
    n_batches: int,
    batch: int,
    device: torch.device,
    sizes: tuple[int, int, int, int] = (10, 50, 64, 16),
) -> list[Batch]:
    """Task batches; ``sizes``: K, support normals, query normals, query anomalies."""
    rng = np.random.default_rng(0)
    n_types = 8
    X = np.concatenate(
        [rng.normal(size=(5000, dim))]
        + [rng.normal(loc=rng.normal(size=dim), size=(300, dim)) for _ in range(n_types)]
    ).astype(np.float32)
    y = np.r_[np.zeros(5000), np.ones(300 * n_types)].astype(np.int64)
    types = np.array(["normal"] * 5000 + [f"t{i}" for i in range(n_types) for _ in range(300)])
    pool = Pool(X, y, types)
    Xt = torch.as_tensor(pool.X, device=device)
    out = []
    for _ in range(n_batches):
        tb = sample_task_batch(
            pool,
            rng,
            batch_size=batch,
            shots=sizes[0],
            n_support_normal=sizes[1],
            n_query_normal=sizes[2],
            n_query_anomaly=sizes[3],
        )

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a, device=device)

        out.append(
            (
                Xt[t(tb.support_idx)],
                t(tb.support_y).float(),
                Xt[t(tb.query_idx)],
                t(tb.query_y).float(),
            )
        )
    return out


def vmapped_step(
    first_order: bool,
    dim: int,
    inner_steps: int,
    inner_lr: float,
    device: torch.device,
    compiled: bool = False,
) -> Callable[[Batch], float]:
    """metaad's outer step (``compiled``: the meta-loss through ``train.compile``)."""
    cls = FOMAML if first_order else MAML
    det = cls((dim,), hidden=(64, 64), out_dim=64, inner_steps=inner_steps, inner_lr=inner_lr)
    det.to(device)
    opt = torch.optim.Adam(det.meta_parameters(), lr=1e-3)
    loss_fn = det.compiled_meta_loss() if compiled else det.meta_loss

    def step(b: Batch) -> float:
        loss = loss_fn(*b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(det.meta_parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step


class _Net(nn.Module):
    """The same architecture with PyTorch's fused LayerNorm (``higher`` has no vmap issue)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.encoder = make_encoder((dim,), hidden=(64, 64), out_dim=64)
        self.head = nn.Linear(64, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


def higher_step(
    first_order: bool, dim: int, inner_steps: int, inner_lr: float, device: torch.device
) -> Callable[[Batch], float]:
    model = _Net(dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)

    def step(b: Batch) -> float:
        X_s, y_s, X_q, y_q = b
        n = len(X_s)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(n):
            with higher.innerloop_ctx(
                model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
            ) as (fmodel, diffopt):
                for _ in range(inner_steps):
                    diffopt.step(balanced_bce(fmodel(X_s[i]), y_s[i]))
                q = balanced_bce(fmodel(X_q[i]), y_q[i]) / n
                if first_order:  # the fast weights' gradient stands in for the initial one's
                    grads = torch.autograd.grad(q, list(fmodel.parameters()))
                    for p, g in zip(model.parameters(), grads, strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    q.backward()
                total += float(q.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total

    return step


def time_steps(
    step: Callable[[Batch], float], batches: list[Batch], warmup: int, device: torch.device
) -> tuple[list[float], float]:
    """Seconds per timed step, and the seconds the warm-up took (compiling, for compile)."""
    t0 = time.perf_counter()
    for b in batches[:warmup]:
        step(b)
    warm = time.perf_counter() - t0
    times = []
    for b in batches[warmup:]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5, help="timed outer steps per method")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="tasks per outer step")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument(
        "--sizes",
        type=int,
        nargs=4,
        default=(10, 50, 64, 16),
        metavar=("K", "SUPPORT_NORMALS", "QUERY_NORMALS", "QUERY_ANOMALIES"),
        help="task sizes (default: FitConfig's, with K=10)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    ap.add_argument("--order", choices=["second", "first", "both"], default="both")
    ap.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile row (its warm-up compiles for about 80 s on 2 CPU cores)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    sizes = tuple(args.sizes)
    batches = make_batches(args.dim, args.warmup + args.steps, args.batch, device, sizes)
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.batch} tasks/step, "
        f"{args.inner_steps} inner steps, MLP 2x64 on {args.dim}-D rows, task sizes {sizes}, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    orders = {"second": [False], "first": [True], "both": [False, True]}[args.order]
    for first_order in orders:
        label = "first-order " if first_order else "second-order"
        rates = {}
        sides: list[tuple[str, Callable[..., Callable[[Batch], float]], dict[str, bool]]] = [
            ("metaad vmap", vmapped_step, {}),
            ("metaad vmap + compile", vmapped_step, {"compiled": True}),
            ("higher loop", higher_step, {}),
        ]
        for name, make, kw in sides:
            if args.no_compile and kw.get("compiled"):
                continue
            step = make(first_order, args.dim, args.inner_steps, args.inner_lr, device, **kw)
            times, warm = time_steps(step, batches, args.warmup, device)
            med = statistics.median(times)
            rates[name] = args.batch / med
            print(
                f"{label}  {name:22s}: {rates[name]:8.1f} tasks/s  "
                f"(median {1e3 * med:7.1f} ms per outer step, min {1e3 * min(times):7.1f}; "
                f"warm-up {warm:5.1f} s)"
            )
        for name in rates:
            if name != "higher loop":
                ratio = rates[name] / rates["higher loop"]
                verdict = "meets" if ratio >= 5 else "MISSES"
                print(f"{label}  speed-up {name} / higher: {ratio:.1f}x (target >= 5x: {verdict})")


if __name__ == "__main__":
    main()
