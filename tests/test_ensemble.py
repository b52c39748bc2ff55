"""``metric_ens``: its members are the models trained alone, and their scores meet fairly.

The generic contract (fit, adapt, score, save/load, the AUPRC floor) is in
``tests/test_models.py``, which runs every registered method; these tests pin what is
particular to the ensemble.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_data import make_pool, split_held_out
from metaad.device import seed_everything
from metaad.errors import ConfigError, UnknownMethodError
from metaad.models.base import FitConfig
from metaad.models.registry import create, family_of, load_detector

CFG = FitConfig(steps=6, meta_batch=2, shots=(1, 5), n_support_normal=20, val_every=3)
MEMBER_HP = {"proto": {"memory": 16}, "deviation": {"memory": 16, "k_nn": 3}}


@pytest.fixture(scope="module")
def pools():
    pool = make_pool(seed=0)
    train, test = split_held_out(pool, ("d",))
    return train, test


def _task(test, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    normals = np.flatnonzero(test.y == 0)
    anomalies = np.flatnonzero(test.y == 1)
    n_sup = rng.choice(normals, 20, replace=False)
    a_sup = rng.choice(anomalies, k, replace=False)
    rest_n = np.setdiff1d(normals, n_sup)[:200]
    rest_a = np.setdiff1d(anomalies, a_sup)[:20]
    sup = np.concatenate([a_sup, n_sup])
    query = np.concatenate([rest_n, rest_a])
    return test.X[sup], test.y[sup], test.X[query]


def _alone(name: str, train, seed: int):
    """A member trained on its own, the way ``stages.train_method`` trains it."""
    seed_everything(seed)
    det = create(name, train.input_shape, **{**MEMBER_HP[name], "seed": seed})
    det.fit(train, CFG)
    return det


def test_the_ensemble_is_the_mean_of_its_members_standardised_on_the_support_normals(
    pools,
) -> None:
    """The members equal the learners trained alone (same seed, same settings), and a row's
    score is the mean over members of (score - mean) / std over the support normals."""
    train, test = pools
    seed_everything(3)
    ens = create(
        "metric_ens", train.input_shape, members=["proto", "deviation"],
        member_hparams=MEMBER_HP, seed=3,
    )  # fmt: skip
    hist = ens.fit(train, CFG)
    alone = {m: _alone(m, train, 3) for m in ("proto", "deviation")}
    for k in (0, 1, 5):
        xs, ys, xq = _task(test, k, seed=k)
        got = ens.adapt(xs, ys).score(xq)
        want = np.zeros(len(xq))
        for det in alone.values():
            adapted = det.adapt(xs, ys)
            ref = adapted.score(xs[ys == 0]).astype(np.float64)
            want += (adapted.score(xq) - ref.mean()) / ref.std()
        np.testing.assert_allclose(got, want / 2, rtol=1e-5, atol=1e-6)
        # not a trivial identity: the two members' raw scales differ
        s_p = alone["proto"].adapt(xs, ys).score(xq)
        s_d = alone["deviation"].adapt(xs, ys).score(xq)
        assert not np.allclose(got, (s_p + s_d) / 2)
    # the history keeps each member's curve and their mean under the plain key
    steps, loss = hist.series("loss")
    _, lp = hist.series("proto.loss")
    _, ld = hist.series("deviation.loss")
    assert len(steps) == len(lp) == len(ld) > 0
    np.testing.assert_allclose(loss, (np.array(lp) + np.array(ld)) / 2)


def test_a_one_member_ensemble_ranks_rows_as_its_member(pools) -> None:
    train, test = pools
    seed_everything(1)
    ens = create(
        "metric_ens", train.input_shape, members=["proto"],
        member_hparams={"proto": MEMBER_HP["proto"]}, seed=1,
    )  # fmt: skip
    ens.fit(train, CFG)
    det = _alone("proto", train, 1)
    xs, ys, xq = _task(test, 5)
    a, b = ens.adapt(xs, ys).score(xq), det.adapt(xs, ys).score(xq)
    np.testing.assert_array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable"))


def test_it_counts_as_a_meta_learner_and_refuses_bad_members_by_name(pools) -> None:
    train, _ = pools
    shape = train.input_shape
    assert family_of("metric_ens") == "metric"
    with pytest.raises(ConfigError, match="member 'lr_sup' is a baseline"):
        create("metric_ens", shape, members=["proto", "lr_sup"])
    with pytest.raises(ConfigError, match="is the ensemble itself"):
        create("metric_ens", shape, members=["metric_ens"])
    with pytest.raises(ConfigError, match=r"more than once: \['proto'\]"):
        create("metric_ens", shape, members=["proto", "proto"])
    with pytest.raises(ConfigError, match=r"got the string 'proto' \(write \[proto\]\)"):
        create("metric_ens", shape, members="proto")
    with pytest.raises(ConfigError, match="values must be mappings"):
        create("metric_ens", shape, members=["proto"], member_hparams={"proto": 512})
    with pytest.raises(ConfigError, match="at least one"):
        create("metric_ens", shape, members=[])
    with pytest.raises(UnknownMethodError, match=r"protoo.*valid methods"):
        create("metric_ens", shape, members=["protoo"])
    with pytest.raises(ConfigError, match=r"member_hparams for \['triplet'\]"):
        create("metric_ens", shape, members=["proto"], member_hparams={"triplet": {}})
    with pytest.raises(ConfigError, match=r"member_hparams.proto.seed"):
        create("metric_ens", shape, members=["proto"], member_hparams={"proto": {"seed": 2}})
    with pytest.raises(ConfigError, match=r"'proto'.*memory_select"):
        create(
            "metric_ens", shape, members=["proto"],
            member_hparams={"proto": {"memory_select": "best"}},
        )  # fmt: skip
    with pytest.raises(ConfigError, match="hooks"):
        create("metric_ens", shape, members=["proto"]).fit(train, CFG, hooks=object())


def test_saved_ensemble_reloads_and_a_missing_member_is_named(pools, tmp_path) -> None:
    train, test = pools
    ens = create(
        "metric_ens", train.input_shape, members=["proto", "deviation"], member_hparams=MEMBER_HP
    )
    ens.fit(train, CFG)
    ens.save(tmp_path / "ens")
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["name"] == "metric_ens" and cfg["hparams"]["members"] == ["proto", "deviation"]
    again = load_detector(tmp_path / "ens")
    xs, ys, xq = _task(test, 5)
    np.testing.assert_array_equal(ens.adapt(xs, ys).score(xq), again.adapt(xs, ys).score(xq))
    # a member's tensors under another member's name, then gone: refused, naming it
    path = tmp_path / "ens" / "weights.pt"
    state = torch.load(path, weights_only=True)
    assert {k.split("/", 1)[0] for k in state} == {"0.proto", "1.deviation"}
    torch.save({k.replace("1.deviation/", "1.triplet/"): v for k, v in state.items()}, path)
    with pytest.raises(ConfigError, match=r"member 1 \('deviation'\) has no weights.*1\.triplet"):
        load_detector(tmp_path / "ens")
    torch.save({k: v for k, v in state.items() if k.startswith("0.")}, path)
    with pytest.raises(ConfigError, match=r"member 1 \('deviation'\) has no weights"):
        load_detector(tmp_path / "ens")
