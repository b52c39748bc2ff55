"""Shared test setup: offline environment, one thread, small shared fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from metaad.config import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
