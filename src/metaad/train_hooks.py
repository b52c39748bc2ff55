"""Optional extras for a meta-training loop: what data-parallel training and resume need.

The meta-learners' ``fit`` loops take ``hooks=None`` by default and then run exactly as
before (same random streams, same results, byte for byte). ``metaad.distributed`` passes a
:class:`TrainHooks` so that, under ``torchrun``, each rank trains on its own slice of every
task batch, the slices' gradients are combined across ranks after every backward pass,
and the whole training state (weights, optimiser, random streams, step, learning curve,
best validation weights) is checkpointed and restored.

Why hooks instead of ``torch.nn.parallel.DistributedDataParallel``: MAML's outer loss runs
the network through ``torch.func.functional_call`` under ``vmap``, and the metric learner
calls parts of its network from several places per step; DDP's module wrapper sees neither.
An explicit all-reduce of the gradients after ``backward`` is what DDP itself does, in a
form that works for both families (and is how meta-learning code is usually distributed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Called with the parameters whose gradients ``backward`` just filled.
GradSync = Callable[[Sequence[torch.Tensor]], None]
#: Called when a checkpoint is due, with the full training state (see :func:`snapshot`).
CheckpointWriter = Callable[[dict[str, Any]], None]


@dataclass
class TrainHooks:
    """Everything off by default; see the module docstring for why each exists.

    ``shard=(rank, world)`` keeps this process's slice of every task batch: all processes
    draw the same global batch of ``train.meta_batch`` tasks from the same stream (cheap:
    indices), build it, and each scores only its own contiguous slice, as a
    ``DistributedSampler`` shards one shared permutation. With ``sync_gradients`` summing
    the slices' gradients weighted by their share, every step takes the single-process
    gradient, so a run gives the same model for any number of processes (up to float
    rounding). ``start`` runs once before the first step (DDP: broadcast rank 0's initial
    weights); ``mean_loss`` turns this slice's loss into the batch's (for the learning
    curve); ``write_checkpoint`` is called every ``checkpoint_every`` steps and at the last
    step; ``resume`` is a state written by :func:`snapshot`, to continue from.
    """

    shard: tuple[int, int] | None = None
    start: GradSync | None = None
    sync_gradients: GradSync | None = None
    mean_loss: Callable[[torch.Tensor], float] | None = None
    checkpoint_every: int = 0
    write_checkpoint: CheckpointWriter | None = None
    resume: Mapping[str, Any] | None = None

    def take(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's slice (along the task dimension) of each batch tensor."""
        if self.shard is None:
            return batch
        lo, hi = shard_bounds(len(batch[0]), *self.shard)
        return tuple(t[lo:hi] for t in batch)

    def loss_value(self, loss: torch.Tensor) -> float:
        return float(loss.detach()) if self.mean_loss is None else self.mean_loss(loss)

    def checkpoint_due(self, step: int, last: int) -> bool:
        if self.write_checkpoint is None or self.checkpoint_every <= 0:
            return False
        return step % self.checkpoint_every == 0 or step == last


def shard_bounds(n_tasks: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank's contiguous share of ``n_tasks`` (the first ranks get the rest)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    base, extra = divmod(n_tasks, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def snapshot(
    *,
    step: int,
    model: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    history: Sequence[Mapping[str, float]],
    best_val: float,
    best_state: Mapping[str, torch.Tensor] | None,
    generators: Sequence[torch.Generator] = (),
) -> dict[str, Any]:
    """The whole training state after ``step``, as tensors and plain values.

    Everything here loads with ``torch.load(weights_only=True)``: the numpy stream's state
    (128-bit integers) travels as JSON text, the learning curve as plain floats.
    """
    return {
        "step": int(step),
        "model": {k: v.detach().cpu().clone() for k, v in model.items()},
        "optimizer": optimizer.state_dict(),
        "rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
        "history": [dict(r) for r in history],
        "best_val": float(best_val),
        "best_state": None
        if best_state is None
        else {k: v.detach().cpu().clone() for k, v in best_state.items()},
    }


def restore_loop_state(
    state: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    generators: Sequence[torch.Generator] = (),
) -> tuple[int, list[dict[str, float]]]:
    """Put the optimiser and random streams back; return the next step and the history.

    The model's own tensors are restored by the loop (each family stores them its own way)
    before the optimiser is built or loaded.
    """
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint holds {len(saved)} private random stream(s), the loop has "
            f"{len(generators)}: it was written by another version of the training loop"
        )
    for g, st in zip(generators, saved, strict=True):
        g.set_state(st)
    return int(state["step"]) + 1, [dict(r) for r in state["history"]]


__all__ = [
    "CheckpointWriter",
    "GradSync",
    "TrainHooks",
    "restore_loop_state",
    "shard_bounds",
    "snapshot",
]
