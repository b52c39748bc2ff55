"""Every detector, one contract: fit on meta-train types, adapt, score unseen types.

The data is the built-in synthetic default (card transactions) through the real stages,
small enough for CPU CI. Floors are per family and well below what each method reaches
with these tiny settings (recorded in the README), but far above chance (0.05).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metaad import stages
from metaad.config import load_params
from metaad.evaluation.runner import evaluate_detector
from metaad.models.registry import create, family_of, list_methods, load_detector

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "ingest.n_rows": 30000,
    "episodes.shots": [0, 5],
    "episodes.n_episodes": 3,
    "episodes.n_query_normal": 300,
    "train.steps": 150,
    "train.val_every": 50,
    "train.meta_batch": 8,
}
#: Chance is 0.05 (5% contamination). Unsupervised baselines cannot use the support.
FLOORS = {"metric": 0.45, "maml": 0.35, "baseline": 0.12}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    params = load_params(ROOT / "params.yaml", TINY)
    stages.ingest(params, root)
    return params, stages.build_episodes(params, root)


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_method_detects_unseen_types(method, prepared, tmp_path) -> None:
    params, prep = prepared
    torch.manual_seed(0)
    det, hist, _ = stages.train_method(params, prep, method, hparams={})
    test = prep.pools["test"]
    per = evaluate_detector(det, test, prep.episodes, method=method)
    k5 = per[per.shots == 5].groupby("type").auprc.mean().mean()
    assert k5 > FLOORS[family_of(method)], f"{method}: macro AUPRC@5 {k5:.3f}"
    assert per.auprc.notna().all() and len(per) == len(prep.episodes)
    ep = prep.episodes[0]
    scores = det.adapt(test.X[ep.support_idx], ep.support_y).score(test.X[ep.query_idx])
    assert scores.shape == (len(ep.query_idx),) and np.isfinite(scores).all()
    if det.persistable:
        det.save(tmp_path / "det")
        again = load_detector(tmp_path / "det")
        for ep in list(prep.episodes)[:2]:
            a = det.adapt(test.X[ep.support_idx], ep.support_y).score(test.X[ep.query_idx])
            b = again.adapt(test.X[ep.support_idx], ep.support_y).score(test.X[ep.query_idx])
            np.testing.assert_array_equal(a, b)
    if family_of(method) != "baseline":
        _steps, losses = hist.series("loss")
        assert np.mean(losses[-20:]) < np.mean(losses[:20]), "meta-training loss did not fall"


def test_unknown_method_lists_valid_names() -> None:
    from metaad.errors import UnknownMethodError

    with pytest.raises(UnknownMethodError, match=r"valid methods: .*proto"):
        create("protonet9000", (4,))


@pytest.mark.parametrize("method", ["proto", "maml"])
def test_bad_inputs_raise_clear_errors(method, prepared) -> None:
    _params, prep = prepared
    det = create(method, prep.pools["train"].input_shape)
    d = prep.pools["train"].input_shape[0]
    ok_x = np.zeros((6, d), np.float32)
    ok_y = np.array([1, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        det.adapt(np.zeros((6, d + 1), np.float32), ok_y)
    with pytest.raises(ValueError, match="NaN"):
        det.adapt(np.where(np.eye(6, d) > 0, np.nan, ok_x).astype(np.float32), ok_y)
    with pytest.raises(ValueError, match="normal"):
        det.adapt(ok_x, np.ones(6, np.int64))
    from metaad.errors import ConfigError

    with pytest.raises(ConfigError):
        create(method, prep.pools["train"].input_shape, hidden="wide")


def test_a_small_val_pool_still_gives_the_metric_learner_early_stopping() -> None:
    """A val pool with fewer than 200 query normals (a user's small table) validates with
    the normals it has instead of training without early stopping."""
    from helpers_data import make_pool
    from metaad.models.base import FitConfig

    pool = make_pool(seed=0)
    val = make_pool(n_normal=120, types=("e",), n_per_type=60, seed=1)
    det = create("proto", pool.input_shape)
    cfg = FitConfig(steps=4, meta_batch=2, shots=(1, 5), n_support_normal=20, val_every=2)
    steps, vals = det.fit(pool, cfg, val=val).series("val_auprc")
    assert steps == [2, 4] and all(0.0 <= v <= 1.0 for v in vals)


def test_coreset_memory_covers_a_rare_normal_mode_that_a_random_sample_misses() -> None:
    """``memory_select="coreset"`` keeps every mode of the normals in the bank.

    990 normals in one tight cluster and 10 in a far one: a random 16-row bank misses the
    rare mode most of the time (P = 0.85), so its rows look anomalous to the k-NN term; the
    greedy k-center cover always holds one, and its cover radius is smaller.
    """
    from helpers_data import make_pool
    from metaad.errors import ConfigError
    from metaad.models.base import FitConfig
    from metaad.models.metric import coreset_indices

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (990, 4)), rng.normal(8, 0.1, (10, 4))]).astype("f4")
    core = coreset_indices(X, 16, np.random.default_rng(1))
    rand = np.random.default_rng(1).choice(len(X), 16, replace=False)
    assert len(set(core.tolist())) == 16 and (core >= 990).any() and not (rand >= 990).any()

    def radius(idx: np.ndarray) -> float:
        return float(((X[:, None] - X[idx][None]) ** 2).sum(-1).min(1).max())

    assert radius(core) < radius(rand) / 10
    # duplicates: a pool of 3 distinct rows asked for 5 picks each distinct row first
    dup = np.repeat(np.eye(3, dtype="f4"), 4, axis=0)
    assert {tuple(r) for r in dup[coreset_indices(dup, 5, rng)[:3]]} == {
        tuple(r) for r in np.eye(3)
    }
    # fewer rows than asked: all of them; and a big pool covers a random candidate subset
    np.testing.assert_array_equal(coreset_indices(X[:10], 16, rng), np.arange(10))
    big = coreset_indices(X, 8, rng, max_candidates=100)
    assert len(big) == 8 and len(set(big.tolist())) == 8

    # the learner fills its bank with the cover (and says which rows are allowed)
    pool = make_pool(seed=0)
    det = create("proto", pool.input_shape, memory=8, memory_select="coreset")
    det.fit(pool, FitConfig(steps=2, meta_batch=2, shots=(1, 5), n_support_normal=20))
    normals = pool.X[pool.normal_idx]
    mem = det.net.memory.numpy()
    assert all((np.abs(normals - m).max(1) == 0).any() for m in mem)
    assert len({tuple(m) for m in mem}) == 8
    with pytest.raises(ConfigError, match="memory_select"):
        create("proto", pool.input_shape, memory_select="kmeans")
