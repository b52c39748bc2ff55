"""The MAML family on ``torch.func``: MAML, first-order MAML, ANIL, Meta-SGD and MSL.

A scorer (encoder + a linear head to one logit, higher = more anomalous) is held as a
parameter dict and run with :func:`torch.func.functional_call`. One pure function,
:func:`adapt`, takes a few gradient steps on a support set; it is used everywhere a task is
adapted to: under :func:`torch.func.vmap` over the task batch in meta-training, in the
validation during fit, and when serving builds an :class:`MAMLAdapted` from a request's
support set. The inner gradient is :func:`torch.func.grad`; second-order variants keep its
graph so the outer loss differentiates through the adaptation, first-order ones do not.

Variants differ only in switches on one class (the names follow learn2learn's vocabulary):

- ``maml``: second-order, every parameter adapted.
- ``fomaml``: first-order (the inner gradient is a constant to the outer loop).
- ``anil``: only the head is adapted; the encoder is shared by all tasks.
- ``metasgd``: a learned step size per parameter element (softplus keeps it positive).
- ``msl``: MAML++'s multi-step loss, a softmax-weighted sum of the query losses after every
  inner step, the weights' logits learned in the outer loop.

Zero-shot (K = 0): the support then holds only normals, which come from the same normal
distribution the initialisation was meta-trained against, so they carry no information about
the new type. A normals-only inner loss (BCE toward 0) mostly lowers every logit through the
head bias, which leaves the ranking (and so AUPRC) nearly unchanged while spending the inner
steps; measured on the synthetic pool of ``tests/test_maml.py`` it was no better than the
initialisation. So with K = 0 the adapted detector *is* the meta-learned initialisation
(0 inner steps), and K = 0 tasks in ``train.shots`` train that initialisation directly as
a zero-shot detector. :func:`adapt` itself still accepts a normals-only support (its loss
then reduces to the normal half), so the choice lives in one place: :func:`steps_for_shots`.

``task_norm`` (0 = off, the default; a positive value is a std floor) is the metric
learners' option of the same name (:mod:`metaad.models.taskframe`): every row of a task,
support and query, is standardised by the task's support normals (per feature, per channel
for windows) before the scorer sees it, in meta-training, in validation and when serving;
the adapted detector keeps the support's mean and std and applies them to what it scores.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from metaad.device import resolve_device
from metaad.episodes.pool import Pool
from metaad.episodes.sampler import TaskBatch, sample_task_batch
from metaad.errors import ConfigError, DataError, MetaADError, UnknownMethodError
from metaad.models.base import Detector, FitConfig, History, StepCallback
from metaad.models.encoders import make_encoder
from metaad.models.taskframe import task_moments, task_normalise
from metaad.train_hooks import TrainHooks, restore_loop_state, snapshot

logger = logging.getLogger(__name__)

Params = dict[str, Tensor]
LearningRates = Mapping[str, Tensor | float]

#: Prefix of the head's parameter names (ANIL adapts only these).
HEAD_PREFIX = "head."
#: Rows scored per forward pass in :meth:`MAMLAdapted.score` (bounds peak memory).
SCORE_CHUNK = 65536
#: Fixed validation tasks drawn once per fit (small: validation must stay cheap).
N_VAL_TASKS = 16
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
#: ``functional_call`` swaps tensors into the module while it runs, so two threads serving
#: one detector (adapt or score) must not overlap; meta-training is single-threaded.
_SERVING_LOCK = threading.Lock()


class PrimitiveLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with its affine part as separate ops; same parameters and state dict.

    Second-order MAML under ``vmap`` differentiates the layer-norm backward once more, and
    the batching rule of the fused backward is wrong for the affine weight and bias
    (reported as pytorch/functorch#534; reproduced on torch 2.13): the vmapped
    meta-gradient of an MLP with LayerNorm was off by about 20 % relative to a per-task
    loop, while first-order and head-only (ANIL) ones were exact. The fused normalisation
    without affine parameters is correct, and so are a multiply and an add, so the vmapped
    meta-gradient then matches the loop to float64 rounding (``tests/test_maml.py``) at
    almost the fused kernel's speed.
    """

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def _decompose_layer_norms(module: nn.Module) -> None:
    """Swap every ``nn.LayerNorm`` in ``module`` for :class:`PrimitiveLayerNorm`, in place."""
    for name, child in module.named_children():
        if type(child) is nn.LayerNorm:
            swap = PrimitiveLayerNorm(
                child.normalized_shape,
                eps=child.eps,
                elementwise_affine=child.elementwise_affine,
                bias=child.bias is not None,
            )
            swap.load_state_dict(child.state_dict())
            setattr(module, name, swap)
        else:
            _decompose_layer_norms(child)


class Scorer(nn.Module):
    """Encoder plus a linear head to one logit per input; higher means more anomalous."""

    def __init__(self, input_shape: tuple[int, ...], hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.encoder = make_encoder(input_shape, hidden=hidden, out_dim=out_dim)
        _decompose_layer_norms(self.encoder)
        self.head = nn.Linear(out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


# -- the functional core ------------------------------------------------------------------
def balanced_bce(logits: Tensor, y: Tensor, pos_weight: float = 1.0) -> Tensor:
    """BCE averaged within each class, then mixed ``pos_weight : 1`` (anomalies : normals).

    A support of 5 anomalies and 50 normals would otherwise be fitted mostly to its normals.
    Without positives the loss is the normal half alone. Written without data-dependent
    control flow so it runs unchanged under ``vmap``.
    """
    y = y.to(logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    n_pos = y.sum(-1)
    n_neg = (1.0 - y).sum(-1)
    pos = (per_row * y).sum(-1) / n_pos.clamp(min=1.0)
    neg = (per_row * (1.0 - y)).sum(-1) / n_neg.clamp(min=1.0)
    w = pos_weight * (n_pos > 0).to(logits.dtype)
    return (w * pos + neg) / (1.0 + w)


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inner_lrs: LearningRates,
    X_s: Tensor,
    y_s: Tensor,
    *,
    steps: int,
    first_order: bool,
    adapt_keys: Sequence[str] | None = None,
    pos_weight: float = 1.0,
    trajectory: list[Params] | None = None,
    max_grad_norm: float = 0.0,
) -> Params:
    """``steps`` gradient steps of :func:`balanced_bce` on one support set; returns new params.

    Pure and functional, so it runs per task under ``vmap``, inside an outer autograd graph
    (meta-training) or under ``no_grad`` (serving: ``torch.func.grad`` ignores an outer
    ``no_grad``). ``inner_lrs`` maps each adapted name to a step size, a float or a tensor
    of the parameter's shape (Meta-SGD). ``first_order`` computes the inner gradient on
    detached parameters, so the outer loop sees it as a constant (and no graph is built for
    it); otherwise the outer gradient flows through it (second order). ``adapt_keys`` limits
    adaptation to some parameters (ANIL: the head); the others are used as given.
    ``trajectory``, when given, receives the parameters after each step (the multi-step loss).
    ``max_grad_norm > 0`` rescales each step's support gradient (all adapted tensors together)
    to at most that norm, per task, so a sharp initialisation meeting extreme inputs cannot
    take a huge inner step (written as a clamp, no branch, so it runs under ``vmap``).
    """
    keys = list(params) if adapt_keys is None else list(adapt_keys)
    current: Params = dict(params)

    def support_loss(fast: Params, fixed: Params) -> Tensor:
        logits = functional_call(model, {**fixed, **fast}, (X_s,))
        return balanced_bce(logits, y_s, pos_weight)

    for _ in range(steps):
        fast = {k: current[k] for k in keys}
        fixed = {k: v for k, v in current.items() if k not in fast}
        if first_order:
            fast = {k: v.detach() for k, v in fast.items()}
            fixed = {k: v.detach() for k, v in fixed.items()}
        grads = grad(support_loss)(fast, fixed)
        if max_grad_norm > 0:
            norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
            scale = torch.clamp(max_grad_norm / (norm + 1e-12), max=1.0)
            grads = {k: g * scale for k, g in grads.items()}
        current = {**current, **{k: current[k] - inner_lrs[k] * grads[k] for k in keys}}
        if trajectory is not None:
            trajectory.append(current)
    return current


def query_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inner_lrs: LearningRates,
    X_s: Tensor,
    y_s: Tensor,
    X_q: Tensor,
    y_q: Tensor,
    *,
    steps: int,
    first_order: bool,
    adapt_keys: Sequence[str] | None = None,
    step_weights: Tensor | None = None,
    pos_weight: float = 1.0,
    max_grad_norm: float = 0.0,
) -> Tensor:
    """One task's outer loss: adapt on the support, then :func:`balanced_bce` on the query.

    With ``step_weights`` (one per inner step, the multi-step loss) the loss is their
    weighted sum of the query losses after each step instead of the last one alone.
    """
    trajectory: list[Params] | None = [] if step_weights is not None and steps > 0 else None
    fast = adapt(
        model,
        params,
        inner_lrs,
        X_s,
        y_s,
        steps=steps,
        first_order=first_order,
        adapt_keys=adapt_keys,
        pos_weight=pos_weight,
        trajectory=trajectory,
        max_grad_norm=max_grad_norm,
    )
    if trajectory is None:
        return balanced_bce(functional_call(model, fast, (X_q,)), y_q, pos_weight)
    assert step_weights is not None
    if step_weights.shape != (len(trajectory),):
        raise ConfigError(
            f"multi-step loss has {step_weights.shape[0]} weights for {len(trajectory)} steps"
        )
    losses = torch.stack(
        [balanced_bce(functional_call(model, p, (X_q,)), y_q, pos_weight) for p in trajectory]
    )
    return (step_weights * losses).sum()


def meta_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inner_lrs: LearningRates,
    X_s: Tensor,
    y_s: Tensor,
    X_q: Tensor,
    y_q: Tensor,
    *,
    steps: int,
    first_order: bool,
    adapt_keys: Sequence[str] | None = None,
    step_weights: Tensor | None = None,
    pos_weight: float = 1.0,
    vectorize: bool = True,
    max_grad_norm: float = 0.0,
) -> Tensor:
    """Mean :func:`query_loss` over a task batch (``X_s``: ``(B, S, ...)``; ``X_q`` likewise).

    ``vectorize=True`` runs the batch under ``vmap`` (one batched forward per inner step);
    ``False`` loops over tasks in Python, the reference the vmapped path is tested against.
    """

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return query_loss(
            model,
            params,
            inner_lrs,
            xs,
            ys,
            xq,
            yq,
            steps=steps,
            first_order=first_order,
            adapt_keys=adapt_keys,
            step_weights=step_weights,
            pos_weight=pos_weight,
            max_grad_norm=max_grad_norm,
        )

    if vectorize:
        return vmap(one)(X_s, y_s, X_q, y_q).mean()
    return torch.stack([one(*t) for t in zip(X_s, y_s, X_q, y_q, strict=True)]).mean()


def steps_for_shots(shots: int, steps: int) -> int:
    """Inner steps for a support with ``shots`` anomalies: none at K = 0 (module docstring)."""
    return steps if shots > 0 else 0


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


# -- the adapted detector -----------------------------------------------------------------
class MAMLAdapted:
    """A scorer adapted to one task: fixed parameters, scoring in ``no_grad`` chunks.

    ``frame`` is the support normals' ``(mean, std)`` when the detector has ``task_norm``
    on; rows are then moved into that frame before the scorer sees them.
    """

    def __init__(
        self, detector: MAML, params: Params, frame: tuple[Tensor, Tensor] | None = None
    ) -> None:
        self._detector = detector
        self.params = params
        self.frame = frame

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score (the logit) per row of ``X``; higher means more anomalous."""
        X = np.asarray(X)
        self._detector.check_query(X)
        model = self._detector.model
        ref = next(iter(self.params.values()))
        out = np.empty(len(X), dtype=np.float64)
        with torch.no_grad(), _SERVING_LOCK:
            for start in range(0, len(X), SCORE_CHUNK):
                chunk = torch.as_tensor(
                    X[start : start + SCORE_CHUNK], dtype=ref.dtype, device=ref.device
                )
                if self.frame is not None:
                    chunk = task_normalise(chunk.unsqueeze(0), *self.frame)[0]
                logits = functional_call(model, self.params, (chunk,))
                out[start : start + len(chunk)] = logits.double().cpu().numpy()
        return out


# -- the detectors ------------------------------------------------------------------------
class MAML(Detector):
    """Second-order MAML on a scorer network; subclasses flip the class-level switches."""

    name: ClassVar[str] = "maml"
    family: ClassVar[str] = "maml"
    persistable: ClassVar[bool] = True
    #: Treat the inner gradient as a constant in the outer loop.
    first_order: ClassVar[bool] = False
    #: Adapt only the head in the inner loop (ANIL).
    head_only: ClassVar[bool] = False
    #: Learn one positive step size per parameter element (Meta-SGD).
    learn_inner_lr: ClassVar[bool] = False
    #: Outer loss = learned weighted sum of the query losses after each inner step (MSL).
    multi_step_loss: ClassVar[bool] = False

    def __init__(
        self,
        input_shape: tuple[int, ...],
        *,
        hidden: Sequence[int] = (128, 64),
        out_dim: int = 32,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        grad_clip: float = 1.0,
        inner_grad_clip: float = 0.0,
        task_norm: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not (math.isfinite(task_norm) and task_norm >= 0):
            raise ConfigError(
                f"{self.name}: task_norm must be 0 (off) or a positive std floor, got {task_norm}"
            )
        if inner_lr <= 0:
            raise ConfigError(f"{self.name}: inner_lr must be > 0, got {inner_lr}")
        if inner_steps < 1:
            raise ConfigError(f"{self.name}: inner_steps must be >= 1, got {inner_steps}")
        if eval_inner_steps is not None and eval_inner_steps < 0:
            raise ConfigError(
                f"{self.name}: eval_inner_steps must be >= 0 or null, got {eval_inner_steps}"
            )
        if grad_clip < 0:
            raise ConfigError(f"{self.name}: grad_clip must be >= 0 (0 = off), got {grad_clip}")
        if not inner_grad_clip >= 0:
            raise ConfigError(
                f"{self.name}: inner_grad_clip must be >= 0 (0 = off), got {inner_grad_clip}"
            )
        super().__init__(
            input_shape,
            hidden=[int(h) for h in hidden],
            out_dim=int(out_dim),
            inner_lr=float(inner_lr),
            inner_steps=int(inner_steps),
            eval_inner_steps=None if eval_inner_steps is None else int(eval_inner_steps),
            grad_clip=float(grad_clip),
            inner_grad_clip=float(inner_grad_clip),
            task_norm=float(task_norm),
            seed=int(seed),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.model = Scorer(self.input_shape, list(hidden), int(out_dim))
        self.inner_lr_raw: Params = {}
        if self.learn_inner_lr:
            raw = _softplus_inverse(float(inner_lr))
            self.inner_lr_raw = {
                k: torch.full_like(p, raw).requires_grad_(True)
                for k, p in self.model.named_parameters()
            }
        self.msl_logits: Tensor | None = (
            torch.zeros(int(inner_steps), requires_grad=True) if self.multi_step_loss else None
        )

    # -- hyperparameters as properties --------------------------------------------------
    @property
    def inner_steps(self) -> int:
        return int(self.hparams["inner_steps"])

    @property
    def inner_grad_clip(self) -> float:
        """Largest inner-step gradient norm per task (0 = off; saved configs without it)."""
        return float(self.hparams["inner_grad_clip"])

    @property
    def task_norm(self) -> float:
        """The std floor of task normalisation; 0 = off (module docstring)."""
        return float(self.hparams.get("task_norm", 0.0))

    def task_frame(
        self, X_s: Tensor, y_s: Tensor, *others: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, Tensor] | None]:
        """Move a task batch into its support normals' frame when ``task_norm`` is on.

        ``X_s (B, S, ...)`` with labels ``y_s (B, S)`` (the same layout for every task of a
        batch, as the sampler draws it); ``others`` (queries, ``(B, Q, ...)``) are moved
        with the same moments. Returns the rows unchanged and no frame when it is off.
        """
        if self.task_norm <= 0:
            return X_s, others, None
        mu, sd = task_moments(X_s[:, y_s[0] == 0], self.task_norm)
        return (
            task_normalise(X_s, mu, sd),
            tuple(task_normalise(o, mu, sd) for o in others),
            (mu, sd),
        )

    @property
    def eval_inner_steps(self) -> int:
        e = self.hparams["eval_inner_steps"]
        return self.inner_steps if e is None else int(e)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def adapt_keys(self) -> list[str]:
        names = [k for k, _ in self.model.named_parameters()]
        return [k for k in names if k.startswith(HEAD_PREFIX)] if self.head_only else names

    # -- the meta-learned state -----------------------------------------------------------
    def params(self) -> Params:
        """The initialisation, as live leaf tensors (the outer optimiser updates these)."""
        return dict(self.model.named_parameters())

    def inner_lrs(self) -> dict[str, Tensor | float]:
        """Step size per adapted parameter: learned tensors (Meta-SGD) or the fixed float."""
        if self.learn_inner_lr:
            return {k: F.softplus(self.inner_lr_raw[k]) for k in self.adapt_keys}
        return dict.fromkeys(self.adapt_keys, float(self.hparams["inner_lr"]))

    def step_weights(self) -> Tensor | None:
        """Multi-step loss weights (softmax of the learned logits), or None."""
        return None if self.msl_logits is None else torch.softmax(self.msl_logits, 0)

    def meta_parameters(self) -> list[Tensor]:
        """Everything the outer loop learns: the initialisation, step sizes, MSL logits."""
        extra = list(self.inner_lr_raw.values())
        if self.msl_logits is not None:
            extra.append(self.msl_logits)
        return [*self.model.parameters(), *extra]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> MAML:
        """Move (and optionally cast) every meta-learned tensor, keeping them leaves."""
        self.model.to(device=device, dtype=dtype)

        def move(t: Tensor) -> Tensor:
            return t.detach().to(device=device, dtype=dtype or t.dtype).requires_grad_(True)

        self.inner_lr_raw = {k: move(v) for k, v in self.inner_lr_raw.items()}
        if self.msl_logits is not None:
            self.msl_logits = move(self.msl_logits)
        return self

    def meta_loss(
        self,
        X_s: Tensor,
        y_s: Tensor,
        X_q: Tensor,
        y_q: Tensor,
        *,
        steps: int | None = None,
        vectorize: bool = True,
    ) -> Tensor:
        """The outer loss of a task batch under this variant's settings."""
        return meta_loss(
            self.model,
            self.params(),
            self.inner_lrs(),
            X_s,
            y_s,
            X_q,
            y_q,
            steps=self.inner_steps if steps is None else steps,
            first_order=self.first_order,
            adapt_keys=self.adapt_keys,
            step_weights=self.step_weights() if steps is None or steps > 0 else None,
            vectorize=vectorize,
            max_grad_norm=self.inner_grad_clip,
        )

    def compiled_meta_loss(self) -> Callable[..., Tensor]:
        """:meth:`meta_loss` through ``torch.compile``: the same function, fused kernels.

        Dynamo traces the ``vmap``-ed inner loop with its ``grad`` transforms into one
        graph, and AOTAutograd differentiates that graph for the outer step, so the
        second-order terms are in the compiled backward; inductor fuses the elementwise
        work (GELU and its derivatives, the layer norms' affine parts, the BCE) that
        dominates the eager step beside the matrix products. The meta-gradient equals the
        eager one (``tests/test_maml.py``). Each distinct task shape (shot count) compiles
        once; the compiled function is tied to these parameter tensors, so call it again
        after :meth:`to` or a load.
        """

        def loss(
            X_s: Tensor, y_s: Tensor, X_q: Tensor, y_q: Tensor, *, steps: int | None = None
        ) -> Tensor:
            return self.meta_loss(X_s, y_s, X_q, y_q, steps=steps)

        return cast("Callable[..., Tensor]", torch.compile(loss))

    # -- contract -------------------------------------------------------------------------
    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
        hooks: TrainHooks | None = None,
    ) -> History:
        """Meta-train on tasks from ``pool``'s anomaly types; continues from the current state.

        Each outer step draws one shot count from ``cfg.shots`` and ``cfg.meta_batch`` tasks
        with it, so the batch has fixed shapes and runs under one ``vmap``. ``hooks`` (off
        by default) add what DDP and resume need (``metaad.distributed``).
        """
        if pool.input_shape != self.input_shape:
            raise DataError(
                f"{self.name}: pool rows have shape {pool.input_shape}, "
                f"the detector was built for {self.input_shape}"
            )
        if val is not None and val.input_shape != self.input_shape:
            raise DataError(f"{self.name}: validation rows have shape {val.input_shape}")
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.to(device)
        resume = hooks.resume if hooks is not None else None
        if resume is not None:  # before the optimiser: loading replaces the step-size tensors
            self.load_state_tensors(resume["model"])
            self.to(device)
        dtype = next(self.model.parameters()).dtype
        X_all = torch.as_tensor(pool.X, dtype=dtype, device=device)
        extra = [*self.inner_lr_raw.values()] + (
            [self.msl_logits] if self.msl_logits is not None else []
        )
        groups: list[dict[str, Any]] = [
            {"params": list(self.model.parameters()), "weight_decay": cfg.weight_decay}
        ]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=cfg.lr)
        val_tasks = self._val_tasks(val, cfg) if val is not None else None
        grad_clip = float(self.hparams["grad_clip"])
        history = History()
        logger.info(
            "meta-training %s for %d steps on %s (%d tasks per step, shots %s)",
            self.name,
            cfg.steps,
            device,
            cfg.meta_batch,
            list(cfg.shots),
        )
        best_val, best_state = -math.inf, None
        start = 1
        if hooks is not None:
            if hooks.start is not None:
                hooks.start(self.meta_parameters())
            if resume is not None:
                start, history.records = restore_loop_state(resume, opt, rng)
                best_val, best_state = resume["best_val"], resume["best_state"]
        loss_fn = self.compiled_meta_loss() if cfg.compile else self.meta_loss
        bar = tqdm(range(start, cfg.steps + 1), desc=f"fit {self.name}", disable=not cfg.progress)
        for step in bar:
            shots = int(cfg.shots[int(rng.integers(len(cfg.shots)))])
            batch = sample_task_batch(
                pool,
                rng,
                batch_size=cfg.meta_batch,
                shots=shots,
                n_support_normal=cfg.n_support_normal,
                n_query_normal=cfg.n_query_normal,
                n_query_anomaly=cfg.n_query_anomaly,
            )
            X_s, y_s, X_q, y_q = _gather(X_all, batch, device)
            if hooks is not None:  # DDP: this process's slice of the batch
                X_s, y_s, X_q, y_q = hooks.take(X_s, y_s, X_q, y_q)
            X_s, (X_q,), _ = self.task_frame(X_s, y_s, X_q)
            # fp32 on every device, unlike the metric learners' bf16 autocast on CUDA: on an
            # H200 these small vmapped networks are launch-bound (bench/bench_train.py: no
            # faster than 8 CPU threads), so bf16 buys no speed, and under autocast ANIL's
            # TCN on windows failed there (a bf16 input met an fp32 conv bias inside vmap).
            loss = loss_fn(X_s, y_s, X_q, y_q, steps=steps_for_shots(shots, self.inner_steps))
            values = {"loss": hooks.loss_value(loss) if hooks else float(loss.detach())}
            if not math.isfinite(values["loss"]):
                if best_state is None:
                    raise MetaADError(
                        f"{self.name}: meta-training diverged at step {step} (loss "
                        f"{values['loss']}) before any validation; lower train.lr or inner_lr"
                    )
                # Early stopping's own logic, applied to a blow-up: the initialisation that
                # adapted best to the validation types was saved before it, so that one is
                # kept (the loop ends; every later step would start from NaN weights). Said
                # loudly and recorded, since it also means the settings are too aggressive.
                logger.warning(
                    "%s: meta-training diverged at step %d (loss %s); stopped there and kept "
                    "the weights with the best validation AUPRC %.4f (lower train.lr or "
                    "inner_lr to train further)",
                    self.name,
                    step,
                    values["loss"],
                    best_val,
                )
                history.diverged_at = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hooks is not None and hooks.sync_gradients is not None:
                hooks.sync_gradients(self.meta_parameters())
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.meta_parameters(), grad_clip)
            opt.step()
            if val_tasks is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                values["val_auprc"] = self._validate(*val_tasks)
                if values["val_auprc"] > best_val:
                    best_val, best_state = values["val_auprc"], self.state_tensors()
            history.log(step, **values)
            if callback is not None:
                callback(step, values)
            if hooks is not None and hooks.checkpoint_due(step, cfg.steps):
                hooks.write_checkpoint(  # type: ignore[misc]
                    snapshot(
                        step=step,
                        model=self.state_tensors(),
                        optimizer=opt,
                        rng=rng,
                        history=history.records,
                        best_val=best_val,
                        best_state=best_state,
                    )
                )
            if cfg.progress:
                bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
        if best_state is not None:
            # Meta-overfitting to the training types shows up as falling validation AUPRC:
            # keep the initialisation that adapted best to the held-out validation types.
            self.load_state_tensors(best_state)
            self.to(device)
            logger.info(
                "%s: kept the weights with the best validation AUPRC %.4f", self.name, best_val
            )
        return history

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> MAMLAdapted:
        """Adapt to one task with :func:`adapt` (first-order: serving needs no outer graph)."""
        X_support = np.asarray(X_support)
        y_support = np.asarray(y_support)
        self.check_support(X_support, y_support)
        device = self.device
        dtype = next(self.model.parameters()).dtype
        X_s = torch.as_tensor(X_support, dtype=dtype, device=device)
        y_s = torch.as_tensor(y_support, dtype=dtype, device=device)
        X_b, _, frame = self.task_frame(X_s.unsqueeze(0), y_s.unsqueeze(0))
        X_s = X_b[0]
        steps = steps_for_shots(int((y_support == 1).sum()), self.eval_inner_steps)
        with torch.no_grad(), _SERVING_LOCK:
            lrs = {
                k: v.detach() if isinstance(v, Tensor) else v for k, v in self.inner_lrs().items()
            }
            fast = adapt(
                self.model,
                {k: v.detach() for k, v in self.params().items()},
                lrs,
                X_s,
                y_s,
                steps=steps,
                first_order=True,
                adapt_keys=self.adapt_keys,
                max_grad_norm=self.inner_grad_clip,
            )
        # Clone: unadapted entries would otherwise alias the live initialisation.
        return MAMLAdapted(self, {k: v.detach().clone() for k, v in fast.items()}, frame)

    # -- validation -----------------------------------------------------------------------
    def _val_tasks(self, val: Pool, cfg: FitConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """A few fixed validation tasks at the largest trained shot count."""
        shots = max(cfg.shots)
        batch = sample_task_batch(
            val,
            np.random.default_rng([cfg.seed, 1]),
            batch_size=N_VAL_TASKS,
            shots=shots,
            n_support_normal=cfg.n_support_normal,
            n_query_normal=cfg.n_query_normal,
            n_query_anomaly=cfg.n_query_anomaly,
        )
        dtype = next(self.model.parameters()).dtype
        X_all = torch.as_tensor(val.X, dtype=dtype, device=self.device)
        X_s, y_s, X_q, y_q = _gather(X_all, batch, self.device)
        X_s, (X_q,), _ = self.task_frame(X_s, y_s, X_q)
        return X_s, y_s, X_q, y_q, shots

    def _validate(self, X_s: Tensor, y_s: Tensor, X_q: Tensor, y_q: Tensor, shots: int) -> float:
        """Mean AUPRC over the fixed validation tasks (vmapped :func:`adapt`, no outer graph)."""
        params = {k: v.detach() for k, v in self.params().items()}
        lrs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in self.inner_lrs().items()}
        steps = steps_for_shots(shots, self.eval_inner_steps)

        def scores(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            fast = adapt(
                self.model,
                params,
                lrs,
                xs,
                ys,
                steps=steps,
                first_order=True,
                adapt_keys=self.adapt_keys,
                max_grad_norm=self.inner_grad_clip,
            )
            return functional_call(self.model, fast, (xq,))

        with torch.no_grad():
            s = vmap(scores)(X_s, y_s, X_q).double().cpu().numpy()
        y = y_q.cpu().numpy()
        ok = np.isfinite(s).all(axis=1)
        if not ok.all():
            # The outer loss can stay finite while the longer evaluation-time adaptation
            # overflows (seen on Tennessee Eastman windows). Such a task counts as AUPRC 0,
            # so early stopping keeps an earlier initialisation instead of the run failing.
            logger.warning(
                "%s: adaptation diverged on %d of %d validation tasks (non-finite scores)",
                self.name,
                int((~ok).sum()),
                len(ok),
            )
        return float(
            np.mean([average_precision_score(y[i], s[i]) if ok[i] else 0.0 for i in range(len(s))])
        )

    # -- persistence ----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Every learned tensor, on CPU, under stable names (what ``weights.pt`` holds)."""
        out = {f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        out.update(
            {f"inner_lr_raw.{k}": v.detach().cpu().clone() for k, v in self.inner_lr_raw.items()}
        )
        if self.msl_logits is not None:
            out["msl_logits"] = self.msl_logits.detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`state_tensors`; refuses missing, extra or misshapen entries."""
        expected = {k: v.shape for k, v in self.state_tensors().items()}
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ConfigError(
                f"{self.name}: weights do not match the configuration "
                f"(missing {missing[:5]}, unexpected {extra[:5]})"
            )
        for k, shape in expected.items():
            if tuple(tensors[k].shape) != tuple(shape):
                raise ConfigError(
                    f"{self.name}: weight {k!r} has shape {tuple(tensors[k].shape)}, "
                    f"expected {tuple(shape)}"
                )
        device = self.device
        prefix = "model."
        self.model.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        self.inner_lr_raw = {
            k: tensors[f"inner_lr_raw.{k}"].detach().clone().to(device).requires_grad_(True)
            for k in self.inner_lr_raw
        }
        if self.msl_logits is not None:
            self.msl_logits = tensors["msl_logits"].detach().clone().to(device).requires_grad_(True)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "family": self.family}

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.pt`` (a plain dict of CPU tensors)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_tensors(), directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(
            json.dumps(self.get_config(), indent=2, sort_keys=True) + "\n"
        )
        return directory

    def load_weights(self, directory: str | Path) -> None:
        """Read ``weights.pt`` (tensors only, ``weights_only=True``) into this detector."""
        tensors = torch.load(Path(directory) / WEIGHTS_FILE, weights_only=True, map_location="cpu")
        self.load_state_tensors(tensors)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> MAML:
        """Rebuild a saved detector; the weights are read with ``weights_only=True``."""
        return load_maml(directory, device=device)


class FOMAML(MAML):
    """First-order MAML: no backward through the inner gradient."""

    name: ClassVar[str] = "fomaml"
    first_order: ClassVar[bool] = True


class ANIL(MAML):
    """Almost No Inner Loop: only the head adapts; the encoder is shared by every task."""

    name: ClassVar[str] = "anil"
    head_only: ClassVar[bool] = True


class MetaSGD(MAML):
    """Meta-SGD: a learned, positive step size for every parameter element."""

    name: ClassVar[str] = "metasgd"
    learn_inner_lr: ClassVar[bool] = True


class MSL(MAML):
    """MAML++'s multi-step loss with learned (softmax) weights per inner step."""

    name: ClassVar[str] = "msl"
    multi_step_loss: ClassVar[bool] = True


MAML_MODELS: dict[str, type[MAML]] = {cls.name: cls for cls in (MAML, FOMAML, ANIL, MetaSGD, MSL)}


def load_maml(directory: str | Path, device: str = "cpu") -> MAML:
    """Load a detector saved by :meth:`MAML.save`; nothing is unpickled."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; is {directory} a saved MAML-family model?")
    config = json.loads(cfg_path.read_text())
    name = config.get("name")
    if name not in MAML_MODELS:
        raise UnknownMethodError(
            f"{directory} holds model {name!r}, not one of {sorted(MAML_MODELS)}"
        )
    det = MAML_MODELS[name](tuple(config["input_shape"]), **config["hparams"])
    tensors = torch.load(w_path, map_location="cpu", weights_only=True)
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise ConfigError(f"{w_path} is not a plain dict of tensors")
    det.load_state_tensors(tensors)
    return det.to(resolve_device(device))


def _gather(
    X_all: Tensor, batch: TaskBatch, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows and float labels of a task batch, shaped ``(B, S, ...)`` and ``(B, Q, ...)``."""

    def idx(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, device=device)

    return (
        X_all[idx(batch.support_idx)],
        idx(batch.support_y).to(X_all.dtype),
        X_all[idx(batch.query_idx)],
        idx(batch.query_y).to(X_all.dtype),
    )


__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "MAML_MODELS",
    "MSL",
    "MAMLAdapted",
    "MetaSGD",
    "PrimitiveLayerNorm",
    "Scorer",
    "adapt",
    "balanced_bce",
    "load_maml",
    "meta_loss",
    "query_loss",
    "steps_for_shots",
]
