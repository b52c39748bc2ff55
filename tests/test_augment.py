"""Virtual anomaly types for meta-training (metaad.episodes.augment) and the batched heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaad.episodes.augment import virtual_types
from metaad.models.metric import MetricLearner


def _batch(B: int = 4, S: int = 12, Q: int = 20, d: int = 9, window: int | None = None):
    g = torch.Generator().manual_seed(0)
    shape = (window, d) if window else (d,)
    xs = torch.randn(B, S, *shape, generator=g)
    xq = torch.randn(B, Q, *shape, generator=g)
    ys = torch.zeros(B, S, dtype=torch.int64)
    ys[:, :3] = 1
    yq = torch.zeros(B, Q, dtype=torch.int64)
    yq[:, -4:] = 1
    return xs, ys, xq, yq


def test_only_anomalies_of_the_chosen_tasks_change() -> None:
    xs, ys, xq, yq = _batch()
    ns, nq = virtual_types(xs, ys, xq, yq, 2, torch.Generator().manual_seed(1))
    # inputs untouched (the function copies), normals and later tasks unchanged
    assert not torch.equal(ns, xs) and not torch.equal(nq, xq)
    assert torch.equal(ns[:, 3:], xs[:, 3:]) and torch.equal(nq[:, :-4], xq[:, :-4])
    assert torch.equal(ns[2:], xs[2:]) and torch.equal(nq[2:], xq[2:])
    for b in range(2):
        for new, x, y in ((ns, xs, ys), (nq, xq, yq)):
            normals = x[b][y[b] == 0]
            for row in new[b][y[b] == 1]:
                # each virtual anomaly is one of the task's normals plus a shift that is zero
                # outside the task's feature subset and at least `low * 0.7` inside it
                diff = row[None] - normals
                best = diff[(diff.abs() > 1e-6).sum(-1).argmin()]
                moved = best.abs() > 1e-6
                assert 1 <= int(moved.sum()) <= 3
                assert float(best[moved].abs().min()) >= 0.7 - 1e-5


def test_the_offset_is_shared_by_a_task_and_draws_are_reproducible() -> None:
    xs, ys, xq, yq = _batch()
    a = virtual_types(xs, ys, xq, yq, 4, torch.Generator().manual_seed(5))
    b = virtual_types(xs, ys, xq, yq, 4, torch.Generator().manual_seed(5))
    c = virtual_types(xs, ys, xq, yq, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_windows_are_shifted_over_every_time_step() -> None:
    xs, ys, xq, yq = _batch(window=5)
    ns, _ = virtual_types(xs, ys, xq, yq, 1, torch.Generator().manual_seed(2))
    normals = xs[0][ys[0] == 0]
    for row in ns[0][ys[0] == 1]:
        diffs = row[None] - normals  # (n, T, C)
        # the base normal: the one whose difference is constant over time
        spread = diffs.std(dim=1).sum(-1)
        base = int(spread.argmin())
        assert float(spread[base]) < 1e-5


def test_zero_tasks_is_the_identity_and_bad_ranges_are_refused() -> None:
    xs, ys, xq, yq = _batch()
    ns, nq = virtual_types(xs, ys, xq, yq, 0, torch.Generator())
    assert ns is xs and nq is xq
    with pytest.raises(ValueError, match="low"):
        virtual_types(xs, ys, xq, yq, 1, torch.Generator(), low=2.0, high=1.0)
    from metaad.errors import ConfigError

    with pytest.raises(ConfigError, match="synthetic_tasks"):
        MetricLearner((4,), synthetic_tasks=1.5)


def test_batched_heads_equal_separate_fits() -> None:
    det = MetricLearner((6,), memory=0)
    core = det.core
    g = torch.Generator().manual_seed(3)
    pos = [torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 4, generator=g)]
    neg = [torch.randn(2, 40, 9, generator=g), torch.randn(2, 40, 4, generator=g)]
    lams = [det.net.ridge_lam, det.net.raw_lam * 0 + 0.3]
    together = core._fit_heads(pos, neg, lams)
    for p, n, lam, w in zip(pos, neg, lams, together, strict=True):
        alone = core._fit_head(p, n, lam)
        assert w.shape == alone.shape
        np.testing.assert_allclose(w.detach().numpy(), alone.detach().numpy(), atol=1e-5)
