"""Device choice: CUDA when present, else CPU; bf16 autocast for the metric learners on CUDA."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from metaad.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; an explicit ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; a no-op on CPU, where fp32 is both faster and exact.

    Used by the metric learners' training step. The MAML family trains in fp32 everywhere
    (``metaad.models.maml``: no speed to gain, and ANIL's vmapped TCN failed under it).
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_rng(seed: int) -> Iterator[torch.Generator]:
    """A private torch generator, so one component's draws do not shift another's."""
    g = torch.Generator()
    g.manual_seed(seed)
    yield g
