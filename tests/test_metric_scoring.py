"""Scoring several adapted states of one metric learner at once (the serving path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaad.models.metric import MetricLearner, score_many


@pytest.mark.parametrize(
    "terms", [{}, {"raw_proto": True}, {"raw_knn": True}, {"raw_knn": True, "task_norm": 0.1}]
)
def test_score_many_equals_scoring_each_state(terms: dict) -> None:
    rng = np.random.default_rng(0)
    det = MetricLearner((7,), memory=16, **terms)
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


@pytest.mark.parametrize("k_nn", [0, 1, 5])
@pytest.mark.parametrize("shots", [0, 4])
@pytest.mark.parametrize("shape", [(7,), (6, 3)])
@pytest.mark.parametrize("raw_proto", [False, True])
def test_folded_scoring_equals_the_training_logit(
    k_nn: int, shots: int, shape, raw_proto: bool
) -> None:
    """Scoring folds the logit into one matrix product; it must stay the training logit
    (every term: k-NN or prototype, anomaly prototype, prior, both heads, raw prototypes,
    scalings)."""
    torch.manual_seed(k_nn + shots)
    rng = np.random.default_rng(1)
    det = MetricLearner(shape, memory=16, k_nn=k_nn, raw_proto=raw_proto)
    with torch.no_grad():  # move every learned scalar off its initial value
        for p in det.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        det.net.memory.normal_()
    det.net.memory_filled.fill_(True)
    normals = rng.normal(size=(30, *shape)).astype(np.float32)
    anomalies = rng.normal(loc=1.5, size=(shots, *shape)).astype(np.float32)
    y = np.r_[np.ones(shots), np.zeros(30)].astype(np.int64)
    adapted = det.adapt(np.r_[anomalies, normals], y)
    X = rng.normal(scale=1.5, size=(3000, *shape)).astype(np.float32)
    with torch.inference_mode():
        want = det.core.logit(adapted.state, torch.as_tensor(X)[None])[0].double().numpy()
    got = adapted.score(X, chunk=700)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_unfolded_settings_still_score() -> None:
    """``anomaly_agg="min"`` and the global centre take the general path."""
    rng = np.random.default_rng(2)
    det = MetricLearner((5,), memory=0, anomaly_agg="min", global_center=True)
    Xs = rng.normal(size=(23, 5)).astype(np.float32)
    adapted = det.adapt(Xs, np.r_[np.ones(3), np.zeros(20)].astype(np.int64))
    X = rng.normal(size=(100, 5)).astype(np.float32)
    with torch.inference_mode():
        want = det.core.logit(adapted.state, torch.as_tensor(X)[None])[0].double().numpy()
    np.testing.assert_allclose(adapted.score(X), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("m", "k"), [(1, 1), (7, 3), (50, 5), (178, 5), (6, 6)])
def test_kmin_mean_kernel_equals_topk(m: int, k: int) -> None:
    """The numba k-NN reduction is the top-k mean, ties and whole-row k included."""
    from metaad.models._kernels import kmin_mean, unrolled

    rng = np.random.default_rng(m)
    PT = rng.normal(size=(m + 4, 300)).astype(np.float32)  # (normals, queries)
    PT[2 : 2 + m, :50] = np.round(PT[2 : 2 + m, :50])  # many ties
    block = torch.from_numpy(PT[2 : 2 + m])
    want = block.topk(k, dim=0, largest=False).values.mean(0).numpy()
    np.testing.assert_allclose(kmin_mean(PT, 2, 2 + m, k), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unrolled(k)(PT, 2, 2 + m), want, rtol=1e-6, atol=1e-6)


def _two_type_pool(rng: np.random.Generator, d: int = 6):
    from metaad.episodes.pool import Pool

    X = np.r_[
        rng.normal(size=(600, d)),
        rng.normal(loc=2.5, size=(80, d)),
        rng.normal(loc=-2.5, size=(80, d)),
    ].astype(np.float32)
    y = np.r_[np.zeros(600), np.ones(160)].astype(np.int64)
    t = np.array(["normal"] * 600 + ["up"] * 80 + ["down"] * 80)
    return Pool(X, y, t, ())


def test_raw_prototype_term_is_trained_and_scored() -> None:
    """``raw_proto``: the plain raw-feature prototypes enter the logit with a learned weight
    (the gradient reaches it), and only when the support has anomalies."""
    from metaad.models.base import FitConfig

    rng = np.random.default_rng(3)
    pool = _two_type_pool(rng)
    det = MetricLearner((6,), memory=8, raw_proto=True)
    before = det.net.raw_proto_w.detach().clone()
    cfg = FitConfig(steps=15, meta_batch=4, shots=(1, 5), n_query_normal=32, n_query_anomaly=8)
    det.fit(pool, cfg)
    assert not torch.equal(before, det.net.raw_proto_w.detach())
    normals = rng.normal(size=(30, 6)).astype(np.float32)
    anomalies = rng.normal(loc=2.5, size=(3, 6)).astype(np.float32)
    y = np.r_[np.ones(3), np.zeros(30)].astype(np.int64)
    with_k = det.adapt(np.r_[anomalies, normals], y)
    zero_shot = det.adapt(normals, np.zeros(30, np.int64))
    assert with_k.state.proto_n is not None and zero_shot.state.proto_n is None
    X = rng.normal(size=(200, 6)).astype(np.float32)
    det.core.raw_proto = False  # the same weights and support without the term
    plain = det.adapt(np.r_[anomalies, normals], y).score(X)
    det.core.raw_proto = True
    assert not np.allclose(with_k.score(X), plain)


def test_weights_saved_before_the_raw_prototype_term_still_load(tmp_path) -> None:
    det = MetricLearner((5,), memory=4)
    det.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    del state["raw_proto_w"]  # what an older bundle holds
    torch.save(state, tmp_path / "m" / "weights.pt")
    old = MetricLearner((5,), memory=4)
    old.load_weights(tmp_path / "m")  # the term is off: its weight is not needed
    from metaad.errors import ConfigError

    with pytest.raises(ConfigError, match="raw_proto_w"):
        MetricLearner((5,), memory=4, raw_proto=True).load_weights(tmp_path / "m")


@pytest.mark.parametrize("shape", [(7,), (6, 3)])
def test_task_norm_scores_do_not_move_with_a_task_offset(shape) -> None:
    """``task_norm``: every row of a task is measured in its support normals' frame, so a
    per-feature offset of the whole task (another run of the same plant, another operating
    point) leaves its scores unchanged; without it they move. (Not with a memory bank: its
    meta-train rows do not move with the task.) With a bank, several states still score
    together as one by one."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    normals = rng.normal(size=(40, *shape)).astype(np.float32)
    anomalies = rng.normal(loc=2.0, size=(4, *shape)).astype(np.float32)
    y = np.r_[np.ones(4), np.zeros(40)].astype(np.int64)
    X = rng.normal(scale=1.5, size=(300, *shape)).astype(np.float32)
    offset = rng.normal(scale=3.0, size=shape[-1:]).astype(np.float32)  # per feature/channel
    scores = {}
    for tn in (0.0, 0.1):
        det = MetricLearner(shape, memory=0, task_norm=tn)
        here = det.adapt(np.r_[anomalies, normals], y)
        moved = det.adapt(np.r_[anomalies, normals] + offset, y)
        scores[tn] = (here.score(X), moved.score(X + offset))
        if tn > 0:
            det = MetricLearner(shape, memory=16, task_norm=tn)
            det.net.memory.normal_()
            det.net.memory_filled.fill_(True)
            here = det.adapt(np.r_[anomalies, normals], y)
            moved = det.adapt(np.r_[anomalies, normals] + offset, y)
            assert here.state.norm_mu is not None
            profile = det.adapt(normals, np.zeros(40, np.int64))
            together = score_many([profile, here, moved], X, chunk=128)
            for row, st in zip(together, [profile, here, moved], strict=True):
                np.testing.assert_allclose(row, st.score(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(*scores[0.1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(*scores[0.0], atol=1e-2)


def test_task_norm_trains_saves_and_refuses_bad_values(tmp_path) -> None:
    from metaad.errors import ConfigError
    from metaad.models.base import FitConfig
    from metaad.models.registry import load_detector

    with pytest.raises(ConfigError, match="task_norm"):
        MetricLearner((3,), task_norm=-0.1)
    with pytest.raises(ConfigError, match="task_norm"):
        MetricLearner((3,), task_norm=float("nan"))
    rng = np.random.default_rng(6)
    det = MetricLearner((6,), memory=8, task_norm=0.1, seed=1)
    det.fit(_two_type_pool(rng), FitConfig(steps=12, meta_batch=4, shots=(1, 5)))
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.core.task_norm == pytest.approx(0.1)
    normals = rng.normal(size=(30, 6)).astype(np.float32)
    anomalies = rng.normal(loc=2.5, size=(3, 6)).astype(np.float32)
    y = np.r_[np.ones(3), np.zeros(30)].astype(np.int64)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    Xs = np.r_[anomalies, normals]
    np.testing.assert_allclose(back.adapt(Xs, y).score(X), det.adapt(Xs, y).score(X), atol=1e-6)


@pytest.mark.parametrize("shape", [(7,), (6, 3)])
@pytest.mark.parametrize("task_norm", [0.0, 0.1])
def test_whole_window_knn_term_is_the_knn_baselines_distance(shape, task_norm: float) -> None:
    """``raw_knn``: the term is ``w * gain * (d - mu)``, ``d`` the mean Euclidean distance of
    the flattened row to its 5 nearest normals (support normals plus the bank, as sklearn's
    k-NN finds them), ``mu`` and ``sd`` the mean and spread of the support normals' own
    leave-one-out distances, ``gain`` the spread of the rest of the logit on the support
    normals over ``sd``. It is in the logit at every K, and scoring in chunks gives the
    training logit."""
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    det = MetricLearner(shape, memory=16, raw_knn=True, task_norm=task_norm)
    with torch.no_grad():
        for p in det.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        det.net.memory.normal_()
    det.net.memory_filled.fill_(True)
    normals = rng.normal(size=(30, *shape)).astype(np.float32)
    X = rng.normal(scale=1.5, size=(400, *shape)).astype(np.float32)
    mem = det.net.memory.numpy()
    if task_norm > 0:  # every row in the support normals' frame (per feature / channel)
        axes = tuple(range(normals.ndim - 1))
        mu, sd = normals.mean(axes), np.sqrt(normals.var(axes) + task_norm**2)
        frame = lambda a: np.clip((a - mu) / sd, -50, 50)  # noqa: E731
    else:
        frame = lambda a: a  # noqa: E731
    ref = np.r_[frame(normals).reshape(30, -1), frame(mem).reshape(16, -1)]
    index = NearestNeighbors(n_neighbors=5).fit(ref)
    d = index.kneighbors(frame(X).reshape(len(X), -1))[0].mean(1)
    loo = index.kneighbors(ref[:30], n_neighbors=6)[0][:, 1:].mean(1)
    w = float(torch.nn.functional.softplus(det.net.raw_knn_w.detach()))
    for shots in (0, 3):
        anomalies = rng.normal(loc=2.0, size=(shots, *shape)).astype(np.float32)
        Xs = np.r_[anomalies, normals]
        y = np.r_[np.ones(shots), np.zeros(30)].astype(np.int64)
        adapted = det.adapt(Xs, y)
        det.core.raw_knn = False  # the same weights and support without the term
        plain = det.adapt(Xs, y)
        det.core.raw_knn = True
        gain = plain.score(normals).std() / loo.std()
        assert float(adapted.state.knn_gain) == pytest.approx(gain, rel=1e-4)
        assert float(adapted.state.knn_mu) == pytest.approx(loo.mean(), rel=1e-5)
        term = w * gain * (d - loo.mean())
        got = adapted.score(X, chunk=150)
        np.testing.assert_allclose(got - plain.score(X), term, rtol=1e-4, atol=1e-4)
        with torch.inference_mode():
            want = det.core.logit(adapted.state, torch.as_tensor(X)[None])[0].double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_whole_window_knn_term_trains_saves_and_old_weights_load(tmp_path) -> None:
    """Only the term's weight is learned (the gradient reaches it); it saves with the model,
    and weights saved before the term existed load when it is off and are refused by name
    when it is on."""
    from metaad.errors import ConfigError
    from metaad.models.base import FitConfig
    from metaad.models.registry import load_detector

    rng = np.random.default_rng(8)
    det = MetricLearner((6,), memory=8, raw_knn=True, seed=2)
    before = det.net.raw_knn_w.detach().clone()
    det.fit(_two_type_pool(rng), FitConfig(steps=15, meta_batch=4, shots=(0, 1, 5)))
    assert not torch.equal(before, det.net.raw_knn_w.detach())
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.core.raw_knn
    Xs = rng.normal(size=(30, 6)).astype(np.float32)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    y = np.zeros(30, np.int64)
    np.testing.assert_allclose(back.adapt(Xs, y).score(X), det.adapt(Xs, y).score(X), atol=1e-6)
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    del state["raw_knn_w"]  # what an older bundle holds
    torch.save(state, tmp_path / "m" / "weights.pt")
    MetricLearner((6,), memory=8).load_weights(tmp_path / "m")
    with pytest.raises(ConfigError, match="raw_knn_w"):
        MetricLearner((6,), memory=8, raw_knn=True).load_weights(tmp_path / "m")
