"""The unseen-type benchmark on real datasets (DESIGN.md, "Evaluation protocol").

For each dataset: its loader's protocol fixes the unseen types and which normal rows an
episode may use (:mod:`metaad.datasets`); preprocessing is fitted on meta-train rows only;
then, for each seed, evaluation episodes are drawn once, written to disk, read back, and
every method -- every meta-learner and every baseline -- is trained with that seed and scored
on exactly those episodes (:func:`metaad.evaluation.runner.evaluate_detector`). The sha256 of
each frozen episode file is recorded next to every method's results, so "the same episodes
for all" is checked, not assumed.

Summaries are the pipeline's own (:func:`~metaad.evaluation.runner.summarise`: mean and 95%
t-interval over episodes, macro over unseen types); repetitions are numbered across seeds, so
a macro interval spans episode draws and training seeds. Outputs: ``results.json``,
``results.md`` (tables with intervals and the headline checks of issue 4), ``per_episode.csv``
and one ``auprc_vs_k_<dataset>.png`` per dataset; optionally one MLflow run holding all of it.

Beside the best meta-learner on the unseen types (a best-of-many, which flatters), every run
reports the one a user would have picked without looking: per seed, the meta-learner with the
highest AUPRC on the same meta-validation episodes (:func:`val_episodes`, :func:`val_selected`).

Nothing here knows about Prefect or Typer: ``flows/benchmark.py`` and ``metaad benchmark``
are thin shells over :func:`run_benchmark`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.benchmark_units import Unit, UnitStore, fingerprint
from metaad.config import BenchmarkConfig, Params, TrainConfig
from metaad.data.schema import LABEL, SERIES, TYPE, anomaly_types, check_canonical
from metaad.datasets.base import NORMALS_SOURCE, LoadedDataset, Protocol
from metaad.episodes.pool import Pool
from metaad.episodes.preprocess import Preprocessor, make_windows
from metaad.episodes.sampler import EpisodeSet, build_eval_episodes
from metaad.episodes.split import SPLITS, TypeSplit, assign_by_source, assign_rows, split_types
from metaad.errors import ConfigError, DataError, MetaADError

log = logging.getLogger(__name__)

#: Train shots of the meta-learners (as in the pipeline's ``train.shots``).
TRAIN_SHOTS: tuple[int, ...] = (1, 5, 10)
#: The K of the headline comparison, and the pair of the "one label vs ten" check.
HEADLINE_K = 5
ONE_SHOT_K, TEN_SHOT_K = 1, 10
#: The gradient-boosted classifiers of the "one label vs ten" check; the stronger of those
#: present at K=10 is the bar (hgb_sup alone was the bar before catboost ran, and on SKAB and
#: Sparkov catboost at K=10 is the stronger).
GBM_METHODS: tuple[str, ...] = ("hgb_sup", "catboost")
#: The margin the best meta-learner must beat the best baseline by (issue 4).
WIN_MARGIN = 0.05


# -- preparing a dataset ---------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedDataset:
    """A dataset split into pools, with the types it is evaluated on and the ones it is not.

    ``dropped_types`` maps an unseen type that cannot fill an episode (too few rows or
    windows for the largest K plus the query anomalies) to the reason; it is reported, never
    padded by sampling with replacement.
    """

    name: str
    protocol: Protocol
    split: TypeSplit
    preprocessor: Preprocessor
    pools: dict[str, Pool]
    window: dict[str, int] | None
    test_types: tuple[str, ...]
    dropped_types: dict[str, str]
    categorical: tuple[str, ...] = ()
    report: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What a reader needs to judge the numbers: split, pool sizes, drops, protocol."""
        return {
            "protocol": self.protocol.to_dict(),
            "split": self.split.to_dict(),
            "evaluated_types": list(self.test_types),
            "dropped_types": dict(self.dropped_types),
            "window": self.window,
            "features": len(self.preprocessor.output_names),
            "pools": {
                s: {
                    "rows_or_windows": len(p),
                    "normals": len(p.normal_idx),
                    "anomalies": int(p.y.sum()),
                    "per_type": {t: len(p.type_index[t]) for t in p.anomaly_types},
                }
                for s, p in self.pools.items()
            },
        }


def query_anomalies(protocol: Protocol) -> int:
    """Query anomalies per episode: the stated contamination of ``n_query_normal`` normals."""
    c = protocol.contamination
    return max(1, round(protocol.n_query_normal * c / (1.0 - c)))


def _pool(df: pd.DataFrame, pre: Preprocessor, window: dict[str, int] | None) -> Pool:
    X = pre.transform(df)
    if window:
        W, y, t, g = make_windows(df, X, **window)
        codes = np.unique(g, return_inverse=True)[1].astype(np.int64)
        return Pool(W, y, t, tuple(pre.output_names), codes)
    return Pool(X, df[LABEL].to_numpy(np.int64), df[TYPE].astype(str).to_numpy(), ())


def cap_types(pool: Pool, cap: int, *, seed: int) -> Pool:
    """``pool`` with at most ``cap`` rows of each anomaly type (normals untouched)."""
    rng = np.random.default_rng([seed, 3])
    keep = [pool.normal_idx]
    for t in pool.anomaly_types:
        idx = pool.type_index[t]
        keep.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return pool.subset(np.sort(np.concatenate(keep)))


def prepare_dataset(
    ds: LoadedDataset,
    *,
    shots: Sequence[int],
    split_seed: int = 0,
    protocol: Protocol | None = None,
) -> PreparedDataset:
    """Split ``ds`` by its protocol, fit preprocessing on meta-train rows, build the pools."""
    p = protocol or ds.protocol
    if p is None:
        raise ConfigError(
            f"dataset {ds.name!r} has no anomaly types, so the unseen-type benchmark does not "
            "apply; use the ADBench check (metaad adbench) for binary sets"
        )
    df = ds.table
    check_canonical(df, categorical=ds.categorical)
    present = anomaly_types(df)
    listed = [t for t in (*p.train_types, *p.val_types, *p.test_types) if t not in present]
    if listed:
        log.info("%s: listed types absent from the table: %s", ds.name, listed)
    split = split_types(
        present,
        seed=split_seed,
        n_val=p.n_val_types,
        n_test=p.n_test_types,
        train=[t for t in p.train_types if t in present],
        val=[t for t in p.val_types if t in present],
        test=[t for t in p.test_types if t in present],
    )
    if p.normals == NORMALS_SOURCE:
        rows = assign_by_source(df, split, seed=split_seed, val_share=p.val_normal_share)
    else:
        rows = assign_rows(df, split, seed=split_seed)
    frames = {s: df[rows == s] for s in SPLITS}
    if frames["train"].empty or frames["test"].empty:
        raise DataError(f"{ds.name}: the protocol leaves no meta-train or no evaluation rows")
    pre = Preprocessor.fit(frames["train"], categorical=ds.categorical)
    window = {"window": p.window, "stride": p.stride} if p.window else None
    if window and SERIES not in df.columns:
        raise DataError(f"{ds.name}: the protocol asks for windows but the table has no series")
    pools = {s: _pool(f, pre, window) for s, f in frames.items() if len(f)}
    if p.max_rows_per_train_type is not None:
        for s in ("train", "val"):
            if s in pools:
                pools[s] = cap_types(pools[s], p.max_rows_per_train_type, seed=split_seed)
    need = max(shots) + query_anomalies(p)
    test_pool = pools["test"]
    unit = "windows" if window else "rows"
    kept, dropped = [], {}
    for t in split.test:
        have = len(test_pool.type_index.get(t, ()))
        if have >= need:
            kept.append(t)
        else:
            dropped[t] = f"{have} {unit}; K={max(shots)} + {query_anomalies(p)} query need {need}"
    if not kept:
        raise DataError(f"{ds.name}: no unseen type has the {need} {unit} an episode needs")
    have_normals = len(test_pool.normal_idx)
    if have_normals < p.n_support_normal + p.n_query_normal:
        raise DataError(
            f"{ds.name}: {have_normals} evaluation normal {unit}; an episode needs "
            f"{p.n_support_normal + p.n_query_normal}"
        )
    return PreparedDataset(
        name=ds.name,
        protocol=p,
        split=split,
        preprocessor=pre,
        pools=pools,
        window=window,
        test_types=tuple(kept),
        dropped_types=dropped,
        categorical=ds.categorical,
        report=ds.report,
    )


# -- frozen episodes --------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def freeze_episodes(
    prep: PreparedDataset, *, seed: int, shots: Sequence[int], n_episodes: int, path: Path
) -> tuple[EpisodeSet, str]:
    """Draw the seed's episodes, write them, and return them *as read back* with their digest.

    Reading back what was written means every method is scored on the stored file, the
    one a later reader can re-score, and the fingerprint check ties it to the pool.
    """
    p = prep.protocol
    eps = build_eval_episodes(
        prep.pools["test"],
        shots=shots,
        n_episodes=n_episodes,
        n_support_normal=p.n_support_normal,
        n_query_normal=p.n_query_normal,
        contamination=p.contamination,
        seed=seed,
        types=prep.test_types,
    )
    eps.save(path)
    return EpisodeSet.load(path, prep.pools["test"]), sha256_of(path)


#: Meta-validation episodes per val type, at K = HEADLINE_K, for picking a meta-learner.
VAL_EPISODES = 16


def val_episodes(prep: PreparedDataset, *, seed: int) -> EpisodeSet | None:
    """The seed's meta-validation episodes: the test protocol on the val pool, at K=5.

    Every meta-learner is scored on these same episodes, so their numbers compare (the
    validation each learner runs while fitting does not: the metric and MAML families draw
    their own tasks with other query sizes, and AUPRC depends on the anomaly fraction).
    Val types too small for an episode are left out; ``None`` when none is left or the val
    pool lacks normals, and then no meta-learner is picked.
    """
    pool = prep.pools.get("val")
    p = prep.protocol
    if pool is None or len(pool.normal_idx) < p.n_support_normal + p.n_query_normal:
        return None
    need = HEADLINE_K + query_anomalies(p)
    types = [t for t in pool.anomaly_types if len(pool.type_index[t]) >= need]
    if not types:
        return None
    return build_eval_episodes(
        pool,
        shots=(HEADLINE_K,),
        n_episodes=VAL_EPISODES,
        n_support_normal=p.n_support_normal,
        n_query_normal=p.n_query_normal,
        contamination=p.contamination,
        seed=seed,
        types=types,
    )


# -- running ---------------------------------------------------------------------------------
def train_params(
    cfg: BenchmarkConfig, protocol: Protocol, seed: int, method: str, *, dataset: str
) -> Params:
    """The training settings of one (method, seed) on ``dataset``: the pipeline's Params with
    the benchmark's values (its steps and hyperparameters per dataset and method:
    :meth:`BenchmarkConfig.steps_of`, :meth:`BenchmarkConfig.hparams_of`)."""
    hp = cfg.hparams_of(dataset, method)
    steps = cfg.steps_of(dataset, method)
    return Params(
        train=TrainConfig(
            method=method,
            seed=int(seed),
            steps=steps,
            meta_batch=cfg.meta_batch,
            shots=TRAIN_SHOTS,
            n_support_normal=protocol.n_support_normal,
            device=cfg.device,
            val_every=max(1, min(100, steps // 5 or 1)),
            hparams=hp,
        )
    )


def check_steps_for(cfg: BenchmarkConfig, datasets: Sequence[str]) -> None:
    """Refuse a ``steps_for`` or ``hparams_for`` entry that would do nothing: a dataset
    neither registered nor run, a method that does not exist, or (``steps_for``) a method
    that is not a meta-learner (a baseline has no meta-training steps)."""
    from metaad.datasets.registry import DATASETS
    from metaad.models.registry import family_of, list_methods

    known_sets = set(DATASETS) | set(datasets)
    methods = sorted(list_methods())
    learners = sorted(m for m in methods if family_of(m) in ("metric", "maml"))
    why = {
        "hparams_for": lambda m: f"no method {m!r}; methods: {methods}",
        "steps_for": lambda m: (
            f"{m!r} is not a meta-learner, so it has no meta-training "
            f"steps; meta-learners: {learners}"
        ),
    }
    for key, entries, allowed in (
        ("hparams_for", cfg.hparams_for, methods),
        ("steps_for", cfg.steps_for, learners),
    ):
        for ds, by_method in entries.items():
            if ds not in known_sets:
                raise ConfigError(
                    f"benchmark.{key} names dataset {ds!r}, which is neither registered nor "
                    f"run; known: {sorted(known_sets)}"
                )
            for m in by_method:
                if m not in allowed:
                    raise ConfigError(f"benchmark.{key}.{ds}.{m}: {why[key](m)}")


@dataclass
class DatasetResult:
    name: str
    per_episode: pd.DataFrame
    summary: pd.DataFrame
    families: dict[str, str]
    episodes_sha256: dict[int, str]
    method_episodes: dict[str, dict[int, str]]
    fit_seconds: dict[str, list[float]]
    eval_seconds: dict[str, list[float]]
    description: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    #: method -> "seed N: what went wrong"; a failed method is left out of every table of
    #: this dataset (all its seeds), so no row mixes seeds that ran with seeds that did not.
    failures: dict[str, str] = field(default_factory=dict)
    #: method -> things a reader of its numbers must know, one line each: a seed whose
    #: meta-training diverged and stopped at its best validation, a failure in one run that a
    #: later run on the same episodes replaced (``merge_benchmarks``).
    notes: dict[str, list[str]] = field(default_factory=dict)
    #: meta-learner -> seed -> its macro AUPRC on the seed's meta-validation episodes
    #: (:func:`val_episodes`: the val types, never the unseen ones); :func:`val_selected`
    #: picks a meta-learner per seed by it.
    val_auprc: dict[str, dict[int, float]] = field(default_factory=dict)


def _run_unit(
    prep: PreparedDataset,
    stage_prep: Any,
    params: Params,
    method: str,
    eps: EpisodeSet,
    val_eps: EpisodeSet | None,
    path: Path,
    digest: str,
    family: str,
    cfg: BenchmarkConfig,
    progress: bool,
) -> Unit:
    """Train one method with one seed, score it on the frozen episodes (and meta-val)."""
    from metaad.evaluation.runner import evaluate_detector
    from metaad.stages import train_method

    seed = params.train.seed
    det, hist, secs = train_method(
        params, stage_prep, method, progress=progress, hparams=params.train.hparams
    )
    t1 = time.perf_counter()
    # the file on disk, not the object in memory: what every method is scored on
    if sha256_of(path) != digest:
        raise DataError(f"{path} changed while the benchmark was running")
    per = evaluate_detector(
        det, prep.pools["test"], eps, method=method, shots=cfg.shots, progress=progress
    )
    unit = Unit(per=per, fit_s=round(secs, 3), eval_s=round(time.perf_counter() - t1, 3))
    if hist.diverged_at is not None:
        unit.notes.append(
            f"seed {seed}: meta-training diverged at step {hist.diverged_at} of "
            f"{params.train.steps}; the weights of its best validation before that were kept"
        )
    if val_eps is not None and family in ("metric", "maml"):
        try:
            vper = evaluate_detector(
                det, prep.pools["val"], val_eps, method=method, shots=(HEADLINE_K,)
            )
            v = float(vper.groupby("type")["auprc"].mean().mean())
            if not np.isfinite(v):
                raise ValueError(f"macro AUPRC {v}")
            unit.val_auprc = round(v, 6)
        except (MetaADError, ValueError, FloatingPointError, RuntimeError) as exc:
            # its test numbers stand; without a val number no meta-learner is picked
            unit.notes.append(f"seed {seed}: scoring its meta-validation episodes failed ({exc})")
    return unit


def run_dataset(
    prep: PreparedDataset,
    cfg: BenchmarkConfig,
    out_dir: Path,
    *,
    progress: bool = False,
    on_method: Callable[[str, int, str, float], None] | None = None,
    resume: bool = False,
) -> DatasetResult:
    """Every method of ``cfg`` on ``prep``, seed by seed, on the seed's frozen episodes.

    Each (seed, method) is written to ``out_dir/units`` as soon as it is scored; with
    ``resume`` a unit found there under the same settings is taken back instead of run
    again (:mod:`metaad.benchmark_units`), so a stopped run loses only the unit in flight.
    """
    from metaad.evaluation.runner import summarise
    from metaad.models.registry import family_of
    from metaad.stages import Prepared

    out_dir.mkdir(parents=True, exist_ok=True)
    store = UnitStore(out_dir / "units")
    families = {m: family_of(m) for m in cfg.methods}
    frames: list[pd.DataFrame] = []
    digests: dict[int, str] = {}
    seen: dict[str, dict[int, str]] = {m: {} for m in cfg.methods}
    fit_s: dict[str, list[float]] = {m: [] for m in cfg.methods}
    eval_s: dict[str, list[float]] = {m: [] for m in cfg.methods}
    failures: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    val_auprc: dict[str, dict[int, float]] = {}
    for si, seed in enumerate(cfg.seeds):
        path = out_dir / f"episodes_seed{seed}.npz"
        eps, digest = freeze_episodes(
            prep, seed=seed, shots=cfg.shots, n_episodes=cfg.n_episodes, path=path
        )
        digests[int(seed)] = digest
        val_eps = val_episodes(prep, seed=seed)
        stage_prep = Prepared(prep.split, prep.preprocessor, prep.pools, eps, prep.window)
        for method in cfg.methods:
            if method in failures:
                continue
            params = train_params(cfg, prep.protocol, seed, method, dataset=prep.name)
            fp = fingerprint(
                dataset=prep.name,
                episodes_sha256=digest,
                train=params.train,
                shots=cfg.shots,
                n_episodes=cfg.n_episodes,
            )
            unit = store.load(seed, method, fp) if resume else None
            if unit is not None:
                log.info("%s seed %s %s: taken from %s", prep.name, seed, method, store.dir)
            else:
                try:
                    unit = _run_unit(prep, stage_prep, params, method, eps, val_eps, path, digest,
                                     families[method], cfg, progress)  # fmt: skip
                except (MetaADError, ValueError, FloatingPointError, RuntimeError) as exc:
                    if isinstance(exc, DataError):
                        raise  # the episodes or the data are wrong: no number would be valid
                    # One method diverging (a MAML run whose adapted scores overflow, say)
                    # must not throw away hours of the others' results: it is reported by
                    # name.
                    failures[method] = f"seed {seed}: {type(exc).__name__}: {exc}"
                    log.error("%s seed %s %s failed: %s", prep.name, seed, method, exc)
                    continue
                store.save(seed, method, fp, unit)
            if unit.notes:
                notes.setdefault(method, []).extend(unit.notes)
            if unit.val_auprc is not None:
                val_auprc.setdefault(method, {})[int(seed)] = unit.val_auprc
            per = unit.per.copy()
            per.insert(0, "dataset", prep.name)
            per.insert(1, "seed", int(seed))
            per["rep"] = per["rep"] + si * cfg.n_episodes
            frames.append(per)
            seen[method][int(seed)] = digest
            fit_s[method].append(unit.fit_s)
            eval_s[method].append(unit.eval_s)
            k5 = per.loc[per["shots"] == HEADLINE_K, "auprc"]
            log.info(
                "%s seed %s %s: fit %.1fs, eval %.1fs, AUPRC@K=%d %.3f",
                prep.name,
                seed,
                method,
                unit.fit_s,
                unit.eval_s,
                HEADLINE_K,
                k5.mean() if len(k5) else float("nan"),
            )
            if on_method is not None:
                on_method(prep.name, int(seed), method, float(k5.mean()) if len(k5) else np.nan)
    frames = [f for f in frames if f["method"].iat[0] not in failures]
    if not frames:
        raise MetaADError(f"{prep.name}: every method failed: {failures}")
    per_episode = pd.concat(frames, ignore_index=True)
    summary = summarise(per_episode.drop(columns=["dataset", "seed"]))
    return DatasetResult(
        name=prep.name,
        per_episode=per_episode,
        summary=summary,
        families={m: f for m, f in families.items() if m not in failures},
        episodes_sha256=digests,
        method_episodes={m: s for m, s in seen.items() if m not in failures},
        fit_seconds=fit_s,
        eval_seconds=eval_s,
        description={
            **prep.describe(),
            # per meta-learner: benchmark.steps unless benchmark.steps_for says otherwise
            "meta_training_steps": {
                m: cfg.steps_of(prep.name, m)
                for m in cfg.methods
                if families[m] in ("metric", "maml")
            },
            # what benchmark.hparams_for set on this dataset only, per method it ran
            "hparams_for": {
                m: dict(hp)
                for m, hp in cfg.hparams_for.get(prep.name, {}).items()
                if m in cfg.methods
            },
        },
        failures=failures,
        notes={m: n for m, n in notes.items() if m not in failures},
        val_auprc={m: v for m, v in val_auprc.items() if m not in failures},
    )


# -- headline checks (issue 4, "What it must show") ------------------------------------------
def _macro(summary: pd.DataFrame, method: str, k: int) -> dict[str, float] | None:
    from metaad.evaluation.runner import MACRO

    row = summary[
        (summary["method"] == method) & (summary["shots"] == k) & (summary["type"] == MACRO)
    ]
    if row.empty:
        return None
    r = row.iloc[0]
    return {"mean": float(r["auprc_mean"]), "lo": float(r["auprc_lo"]), "hi": float(r["auprc_hi"])}


def paired_margin(
    per_episode: pd.DataFrame, challenger: pd.DataFrame, champion: str, k: int
) -> dict[str, Any] | None:
    """Macro AUPRC of ``challenger`` minus ``champion``'s at ``k``, with a paired 95% CI.

    Both were scored on the same frozen episodes, so the difference is taken episode by
    episode (matched on seed, type and repetition) and resampled within each type
    (:func:`metaad.evaluation.metrics.paired_bootstrap`): the episodes' shared difficulty
    cancels, which two separate intervals count twice. Two separate intervals that overlap
    do not say the methods tie, and a margin such as issue 4's +0.05 is a statement about the
    difference, so this is the interval to read it against.

    ``challenger`` is a frame of per-episode rows (one method's, or the per-seed picks of
    :func:`val_selected`); ``None`` when the two do not share every episode at ``k``.
    """
    from metaad.evaluation.metrics import paired_bootstrap

    key = ["seed", "type", "rep"]
    a = per_episode[(per_episode["method"] == champion) & (per_episode["shots"] == k)]
    b = challenger[challenger["shots"] == k]
    if a.empty or b.empty or len(a) != len(b):
        return None
    a, b = a.set_index(key)["auprc"].sort_index(), b.set_index(key)["auprc"].sort_index()
    if not a.index.equals(b.index):
        return None
    mean, lo, hi = paired_bootstrap(
        a.to_numpy(), b.to_numpy(), strata=a.index.get_level_values("type").to_numpy()
    )
    return {"mean": mean, "lo": lo, "hi": hi, "n_episodes": len(a)}


def val_selected(res: DatasetResult) -> dict[str, Any] | None:
    """The meta-learner a user would deploy without looking at the unseen types, and its score.

    The headline's "best meta-learner" is the best of all of them *on the unseen types*,
    which flatters the meta-learners: picking the maximum of nine noisy means is itself a
    fit to the evaluation set. Here the pick is made per seed on what a user has before any
    unseen type arrives, each meta-learner's AUPRC on the same meta-validation episodes
    (:func:`val_episodes`; val types, disjoint from train and test types), ties by name;
    the unseen-type numbers are those of the picked method on that seed's frozen episodes,
    pooled over seeds like any method's.

    ``None`` when some meta-learner of the table has no validation number for some seed (a
    run from before this was recorded, or a dataset without meta-val types): a pick among a
    subset would not be the same selection.
    """
    from metaad.evaluation.runner import summarise

    metas = sorted(m for m, f in res.families.items() if f in ("metric", "maml"))
    seeds = sorted(res.episodes_sha256)
    if not metas or any(seed not in res.val_auprc.get(m, {}) for m in metas for seed in seeds):
        return None
    picks = {
        seed: min(metas, key=lambda m, seed=seed: (-res.val_auprc[m][seed], m)) for seed in seeds
    }
    rows = picked_rows(res.per_episode, picks)
    summary = summarise(rows.drop(columns=["dataset", "seed"]))
    return {
        "picks": {str(seed): m for seed, m in picks.items()},
        "val_auprc": {str(seed): res.val_auprc[m][seed] for seed, m in picks.items()},
        "auprc": {
            f"k{k}": _macro(summary, "val_selected", int(k))
            for k in sorted(summary["shots"].unique())
        },
    }


def picked_rows(per_episode: pd.DataFrame, picks: Mapping[Any, str]) -> pd.DataFrame:
    """The per-episode rows of the method picked for each seed, named ``val_selected``."""
    per = per_episode
    return pd.concat(
        [per[(per["method"] == m) & (per["seed"] == int(seed))] for seed, m in picks.items()],
        ignore_index=True,
    ).assign(method="val_selected")


def headline(res: DatasetResult) -> dict[str, Any]:
    """The issue's comparisons on one dataset, as numbers and booleans (no verdict hidden)."""
    from metaad.evaluation.runner import MACRO, best_by

    out: dict[str, Any] = {"dataset": res.name}
    shots = set(res.summary["shots"].unique().tolist())
    if HEADLINE_K in shots:
        b = best_by(res.summary, HEADLINE_K, family_of=res.families)
        macro = res.summary[(res.summary["type"] == MACRO) & (res.summary["shots"] == HEADLINE_K)]
        top = macro.sort_values(["auprc_mean", "method"], ascending=[False, True]).iloc[0]
        meta, base = b["meta"], b["baseline"]
        per = res.per_episode
        paired = (
            paired_margin(per, per[per["method"] == meta["method"]], base["method"], HEADLINE_K)
            if meta is not None and base is not None
            else None
        )
        out["k5"] = {
            "best_meta": meta,
            "best_baseline": base,
            "delta": b["delta"],
            # the same delta, episode by episode, with its paired 95% CI (paired_margin)
            "delta_paired": paired,
            "intervals_overlap": b["overlap"],
            "meta_is_best_overall": bool(meta is not None and top["method"] == meta["method"]),
            "meta_wins_by_margin": bool(b["delta"] is not None and b["delta"] >= WIN_MARGIN),
            # "never below the best baseline by more than the confidence interval"
            "meta_within_baseline_ci": bool(
                meta is not None and base is not None and meta["mean"] >= base["lo"]
            ),
        }
    chosen = val_selected(res)
    if chosen is not None:
        base = (out.get("k5") or {}).get("best_baseline")
        k5 = chosen["auprc"].get(f"k{HEADLINE_K}")
        chosen["k5_delta_vs_best_baseline"] = (
            k5["mean"] - base["mean"] if k5 is not None and base is not None else None
        )
        chosen["k5_delta_paired"] = (
            paired_margin(
                res.per_episode,
                picked_rows(res.per_episode, chosen["picks"]),
                base["method"],
                HEADLINE_K,
            )
            if base is not None
            else None
        )
        out["val_selected"] = chosen
    gbms = [
        (m, iv)
        for m in GBM_METHODS
        if m in res.families and (iv := _macro(res.summary, m, TEN_SHOT_K)) is not None
    ]
    if ONE_SHOT_K in shots and gbms:
        metas = [m for m, f in res.families.items() if f in ("metric", "maml")]
        best1 = max(
            ((m, _macro(res.summary, m, ONE_SHOT_K)) for m in metas),
            key=lambda x: -1.0 if x[1] is None else x[1]["mean"],
            default=(None, None),
        )
        gbm, ten = max(gbms, key=lambda x: (x[1]["mean"], x[0]))
        if best1[1] is not None:
            out["k1_vs_gbm_k10"] = {
                "best_meta_k1": {"method": best1[0], **best1[1]},
                "gbm_k10": {"method": gbm, **ten},
                "meta_wins": bool(best1[1]["mean"] > ten["mean"]),
            }
    return out


def overall_verdict(heads: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Issue 4's two claims over the datasets, each with the count it rests on."""
    k5 = [h for h in heads if "k5" in h and h["k5"]["best_meta"] is not None]
    wins = [
        h["dataset"]
        for h in k5
        if h["k5"]["meta_is_best_overall"] and h["k5"]["meta_wins_by_margin"]
    ]
    rest = [h for h in k5 if h["dataset"] not in wins]
    k1 = [h for h in heads if "k1_vs_gbm_k10" in h]
    k1_wins = [h["dataset"] for h in k1 if h["k1_vs_gbm_k10"]["meta_wins"]]
    return {
        "k5_meta_wins_by_margin_on": wins,
        "k5_other_datasets_within_ci": {
            h["dataset"]: h["k5"]["meta_within_baseline_ci"] for h in rest
        },
        "k5_claim_holds": len(k5) >= 4
        and len(wins) >= 3
        and all(h["k5"]["meta_within_baseline_ci"] for h in rest),
        "k1_beats_gbm_k10_on": k1_wins,
        "k1_claim_holds": len(k1_wins) >= 2,
        "n_datasets": len(heads),
    }


# -- reports ----------------------------------------------------------------------------------
def hardware() -> dict[str, Any]:
    """Where the numbers were measured (README's "hardware" line)."""
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _fmt(iv: Mapping[str, float] | None) -> str:
    if iv is None:
        return "–"
    return f"{iv['mean']:.3f} ± {(iv['hi'] - iv['lo']) / 2:.3f}"


def _fmt_delta(delta: float | None, paired: Mapping[str, float] | None) -> str:
    """``+0.013 [-0.004, +0.030]``: a delta and, when there is one, its paired 95% CI."""
    if delta is None:
        return "–"
    if paired is None:
        return f"{delta:+.3f}"
    return f"{delta:+.3f} [{paired['lo']:+.3f}, {paired['hi']:+.3f}]"


def _steps_line(steps: Mapping[str, int] | None) -> str | None:
    """``- Meta-training steps: 300 (metasgd 3000).``: the common length, then the others."""
    if not steps:
        return None
    counts: dict[int, int] = {}
    for n in steps.values():
        counts[n] = counts.get(n, 0) + 1
    common = max(counts, key=lambda n: (counts[n], -n))
    others = ", ".join(f"{m} {n}" for m, n in steps.items() if n != common)
    return f"- Meta-training steps: {common}" + (f" ({others})" if others else "") + "."


def _hparams_for_line(by_method: Mapping[str, Any] | None) -> str | None:
    """``- On this set only (benchmark.hparams_for): triplet {raw_knn: true}.``"""
    if not by_method:
        return None
    parts = "; ".join(f"{m} {json.dumps(hp, sort_keys=True)}" for m, hp in by_method.items())
    return f"- On this set only (benchmark.hparams_for): {parts}."


def dataset_markdown(res: DatasetResult, shots: Sequence[int]) -> str:
    from metaad.evaluation.report import markdown_table, per_type_table

    d = res.description
    p = d["protocol"]
    lines = [
        f"### {res.name}",
        "",
        f"Unseen types evaluated: {', '.join(d['evaluated_types'])}"
        + (
            "; dropped (too few rows): "
            + "; ".join(f"{t} ({why})" for t, why in d["dropped_types"].items())
            if d["dropped_types"]
            else ""
        )
        + ".",
        f"Meta-train types: {', '.join(d['split']['train'])}; meta-val: "
        f"{', '.join(d['split']['val']) or 'none'}.",
        f"Episodes per type, K and seed: support {p['n_support_normal']} normals + K, query "
        f"{p['n_query_normal']} normals at {p['contamination']:.0%} contamination "
        f"(random AUPRC {p['contamination']:.2f})"
        + (f"; windows of {d['window']['window']}" if d["window"] else "")
        + ".",
        *(f"- {n}" for n in p["notes"]),
        *([steps_line] if (steps_line := _steps_line(d.get("meta_training_steps"))) else []),
        *([hp_line] if (hp_line := _hparams_for_line(d.get("hparams_for"))) else []),
        *(
            f"- **{m} failed and is left out of these tables** ({why})."
            for m, why in res.failures.items()
        ),
        *(f"- {m}, {line}." for m, lines in res.notes.items() for line in lines),
        "",
        "Macro AUPRC (mean ± 95% CI half-width):",
        "",
        markdown_table(res.summary, metric="auprc", shots=shots).rstrip(),
        "",
        "Macro AUROC:",
        "",
        markdown_table(res.summary, metric="auroc", shots=shots).rstrip(),
    ]
    if HEADLINE_K in shots:
        lines += [
            "",
            f"AUPRC per unseen type at K={HEADLINE_K}:",
            "",
            per_type_table(res.summary, HEADLINE_K, "auprc").rstrip(),
        ]
    return "\n".join(lines)


def headline_markdown(heads: Sequence[Mapping[str, Any]], verdict: Mapping[str, Any]) -> str:
    rows = [
        f"| dataset | best meta-learner K={HEADLINE_K} | best baseline K={HEADLINE_K} | "
        "delta [paired 95% CI] | "
        f"meta best overall and +{WIN_MARGIN} | meta >= baseline CI low | best meta K=1 | "
        "best GBM K=10 | K=1 meta wins |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in heads:
        k5 = h.get("k5") or {}
        k1 = h.get("k1_vs_gbm_k10") or {}
        m, b = k5.get("best_meta"), k5.get("best_baseline")
        rows.append(
            "| "
            + " | ".join(
                [
                    h["dataset"],
                    f"{m['method']} {_fmt(m)}" if m else "–",
                    f"{b['method']} {_fmt(b)}" if b else "–",
                    _fmt_delta(k5.get("delta"), k5.get("delta_paired")),
                    str(k5.get("meta_is_best_overall", False) and k5.get("meta_wins_by_margin")),
                    str(k5.get("meta_within_baseline_ci", "–")),
                    f"{k1['best_meta_k1']['method']} {_fmt(k1['best_meta_k1'])}" if k1 else "–",
                    f"{k1['gbm_k10']['method']} {_fmt(k1['gbm_k10'])}" if k1 else "–",
                    str(k1.get("meta_wins", "–")),
                ]
            )
            + " |"
        )
    chosen = [h for h in heads if h.get("val_selected")]
    if chosen:
        rows += [
            "",
            "The meta-learner chosen per seed by its meta-validation AUPRC (the val types; no "
            "unseen type looked at), scored on the same episodes:",
            "",
            f"| dataset | picks by seed | K=1 | K={HEADLINE_K} | delta vs best baseline "
            f"K={HEADLINE_K} [paired 95% CI] |",
            "|---|---|---|---|---|",
        ]
        for h in chosen:
            v = h["val_selected"]
            d = v.get("k5_delta_vs_best_baseline")
            rows.append(
                f"| {h['dataset']} | "
                + ", ".join(f"{s}: {m}" for s, m in v["picks"].items())
                + f" | {_fmt(v['auprc'].get('k1'))} | {_fmt(v['auprc'].get(f'k{HEADLINE_K}'))} | "
                + _fmt_delta(d, v.get("k5_delta_paired"))
                + " |"
            )
    rows += [
        "",
        "The paired interval is over the same episodes, matched on seed, type and repetition, "
        "resampled within each type: the uncertainty of the difference itself, which two "
        "separate intervals that overlap do not give.",
        "",
        f"- K={HEADLINE_K} claim (best meta-learner highest and +{WIN_MARGIN} on >= 3 of 4, within "
        f"the CI on the rest): **{'holds' if verdict['k5_claim_holds'] else 'does not hold'}** "
        f"(wins on {verdict['k5_meta_wins_by_margin_on'] or 'none'}).",
        f"- K=1 claim (best meta-learner at K=1 above the stronger of {', '.join(GBM_METHODS)} "
        "at K=10 on >= 2): "
        f"**{'holds' if verdict['k1_claim_holds'] else 'does not hold'}** "
        f"(on {verdict['k1_beats_gbm_k10_on'] or 'none'}).",
    ]
    return "\n".join(rows)


@dataclass
class BenchmarkResult:
    out_dir: Path
    results: dict[str, Any]
    markdown: str
    per_dataset: dict[str, DatasetResult]
    mlflow_run_id: str | None = None


def _jsonable(obj: Any) -> Any:
    from metaad.evaluation.report import _jsonable as conv

    return conv(obj, "benchmark")


def load_checked(
    name: str,
    *,
    data_dir: str | Path | None = None,
    report_dir: Path | None = None,
    validate: bool = True,
) -> tuple[LoadedDataset, dict[str, Any]]:
    """Load a registered dataset and run its Great Expectations suite (raises on failure)."""
    from metaad.datasets.registry import load_dataset

    ds = load_dataset(name, data_dir)
    if not validate:
        return ds, {"skipped": True}
    from metaad.datasets.validation import validate_dataset_or_raise

    rep = validate_dataset_or_raise(ds, report_dir=report_dir)
    return ds, {"success": rep.success, "expectations": rep.n_expectations}


def benchmark_dataset(
    ds: LoadedDataset,
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    *,
    progress: bool = False,
    resume: bool = False,
) -> DatasetResult:
    """One dataset end to end: prepare, run every method per seed, write its CSV and plot.

    ``resume`` takes back the (seed, method) units a stopped run of the same settings wrote
    to ``out_dir/<dataset>/units`` (:func:`run_dataset`).
    """
    from metaad.evaluation.plots import plot_auprc_vs_k

    check_steps_for(cfg, [ds.name])
    out = Path(out_dir)
    t0 = time.perf_counter()
    prep = prepare_dataset(ds, shots=cfg.shots, split_seed=cfg.split_seed)
    res = run_dataset(prep, cfg, out / ds.name, progress=progress, resume=resume)
    res.report = dict(ds.report)
    res.per_episode.to_csv(out / ds.name / "per_episode.csv", index=False)
    plot_auprc_vs_k(
        res.summary,
        out / "plots" / f"auprc_vs_k_{ds.name}.png",
        family_of=res.families,
        contamination=prep.protocol.contamination,
        title=f"{ds.name}: macro AUPRC on unseen types vs K (95% CI)",
    )
    log.info("benchmark: %s done in %.0fs", ds.name, time.perf_counter() - t0)
    return res


def finish_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    per: Mapping[str, DatasetResult],
    *,
    validation: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    tracking_uri: str | None = None,
) -> BenchmarkResult:
    """Headline checks, ``results.json``/``results.md``/``per_episode.csv``, MLflow run."""
    from metaad.evaluation.report import results_json

    out = Path(out_dir)
    heads = [headline(r) for r in per.values()]
    verdict = overall_verdict(heads)
    results: dict[str, Any] = {
        "config": _config_dict(cfg),
        "hardware": hardware(),
        "seconds": None if seconds is None else round(seconds, 1),
        "validation": dict(validation or {}),
        "headline": heads,
        "verdict": verdict,
        "datasets": {
            name: {
                "description": r.description,
                "report": dict(r.report),
                "episodes_sha256": {str(k): v for k, v in r.episodes_sha256.items()},
                "method_episodes_sha256": {
                    m: {str(k): v for k, v in s.items()} for m, s in r.method_episodes.items()
                },
                "fit_seconds": r.fit_seconds,
                "eval_seconds": r.eval_seconds,
                "families": r.families,
                "failed_methods": r.failures,
                "method_notes": r.notes,
                "val_auprc": {m: {str(k): v for k, v in s.items()} for m, s in r.val_auprc.items()},
                "results": results_json(
                    r.per_episode.drop(columns=["dataset", "seed"]),
                    r.summary,
                    contamination=r.description["protocol"]["contamination"],
                ),
            }
            for name, r in per.items()
        },
    }
    results = _jsonable(results)
    md = "\n\n".join(
        [
            "## Unseen-type benchmark: headline",
            headline_markdown(heads, verdict),
            *(dataset_markdown(r, cfg.shots) for r in per.values()),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(md + "\n")
    pd.concat([r.per_episode for r in per.values()], ignore_index=True).to_csv(
        out / "per_episode.csv", index=False
    )
    run_id = None
    if tracking_uri is not None:
        run_id = log_to_mlflow(cfg, out, results, per, tracking_uri=tracking_uri)
    return BenchmarkResult(out, results, md, dict(per), run_id)


def run_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    datasets: Sequence[LoadedDataset] | None = None,
    tracking_uri: str | None = None,
    progress: bool = False,
    validate: bool = True,
    resume: bool = False,
) -> BenchmarkResult:
    """Run the benchmark on ``cfg.datasets`` (or the given loaded ``datasets``) and report.

    ``resume`` continues a stopped run in the same ``out_dir``: every (dataset, seed,
    method) it finished under the same settings is taken back, not run again.

    ``validate`` runs each registered dataset's Great Expectations suite first and stops on
    a failure (a given ``LoadedDataset`` is a caller's own table and is not re-validated).
    With ``tracking_uri`` the whole result is logged as one MLflow run in ``cfg.experiment``.
    """
    loaded: list[LoadedDataset] = list(datasets or [])
    # before any dataset is read: a typo here would otherwise surface hours in
    check_steps_for(cfg, [d.name for d in loaded] or list(cfg.datasets))
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    validation: dict[str, Any] = {}
    if not loaded:
        for name in cfg.datasets:
            ds, validation[name] = load_checked(
                name,
                data_dir=data_dir or cfg.data_dir,
                report_dir=out / name / "validation",
                validate=validate,
            )
            loaded.append(ds)
    per = {
        ds.name: benchmark_dataset(ds, cfg, out, progress=progress, resume=resume) for ds in loaded
    }
    return finish_benchmark(
        cfg,
        out,
        per,
        validation=validation,
        seconds=time.perf_counter() - t_start,
        tracking_uri=tracking_uri,
    )


#: Settings that decide which episodes a run scored; runs merge only when these agree.
_EPISODE_KEYS = ("shots", "seeds", "n_episodes", "split_seed")


def merge_benchmarks(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    take: Mapping[str, str | Path] | None = None,
    rename: Mapping[tuple[str | Path, str], str] | None = None,
) -> BenchmarkResult:
    """Several benchmark runs of different methods on the same frozen episodes, as one report.

    So the methods of one benchmark can run as separate jobs (one per machine, or a method
    added later) and still be compared on exactly the same episodes. Each run's episode files
    are identified by their sha256 (recorded per dataset and seed): runs whose digests differ
    are refused, as are runs that differ in shots, seeds, episodes per seed or the type
    split. A method in two runs is accepted only as a reproduction (every per-episode metric
    equal; the first run's rows count, and a note says so), so a rerun that checked a result
    can join the report that first had it; any difference is refused. A method that *failed*
    in one run may finish in another (rerun after a fix): the finished run's numbers count,
    and the failure is kept as a note beside them. The merged run gets the usual ``results.json``,
    ``results.md``, ``per_episode.csv`` and plots, recomputed from the per-episode rows.

    ``take`` (method -> one of ``runs``) settles a method that two runs scored differently on
    purpose, e.g. ``metasgd`` at 300 steps in one and 3,000 in the other: that run's numbers
    count, and a note names the others with their largest difference. A method or run it names
    that the runs do not hold is refused by name.

    ``rename`` ((run, method) -> new name) keeps both instead: that run's method joins the
    report under the new name, as a method of its own (same family, its own rows, steps,
    meta-val numbers and a note saying where it came from). Two settings of one learner, e.g.
    ``metasgd`` at 300, 1,500 and 3,000 steps, then stand side by side, and the meta-val pick
    per seed chooses among them as among any meta-learners: the length is chosen on the
    validation types, not by a person who has seen the unseen ones. ``take`` names methods
    after renaming.
    """
    from metaad.evaluation.plots import plot_auprc_vs_k
    from metaad.evaluation.runner import summarise

    if len(runs) < 2:
        raise ConfigError("merging needs at least two benchmark runs")
    seen: set[Path] = set()
    for run in runs:
        if Path(run).resolve() in seen:
            raise ConfigError(f"{run} is given twice; each run merges once")
        seen.add(Path(run).resolve())
    loaded = []
    for run in runs:
        d = Path(run)
        try:
            res = json.loads((d / "results.json").read_text())
            per = pd.read_csv(d / "per_episode.csv")
        except (OSError, ValueError) as exc:
            raise DataError(f"{d} is not a finished benchmark run: {exc}") from exc
        loaded.append((d, res, per))
    if rename:
        loaded = _renamed(loaded, rename)
    chosen: dict[str, Path] = {}
    for m, run in (take or {}).items():
        match = [d for d, _, _ in loaded if d.resolve() == Path(run).resolve()]
        if not match:
            raise ConfigError(
                f"take {m}={run}: {run} is not one of the runs merged "
                f"({', '.join(str(d) for d, _, _ in loaded)})"
            )
        found = next(r for d, r, _ in loaded if d == match[0])
        if not any(m in info["families"] for info in found["datasets"].values()):
            raise ConfigError(f"take {m}={run}: {run} has no finished {m!r} to take")
        chosen[m] = match[0]
    first_dir, first, _ = loaded[0]
    for d, res, _ in loaded[1:]:
        for k in _EPISODE_KEYS:
            if res["config"][k] != first["config"][k]:
                raise ConfigError(
                    f"{d}: benchmark.{k} is {res['config'][k]}, {first_dir} has "
                    f"{first['config'][k]}; only runs on the same episodes merge"
                )
    config_of = {d: res["config"] for d, res, _ in loaded}
    parts: dict[str, list[tuple[Path, dict[str, Any], pd.DataFrame]]] = {}
    for d, res, per in loaded:
        for name, info in res["datasets"].items():
            parts.setdefault(name, []).append((d, info, per[per["dataset"] == name]))
    merged: dict[str, DatasetResult] = {}
    for name, group in parts.items():
        ref_dir, ref, _ = group[0]
        owner: dict[str, Path] = {}
        reproduced: dict[str, list[Path]] = {}
        rows_of = {d: q for d, _, q in group}
        failed: dict[str, list[tuple[Path, str]]] = {}
        taken: dict[str, list[str]] = {}
        for d, info, _ in group:
            if info["episodes_sha256"] != ref["episodes_sha256"]:
                raise DataError(
                    f"{name}: {d} was scored on other episodes than {ref_dir} (the sha256 of "
                    "the frozen episode files differ); rerun it with the same data and settings"
                )
        for m, d in chosen.items():
            if any(dd == d and m in info["families"] for dd, info, _ in group):
                owner[m] = d
        for d, info, _ in group:
            for m in info["families"]:
                if m in chosen and m in owner:
                    if d != owner[m]:
                        gap = _largest_difference(rows_of[owner[m]], rows_of[d], m)
                        what = "other episodes" if gap is None else f"largest difference {gap:.3g}"
                        taken.setdefault(m, []).append(
                            f"also in {d.name} ({what}); these are {owner[m].name}'s (take)"
                        )
                    continue
                if m in owner:
                    gap = _largest_difference(rows_of[owner[m]], rows_of[d], m)
                    if gap != 0.0:
                        what = "other episodes" if gap is None else f"largest difference {gap:.3g}"
                        raise ConfigError(
                            f"{name}: method {m!r} is in both {owner[m]} and {d} with different "
                            f"numbers ({what}); merge one of them"
                        )
                    reproduced.setdefault(m, []).append(d)
                    continue
                owner[m] = d
            for m, why in info.get("failed_methods", {}).items():
                failed.setdefault(m, []).append((d, why))
        # A method that failed in one run and finished in another (rerun after a fix, on the
        # same episodes) counts with the finished run's numbers; the failure stays in a note.
        failures = {m: "; ".join(w for _, w in fs) for m, fs in failed.items() if m not in owner}
        notes: dict[str, list[str]] = {}
        for d, info, _ in group:
            for m, lines in info.get("method_notes", {}).items():
                if owner.get(m, d) == d:  # a reproduction's notes repeat its first run's
                    notes.setdefault(m, []).extend(lines)
        for m, fs in failed.items():
            if m in owner:
                notes.setdefault(m, []).extend(
                    f"failed in {d.name} ({why}); these are its rerun's numbers, from "
                    f"{owner[m].name}, on the same episodes"
                    for d, why in fs
                )
        for m, lines in taken.items():
            notes.setdefault(m, []).extend(lines)
        for m, ds in reproduced.items():
            notes.setdefault(m, []).extend(
                f"reproduced exactly by {d.name} (every per-episode metric equal); the numbers "
                f"are {owner[m].name}'s"
                for d in ds
            )
        per_episode = pd.concat(
            [q[q["method"].map(owner) == d] for d, _, q in group], ignore_index=True
        )

        def union(key: str, group=group, owner=owner) -> dict[str, Any]:
            """``key``'s per-method values; a method's own from the run it finished in."""
            out = {k: v for _, info, _ in group for k, v in info.get(key, {}).items()}
            for d, info, _ in group:
                out.update({k: v for k, v in info.get(key, {}).items() if owner.get(k) == d})
            return out

        res = DatasetResult(
            name=name,
            per_episode=per_episode,
            summary=summarise(per_episode.drop(columns=["dataset", "seed"])),
            families=union("families"),
            episodes_sha256={int(k): v for k, v in ref["episodes_sha256"].items()},
            method_episodes={
                m: {int(k): v for k, v in s.items()}
                for m, s in union("method_episodes_sha256").items()
            },
            fit_seconds=union("fit_seconds"),
            eval_seconds=union("eval_seconds"),
            val_auprc={m: {int(k): v for k, v in s.items()} for m, s in union("val_auprc").items()},
            description={
                **ref["description"],
                # each meta-learner's steps in the run its numbers come from (a run written
                # before the steps were recorded per method ran all at its benchmark.steps)
                "meta_training_steps": {
                    m: info["description"]
                    .get("meta_training_steps", {})
                    .get(m, config_of[d]["steps"])
                    for d, info, _ in group
                    for m, fam in info["families"].items()
                    if owner.get(m) == d and fam in ("metric", "maml")
                },
                # each method's per-set settings from the run its numbers come from
                "hparams_for": {
                    m: hp
                    for d, info, _ in group
                    for m, hp in info["description"].get("hparams_for", {}).items()
                    if owner.get(m) == d
                },
            },
            report=ref["report"],
            failures=failures,
            notes=notes,
        )
        plot_auprc_vs_k(
            res.summary,
            Path(out_dir) / "plots" / f"auprc_vs_k_{name}.png",
            family_of=res.families,
            contamination=ref["description"]["protocol"]["contamination"],
            title=f"{name}: macro AUPRC on unseen types vs K (95% CI)",
        )
        merged[name] = res
    methods = list(dict.fromkeys(m for _, res, _ in loaded for m in res["config"]["methods"]))
    hparams = {m: hp for _, res, _ in loaded for m, hp in res["config"]["hparams"].items()}
    hparams_for: dict[str, dict[str, Any]] = {}
    for _, res, _ in loaded:
        for ds, by_method in res["config"].get("hparams_for", {}).items():
            hparams_for.setdefault(ds, {}).update(by_method)
    base = {k: tuple(v) if isinstance(v, list) else v for k, v in first["config"].items()}
    cfg = replace(
        BenchmarkConfig(**base),
        methods=tuple(methods),
        datasets=tuple(merged),
        hparams=hparams,
        hparams_for=hparams_for,
    )
    validation = {k: v for _, res, _ in loaded for k, v in res.get("validation", {}).items()}
    seconds = sum(res.get("seconds") or 0.0 for _, res, _ in loaded)
    log.info("merged %d benchmark runs: %s", len(loaded), ", ".join(str(d) for d, *_ in loaded))
    return finish_benchmark(
        cfg, out_dir, merged, validation=validation, seconds=seconds, tracking_uri=tracking_uri
    )


_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# a dataset's per-method entries in results.json, each keyed by method name
_PER_METHOD_KEYS = (
    "families",
    "fit_seconds",
    "eval_seconds",
    "val_auprc",
    "method_episodes_sha256",
    "method_notes",
    "failed_methods",
)


def _renamed(
    loaded: list[tuple[Path, dict[str, Any], pd.DataFrame]],
    rename: Mapping[tuple[str | Path, str], str],
) -> list[tuple[Path, dict[str, Any], pd.DataFrame]]:
    """``loaded`` with each (run, method) of ``rename`` under its new name, checked first.

    Refused by name: a run not merged, a method the run does not hold, a name that is not a
    plain identifier (it becomes part of MLflow metric names, where a dot would split it), a
    name the same run already uses. A new name that another run uses meets it as any method
    in two runs does: accepted as an exact reproduction, refused otherwise, unless taken."""
    held = {d: _methods_of(res) for d, res, _ in loaded}
    by_run: dict[Path, dict[str, str]] = {}
    for (run, method), new in rename.items():
        what = f"rename {run}:{method}={new}"
        match = [d for d, _, _ in loaded if d.resolve() == Path(run).resolve()]
        if not match:
            raise ConfigError(
                f"{what}: {run} is not one of the runs merged "
                f"({', '.join(str(d) for d, _, _ in loaded)})"
            )
        if method not in held[match[0]]:
            raise ConfigError(f"{what}: {run} has no {method!r} to rename")
        if not _METHOD_NAME.fullmatch(new):
            raise ConfigError(
                f"{what}: a method name is a letter, then letters, digits, '_' or '-' "
                "(it becomes part of MLflow metric names)"
            )
        names = by_run.setdefault(match[0], {})
        if new in held[match[0]] or new in names.values():
            raise ConfigError(f"{what}: {run} already has a method {new!r}")
        names[method] = new
    out = []
    for d, res, per in loaded:
        names = by_run.get(d)
        if not names:
            out.append((d, res, per))
            continue
        res = json.loads(json.dumps(res))  # a copy: the run's own files are not touched

        def key(m: str, names: Mapping[str, str] = names) -> str:
            return names.get(m, m)

        for info in res["datasets"].values():
            for k in _PER_METHOD_KEYS:
                if k in info:
                    info[k] = {key(m): v for m, v in info[k].items()}
            for k in ("meta_training_steps", "hparams_for"):
                by_method = info["description"].get(k)
                if by_method is not None:
                    info["description"][k] = {key(m): v for m, v in by_method.items()}
            for old, new in names.items():
                if new in info.get("families", {}) or new in info.get("failed_methods", {}):
                    notes = info.setdefault("method_notes", {}).setdefault(new, [])
                    notes.insert(0, f"{old} of {d.name}, renamed {new} in this merge")
        res["config"]["methods"] = [key(m) for m in res["config"]["methods"]]
        res["config"]["hparams"] = {key(m): v for m, v in res["config"]["hparams"].items()}
        res["config"]["hparams_for"] = {
            ds: {key(m): v for m, v in by_method.items()}
            for ds, by_method in res["config"].get("hparams_for", {}).items()
        }
        out.append((d, res, per.assign(method=per["method"].map(key))))
    return out


def _methods_of(res: Mapping[str, Any]) -> set[str]:
    """Every method a run holds: finished or failed, on any of its datasets."""
    return {
        m
        for info in res["datasets"].values()
        for m in (*info.get("families", {}), *info.get("failed_methods", {}))
    }


def _largest_difference(a: pd.DataFrame, b: pd.DataFrame, method: str) -> float | None:
    """Largest absolute difference in any metric between ``method``'s per-episode rows in
    two runs; ``None`` when they are not the same episodes. Timings are not compared."""
    from metaad.evaluation.runner import METRICS

    key = ["seed", "type", "shots", "rep"]
    cols = [c for c in METRICS if c in a.columns and c in b.columns]
    x = a[a["method"] == method].set_index(key)[cols].sort_index()
    y = b[b["method"] == method].set_index(key)[cols].sort_index()
    if not x.index.equals(y.index):
        return None
    xa, ya = x.to_numpy(np.float64), y.to_numpy(np.float64)
    if (np.isnan(xa) != np.isnan(ya)).any():  # a number in one run, none in the other
        return float("inf")
    return float(np.nanmax(np.abs(xa - ya), initial=0.0))


def _config_dict(cfg: BenchmarkConfig) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def log_to_mlflow(
    cfg: BenchmarkConfig,
    out: Path,
    results: Mapping[str, Any],
    per: Mapping[str, DatasetResult],
    *,
    tracking_uri: str,
    run_name: str | None = None,
) -> str:
    """One MLflow run: the config as params, macro metrics per dataset/method/K, all files."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from metaad.tracking import ensure_experiment, sanitize_name, summary_metrics

    exp_id = ensure_experiment(cfg.experiment, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(
        exp_id, run_name=run_name or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    rid = run.info.run_id
    try:
        params = [
            Param(sanitize_name(f"benchmark.{k}"), json.dumps(v) if not isinstance(v, str) else v)
            for k, v in _config_dict(cfg).items()
        ]
        client.log_batch(rid, params=[Param(p.key, p.value[:6000]) for p in params])
        ts = int(time.time() * 1000)
        metrics = []
        for name, r in per.items():
            for key, value in summary_metrics(r.summary).items():
                metrics.append(Metric(sanitize_name(f"{name}.{key}"), value, ts, 0))
        for h in results.get("headline", []):
            for name_, iv in (
                ("k5_delta_paired", (h.get("k5") or {}).get("delta_paired")),
                (
                    "k5_val_selected_delta_paired",
                    (h.get("val_selected") or {}).get("k5_delta_paired"),
                ),
            ):
                for part in ("mean", "lo", "hi") if iv else ():
                    key = sanitize_name(f"{h['dataset']}.{name_}.{part}")
                    metrics.append(Metric(key, iv[part], ts, 0))
            for k, iv in (h.get("val_selected") or {}).get("auprc", {}).items():
                if iv is not None:
                    key = sanitize_name(f"{h['dataset']}.auprc.{k}.val_selected.macro")
                    metrics.append(Metric(key, iv["mean"], ts, 0))
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        verdict = results.get("verdict", {})
        client.set_tag(rid, "k5_claim_holds", str(verdict.get("k5_claim_holds")))
        client.set_tag(rid, "k1_claim_holds", str(verdict.get("k1_claim_holds")))
        client.log_artifacts(rid, str(out), artifact_path="benchmark")
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def with_overrides(cfg: BenchmarkConfig, **kw: Any) -> BenchmarkConfig:
    """``cfg`` with some fields replaced (lists become tuples), for the CLI and the flow."""
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items() if v is not None}
    return replace(cfg, **clean)


__all__ = [
    "BenchmarkResult",
    "DatasetResult",
    "PreparedDataset",
    "assign_by_source",
    "benchmark_dataset",
    "cap_types",
    "check_steps_for",
    "finish_benchmark",
    "freeze_episodes",
    "headline",
    "load_checked",
    "merge_benchmarks",
    "overall_verdict",
    "prepare_dataset",
    "run_benchmark",
    "run_dataset",
    "train_params",
    "with_overrides",
]
