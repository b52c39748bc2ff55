"""Encoders: an MLP for tabular rows and a temporal convolution network for windows.

Both map a batch of inputs to ``(batch, out_dim)`` and are plain ``nn.Module``s so that
the meta-learning code can run them through ``torch.func.functional_call``. Neither uses
batch normalisation: running statistics would leak between tasks and break ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaad.errors import ConfigError


class MLPEncoder(nn.Module):
    """Rows ``(B, d)`` to ``(B, out_dim)``; LayerNorm keeps inner-loop steps well scaled."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (128, 64), out_dim: int = 32) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ConfigError(f"MLPEncoder sizes must be positive: {in_dim}, {hidden}, {out_dim}")
        layers: list[nn.Module] = []
        prev = in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LayerNorm(h), nn.GELU()]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TCNEncoder(nn.Module):
    """Windows ``(B, T, d)`` to ``(B, out_dim)`` with dilated causal-free 1-D convolutions.

    Global average and max pooling over time keep both sustained shifts and short spikes.
    """

    def __init__(
        self,
        in_dim: int,
        channels: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        out_dim: int = 32,
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or kernel_size < 1 or any(c < 1 for c in channels):
            raise ConfigError("TCNEncoder sizes must be positive")
        blocks: list[nn.Module] = []
        prev = in_dim
        for i, c in enumerate(channels):
            dil = 2**i
            blocks += [
                nn.Conv1d(prev, c, kernel_size, padding=dil * (kernel_size - 1) // 2, dilation=dil),
                nn.GELU(),
            ]
            prev = c
        self.conv = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * prev, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))  # (B, C, T)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.head(pooled)


def make_encoder(
    input_shape: tuple[int, ...],
    *,
    hidden: Sequence[int] = (128, 64),
    out_dim: int = 32,
) -> nn.Module:
    """An MLP for rows ``(d,)``, a TCN for windows ``(T, d)``."""
    if len(input_shape) == 1:
        return MLPEncoder(input_shape[0], hidden, out_dim)
    if len(input_shape) == 2:
        return TCNEncoder(input_shape[1], channels=hidden, out_dim=out_dim)
    raise ConfigError(f"input_shape must be (d,) or (T, d), got {input_shape}")
