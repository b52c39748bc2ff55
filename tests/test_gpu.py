"""The CUDA paths: meta-training, scoring, checkpoints across devices.

CI has no GPU, so everything here but the first test is skipped there; ``bench/gpu_session.sh``
runs this file on a lent GPU (README, "GPU"). What a GPU changes, and so what is checked:

- ``device: auto`` must pick CUDA. The metric learners meta-train under bf16 autocast there
  (:func:`metaad.device.autocast`), the MAML family in fp32: every meta-learner must learn
  the unseen types as well as on CPU, on rows and on windows.
- Scoring is fp32 on both devices, so the same weights must give the same scores on CUDA
  and on CPU (to float32 rounding and reduction order), and a model trained on a GPU must
  load and serve on a machine without one (``load_detector(..., device="cpu")``).
- The vmapped second-order meta-gradient must equal the CPU one in fp32.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from helpers_data import split_held_out
from metaad.device import autocast, resolve_device
from metaad.episodes.pool import Pool
from metaad.episodes.sampler import sample_task_batch
from metaad.errors import ConfigError
from metaad.models.base import FitConfig
from metaad.models.maml import MAML_MODELS
from metaad.models.metric import METRIC_MODELS, MetricLearner, score_many
from metaad.models.registry import create, load_detector

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (bench/gpu_session.sh)")
META_LEARNERS = sorted([*METRIC_MODELS, *MAML_MODELS])
HELD_OUT = ["t6", "t7"]


def make_pool(seed: int = 0, n_types: int = 8, d: int = 16) -> Pool:
    """4000 normals N(0, I) and ``n_types`` blobs at distance 4 (two are held out)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_types, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    blobs = [4.0 * dirs[i] + rng.normal(size=(200, d)) for i in range(n_types)]
    X = np.concatenate([rng.normal(size=(4000, d)), *blobs]).astype(np.float32)
    y = np.r_[np.zeros(4000), np.ones(200 * n_types)].astype(np.int64)
    types = np.array(["normal"] * 4000 + [f"t{i}" for i in range(n_types) for _ in range(200)])
    return Pool(X, y, types)


@pytest.fixture(scope="module")
def pools() -> tuple[Pool, Pool]:
    pool = make_pool()
    return split_held_out(pool, HELD_OUT)


def episodes(pool: Pool, shots: int = 5, n: int = 6) -> list[tuple[np.ndarray, ...]]:
    """Support (K anomalies + 50 normals) and query (400 normals + 20 anomalies) per episode."""
    rng = np.random.default_rng(123)
    out = []
    for t in HELD_OUT:
        for _ in range(n):
            a = rng.choice(pool.type_index[t], shots + 20, replace=False)
            nn_ = rng.choice(pool.normal_idx, 450, replace=False)
            X_s = pool.X[np.r_[a[:shots], nn_[:50]]]
            y_s = np.r_[np.ones(shots), np.zeros(50)].astype(np.int64)
            X_q = pool.X[np.r_[nn_[50:], a[shots:]]]
            y_q = np.r_[np.zeros(400), np.ones(20)].astype(np.int64)
            out.append((X_s, y_s, X_q, y_q))
    return out


def test_asking_for_cuda_where_there_is_none_is_a_clear_error(tmp_path) -> None:
    """Runs on CPU too: ``device="cuda"`` without a GPU names the problem, before any load."""
    det = create("proto", (4,), memory=8)
    det.save(tmp_path / "det")
    back = load_detector(tmp_path / "det", device="cpu")
    assert back.device.type == "cpu"
    if HAS_CUDA:
        assert load_detector(tmp_path / "det", device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_detector(tmp_path / "det", device="cuda")


@needs_cuda
def test_auto_picks_cuda_and_autocasts_to_bf16() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    lin = torch.nn.Linear(8, 4).to(device)
    with autocast(device):
        out = lin(torch.randn(3, 8, device=device))
    assert out.dtype == torch.bfloat16
    with autocast(torch.device("cpu")):  # CPU stays fp32
        assert torch.nn.Linear(8, 4)(torch.randn(3, 8)).dtype == torch.float32


def _train_and_score(
    method: str, train: Pool, eps: list[tuple[np.ndarray, ...]], device: str
) -> tuple[Any, list[np.ndarray], float, float]:
    """Meta-train from the same initialisation and task stream on ``device``; score ``eps``."""
    torch.manual_seed(0)
    det = create(method, train.input_shape)
    cfg = FitConfig(steps=200, meta_batch=16, shots=(1, 5, 10), seed=0, device=device)
    t0 = time.perf_counter()
    hist = det.fit(train, cfg)
    secs = time.perf_counter() - t0
    _, losses = hist.series("loss")
    assert np.isfinite(losses).all(), f"{method} on {device}: non-finite loss"
    assert np.mean(losses[-20:]) < np.mean(losses[:20]), f"{method} on {device}: loss did not fall"
    scores = [det.adapt(X_s, y_s).score(X_q) for X_s, y_s, X_q, _ in eps]
    auprc = float(
        np.mean([average_precision_score(e[3], s) for e, s in zip(eps, scores, strict=True)])
    )
    return det, scores, auprc, secs


@needs_cuda
@pytest.mark.parametrize("method", META_LEARNERS)
def test_meta_training_on_cuda_learns_as_well_as_on_cpu_and_serves_on_cpu(
    method: str, pools: tuple[Pool, Pool], tmp_path
) -> None:
    """CUDA (bf16 autocast for the metric learners) against fp32 on CPU, from the same start
    and the same tasks.

    The two runs part only by rounding, so their held-out K=5 AUPRC must be close (0.1 on
    12 episodes; measured on the CPU here: ANIL 0.23, which adapts only its head, the MAML
    family 0.74-0.82, the metric learners 0.88-0.92).
    """
    train, test = pools
    eps = episodes(test)
    det, gpu, auprc_gpu, secs_gpu = _train_and_score(method, train, eps, "cuda")
    assert det.device.type == "cuda"
    _, _, auprc_cpu, secs_cpu = _train_and_score(method, train, eps, "cpu")
    print(
        f"\nGPU-vs-CPU {method}: held-out K=5 AUPRC cuda {auprc_gpu:.3f} "
        f"cpu/fp32 {auprc_cpu:.3f}; fit 200 steps {secs_gpu:.1f} s vs {secs_cpu:.1f} s"
    )
    assert auprc_gpu > auprc_cpu - 0.1, f"{method}: {auprc_gpu:.3f} on CUDA vs {auprc_cpu:.3f}"

    det.save(tmp_path / "det")
    on_cpu = load_detector(tmp_path / "det", device="cpu")
    on_gpu = load_detector(tmp_path / "det", device="cuda")
    assert on_cpu.device.type == "cpu" and on_gpu.device.type == "cuda"
    for (X_s, y_s, X_q, _), s in zip(eps[:4], gpu[:4], strict=True):
        c = on_cpu.adapt(X_s, y_s).score(X_q)
        g = on_gpu.adapt(X_s, y_s).score(X_q)
        np.testing.assert_allclose(g, s, rtol=1e-5, atol=1e-5)  # reloading changes nothing
        # fp32 on both devices: only rounding and reduction order differ
        np.testing.assert_allclose(c, s, rtol=2e-3, atol=2e-3)
        assert spearmanr(c, s).statistic > 0.999


@needs_cuda
@pytest.mark.parametrize("name", ["maml", "metasgd", "msl"])
def test_second_order_meta_gradient_on_cuda_equals_cpu(name: str, pools) -> None:
    train, _ = pools
    torch.manual_seed(0)
    det = MAML_MODELS[name](train.input_shape, hidden=(32, 32), out_dim=16)
    tb = sample_task_batch(
        train,
        np.random.default_rng(7),
        batch_size=8,
        shots=5,
        n_support_normal=20,
        n_query_normal=24,
        n_query_anomaly=8,
    )

    def grads(device: str) -> list[torch.Tensor]:
        det.to(device)
        X = torch.as_tensor(train.X, device=device)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=device)

        loss = det.meta_loss(
            X[t(tb.support_idx)],
            t(tb.support_y).float(),
            X[t(tb.query_idx)],
            t(tb.query_y).float(),
        )
        g = torch.autograd.grad(loss, det.meta_parameters())
        return [x.detach().cpu() for x in g]

    cpu, gpu = grads("cpu"), grads("cuda")
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
    assert any(float(a.abs().max()) > 0 for a in cpu)


@pytest.fixture(scope="module")
def window_pool() -> Pool:
    """Windows ``(n, 5, 6)``: normal noise and four types; ``drift`` is held out."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 5, 6)).astype(np.float32)
    X[800:900, 2, 0] += 5.0  # spikes
    X[900:1000, :, 1] += 1.5  # level shift
    X[1000:1100, :, 2] *= 3.0  # variance burst
    X[1100:, :, 3] += np.linspace(0, 4, 5, dtype=np.float32)  # drift (held out)
    y = np.r_[np.zeros(800), np.ones(400)].astype(np.int64)
    types = np.array(["normal"] * 800 + ["spike"] * 100 + ["shift"] * 100 + ["var"] * 100
                     + ["drift"] * 100)  # fmt: skip
    return Pool(X, y, types)


@needs_cuda
@pytest.mark.parametrize("method", META_LEARNERS)
def test_windows_train_on_cuda_through_the_tcn(method: str, window_pool: Pool) -> None:
    """Windows ``(n, T, d)`` go through the TCN's convolutions (cuDNN on a GPU).

    ANIL on windows once failed here under bf16 autocast (a bf16 input met an fp32 conv
    bias inside ``vmap``); the MAML family now meta-trains in fp32 on every device.
    """
    pool = window_pool
    train = pool.subset(np.flatnonzero(pool.types != "drift"))
    torch.manual_seed(0)
    det = create(method, pool.input_shape)
    hist = det.fit(train, FitConfig(steps=40, meta_batch=8, device="cuda"))
    assert np.isfinite(hist.series("loss")[1]).all()
    rng = np.random.default_rng(1)
    a = rng.choice(pool.type_index["drift"], 25, replace=False)
    n = rng.choice(pool.normal_idx, 450, replace=False)
    X = pool.X
    s = det.adapt(X[np.r_[a[:5], n[:50]]], np.r_[np.ones(5), np.zeros(50)]).score(
        X[np.r_[n[50:], a[5:]]]
    )
    assert np.isfinite(s).all() and s.shape == (420,)


@needs_cuda
def test_fused_scoring_on_cuda_equals_cpu() -> None:
    rng = np.random.default_rng(0)
    det = MetricLearner((7,), memory=64)
    det.net.memory.normal_()
    det.net.memory_filled.fill_(True)
    normals = rng.normal(size=(40, 7)).astype(np.float32)
    X = rng.normal(size=(100_000, 7)).astype(np.float32)
    supports = [(normals, np.zeros(40, np.int64))]
    for shift in (2.0, -3.0):
        an = rng.normal(loc=shift, size=(5, 7)).astype(np.float32)
        supports.append((np.r_[an, normals], np.r_[np.ones(5), np.zeros(40)].astype(np.int64)))
    det.to("cpu")
    cpu = score_many([det.adapt(*s) for s in supports], X)
    det.to("cuda")
    gpu = score_many([det.adapt(*s) for s in supports], X)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
