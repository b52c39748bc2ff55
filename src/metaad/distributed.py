"""Data-parallel meta-training under ``torchrun``: one process per GPU (or per CPU slot).

Run it with ``metaad train --distributed --nproc-per-node 4`` (which calls ``torchrun``),
or with ``torchrun`` directly (several machines: ``--nnodes``, ``--rdzv-endpoint``)::

    torchrun --standalone --nproc-per-node 4 -m metaad.distributed -S train.steps=3000

What each rank does (the loop itself is the meta-learner's own ``fit``, given
:class:`~metaad.train_hooks.TrainHooks`):

- it builds the same network from the same seed, and rank 0's initial weights are
  broadcast anyway, so every rank starts identical;
- every rank draws the same global batch of ``train.meta_batch`` tasks from the same
  stream (indices are cheap) and trains on its own contiguous slice of it, the way
  ``DistributedSampler`` shards one shared permutation: no task is seen by two ranks;
- after every backward pass the slices' gradients, weighted by their share of the batch,
  are summed across ranks with one all-reduce: every rank takes the single-process step,
  the weights stay identical across ranks, and the model does not depend on the number of
  processes (up to float rounding);
- every ``scale.checkpoint_every`` steps the whole training state is checkpointed: weights,
  optimiser, every rank's random streams, the step, the learning curve and the best
  validation weights. Rank 0 writes it (atomically: a killed run never leaves half a file);
- rank 0 alone logs the learning curve to MLflow and writes the model bundle, exactly as
  the single-process ``metaad train`` does.

A restarted run resumes from the newest checkpoint whose training inputs match (same
``train`` section, episodes and world size); its random streams continue where the
checkpoint left them, so a resumed run ends with the weights an uninterrupted one would
have. Backend: NCCL on CUDA, gloo on CPU (``scale.ddp_backend``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from metaad.config import Params, load_params, set_offline_env
from metaad.errors import ConfigError, MetaADError
from metaad.train_hooks import TrainHooks, shard_bounds

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
#: Checkpoints kept on disk (the newest ones); older ones are deleted after each write.
KEEP_CHECKPOINTS = 2
RUN_RECORD = "ddp_run.json"
#: The parts of a training snapshot that differ from rank to rank.
RANK_STREAMS = ("rng", "torch_rng", "generators")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the group that ``torchrun`` started."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw is not None else default
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


def init_process_group(backend: str = "auto", device: str = "auto") -> Ranks:
    """Join the group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    ``backend="auto"`` is NCCL when this process trains on CUDA and gloo otherwise. Run
    without torchrun, it forms a group of one (handy for checkpoint/resume on one device).
    """
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    if world == 1 and "MASTER_ADDR" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    dev = f"cuda:{local}" if cuda else "cpu"
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ConfigError("scale.ddp_backend is 'nccl' but this process has no CUDA device")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Ranks(rank, world, local, dev, backend)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the collective operations the training loop calls ---------------------------------------
def broadcast_parameters(params: Sequence[torch.Tensor]) -> None:
    """Rank 0's values into every rank's tensors (in place), so all ranks start identical."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def combine_gradients(params: Sequence[torch.Tensor], weight: float) -> None:
    """Sum ``weight`` times each rank's gradients across ranks, with one all-reduce.

    Rank r's loss is the mean over its slice of the batch; with ``weight`` = its share of
    the batch (slice size / batch size) the sum is the mean over the whole batch, which is
    the single-process gradient even when the slices differ in size. A parameter without
    a gradient counts as zero on that rank; one without a gradient on every rank keeps
    ``grad=None``, so the optimiser skips it as it would in one process.
    """
    if dist.get_world_size() == 1:
        return
    ref = params[0]
    has = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    flat = torch.cat([flat * weight, has])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, n_has in zip(params, flat[-len(params) :].tolist(), strict=True):
        n = p.numel()
        if n_has > 0:
            p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def combine_loss(loss: torch.Tensor, weight: float) -> float:
    """The whole batch's mean loss from each rank's slice mean (for the learning curve)."""
    value = (loss.detach().float() * weight).reshape(1)
    if dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return float(value)


# -- checkpoints -----------------------------------------------------------------------------
def checkpoint_dir(params: Params, root: Path) -> Path:
    return Path(root) / "artifacts" / "checkpoints" / params.train.method


def training_key(params: Params, root: Path, world_size: int) -> str:
    """What a checkpoint must match to be resumed: ``train`` section, episodes, world size.

    ``train.device`` and ``train.progress``-like settings do not change the maths, but the
    rest of ``train`` does, and so do the episodes (the pools the tasks come from).
    """
    train = {k: v for k, v in params.to_dict()["train"].items() if k != "device"}
    manifest = Path(root) / "artifacts" / "episodes" / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else "none"
    doc = json.dumps({"train": train, "episodes": digest, "world": world_size}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first."""
    out = []
    for f in Path(directory).glob(f"{CHECKPOINT_PREFIX}*.pt"):
        try:
            out.append((int(f.stem[len(CHECKPOINT_PREFIX) :]), f))
        except ValueError:
            continue
    return sorted(out)


def load_checkpoint(path: Path, *, key: str, rank: int) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain values only) and pick this rank's streams."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        raise ConfigError(
            f"checkpoint {path} was written for other training inputs (another train section, "
            "other episodes or another number of processes); delete "
            f"{path.parent} or run without --resume"
        )
    mine = state["streams_per_rank"][rank]
    return {**state, **mine}


class _Checkpointer:
    """The ``write_checkpoint`` hook: gather every rank's streams, rank 0 writes atomically.

    Weights and optimiser state are identical on every rank (same start, same averaged
    gradients); the random streams are not (each rank draws its own tasks), so each rank's
    are gathered and a resumed rank takes back its own.
    """

    def __init__(self, ranks: Ranks, directory: Path, key: str, before_write: Any) -> None:
        self.ranks, self.directory, self.key = ranks, directory, key
        self.before_write = before_write
        self.written: list[int] = []

    def __call__(self, state: dict[str, Any]) -> None:
        streams: list[Any] = [None] * self.ranks.world_size
        mine = {k: state[k] for k in RANK_STREAMS}
        dist.all_gather_object(streams, mine)
        if not self.ranks.is_main:
            return
        self.before_write(int(state["step"]))
        state = {**state, "streams_per_rank": streams, "key": self.key}
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{CHECKPOINT_PREFIX}{int(state['step']):08d}.pt"
        tmp = final.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, final)  # atomic: a kill never leaves a half-written checkpoint
        self.written.append(int(state["step"]))
        for _, old in list_checkpoints(self.directory)[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        log.info("checkpoint at step %d: %s", state["step"], final)


# -- MLflow on rank 0 --------------------------------------------------------------------------
class _MetricLog:
    """Buffers the learning curve on rank 0 and sends it to MLflow at each checkpoint.

    Sending at checkpoints (and at the end) means a resumed run re-sends exactly the steps
    after the checkpoint it resumed from, so the curve in MLflow has each step once.
    """

    def __init__(
        self, params: Params, root: Path, directory: Path, uri: str | None, resumed: bool
    ) -> None:
        from mlflow import MlflowClient

        from metaad.tracking import default_tracking_uri, ensure_experiment, lineage_tags

        self.uri = uri or default_tracking_uri(root)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.pending: list[tuple[int, dict[str, float]]] = []
        record = directory / "mlflow_run.json"
        run_id = None
        if resumed and record.exists():
            run_id = json.loads(record.read_text()).get("run_id")
        if run_id is None:
            exp = ensure_experiment(params.register.experiment, root, tracking_uri=self.uri)
            tags = {**lineage_tags(root, params), "ddp": "true"}
            run_id = self.client.create_run(exp, run_name="ddp-train", tags=tags).info.run_id
            from metaad.tracking import _log_params

            _log_params(self.client, run_id, params.flat())
            directory.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"run_id": run_id, "uri": self.uri}))
        self.run_id: str = run_id

    def __call__(self, step: int, values: Mapping[str, float]) -> None:
        self.pending.append((step, dict(values)))

    def flush(self, _step: int | None = None) -> None:
        from metaad.tracking import history_metrics

        if not self.pending:
            return
        recs = [{"step": float(s), **v} for s, v in self.pending]
        metrics = history_metrics(recs)
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.pending.clear()


# -- the run -------------------------------------------------------------------------------------
def train_distributed(
    params: Params,
    root: str | Path,
    *,
    resume: bool = True,
    checkpoint_every: int | None = None,
    tracking_uri: str | None = None,
    log_mlflow: bool = True,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Meta-train ``train.method`` as one rank of a torchrun group; rank 0 writes the bundle.

    Returns, on rank 0, what happened (world size, the step resumed from, seconds, the
    MLflow run); None on the other ranks. The episodes stage must have run (every rank
    reads ``artifacts/episodes``).
    """
    from metaad import stages
    from metaad.models.registry import family_of

    set_offline_env()
    root = Path(root)
    ranks = init_process_group(params.scale.ddp_backend, params.train.device)
    try:
        method = params.train.method
        if family_of(method) == "baseline":
            raise ConfigError(f"train.method must be a meta-learner, {method!r} is a baseline")
        if params.train.meta_batch < ranks.world_size:
            raise ConfigError(
                f"train.meta_batch={params.train.meta_batch} is the global batch, split across "
                f"processes; it must be at least their number ({ranks.world_size})"
            )
        if ranks.device.startswith("cuda"):
            params = replace(params, train=replace(params.train, device=ranks.device))
        prep = stages.load_prepared(params, root)
        directory = checkpoint_dir(params, root)
        key = training_key(params, root, ranks.world_size)
        state = None
        found = list_checkpoints(directory) if resume else []
        if found:
            state = load_checkpoint(found[-1][1], key=key, rank=ranks.rank)
        resumed_from = int(state["step"]) if state is not None else 0
        if resumed_from:
            log.info("rank %d: resuming from checkpoint step %d", ranks.rank, resumed_from)
        every = params.scale.checkpoint_every if checkpoint_every is None else checkpoint_every
        metrics = None
        if ranks.is_main and log_mlflow:
            metrics = _MetricLog(params, root, directory, tracking_uri, resumed=bool(state))
        checkpointer = _Checkpointer(
            ranks, directory, key, metrics.flush if metrics is not None else (lambda _s: None)
        )
        lo, hi = shard_bounds(params.train.meta_batch, ranks.rank, ranks.world_size)
        weight = (hi - lo) / params.train.meta_batch
        hooks = TrainHooks(
            shard=(ranks.rank, ranks.world_size),
            start=broadcast_parameters,
            sync_gradients=functools.partial(combine_gradients, weight=weight),
            mean_loss=functools.partial(combine_loss, weight=weight),
            checkpoint_every=every,
            write_checkpoint=checkpointer,
            resume=state,
        )
        det, hist, secs = stages.train_method(
            params,
            prep,
            method,
            progress=progress and ranks.is_main,
            callback=metrics,
            hooks=hooks,
        )
        dist.barrier()
        if not ranks.is_main:
            return None
        summary = {
            "world_size": ranks.world_size,
            "backend": ranks.backend,
            "device": ranks.device,
            "resumed_from_step": resumed_from,
            "steps": params.train.steps,
            "checkpoints_written": checkpointer.written,
            "checkpoint_dir": str(directory),
            "seconds": secs,
            "mlflow_run_id": metrics.run_id if metrics is not None else None,
            "finished_at": time.time(),
        }
        extra = {"distributed": summary}
        stages.save_trained(params, root, prep, det, hist, secs, extra_meta=extra)
        (stages.Layout(root).model / RUN_RECORD).write_text(json.dumps(summary, indent=1))
        if metrics is not None:
            metrics.flush()
            metrics.client.log_dict(metrics.run_id, summary, "ddp/summary.json")
            metrics.client.set_tag(metrics.run_id, "ddp.resumed_from_step", str(resumed_from))
            metrics.client.set_tag(metrics.run_id, "ddp.world_size", str(ranks.world_size))
            metrics.client.set_terminated(metrics.run_id, "FINISHED")
        log.info(
            "distributed training of %s on %d %s process(es) done in %.1fs (resumed from step %d)",
            method,
            ranks.world_size,
            ranks.backend,
            secs,
            resumed_from,
        )
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_command(
    nproc_per_node: int,
    *,
    params_path: str | Path = "params.yaml",
    overrides: Sequence[str] = (),
    root: str | Path = ".",
    resume: bool = True,
    checkpoint_every: int | None = None,
    tracking_uri: str | None = None,
    progress: bool = False,
) -> list[str]:
    """The ``torchrun`` command line for one machine (``--standalone``: a free local port)."""
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc_per_node),
        "-m",
        "metaad.distributed",
        "--params",
        str(params_path),
        "--root",
        str(root),
        "--resume" if resume else "--no-resume",
    ]
    for kv in overrides:
        cmd += ["--set", kv]
    if checkpoint_every is not None:
        cmd += ["--checkpoint-every", str(checkpoint_every)]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if progress:
        cmd.append("--progress")
    return cmd


def default_nproc() -> int:
    """One process per GPU; two on a machine without one (enough to exercise gloo)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m metaad.distributed``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="as for `metaad train`")
    ap.add_argument("--root", default=".")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--checkpoint-every", type=int, default=None)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set expects KEY=VALUE, got {bad}")
    try:
        params = load_params(args.params, dict(kv.split("=", 1) for kv in args.set))
        out = train_distributed(
            params,
            args.root,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            tracking_uri=args.tracking_uri,
            log_mlflow=not args.no_mlflow,
            progress=args.progress,
        )
    except MetaADError as exc:
        log.error("%s", exc)
        return 2
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
