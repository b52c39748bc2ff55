"""Scoring several adapted states of one metric learner at once (the serving path)."""

from __future__ import annotations

import numpy as np
import pytest

from metaad.models.metric import MetricLearner, score_many


def test_score_many_equals_scoring_each_state() -> None:
    rng = np.random.default_rng(0)
    det = MetricLearner((7,), memory=16)
    det.net.memory.normal_()
    det.net.memory_filled.fill_(True)
    normals = rng.normal(size=(30, 7)).astype(np.float32)
    X = rng.normal(size=(5000, 7)).astype(np.float32)
    profile = det.adapt(normals, np.zeros(30, np.int64))
    states = [profile]
    for shift in (2.0, -3.0):  # two "types" on the same normals: the k-NN is shared
        anomalies = rng.normal(loc=shift, size=(4, 7)).astype(np.float32)
        states.append(
            det.adapt(np.r_[anomalies, normals], np.r_[np.ones(4), np.zeros(30)].astype(np.int64))
        )
    other = rng.normal(size=(20, 7)).astype(np.float32)  # different normals: its own k-NN
    states.append(det.adapt(other, np.zeros(20, np.int64)))
    together = score_many(states, X, chunk=1000)
    assert together.shape == (4, 5000)
    for row, st in zip(together, states, strict=True):
        np.testing.assert_allclose(row, st.score(X), rtol=1e-6, atol=1e-6)
    assert not np.allclose(together[0], together[3])  # the distinct support was not shared


def test_score_many_refuses_states_of_different_models() -> None:
    a, b = MetricLearner((3,), memory=0), MetricLearner((3,), memory=0)
    X = np.zeros((5, 3), np.float32)
    y = np.zeros(5, np.int64)
    with pytest.raises(ValueError, match="one model"):
        score_many([a.adapt(X, y), b.adapt(X, y)], X)
    assert score_many([], X).shape == (0, 5)
