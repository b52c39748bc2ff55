"""Task normalisation: every row of a task measured in its support normals' frame.

Shared by the metric learners and the MAML family (their ``task_norm`` hyperparameter).
Each scenario of SKAB is its own run at its own operating point, and the support-only
logistic regression, which standardises on the support, is the strongest baseline there
(README, "the pipeline's scaling"); these helpers give a meta-learner the same frame: per
feature (per channel for windows) minus the support normals' mean, divided by their
floored std. A per-feature offset of a whole task then leaves its scores unchanged.
"""

from __future__ import annotations

import torch

#: Task-normalised inputs are clipped here: a feature constant in the support normals is
#: divided by the floor, and one far row must not dominate the encoder's first layer.
TASK_NORM_CLIP = 50.0


def task_moments(normals: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and floored std of a task's support normals ``(B, n, ...)``.

    Windows ``(B, n, T, C)`` are pooled over rows and time, so a channel has one mean and
    one std per task. The std is ``sqrt(var + floor^2)``: smooth, and a feature that is
    constant in fifty normal rows (a one-hot column) is scaled by ``1/floor``, not 1/0.
    """
    dims = tuple(range(1, normals.dim() - 1))
    nf = normals.float()
    mu = nf.mean(dim=dims, keepdim=True)
    var = ((nf - mu) ** 2).mean(dim=dims, keepdim=True)
    return mu, (var + floor * floor).sqrt()


def task_normalise(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """Rows ``(B, m, ...)`` in a task's frame (see :func:`task_moments`), clipped."""
    return ((x.float() - mu) / sd).clamp(-TASK_NORM_CLIP, TASK_NORM_CLIP).to(x.dtype)


__all__ = ["TASK_NORM_CLIP", "task_moments", "task_normalise"]
