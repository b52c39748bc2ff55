"""Distributed meta-training: torchrun with 2 CPU processes on gloo, checkpoints, resume.

In-process checks (fast): the training hooks change nothing when they are off, a resumed
fit continues exactly where its checkpoint left it (weights and learning curve equal to an
uninterrupted fit), and the batch shards cover the batch once.

End to end (``torchrun --standalone --nproc-per-node 2 -m metaad.distributed`` through
``metaad train --distributed``): a tiny project is trained in one process and, from the
same seed, by two gloo ranks. The DDP run is killed (its whole process group, SIGKILL)
once its first checkpoint is on disk and before it finishes, then started again: it must
say it resumed from the newest checkpoint on disk, finish, and reach an unseen-type AUPRC
within 0.02 of the single-process run (the ranks train on slices of the same global
batch and all-reduce their gradients, so the curves agree closely). Rank 0 logged the
learning curve to MLflow, one metric per step, in one run continued across the restart.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers_data import make_pool
from helpers_procs import kill_tree, start, stop, tail
from metaad.models.base import FitConfig
from metaad.train_hooks import TrainHooks, shard_bounds

STEPS = 150
EVERY = 30


def _fit(
    method: str, hooks: TrainHooks | None, steps: int = 24
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    from metaad.models.registry import create

    torch.manual_seed(0)
    pool, val = make_pool(seed=0), make_pool(types=("e",), seed=1)
    det = create(method, pool.input_shape, seed=0, hidden=[16], out_dim=8)
    cfg = FitConfig(steps=steps, meta_batch=4, shots=(1, 5), val_every=8, device="cpu")
    kwargs = {} if hooks is None else {"hooks": hooks}
    hist = det.fit(pool, cfg, val=val, **kwargs)
    state = det.state_tensors() if hasattr(det, "state_tensors") else det.net.state_dict()
    return {k: v.clone() for k, v in state.items()}, hist.records


@pytest.mark.parametrize("method", ["proto", "maml"])
def test_resume_continues_exactly(method: str) -> None:
    plain_w, plain_h = _fit(method, None)
    saved: dict[int, bytes] = {}

    def keep(state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)  # what a checkpoint file holds
        saved[int(state["step"])] = buf.getvalue()

    hooked_w, hooked_h = _fit(method, TrainHooks(checkpoint_every=8, write_checkpoint=keep))
    assert sorted(saved) == [8, 16, 24]
    # hooks that only checkpoint change nothing
    assert hooked_h == plain_h
    assert all(torch.equal(plain_w[k], hooked_w[k]) for k in plain_w)
    state = torch.load(io.BytesIO(saved[16]), weights_only=True)
    resumed_w, resumed_h = _fit(method, TrainHooks(resume=state))
    assert resumed_h == plain_h  # steps 1-16 restored, 17-24 recomputed identically
    assert all(torch.equal(plain_w[k], resumed_w[k]) for k in plain_w)


def test_shards_cover_the_batch_once() -> None:
    for n, world in ((16, 2), (16, 3), (5, 4), (4, 4)):
        spans = [shard_bounds(n, r, world) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert max(h - lo for lo, h in spans) - min(h - lo for lo, h in spans) <= 1
    with pytest.raises(ValueError):
        shard_bounds(4, 2, 2)
    batch = torch.arange(10).reshape(5, 2)
    (part,) = TrainHooks(shard=(1, 2)).take(batch)
    assert part.tolist() == [[6, 7], [8, 9]]


# -- end to end ---------------------------------------------------------------------------------
def _macro_auprc(root: Path, params: Any) -> float:
    from metaad import stages
    from metaad.bundle import ModelBundle
    from metaad.evaluation.runner import evaluate_detector

    prep = stages.load_prepared(params, root)
    det = ModelBundle.load(stages.Layout(root).model).detector
    per = evaluate_detector(det, prep.pools["test"], prep.episodes, method="m")
    return float(per.groupby(["shots", "type"]).auprc.mean().mean())


def _checkpoints(root: Path) -> list[int]:
    d = root / "artifacts" / "checkpoints" / "proto"
    return sorted(int(f.stem.split("_")[1]) for f in d.glob("step_*.pt")) if d.exists() else []


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_single_process_and_resume(
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    child_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    from metaad import stages
    from metaad.config import load_params

    overrides = {**tiny_overrides, "train.steps": STEPS, "train.val_every": 50}
    single = make_project(tmp_path / "single")
    params = load_params(single / "params.yaml", overrides)
    stages.ingest(params, single)
    stages.build_episodes(params, single)
    ddp = tmp_path / "ddp"
    shutil.copytree(single, ddp)
    stages.train(params, single)
    single_auprc = _macro_auprc(single, params)

    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    cmd = ["metaad", "train", "--distributed", "--nproc-per-node", "2", "--no-progress",
           "--checkpoint-every", str(EVERY)]  # fmt: skip
    for kv in sets:
        cmd += ["--set", kv]
    env = child_env()

    # 1. start, and kill the whole group once the first checkpoint is written
    log1 = tmp_path / "ddp-killed.log"
    proc = start(cmd, cwd=ddp, env=env, log=log1)
    try:
        deadline = time.monotonic() + 300
        while not _checkpoints(ddp):
            if proc.poll() is not None:
                pytest.fail(f"DDP run exited {proc.returncode} early:\n{tail(log1)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after 300s:\n{tail(log1)}")
            time.sleep(0.05)
        kill_tree(proc)  # the launcher, torchrun and both ranks, as a crashed node would
    finally:
        stop(proc)
    on_disk = _checkpoints(ddp)
    assert on_disk and max(on_disk) < STEPS, f"not killed mid-run: checkpoints {on_disk}"
    assert not (ddp / "artifacts" / "model" / "ddp_run.json").exists()

    # 2. restart: it resumes from the newest checkpoint and finishes
    res = subprocess.run(cmd, cwd=ddp, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((ddp / "artifacts" / "model" / "ddp_run.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["resumed_from_step"] == max(on_disk)
    print(f"killed with checkpoints {on_disk}; resumed from step {summary['resumed_from_step']}")
    assert "resuming from checkpoint step" in res.stderr
    assert summary["checkpoints_written"][-1] == STEPS

    ddp_auprc = _macro_auprc(ddp, params)
    print(f"macro AUPRC on unseen types: single {single_auprc:.4f}, DDP {ddp_auprc:.4f}")
    assert abs(ddp_auprc - single_auprc) <= 0.02, (ddp_auprc, single_auprc)
    hist_single = json.loads((single / "artifacts" / "model" / "history.json").read_text())
    hist_ddp = json.loads((ddp / "artifacts" / "model" / "history.json").read_text())
    assert [r["step"] for r in hist_ddp] == [float(s) for s in range(1, STEPS + 1)]
    loss_s = np.array([r["loss"] for r in hist_single])
    loss_d = np.array([r["loss"] for r in hist_ddp])
    # the same global batches: the loss curves agree to float rounding at first
    np.testing.assert_allclose(loss_d[:10], loss_s[:10], rtol=1e-4)

    # rank 0's MLflow run: the whole curve, each step once, across the restart
    client = MlflowClient(f"sqlite:///{ddp / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ddp.resumed_from_step"] == str(max(on_disk))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    assert len(steps) <= STEPS + EVERY  # at most one checkpoint interval sent twice
