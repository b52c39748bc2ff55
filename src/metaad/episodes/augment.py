"""Task augmentation: synthetic anomaly types made from normal rows during meta-training.

Meta-training sees only a handful of anomaly types, and a learner that fits them well learns
what *those* types look like rather than how to adapt to a new one (the training loss of the
metric learner reaches ~0.005 while unseen types lag). Replacing the anomalies of some tasks in
each batch with a freshly drawn *virtual type* -- normal rows of the same task moved by one
consistent offset on a random subset of features -- gives an unlimited supply of new types
whose only common trait is "a consistent departure from normal that the support shows". That
is the trait every unseen type shares, so the support terms (anomaly prototype, the
closed-form heads) are trained to generalise instead of memorising. The idea is the
task-augmentation line of meta-learning (e.g. MetaMix, Yao et al. 2021) combined with the
synthetic-anomaly injection common in anomaly detection (e.g. CutPaste, NeuTraL AD).

The perturbation is drawn per task: ``m`` features out of ``d`` (1 to a third), each moved by
``sign * U(low, high)`` in the pool's (robust-scaled) units, with a per-row jitter of +-30%
so the virtual anomalies are a spread, not one point. For windows ``(T, C)`` the offset is
applied to ``m`` channels over the whole window. Only tensors are touched: the sampler's
index arrays and the pool stay as they are.
"""

from __future__ import annotations

import torch


def virtual_types(
    xs: torch.Tensor,
    ys: torch.Tensor,
    xq: torch.Tensor,
    yq: torch.Tensor,
    n_tasks: int,
    gen: torch.Generator,
    *,
    low: float = 1.0,
    high: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(xs, xq)`` with the anomalies of the first ``n_tasks`` tasks replaced.

    ``xs (B, S, ...)``, ``ys (B, S)``, ``xq (B, Q, ...)``, ``yq (B, Q)``; labels keep their
    places, so the loss needs no change. Each replaced anomaly is a normal row of the same
    task (support normals for support anomalies, query normals for query anomalies, so the
    support never shares a base row with the query) plus the task's offset.
    """
    if n_tasks <= 0:
        return xs, xq
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    B = ys.shape[0]
    n_tasks = min(n_tasks, B)
    xs, xq = xs.clone(), xq.clone()
    d = xs.shape[-1]  # features (rows) or channels (windows)
    cpu = torch.device("cpu")
    for b in range(n_tasks):
        m = int(torch.randint(1, max(1, d // 3) + 1, (1,), generator=gen))
        feats = torch.randperm(d, generator=gen)[:m]
        sign = torch.randint(0, 2, (m,), generator=gen).float() * 2 - 1
        mag = low + (high - low) * torch.rand(m, generator=gen)
        offset = torch.zeros(d)
        offset[feats] = sign * mag
        for x, y in ((xs, ys), (xq, yq)):
            anom = torch.nonzero(y[b].to(cpu) == 1).flatten()
            norm = torch.nonzero(y[b].to(cpu) == 0).flatten()
            if len(anom) == 0 or len(norm) == 0:
                continue
            base = norm[torch.randint(0, len(norm), (len(anom),), generator=gen)]
            jitter = 0.7 + 0.6 * torch.rand(len(anom), 1, generator=gen)
            shift = (jitter * offset).to(x.device, x.dtype)
            if x.dim() == 4:  # windows (B, N, T, C): the same shift at every time step
                shift = shift[:, None, :]
            x[b, anom.to(x.device)] = x[b, base.to(x.device)] + shift
    return xs, xq
