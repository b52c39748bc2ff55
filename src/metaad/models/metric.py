"""Metric-based meta-learners: an embedding in which a task's support set is a good detector.

A task is scored from its support set in one forward pass (no gradient step at adapt):

- normal distance: mean distance to the ``k_nn`` nearest normals (support normals plus a
  ``memory`` bank of meta-train normals kept with the weights; ``k_nn=0`` uses the normal
  prototype), measured in the encoder's embedding and in the raw features under a learned
  diagonal metric, mixed with learned weights, and divided by the support normals' own
  leave-one-out distance so a task's scores do not depend on how spread its normals are;
- a type-agnostic prior: a linear score on the embedding, learned across meta-train types;
- when K > 0, the anomaly prototype (``d_normal - d_anomaly``) and two linear heads fitted
  to the support in closed form (L2 logistic regression by Newton steps from a ridge start,
  as in R2-D2 / MetaOptNet): one on the embedding and one on the raw features. The raw
  head is there because simple support-fitted models on raw features are strong on unseen
  types (CALIBRATION.md); keeping it as its own term means the meta-learner starts from
  what the raw features already say instead of learning to forget it.

The terms are summed with meta-learned positive weights into one logit. The selectable
``loss`` shapes the embedding (prototypical cross-entropy on that logit, siamese
contrastive pairs, batch-hard triplets, or DevNet's deviation loss); every variant scores
with the same logit, and an auxiliary cross-entropy on it (``aux_weight``) keeps the K = 0
path trained under every loss. ``global_center`` adds a Deep-SAD-style learned normal
centre (off by default: it lowered zero-shot AUPRC on the synthetic default).

``synthetic_tasks`` (default 0.25) replaces the anomalies of that fraction of each training
batch's tasks with a virtual type made from the task's own normals
(:mod:`metaad.episodes.augment`). Without it the learner fits the few meta-train types
(training loss ~0.005) and the support terms' weights barely move; with it, macro AUPRC on
the unseen types of the synthetic default rose from 0.918 to 0.953 at K=5 (README).

``raw_proto`` (off by default) adds the ``proto_raw`` baseline's own score as one more
term: Euclidean, not squared, distances to the support's normal and anomaly means in the
preprocessed features, with no learned metric, divided by the support normals' mean
distance to their mean and weighted by a learned scalar. On NSL-KDD's unseen attacks
(benchmark seed-0 episodes, 4 per type) it raised K=5 macro AUPRC from 0.884 to 0.901 after
300 meta-training steps and made no difference after 1,500 (0.907 vs 0.910), nor on
Tennessee Eastman (0.683 vs 0.687), so it stays an option.

``raw_knn`` (off by default) adds the ``knn`` baseline's own distance as one more term: the
mean Euclidean distance of the whole flattened row (a window whole, not its per-channel
summary) to its ``k_nn`` nearest normals among the support normals and the bank, with no
learned metric, centred on the support normals' own leave-one-out distance and scaled so
that at weight 1 it has the spread on the support normals that the rest of the logit has
(:meth:`MetricCore._add_knn_reference`); only the weight is learned. It is the
meta-learner's form of averaging ``metric_ens`` with ``knn`` (docs/benchmark-log.md). On
Tennessee Eastman's unseen faults (``triplet``, seed-0 benchmark episodes, 4 per type) it
raised K=5 macro AUPRC from 0.719 to 0.745 and K=0 from 0.629 to 0.750; on NSL-KDD it
lowered K=5 from 0.889 to 0.740 and on SKAB K=10 from 0.808 to 0.719, so params.yaml turns
it on for Tennessee Eastman only (``benchmark.hparams_for``). It takes the unfolded scoring
path.

``memory_select`` says how the bank is filled: ``random`` (default) samples the meta-train
normals; ``coreset`` takes a greedy k-center cover of them (:func:`coreset_indices`), so rare
normal modes are kept too. On NSL-KDD (seed-0 benchmark episodes, 512 rows) it helped
``proto`` (K=5 macro AUPRC 0.903 against 0.895) and hurt ``deviation`` at every K (K=5
0.896 against 0.912, K=1 0.753 against 0.807): a cover spends the bank on outlying normals
and drops the density the k-NN term also reads, so random stays the default.

``task_norm`` (0 = off; a positive value is a std floor) measures every row of a task in
its support normals' frame: per feature (per channel for windows) minus their mean, divided
by ``sqrt(var + floor^2)``, clipped at +-50, before the encoder, the raw path and the memory
bank see it. It is what makes the support-only logistic regression strong on SKAB, where
each scenario is its own run at its own operating point (README, "the pipeline's
scaling"); with it, a per-feature offset of a whole task leaves its scores unchanged (when
the bank is empty: the bank's meta-train rows do not move with the task). The bank is then
embedded per task, so adapting costs one bank embedding more, and scoring takes the
general path (one embedding per normal support) instead of the folded one.

``memory`` defaults to 32 rows. On the synthetic default, over three training seeds, 32 and
128 rows gave the K=5 macro AUPRC of the 512 rows used before (0.954 and 0.952 against
0.950 over two seeds) and about 0.02 less at K=0; 64 rows was lower at every K (0.942).
Scoring cost grows with the bank (a rows x normals product and its k-NN): with 32 rows an
adapted detector scored 1M rows at 3.1-3.5x Isolation Forest's speed over two runs of
``bench/bench_scoring.py``, with 128 rows 2.8-3.2x, with 512 rows 1.5x. Scoring folds every
term into one product per chunk of rows (:class:`_ScoringPlan`) and takes the k-NN with a
numba kernel.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from metaad.device import autocast, resolve_device
from metaad.episodes.augment import virtual_types
from metaad.episodes.pool import Pool
from metaad.episodes.sampler import sample_task_batch
from metaad.errors import ConfigError
from metaad.models.base import Detector, FitConfig, History, StepCallback
from metaad.models.encoders import make_encoder
from metaad.models.taskframe import task_moments, task_normalise
from metaad.train_hooks import TrainHooks, restore_loop_state, snapshot

log = logging.getLogger(__name__)

LOSSES = ("proto", "contrastive", "triplet", "deviation")
MEMORY_SELECT = ("random", "coreset")
_EPS = 1e-6


def raw_summary(x: torch.Tensor) -> torch.Tensor:
    """The raw path's view of an input: the row itself, or a window's per-channel mean and std."""
    if x.dim() == 2:
        return x
    return torch.cat([x.mean(dim=1), x.std(dim=1, unbiased=False)], dim=1)


class MetricNet(nn.Module):
    """Encoder plus the handful of scalars and per-feature weights that the logit uses."""

    def __init__(
        self, input_shape: tuple[int, ...], hidden: tuple[int, ...], out_dim: int, memory: int = 0
    ) -> None:
        super().__init__()
        # Meta-train normal rows kept with the weights (filled by fit), so they persist in
        # weights.pt like any other tensor.
        self.register_buffer("memory", torch.zeros(memory, *input_shape))
        self.register_buffer("memory_filled", torch.tensor(False))
        self.encoder = make_encoder(input_shape, hidden=hidden, out_dim=out_dim)
        raw_dim = input_shape[0] if len(input_shape) == 1 else 2 * input_shape[1]
        inv_sp1 = float(np.log(np.expm1(1.0)))  # softplus^-1(1): start at weight 1
        self.raw_weight = nn.Parameter(torch.full((raw_dim,), inv_sp1))
        self.mix = nn.Parameter(torch.tensor([inv_sp1, inv_sp1]))  # [encoder, raw]
        self.alpha = nn.Parameter(torch.tensor(inv_sp1))
        self.beta = nn.Parameter(torch.tensor(inv_sp1))
        self.bias = nn.Parameter(torch.tensor(2.0))
        # A meta-learned normal centre in embedding space (as Deep SAD's c), with its own
        # weight and offset: the prior about "normal" that every task starts from.
        self.center = nn.Parameter(torch.zeros(out_dim))
        self.gamma = nn.Parameter(torch.tensor(inv_sp1))
        self.bias_g = nn.Parameter(torch.tensor(1.0))
        # Closed-form ridge head on the support (R2-D2, Bertinetto et al. 2019): its
        # regulariser and its weight in the logit are meta-learned.
        # A type-agnostic anomaly score learned across the meta-train types (DevNet-like):
        # the prior that the support terms refine.
        self.prior = nn.Linear(out_dim, 1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)
        self.ridge_lam = nn.Parameter(torch.tensor(inv_sp1))
        self.ridge_w = nn.Parameter(torch.tensor(inv_sp1))
        # The same head on the raw features alone: what a practitioner's logistic regression
        # on the support would see, kept as its own term so the embedding cannot drown it.
        self.raw_lam = nn.Parameter(torch.tensor(inv_sp1))
        self.raw_head_w = nn.Parameter(torch.tensor(inv_sp1))
        # Euclidean (not squared) raw-feature prototypes under the fixed preprocessing
        # metric, as the ``proto_raw`` baseline scores: the term the learned metric cannot
        # bend towards the meta-train types (README, "Results on real data").
        self.raw_proto_w = nn.Parameter(torch.tensor(inv_sp1))
        # Unlearned whole-window k-NN distance to the normals, as the ``knn`` baseline
        # measures it: only its weight is learned (``raw_knn``).
        self.raw_knn_w = nn.Parameter(torch.tensor(inv_sp1))
        self.out_dim = out_dim
        self.raw_dim = raw_dim

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder embedding and weighted raw summary, each scaled so that a squared
        distance is a per-dimension mean."""
        z = self.encoder(x).float() / np.sqrt(self.out_dim)
        r = raw_summary(x).float() * F.softplus(self.raw_weight) / np.sqrt(self.raw_dim)
        return z, r


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched squared Euclidean distances ``(B, n, m)``; clamped at 0 against round-off."""
    d = (a * a).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2) + (b * b).sum(-1)[..., None, :]
    return d.clamp_min(0.0)


def _eucl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean (not squared) distances ``(B, n, m)``, smooth at 0 for the gradient."""
    return (_sqdist(a, b) + _EPS).sqrt()


def _knn_mean(q: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Mean Euclidean distance ``(B, Q)`` from ``q (B, Q, D)`` to its ``k`` nearest rows of
    ``ref (B, m, D)``, in fp32 (under autocast a bf16 product of ~1,000-wide rows is too
    coarse for a nearest-neighbour ranking)."""
    with torch.autocast(q.device.type, enabled=False):
        d2 = _sqdist(q.float(), ref.float())
    k = max(min(k, d2.shape[-1]), 1)
    return d2.topk(k, dim=-1, largest=False, sorted=False).values.clamp_min(0.0).sqrt().mean(-1)


def _chol(a: torch.Tensor) -> torch.Tensor:
    """Cholesky factor without the error check: a non-finite system (a damaged model) then
    gives non-finite scores, which the promotion gate refuses by name, instead of raising
    deep inside ``adapt``. A finite ``gram + lam I`` is always positive definite."""
    return torch.linalg.cholesky_ex(a).L


@dataclass
class TaskState:
    """Everything the logit needs from a support set (the adapted state of one task)."""

    normals_z: torch.Tensor  # (B, n, e) normal support (plus memory), encoder space
    normals_r: torch.Tensor  # (B, n, r)
    anom_z: torch.Tensor | None  # (B, K, e) anomaly support, or None when K = 0
    anom_r: torch.Tensor | None
    scale: torch.Tensor  # (B,) the normal support's own leave-one-out distance
    ridge_w: torch.Tensor | None = None  # (B, F) embedding head weights, when K > 0
    raw_w: torch.Tensor | None = None  # (B, R) raw-feature head weights, when K > 0
    # Plain raw-feature prototypes (normal, anomaly) and the normals' mean distance to
    # theirs, when the raw-prototype term is on and K > 0.
    proto_n: torch.Tensor | None = None  # (B, 1, R)
    proto_a: torch.Tensor | None = None  # (B, 1, R)
    proto_scale: torch.Tensor | None = None  # (B,)
    # Task normalisation (``task_norm > 0``): the support normals' per-feature (per-channel
    # for windows) mean and floored std, applied to every row of the task before the net.
    norm_mu: torch.Tensor | None = None  # (B, 1, ..., F)
    norm_sd: torch.Tensor | None = None
    # The whole-window k-NN term (``raw_knn``): the flattened rows it measures against
    # (support normals, then the bank), the support normals' mean leave-one-out distance,
    # and the gain that puts the term on the spread of the rest of the logit.
    knn_ref: torch.Tensor | None = None  # (B, m, D)
    knn_mu: torch.Tensor | None = None  # (B,)
    knn_gain: torch.Tensor | None = None  # (B,)


class MetricCore:
    """The math shared by training, evaluation and serving (one adapt, one score)."""

    def __init__(
        self,
        net: MetricNet,
        k_nn: int,
        global_center: bool = True,
        anomaly_agg: str = "mean",
        ridge: bool = True,
        prior_head: bool = True,
        head: str = "logistic",
        newton_steps: int = 4,
        raw_proto: bool = False,
        task_norm: float = 0.0,
        raw_knn: bool = False,
    ) -> None:
        self.net = net
        self.task_norm = task_norm
        self.raw_proto = raw_proto
        self.raw_knn = raw_knn
        self.head = head
        self.newton_steps = newton_steps
        self.prior_head = prior_head
        self.k_nn = k_nn
        self.global_center = global_center
        self.anomaly_agg = anomaly_agg
        self.ridge = ridge

    def _mixed(self, qz: torch.Tensor, qr: torch.Tensor, rz: torch.Tensor, rr: torch.Tensor):
        w = F.softplus(self.net.mix)
        return w[0] * _sqdist(qz, rz) + w[1] * _sqdist(qr, rr)

    def _normal_distance(
        self,
        qz: torch.Tensor,
        qr: torch.Tensor,
        nz: torch.Tensor,
        nr: torch.Tensor,
        exclude_self: bool = False,
    ) -> torch.Tensor:
        if self.k_nn <= 0:
            cz, cr = nz.mean(1, keepdim=True), nr.mean(1, keepdim=True)
            return self._mixed(qz, qr, cz, cr)[..., 0]
        if exclude_self:
            d = self._mixed(qz, qr, nz, nr)
            eye = torch.eye(d.shape[-1], dtype=torch.bool, device=d.device)
            d = d.masked_fill(eye, float("inf"))
            k = max(min(self.k_nn, d.shape[-1] - 1), 1)
            return d.topk(k, dim=-1, largest=False).values.mean(-1)
        # Both spaces in one product: w0|dz|^2 + w1|dr|^2 = |[sqrt(w0) dz, sqrt(w1) dr]|^2.
        # The query's own norm does not change which normals are nearest, so it is added
        # after the top-k; scoring a million rows is then one matmul and one top-k.
        # |fn|^2 - 2 fq.fn as one product of augmented matrices [fq, 1] . [-2 fn, |fn|^2]:
        # no (rows x normals) bias copy, and the unsorted top-k is all the mean needs.
        w = F.softplus(self.net.mix).sqrt()
        fq = torch.cat([w[0] * qz, w[1] * qr], dim=-1)
        fn = torch.cat([w[0] * nz, w[1] * nr], dim=-1)
        fq_aug = torch.cat([fq, torch.ones_like(fq[..., :1])], dim=-1)
        fn_aug = torch.cat([-2 * fn, (fn * fn).sum(-1, keepdim=True)], dim=-1)
        partial = fq_aug @ fn_aug.transpose(1, 2)
        k = max(min(self.k_nn, partial.shape[-1]), 1)
        if k == 1:  # a plain reduction: ~40x cheaper per row than a top-k on CPU
            near = partial.amin(-1)
        else:
            near = partial.topk(k, dim=-1, largest=False, sorted=False).values.mean(-1)
        return (near + (fq * fq).sum(-1)).clamp_min(0.0)

    def adapt(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TaskState:
        """``xs (B, S, ...)``, ``ys (B, S)``; every task of a batch has the same K.

        ``memory`` is a bank of meta-train normal rows kept with the model (as k-NN keeps
        its reference set): it joins every task's normal support, so fifty support normals
        are not all the model knows about normal.
        """
        B, S = ys.shape
        norm_mask = ys[0] == 0  # same layout across the batch (sampler guarantees)
        mu = sd = None
        raw_memory = memory
        if self.task_norm > 0:
            mu, sd = task_moments(xs[:, norm_mask], self.task_norm)
            xs = task_normalise(xs, mu, sd)
            if memory is not None and len(memory):
                # The bank is moved into this task's frame, so it is embedded per task.
                memory = task_normalise(memory.unsqueeze(0).expand(B, *memory.shape), mu, sd)
                memory_emb = None
            raw_memory = memory
        z, r = self.net.embed(xs.reshape(B * S, *xs.shape[2:]))
        z, r = z.reshape(B, S, -1), r.reshape(B, S, -1)
        nz, nr = z[:, norm_mask], r[:, norm_mask]
        if nz.shape[1] >= 2:
            scale = self._normal_distance(nz, nr, nz, nr, exclude_self=True).mean(-1)
        else:
            scale = torch.ones(B, device=xs.device)
        if memory_emb is not None or (memory is not None and len(memory)):
            if memory_emb is not None:
                mz, mr = memory_emb
            elif memory is not None and mu is not None:  # (B, M, ...) in the task's frame
                M = memory.shape[1]
                mz, mr = self.net.embed(memory.reshape(B * M, *memory.shape[2:]))
                mz, mr = mz.reshape(B, M, -1), mr.reshape(B, M, -1)
            else:
                mz, mr = self.net.embed(memory)
            if mz.dim() == 2:
                mz, mr = mz.unsqueeze(0).expand(B, -1, -1), mr.unsqueeze(0).expand(B, -1, -1)
            nz = torch.cat([nz, mz], dim=1)
            nr = torch.cat([nr, mr], dim=1)
        anom_mask = ~norm_mask
        az = z[:, anom_mask] if anom_mask.any() else None
        ar = r[:, anom_mask] if anom_mask.any() else None
        st = TaskState(nz, nr, az, ar, scale.detach().clamp_min(_EPS) + scale - scale.detach())
        st.norm_mu, st.norm_sd = mu, sd
        if self.ridge and az is not None and ar is not None:
            st.ridge_w, st.raw_w = self._fit_heads(
                [self._emb_features(az), self._raw_features(ar)],
                [self._emb_features(nz), self._raw_features(nr)],
                [self.net.ridge_lam, self.net.raw_lam],
            )
        if self.raw_proto and anom_mask.any():
            un = raw_summary(xs[:, norm_mask].reshape(-1, *xs.shape[2:])).float()
            un = un.reshape(B, int(norm_mask.sum()), -1)
            ua = raw_summary(xs[:, anom_mask].reshape(-1, *xs.shape[2:])).float()
            st.proto_n = un.mean(1, keepdim=True)
            st.proto_a = ua.reshape(B, int(anom_mask.sum()), -1).mean(1, keepdim=True)
            spread = _eucl(un, st.proto_n)[..., 0].mean(-1)
            st.proto_scale = spread.clamp_min(_EPS)
        if self.raw_knn:
            self._add_knn_reference(
                st, xs[:, norm_mask], raw_memory, z[:, norm_mask], r[:, norm_mask]
            )
        return st

    def _add_knn_reference(
        self,
        st: TaskState,
        normals: torch.Tensor,
        memory: torch.Tensor | None,
        zn: torch.Tensor,
        rn: torch.Tensor,
    ) -> None:
        """The whole-window k-NN term's reference rows, centre and gain (``raw_knn``).

        The rows are the support normals and the bank, flattened, with no learned metric:
        the distance the ``knn`` baseline ranks by, which on Tennessee Eastman carries what
        the learned raw path (a window's per-channel mean and std) does not see
        (docs/benchmark-log.md, "Blending the ensemble with a baseline"). Nothing here is
        trained; only the term's weight is.

        The term is ``w * gain * (d - mu)``: ``mu`` and ``sd`` are the mean and spread of
        the support normals' own leave-one-out distances, and ``gain`` is the spread of the
        rest of the logit on the support normals divided by ``sd``. So at ``w = 1`` the
        distance enters with the weight the rest of the logit has on this task: the
        ensemble-plus-``knn`` blend, each standardised on the support normals, that the
        study measured, with the blend weight meta-learned. Without the gain the raw
        distance's spread on normals was ~35x below the rest's on Tennessee Eastman, and
        300 steps of AdamW at lr 1e-3 cannot move a softplus weight that far (it ended at
        1.03; K=5 AUPRC 0.722 against 0.719 without the term).
        """
        B, n = normals.shape[:2]
        with torch.no_grad():
            ref = normals.reshape(B, n, -1).float()
            if memory is not None and len(memory):
                flat = memory.reshape(*memory.shape[: memory.dim() - normals.dim() + 2], -1)
                if flat.dim() == 2:
                    flat = flat.unsqueeze(0).expand(B, -1, -1)
                ref = torch.cat([ref, flat.float()], dim=1)
            ones = torch.ones(B, device=ref.device)
            if n < 2 or ref.shape[1] < 3:  # no spread to measure: the distance as it is
                st.knn_ref, st.knn_mu, st.knn_gain = ref, 0 * ones, ones
                return
            with torch.autocast(ref.device.type, enabled=False):
                d2 = _sqdist(ref[:, :n], ref)
            own = torch.zeros_like(d2, dtype=torch.bool)
            own[:, torch.arange(n), torch.arange(n)] = True
            k = max(min(max(self.k_nn, 1), ref.shape[1] - 1), 1)
            loo = d2.masked_fill(own, float("inf")).topk(k, dim=-1, largest=False, sorted=False)
            dn = loo.values.sqrt().mean(-1)  # (B, n)
            un = None
            if st.proto_n is not None:
                un = raw_summary(normals.reshape(B * n, *normals.shape[2:])).float()
                un = un.reshape(B, n, -1)
            rest = self.logit_embedded(st, zn, rn, qu=un).float()  # before the term is set
            spread = dn.std(-1, unbiased=False).clamp_min(_EPS)
            st.knn_ref, st.knn_mu = ref, dn.mean(-1)
            st.knn_gain = rest.std(-1, unbiased=False) / spread

    def knn_term(self, st: TaskState, qf: torch.Tensor) -> torch.Tensor:
        """The weighted whole-window k-NN term of the logit for flattened queries ``qf
        (B, Q, D)`` in the task's frame: ``w * gain * (d - mu)`` (:meth:`_add_knn_reference`)."""
        if st.knn_ref is None or st.knn_mu is None or st.knn_gain is None:
            raise ValueError("the task state has no k-NN reference (raw_knn was off at adapt)")
        with torch.no_grad():
            d = _knn_mean(qf, st.knn_ref, max(self.k_nn, 1))
            d = st.knn_gain[:, None] * (d - st.knn_mu[:, None])
        return F.softplus(self.net.raw_knn_w) * d

    def _emb_features(self, z: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(*z.shape[:-1], 1, device=z.device, dtype=z.dtype)
        return torch.cat([z * np.sqrt(self.net.out_dim), ones], dim=-1)

    def _raw_features(self, r: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(*r.shape[:-1], 1, device=r.device, dtype=r.dtype)
        return torch.cat([r * np.sqrt(self.net.raw_dim), ones], dim=-1)

    def _fit_heads(
        self, pos: list[torch.Tensor], neg: list[torch.Tensor], lam_params: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Several heads on the same rows, solved as one batch.

        Each head's features are zero-padded to the widest; with the L2 penalty a padded
        weight is exactly 0, so the solutions are those of separate fits, but every Newton
        step is one set of kernels for all heads instead of one set per head.
        """
        width = max(p.shape[-1] for p in pos)
        B = pos[0].shape[0]

        def pad(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t.float(), (0, width - t.shape[-1]))

        lam = torch.stack([lp.float() for lp in lam_params]).repeat_interleave(B)
        w = self._fit_head(
            torch.cat([pad(p) for p in pos]), torch.cat([pad(n) for n in neg]), lam[:, None, None]
        )
        return [w[i * B : (i + 1) * B, : p.shape[-1]] for i, p in enumerate(pos)]

    def _fit_head(
        self, pos: torch.Tensor, neg: torch.Tensor, lam_param: torch.Tensor
    ) -> torch.Tensor:
        """A class-balanced linear head fitted to the support in closed form.

        ``head="ridge"``: least squares to +-1 (R2-D2, Bertinetto et al. 2019);
        ``head="logistic"``: L2-regularised logistic regression by a few Newton steps from
        the ridge solution (as MetaOptNet's differentiable solvers). The system is F x F, so
        it does not grow with the number of normals, and it is differentiable, so the
        encoder learns features on which a K-shot linear fit generalises to the whole type.

        Positives and negatives go into one weighted design matrix (each class weighs 1/2),
        and the SPD systems are solved by Cholesky: adaptation is latency-bound on CPU, and
        this halves the number of small kernels per Newton step. It runs in fp32 outside
        autocast, because bf16 normal equations are too coarse to solve.
        """
        with torch.autocast(pos.device.type, enabled=False):
            pos, neg = pos.float(), neg.float()
            X = torch.cat([pos, neg], dim=1)  # (B, K + n, F)
            c = torch.cat(
                [
                    X.new_full(pos.shape[:2], 0.5 / pos.shape[1]),
                    X.new_full(neg.shape[:2], 0.5 / neg.shape[1]),
                ],
                dim=1,
            )  # (B, K + n) class-balanced row weights
            t = torch.cat([X.new_ones(pos.shape[:2]), X.new_zeros(neg.shape[:2])], dim=1)
            lam = F.softplus(lam_param.float()) * 1e-2 + 1e-5
            reg = lam * torch.eye(X.shape[-1], device=X.device)
            Xt = X.transpose(1, 2)
            gram = (Xt * c.unsqueeze(1)) @ X
            rhs = Xt @ (c * (2 * t - 1)).unsqueeze(-1)  # targets +1 and -1
            w = torch.cholesky_solve(rhs, _chol(gram + reg))
            if self.head != "logistic":
                return w.squeeze(-1)
            for _ in range(self.newton_steps):
                p = torch.sigmoid(X @ w).squeeze(-1)  # (B, K + n)
                grad = Xt @ (c * (p - t)).unsqueeze(-1) + lam * w
                hess = (Xt * (c * p * (1 - p)).unsqueeze(1)) @ X + reg
                w = w - torch.cholesky_solve(grad, _chol(hess))
            return w.squeeze(-1)

    def logit(self, st: TaskState, xq: torch.Tensor) -> torch.Tensor:
        """Anomaly logit of query rows ``xq (B, Q, ...)`` under the task state."""
        B, Q = xq.shape[:2]
        if st.norm_mu is not None and st.norm_sd is not None:
            xq = task_normalise(xq, st.norm_mu, st.norm_sd)
        flat = xq.reshape(B * Q, *xq.shape[2:])
        qz, qr = self.net.embed(flat)
        qu = raw_summary(flat).float().reshape(B, Q, -1) if st.proto_n is not None else None
        qf = xq.reshape(B, Q, -1) if st.knn_ref is not None else None
        return self.logit_embedded(st, qz.reshape(B, Q, -1), qr.reshape(B, Q, -1), qu=qu, qf=qf)

    def logit_embedded(
        self,
        st: TaskState,
        qz: torch.Tensor,
        qr: torch.Tensor,
        dn: torch.Tensor | None = None,
        qu: torch.Tensor | None = None,
        qf: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`logit` from the query's embedding ``(B, Q, e)``, ``(B, Q, r)``.

        ``qu`` is the query's unweighted raw summary, needed when the state has raw
        prototypes; ``qf`` the query flattened ``(B, Q, D)`` (in the task's frame), needed
        when it has the whole-window k-NN reference.

        ``dn`` (the scaled normal distance) may be passed in when another task state with
        the same normal support already computed it: the k-NN is most of the scoring cost.
        """
        scale = st.scale.clamp_min(_EPS)[:, None]
        if dn is None:
            dn = self._normal_distance(qz, qr, st.normals_z, st.normals_r) / scale
        out = F.softplus(self.net.beta) * (dn - self.net.bias)
        if self.prior_head:
            out = out + self.net.prior(qz * np.sqrt(self.net.out_dim))[..., 0]
        if self.global_center:
            dg = ((qz - self.net.center) ** 2).sum(-1)
            out = out + F.softplus(self.net.gamma) * (dg - self.net.bias_g)
        if st.anom_z is not None and st.anom_r is not None:
            if self.anomaly_agg == "min":
                da = self._mixed(qz, qr, st.anom_z, st.anom_r).amin(-1) / scale
            else:
                cz, cr = st.anom_z.mean(1, keepdim=True), st.anom_r.mean(1, keepdim=True)
                da = self._mixed(qz, qr, cz, cr)[..., 0] / scale
            out = out + F.softplus(self.net.alpha) * (dn - da)
        if st.ridge_w is not None:
            head = torch.einsum("bqf,bf->bq", self._emb_features(qz), st.ridge_w)
            out = out + F.softplus(self.net.ridge_w) * head
        if st.raw_w is not None:
            head = torch.einsum("bqf,bf->bq", self._raw_features(qr), st.raw_w)
            out = out + F.softplus(self.net.raw_head_w) * head
        if st.proto_n is not None and st.proto_a is not None and st.proto_scale is not None:
            if qu is None:
                raise ValueError("the raw-prototype term needs the query's raw summary (qu)")
            d = _eucl(qu, st.proto_n)[..., 0] - _eucl(qu, st.proto_a)[..., 0]
            out = out + F.softplus(self.net.raw_proto_w) * d / st.proto_scale[:, None]
        if st.knn_ref is not None:
            if qf is None:
                raise ValueError("the whole-window k-NN term needs the flattened query (qf)")
            out = out + self.knn_term(st, qf)
        return out


class MetricAdapted:
    """A metric learner adapted to one task: score rows against the stored support state."""

    def __init__(self, core: MetricCore, state: TaskState, device: torch.device) -> None:
        self.core = core
        self.state = state
        self.device = device

    @torch.inference_mode()
    def score(self, X: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Scores in chunks: 4,096 rows on CPU (the rows x normals distance block then stays
        in cache; larger chunks were ~1.5x slower), 65,536 on CUDA (fewer launches)."""
        if chunk is None:
            chunk = 65536 if self.device.type == "cuda" else 4096
        return score_many([self], X, chunk)[0]


def _same_normals(a: TaskState, b: TaskState) -> bool:
    return (
        a.normals_z.shape == b.normals_z.shape
        and torch.equal(a.scale, b.scale)
        and torch.equal(a.normals_z, b.normals_z)
        and torch.equal(a.normals_r, b.normals_r)
        and (a.norm_mu is None) == (b.norm_mu is None)
        and (a.norm_mu is None or torch.equal(a.norm_mu, b.norm_mu))
        and (a.norm_sd is None or b.norm_sd is None or torch.equal(a.norm_sd, b.norm_sd))
    )


@dataclass
class _ScoringPlan:
    """A set of adapted states folded into one matrix product per chunk of rows.

    Under the default settings (``anomaly_agg="mean"``, no global centre) every term of the
    logit except the k-NN is linear in the query's embedding ``q = [e, u]`` (the encoder's
    output and the raw summary, before their scalings) or in its weighted squared norm
    ``|f|^2``: the anomaly-prototype distance minus the normal distance loses its ``|f|^2``,
    and the prior and the two heads are linear. So, per chunk:
    ``P = q @ W + bias`` holds ``|n_j|^2 - 2 f.n_j`` for every normal of every distinct
    normal support, and one column per state with its linear part (computed transposed);
    then the k-NN is a reduction over a slice of ``P`` and each logit is
    ``c1 * max(near + |f|^2, 0) + cf * |f|^2 + P[:, state] + c0``. Same function as
    :meth:`MetricCore.logit_embedded` (``tests/test_metric_scoring.py``), with one GEMM
    where the general path runs several small ones and copies.
    """

    WT: torch.Tensor  # (total normals + states, d), zero rows up to a multiple of 64
    bias: torch.Tensor  # (total normals + states, 1)
    d2: torch.Tensor  # (d,): |f|^2 = (q * q) @ d2
    groups: list[tuple[int, int]]  # column range of each distinct normal support
    group_of: list[int]  # per state
    c0: torch.Tensor  # (states,)
    c1: torch.Tensor
    cf: torch.Tensor
    # The raw-prototype term: rows ``-2 c`` (bias ``|c|^2``) of each state's normal and
    # anomaly prototypes follow the states' linear rows; ``u2`` gives ``|u|^2``.
    cp: torch.Tensor | None = None  # (states,) weight / normals' spread; 0 when K = 0
    u2: torch.Tensor | None = None  # (d,)


def _kernels() -> Any:
    """The compiled CPU kernels, imported on first use (numba compiles them once)."""
    from metaad.models import _kernels

    return _kernels


def _fusable(core: MetricCore, adapted: list[MetricAdapted]) -> bool:
    return (
        core.anomaly_agg == "mean"
        and not core.global_center
        and core.task_norm <= 0  # the embedding then depends on the state
        and not core.raw_knn  # a second k-NN, in another space: the general path
        and all(a.state.scale.shape == (1,) for a in adapted)
    )


def _scoring_plan(core: MetricCore, adapted: list[MetricAdapted], first: list[int]) -> _ScoringPlan:
    """Fold the states' terms into one matrix (see :class:`_ScoringPlan`), in fp32."""
    net = core.net
    E, R = net.out_dim, net.raw_dim
    w = F.softplus(net.mix.float())
    # zr = [z, r] = q * g (the scalings of MetricNet.embed); f = zr * D (the metric mix).
    g = torch.cat(
        [
            torch.full((E,), 1.0 / np.sqrt(E), device=w.device),
            F.softplus(net.raw_weight.float()) / np.sqrt(R),
        ]
    )
    D = torch.cat([w[0].sqrt().expand(E), w[1].sqrt().expand(R)])
    Dg = D * g
    cols: list[torch.Tensor] = []
    bias: list[torch.Tensor] = []
    groups: dict[int, tuple[int, int]] = {}
    at = 0
    for j in sorted(set(first)):
        st = adapted[j].state
        fn = torch.cat([st.normals_z[0], st.normals_r[0]], dim=-1).float() * D  # (m, d)
        if core.k_nn <= 0:
            fn = fn.mean(0, keepdim=True)
        cols.append(-2.0 * fn.T * Dg[:, None])
        bias.append((fn * fn).sum(-1))
        groups[j] = (at, at + len(fn))
        at += len(fn)
    beta = F.softplus(net.beta.float())
    c0, c1, cf = [], [], []
    for a in adapted:
        st = a.state
        s = st.scale.float().clamp_min(_EPS)[0]
        lin = torch.zeros_like(g)
        k0 = -beta * net.bias.float()
        alpha = torch.zeros_like(beta)
        if core.prior_head:
            lin[:E] += net.prior.weight[0].float() * np.sqrt(E)
            k0 = k0 + net.prior.bias[0].float()
        if st.anom_z is not None and st.anom_r is not None:
            alpha = F.softplus(net.alpha.float())
            fc = torch.cat([st.anom_z[0].mean(0), st.anom_r[0].mean(0)]).float() * D
            lin += (2.0 * alpha / s) * D * fc
            k0 = k0 - alpha / s * (fc * fc).sum()
        if st.ridge_w is not None:
            rw = F.softplus(net.ridge_w.float())
            lin[:E] += rw * st.ridge_w[0, :-1].float() * np.sqrt(E)
            k0 = k0 + rw * st.ridge_w[0, -1].float()
        if st.raw_w is not None:
            hw = F.softplus(net.raw_head_w.float())
            lin[E:] += hw * st.raw_w[0, :-1].float() * np.sqrt(R)
            k0 = k0 + hw * st.raw_w[0, -1].float()
        cols.append((lin * g)[:, None])
        bias.append(torch.zeros(1, device=g.device))
        c0.append(k0)
        c1.append((beta + alpha) / s)
        cf.append(-alpha / s)
    cp: list[torch.Tensor] = []
    if core.raw_proto:
        for kind in ("proto_n", "proto_a"):
            for a in adapted:
                c = getattr(a.state, kind)
                c = torch.zeros(R, device=g.device) if c is None else c[0, 0].float()
                cols.append(torch.cat([torch.zeros(E, device=g.device), -2.0 * c])[:, None])
                bias.append((c * c).sum()[None])
        for a in adapted:
            st = a.state
            if st.proto_n is None or st.proto_scale is None:
                cp.append(torch.zeros((), device=g.device))
            else:
                cp.append(F.softplus(net.raw_proto_w.float()) / st.proto_scale.float()[0])
    # Zero rows up to a multiple of 64: the GEMM kernels are much slower on odd sizes
    # (563 took twice as long as 576 on the 2-core CPU); nothing reads the padding.
    WT, b = torch.cat(cols, dim=1).T, torch.cat(bias)
    pad = -WT.shape[0] % 64
    return _ScoringPlan(
        WT=F.pad(WT, (0, 0, 0, pad)).contiguous(),
        bias=F.pad(b, (0, pad))[:, None],
        d2=Dg * Dg,
        groups=[groups[j] for j in sorted(groups)],
        group_of=[sorted(groups).index(j) for j in first],
        c0=torch.stack(c0),
        c1=torch.stack(c1),
        cf=torch.stack(cf),
        cp=torch.stack(cp) if cp else None,
        u2=torch.cat([torch.zeros(E, device=g.device), torch.ones(R, device=g.device)])
        if cp
        else None,
    )


def _fused_logits(core: MetricCore, plan: _ScoringPlan, x: torch.Tensor) -> torch.Tensor:
    """``(states, rows)`` logits of one chunk under a :class:`_ScoringPlan`."""
    q = torch.cat([core.net.encoder(x).float(), raw_summary(x).float()], dim=-1)
    # Transposed, (normals + states, rows): the k-NN then reduces over rows of PT, which
    # the CPU kernel streams as SIMD min/max over the queries.
    PT = torch.addmm(plan.bias, plan.WT, q.T)
    ff = (q * q) @ plan.d2
    near = []
    for lo, hi in plan.groups:
        k = 1 if core.k_nn <= 0 else min(core.k_nn, hi - lo)
        if k == 1:
            near.append(PT[lo:hi].amin(0))
        elif PT.device.type == "cpu":
            kern = _kernels()
            if k <= kern.MAX_UNROLLED_K:
                near.append(torch.from_numpy(kern.unrolled(k)(PT.numpy(), lo, hi)))
            else:
                near.append(torch.from_numpy(kern.kmin_mean(PT.numpy(), lo, hi, k)))
        else:
            near.append(PT[lo:hi].topk(k, dim=0, largest=False, sorted=False).values.mean(0))
    n_norm = plan.groups[-1][1]
    dnr = (torch.stack(near)[plan.group_of] + ff).clamp_min(0.0)  # (states, rows)
    S = len(plan.c0)
    lin = PT[n_norm : n_norm + S]
    out = plan.c1[:, None] * dnr + plan.cf[:, None] * ff + lin + plan.c0[:, None]
    if plan.cp is not None and plan.u2 is not None:
        uu = (q * q) @ plan.u2
        dp = (PT[n_norm + S : n_norm + 3 * S] + uu).clamp_min(0.0).add_(_EPS).sqrt_()
        out = out + plan.cp[:, None] * (dp[:S] - dp[S:])
    return out


@torch.inference_mode()
def score_many(adapted: list[MetricAdapted], X: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Scores of the same rows under several adapted states of one model, ``(len(adapted), n)``.

    Serving scores every request row under the normal profile and each known type; doing it
    state by state would embed the rows and run the k-NN against the same normals once per
    state. Here the rows are embedded once per chunk, and the normal distance is computed
    once per distinct normal support (states built from the same normals share it). Under
    the default settings all states are folded into one matrix product
    (:class:`_ScoringPlan`).
    """
    if not adapted:
        return np.empty((0, len(X)))
    core, device = adapted[0].core, adapted[0].device
    if any(a.core is not core for a in adapted):
        raise ValueError("score_many needs states adapted by one model")
    if chunk is None:
        chunk = 65536 if device.type == "cuda" else 4096
    # For each state, the index of the first state with the same normal support.
    first = []
    for i, a in enumerate(adapted):
        j = next((j for j in range(i) if _same_normals(adapted[j].state, a.state)), i)
        first.append(j)
    out = np.empty((len(adapted), len(X)), dtype=np.float64)
    plan = _scoring_plan(core, adapted, first) if _fusable(core, adapted) else None
    for i in range(0, len(X), chunk):
        xq = torch.as_tensor(X[i : i + chunk], device=device)
        if plan is not None:
            out[:, i : i + len(xq)] = _fused_logits(core, plan, xq).double().cpu().numpy()
            continue
        embedded: dict[
            int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
        ] = {}
        dns: dict[int, torch.Tensor] = {}
        for k, a in enumerate(adapted):
            st = a.state
            key = first[k] if core.task_norm > 0 else 0  # per normal support, or shared
            if key not in embedded:
                xk = xq[None]
                if st.norm_mu is not None and st.norm_sd is not None:
                    xk = task_normalise(xk, st.norm_mu, st.norm_sd)
                ez, er = core.net.embed(xk[0])
                eu = raw_summary(xk[0]).float()[None] if core.raw_proto else None
                ef = xk.reshape(1, len(xq), -1) if core.raw_knn else None
                embedded[key] = (ez[None], er[None], eu, ef)
            qz, qr, qu, qf = embedded[key]
            if first[k] not in dns:
                scale = st.scale.clamp_min(_EPS)[:, None]
                dns[first[k]] = core._normal_distance(qz, qr, st.normals_z, st.normals_r) / scale
            logit = core.logit_embedded(st, qz, qr, dn=dns[first[k]], qu=qu, qf=qf)
            out[k, i : i + len(xq)] = logit[0].double().cpu().numpy()
    return out


class MetricLearner(Detector):
    """Prototype-style meta-learner; ``loss`` picks how the embedding is shaped."""

    name: ClassVar[str] = "proto"
    family: ClassVar[str] = "metric"
    persistable: ClassVar[bool] = True
    default_loss: ClassVar[str] = "proto"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        *,
        loss: str | None = None,
        hidden: tuple[int, ...] | list[int] = (128, 64),
        out_dim: int = 32,
        k_nn: int = 5,
        aux_weight: float = 1.0,
        margin: float = 1.0,
        global_center: bool = False,
        anomaly_agg: str = "mean",
        ridge: bool = True,
        memory: int = 32,
        memory_select: str = "random",
        prior_head: bool = True,
        head: str = "logistic",
        synthetic_tasks: float = 0.25,
        raw_proto: bool = False,
        task_norm: float = 0.0,
        raw_knn: bool = False,
        seed: int = 0,
    ) -> None:
        loss = loss or self.default_loss
        if not (np.isfinite(task_norm) and task_norm >= 0):
            raise ConfigError(f"task_norm must be 0 (off) or a positive std floor, got {task_norm}")
        if not 0.0 <= synthetic_tasks <= 1.0:
            raise ConfigError(f"synthetic_tasks must be in [0, 1], got {synthetic_tasks}")
        if head not in ("ridge", "logistic"):
            raise ConfigError(f"head must be 'ridge' or 'logistic', got {head!r}")
        if memory_select not in MEMORY_SELECT:
            raise ConfigError(
                f"memory_select must be one of {list(MEMORY_SELECT)}, got {memory_select!r}"
            )
        if anomaly_agg not in ("mean", "min"):
            raise ConfigError(f"anomaly_agg must be 'mean' or 'min', got {anomaly_agg!r}")
        if loss not in LOSSES:
            raise ConfigError(f"unknown metric loss {loss!r}; choose one of {list(LOSSES)}")
        if k_nn < 0 or out_dim < 1 or aux_weight < 0 or margin <= 0:
            raise ConfigError("k_nn >= 0, out_dim >= 1, aux_weight >= 0, margin > 0 required")
        super().__init__(
            input_shape,
            loss=loss,
            hidden=[int(h) for h in hidden],
            out_dim=int(out_dim),
            k_nn=int(k_nn),
            aux_weight=float(aux_weight),
            margin=float(margin),
            global_center=bool(global_center),
            anomaly_agg=anomaly_agg,
            ridge=bool(ridge),
            memory=int(memory),
            memory_select=memory_select,
            prior_head=bool(prior_head),
            head=head,
            synthetic_tasks=float(synthetic_tasks),
            raw_proto=bool(raw_proto),
            task_norm=float(task_norm),
            raw_knn=bool(raw_knn),
            seed=int(seed),
        )
        torch.manual_seed(seed)
        if memory < 0:
            raise ConfigError(f"memory must be >= 0, got {memory}")
        self.net = MetricNet(self.input_shape, tuple(self.hparams["hidden"]), out_dim, int(memory))
        self.core = MetricCore(
            self.net,
            int(k_nn),
            bool(global_center),
            anomaly_agg,
            bool(ridge),
            bool(prior_head),
            head,
            raw_proto=bool(raw_proto),
            task_norm=float(task_norm),
            raw_knn=bool(raw_knn),
        )
        self.device = torch.device("cpu")
        self._mem_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- training -------------------------------------------------------------------------
    def _loss(self, xs, ys, xq, yq) -> torch.Tensor:
        st = self.core.adapt(xs, ys, self._memory())
        logit = self.core.logit(st, xq)
        yqf = yq.float()
        pos = yqf.sum(1, keepdim=True).clamp_min(1)
        neg = (1 - yqf).sum(1, keepdim=True).clamp_min(1)
        w = yqf / pos + (1 - yqf) / neg  # class-balanced within each task
        bce = (F.binary_cross_entropy_with_logits(logit, yqf, reduction="none") * w).sum(1).mean()
        kind = self.hparams["loss"]
        if kind == "proto":
            return bce
        aux = self.hparams["aux_weight"] * bce
        m = self.hparams["margin"]
        if kind == "deviation":
            # DevNet: normal scores near a N(0,1) reference, anomalies at least `m` sd above.
            ref = torch.randn(5000, device=logit.device)
            dev = (logit - ref.mean()) / ref.std()
            lo = ((1 - yqf) * dev.abs() + yqf * F.relu(5.0 * m - dev)) * w
            return lo.sum(1).mean() + aux
        B, Q = yq.shape
        qz, qr = self.net.embed(xq.reshape(B * Q, *xq.shape[2:]))
        emb = torch.cat([qz, qr], -1).reshape(B, Q, -1)
        d = _sqdist(emb, emb) + _EPS
        same = (yq[:, :, None] == yq[:, None, :]).float()
        eye = torch.eye(Q, device=d.device)[None]
        if kind == "contrastive":
            # Siamese pairs within the query: pull same-label pairs, push others past margin.
            pull = same * (1 - eye) * d
            push = (1 - same) * F.relu(m - d.sqrt()) ** 2
            pair_w = (1 - eye) / (Q * (Q - 1))
            return ((pull + push) * pair_w).sum((1, 2)).mean() + aux
        # triplet, batch-hard within each task
        hardest_pos = (d * same * (1 - eye)).amax(-1)
        hardest_neg = (d + 1e6 * same).amin(-1)
        return F.relu(hardest_pos - hardest_neg + m).mean() + aux

    def _gather(self, pool: Pool, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(pool.X[idx], device=self.device)

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
        hooks: TrainHooks | None = None,
    ) -> History:
        """Meta-train; ``hooks`` (off by default) add what DDP and resume need."""
        if pool.input_shape != self.input_shape:
            raise ConfigError(f"pool input shape {pool.input_shape} != model {self.input_shape}")
        self.device = resolve_device(cfg.device)
        self.net.to(self.device)
        self._mem_cache = None
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        n_mem = len(self.net.memory)
        if n_mem:
            normals = pool.normal_idx
            if self.hparams.get("memory_select", "random") == "coreset":
                pick = np.sort(coreset_indices(pool.X[normals], n_mem, rng, self.device))
                pick = normals[pick]
            else:
                pick = np.sort(rng.choice(normals, size=min(n_mem, len(normals)), replace=False))
            mem = torch.as_tensor(pool.X[pick], device=self.device)
            if len(pick) < n_mem:  # a small pool: repeat rows rather than leave zeros
                mem = mem[torch.arange(n_mem) % len(pick)]
            self.net.memory.copy_(mem)
            self.net.memory_filled.fill_(True)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        aug_gen = torch.Generator().manual_seed(cfg.seed + 7919)  # virtual types, own stream
        hist = History()
        val_tasks = _fixed_val_tasks(val, cfg) if val is not None else None
        best = (-np.inf, None)
        start = 1
        if hooks is not None:  # distributed / resumed training (metaad.distributed)
            if hooks.start is not None:
                hooks.start(list(self.net.parameters()))
            if hooks.resume is not None:
                self.net.load_state_dict(hooks.resume["model"])
                start, hist.records = restore_loop_state(hooks.resume, opt, rng, [aug_gen])
                best = (hooks.resume["best_val"], hooks.resume["best_state"])
        bar = tqdm(range(start, cfg.steps + 1), desc=f"train {self.name}", disable=not cfg.progress)
        for step in bar:
            shots = int(rng.choice(cfg.shots))
            tb = sample_task_batch(
                pool,
                rng,
                batch_size=cfg.meta_batch,
                shots=shots,
                n_support_normal=cfg.n_support_normal,
                n_query_normal=cfg.n_query_normal,
                n_query_anomaly=cfg.n_query_anomaly,
            )
            xs, xq = self._gather(pool, tb.support_idx), self._gather(pool, tb.query_idx)
            ys = torch.as_tensor(tb.support_y, device=self.device)
            yq = torch.as_tensor(tb.query_y, device=self.device)
            n_virtual = round(self.hparams["synthetic_tasks"] * len(ys))
            xs, xq = virtual_types(xs, ys, xq, yq, n_virtual, aug_gen)
            if hooks is not None:  # DDP: this process's slice of the batch
                xs, ys, xq, yq = hooks.take(xs, ys, xq, yq)
            self.net.train()
            with autocast(self.device):
                loss = self._loss(xs, ys, xq, yq)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hooks is not None and hooks.sync_gradients is not None:
                hooks.sync_gradients(list(self.net.parameters()))
            nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
            opt.step()
            values = {"loss": hooks.loss_value(loss) if hooks else float(loss.detach())}
            if val_tasks is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                values["val_auprc"] = self._val_auprc(val, val_tasks)
                if values["val_auprc"] > best[0]:
                    best = (values["val_auprc"], _clone_state(self.net))
            hist.log(step, **values)
            if callback is not None:
                callback(step, values)
            if hooks is not None and hooks.checkpoint_due(step, cfg.steps):
                hooks.write_checkpoint(  # type: ignore[misc]
                    snapshot(
                        step=step,
                        model=self.net.state_dict(),
                        optimizer=opt,
                        rng=rng,
                        history=hist.records,
                        best_val=best[0],
                        best_state=best[1],
                        generators=[aug_gen],
                    )
                )
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        if best[1] is not None:
            self.net.load_state_dict(best[1])
            log.info("%s: kept the weights with the best validation AUPRC %.4f", self.name, best[0])
        self.net.eval()
        return hist

    @torch.no_grad()
    def _val_auprc(self, val: Pool, tasks: list[Any]) -> float:
        from sklearn.metrics import average_precision_score

        self.net.eval()
        vals = []
        for tb in tasks:
            xs, xq = self._gather(val, tb.support_idx), self._gather(val, tb.query_idx)
            ys = torch.as_tensor(tb.support_y, device=self.device)
            st = self.core.adapt(xs, ys, self._memory())
            s = self.core.logit(st, xq).float().cpu().numpy()
            vals += [average_precision_score(tb.query_y[i], s[i]) for i in range(len(s))]
        return float(np.mean(vals))

    # -- contract -------------------------------------------------------------------------
    @torch.inference_mode()
    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> MetricAdapted:
        self.check_support(X_support, y_support)
        self.net.eval()
        order = np.argsort(-np.asarray(y_support), kind="stable")  # anomalies first
        xs = torch.as_tensor(np.asarray(X_support, dtype=np.float32)[order], device=self.device)
        ys = torch.as_tensor(np.asarray(y_support, dtype=np.int64)[order], device=self.device)
        if self.core.task_norm > 0:  # the bank is embedded in each task's own frame
            state = self.core.adapt(xs[None], ys[None], memory=self._memory())
        else:  # the bank's embedding is cached; its rows are read by the raw k-NN term
            state = self.core.adapt(
                xs[None], ys[None], memory=self._memory(), memory_emb=self._memory_embedding()
            )
        return MetricAdapted(self.core, state, self.device)

    def _memory_embedding(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The memory bank's embedding, computed once after training (adapt stays fast)."""
        mem = self._memory()
        if mem is None:
            return None
        if getattr(self, "_mem_cache", None) is None:
            with torch.inference_mode():
                self._mem_cache = self.net.embed(mem)
        return self._mem_cache

    def _memory(self) -> torch.Tensor | None:
        mem = self.net.memory
        return mem if len(mem) and bool(self.net.memory_filled) else None

    def to(self, device: str | torch.device) -> MetricLearner:
        """Move the network (memory bank included) to ``device``; adapt and score follow it."""
        self.device = torch.device(device)
        self.net.to(self.device)
        self._mem_cache = None
        return self

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.get_config(), indent=1))
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        return directory

    def load_weights(self, directory: str | Path) -> None:
        state = torch.load(Path(directory) / "weights.pt", weights_only=True, map_location="cpu")
        for key, option, term in (
            ("raw_proto_w", "raw_proto", "raw-prototype"),
            ("raw_knn_w", "raw_knn", "whole-window k-NN"),
        ):
            if key in state:
                continue
            # saved before the term existed; its weight is unused when the term is off
            if getattr(self.core, option):
                raise ConfigError(
                    f"{directory}: the weights have no {key} (saved before the {term} term "
                    f"existed), but the config asks for {option}=true"
                )
            state[key] = getattr(self.net, key).detach().cpu()
        self.net.load_state_dict(state)
        self.net.to(self.device).eval()
        self._mem_cache = None


def coreset_indices(
    X: np.ndarray,
    n: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
    max_candidates: int = 50_000,
) -> np.ndarray:
    """``n`` rows of ``X`` chosen by greedy k-center (farthest-point) selection.

    Why: a random sample of the normals keeps the dense modes many times over and may miss
    a rare mode entirely; the k-NN term then calls that mode's normals far from normal. The
    greedy k-center set covers the normals, so every normal row is within the cover radius
    of a kept row (the coreset of PatchCore, Roth et al. 2022, there on patch features,
    here on the preprocessed rows; windows are flattened). It starts from one random row and
    adds, each step, the row farthest from all kept ones. Above ``max_candidates`` rows a
    random subset is covered instead, so the cost stays ``n x max_candidates`` distances.
    Exact duplicates are never picked twice while distinct rows remain.
    """
    m = len(X)
    if m <= n:
        return np.arange(m)
    cand = np.arange(m)
    if m > max_candidates:
        cand = np.sort(rng.choice(m, size=max_candidates, replace=False))
    x = torch.as_tensor(X[cand].reshape(len(cand), -1), dtype=torch.float32, device=device)
    first = int(rng.integers(len(cand)))
    picked = [first]
    mind = ((x - x[first]) ** 2).sum(-1)
    for _ in range(n - 1):
        nxt = int(torch.argmax(mind))
        picked.append(nxt)
        mind = torch.minimum(mind, ((x - x[nxt]) ** 2).sum(-1))
    return cand[np.asarray(picked)]


def _clone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _fixed_val_tasks(val: Pool, cfg: FitConfig) -> list[Any] | None:
    """A few validation task batches drawn once, so validation AUPRC is comparable step to step."""
    rng = np.random.default_rng([cfg.seed, 99])
    shots = max(cfg.shots)
    # 200 query normals where the val pool has them; a smaller pool (a user's small table)
    # still validates, with fewer, rather than training without early stopping at all.
    n_query_normal = max(min(200, len(val.normal_idx) - cfg.n_support_normal), cfg.n_query_normal)
    try:
        return [
            sample_task_batch(
                val,
                rng,
                batch_size=8,
                shots=shots,
                n_support_normal=cfg.n_support_normal,
                n_query_normal=n_query_normal,
                n_query_anomaly=10,
            )
            for _ in range(2)
        ]
    except Exception as exc:  # a val split too small is a warning, not a failed run
        log.warning("validation tasks unavailable (%s); training without early stopping", exc)
        return None


class ContrastiveLearner(MetricLearner):
    name = "siamese"
    default_loss = "contrastive"


class TripletLearner(MetricLearner):
    name = "triplet"
    default_loss = "triplet"


class DeviationLearner(MetricLearner):
    name = "deviation"
    default_loss = "deviation"


METRIC_MODELS: dict[str, type[MetricLearner]] = {
    cls.name: cls for cls in (MetricLearner, ContrastiveLearner, TripletLearner, DeviationLearner)
}
