"""Evaluation units: one method, fitted with one seed, scored on one project's frozen episodes.

A unit depends on nothing but its arguments and the files under the project root (the
frozen episodes and, for the trained meta-learner, the model bundle): it seeds every
random stream itself before fitting, and every detector adapts to an episode from that
episode's support alone. So units can run in any order, in any process, on any machine
that sees the project folder, and give the same per-episode rows. The sequential
evaluation stage (:func:`metaad.stages.evaluate`) runs them one after another; a Prefect
flow maps them as tasks on a Dask cluster (``flows/evaluate_fanout.py``) and hands the
results to :func:`metaad.stages.finish_evaluation`, which writes the same outputs.

A dataset is a project root with its ``params``: a benchmark over several datasets maps
units over (params, root) pairs as well; ``EvalUnit.dataset`` only labels them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # importing the stages pulls in torch; keep this module light to import
    from metaad.bundle import ModelBundle
    from metaad.config import Params
    from metaad.stages import Prepared

log = logging.getLogger(__name__)

__all__ = ["EvalUnit", "UnitResult", "evaluate_unit", "plan_units"]


@dataclass(frozen=True)
class EvalUnit:
    """One method fitted with one seed; ``dataset`` labels the project it runs on."""

    method: str
    seed: int
    dataset: str = ""

    def label(self, base_seed: int) -> str:
        """The ``method`` column's value: the plain name at the configured seed.

        Other seeds get ``name@s<seed>`` so the per-episode rows of two seeds of one
        method never collide (the summaries refuse duplicated episode rows).
        """
        return self.method if self.seed == base_seed else f"{self.method}@s{self.seed}"


@dataclass(frozen=True)
class UnitResult:
    """What one unit produced: its episode rows and what the report needs besides."""

    unit: EvalUnit
    label: str
    family: str
    per_episode: pd.DataFrame
    #: Seconds spent fitting; None for the trained meta-learner, which is loaded, not fitted.
    fit_seconds: float | None
    #: (query labels, scores) on the first episode at the gate's K, for the PR-curve plot.
    curve: tuple[np.ndarray, np.ndarray] | None
    seconds: float
    #: ``host:pid`` of the process that ran the unit (where a task runner put it).
    worker: str = ""


def plan_units(
    params: Params,
    trained_method: str,
    *,
    seeds: Sequence[int] | None = None,
    dataset: str = "",
) -> list[EvalUnit]:
    """The units of one evaluation, in the order of the sequential stage.

    The trained method first, then ``evaluate.methods`` (without repeating it); each for
    every seed in ``seeds`` (default: just ``train.seed``).
    """
    methods = [trained_method] + [m for m in params.evaluate.methods if m != trained_method]
    chosen = tuple(seeds) if seeds else (params.train.seed,)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"seeds must be distinct, got {list(chosen)}")
    return [EvalUnit(m, int(s), dataset) for s in chosen for m in methods]


def evaluate_unit(
    params: Params,
    root: str | Path,
    unit: EvalUnit,
    *,
    prep: Prepared | None = None,
    bundle: ModelBundle | None = None,
    progress: bool = False,
) -> UnitResult:
    """Fit (or load) ``unit.method`` and score it on every frozen episode of ``root``.

    The trained meta-learner at ``train.seed`` is the bundle in ``artifacts/model`` (what
    gets registered); at another seed it is trained again with ``train.hparams``. Every
    other method is fitted from the meta-train pool with its defaults, as in the sequential
    stage. ``prep`` and ``bundle`` only save loading them again when the caller has them.
    """
    from metaad.bundle import ModelBundle
    from metaad.device import seed_everything
    from metaad.evaluation.runner import evaluate_detector
    from metaad.models.registry import family_of
    from metaad.stages import Layout, load_prepared, train_method

    t0 = time.perf_counter()
    root = Path(root)
    prep = load_prepared(params, root) if prep is None else prep
    if bundle is None:
        bundle = ModelBundle.load(Layout(root).model)
    trained = bundle.detector.name
    base_seed = params.train.seed
    seed_everything(unit.seed)  # the unit's streams never depend on what ran before it
    fit_seconds: float | None = None
    if unit.method == trained and unit.seed == base_seed:
        det = bundle.detector
    else:
        p = params
        if unit.seed != base_seed:
            p = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=unit.seed))
        # train.hparams belong to train.method; every other method runs its defaults
        hparams = None if unit.method == trained else {}
        det, _, fit_seconds = train_method(p, prep, unit.method, progress=progress, hparams=hparams)
    label = unit.label(base_seed)
    test = prep.pools["test"]
    per = evaluate_detector(det, test, prep.episodes, method=label, progress=progress)
    gate_k = params.evaluate.gate_k
    curve: tuple[np.ndarray, np.ndarray] | None = None
    ep = next((x for x in prep.episodes if x.shots == gate_k), None)
    if ep is not None:
        s = det.adapt(test.X[ep.support_idx], ep.support_y).score(test.X[ep.query_idx])
        curve = (np.asarray(ep.query_y), np.asarray(s))
    at_k = per[per.shots == gate_k]
    log.info(
        "evaluate: %s%s macro AUPRC@K=%d %.3f",
        label,
        f" on {unit.dataset}" if unit.dataset else "",
        gate_k,
        at_k.auprc.mean() if len(at_k) else np.nan,
    )
    return UnitResult(
        unit=unit,
        label=label,
        family=family_of(unit.method),
        per_episode=per,
        fit_seconds=fit_seconds,
        curve=curve,
        seconds=time.perf_counter() - t0,
        worker=f"{os.uname().nodename}:{os.getpid()}",
    )


def results_frame(results: Sequence[UnitResult]) -> pd.DataFrame:
    """The units' per-episode rows in one frame, in the order given."""
    frames: list[Any] = [r.per_episode for r in results]
    if not frames:
        raise ValueError("no evaluation units to combine")
    return pd.concat(frames, ignore_index=True)
