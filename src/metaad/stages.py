"""The pipeline's stages as plain functions: ingest, validate, episodes, train, evaluate.

Each stage reads what the previous one wrote under ``root`` and writes its own outputs in
a fixed layout (:class:`Layout`), so ``dvc.yaml`` (through the CLI) and the Prefect flow
(through tasks) run exactly the same code. Nothing here knows about Prefect or Typer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.bundle import ModelBundle
from metaad.config import Params
from metaad.data.schema import LABEL, SERIES, SOURCE_SPLIT, TYPE, anomaly_types, check_canonical
from metaad.device import seed_everything
from metaad.episodes.pool import Pool
from metaad.episodes.preprocess import Preprocessor, make_windows
from metaad.episodes.sampler import EpisodeSet, build_eval_episodes
from metaad.episodes.split import TypeSplit, assign_by_source, assign_rows, split_types
from metaad.errors import DataError
from metaad.models.base import Detector, History, StepCallback
from metaad.models.registry import create, family_of
from metaad.train_hooks import TrainHooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where every stage reads and writes, relative to the project root."""

    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def validation(self) -> Path:
        return self.artifacts / "validation"

    @property
    def episodes(self) -> Path:
        return self.artifacts / "episodes"

    @property
    def model(self) -> Path:
        return self.artifacts / "model"

    @property
    def eval(self) -> Path:
        return self.artifacts / "eval"

    def table(self, params: Params) -> Path:
        return self.root / params.ingest.output


def _categorical(params: Params) -> tuple[str, ...]:
    if params.ingest.source == "synthetic":
        from metaad.data.synthetic import categorical_columns

        return tuple(categorical_columns(params.ingest.domain))
    return tuple(params.ingest.categorical)


def min_rows_per_type(params: Params) -> int:
    """Rows an evaluation type needs: the largest K plus the query anomalies."""
    e = params.episodes
    q = max(1, round(e.n_query_normal * e.contamination / (1 - e.contamination)))
    return max(e.shots) + q


# -- 1. ingest ---------------------------------------------------------------------------
def ingest(params: Params, root: Path, progress: bool = False) -> Path:
    """Write the canonical table to ``params.ingest.output`` (the DVC-tracked ``data/``)."""
    out = Layout(root).table(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    ing = params.ingest
    if ing.source == "synthetic":
        from metaad.data.synthetic import write

        write(
            ing.domain, ing.n_rows, ing.seed, out, anomaly_rate=ing.anomaly_rate, progress=progress
        )
    else:
        from metaad.data.importer import import_table

        df = import_table(
            ing.path or "",
            label_col=ing.label_col,
            type_col=ing.type_col,
            normal_value=ing.normal_value,
            categorical=ing.categorical,
        )
        df.to_parquet(out, index=False)
    log.info("ingest: wrote %s", out)
    return out


def load_table(params: Params, root: Path) -> pd.DataFrame:
    path = Layout(root).table(params)
    if not path.exists():
        raise DataError(f"{path} does not exist: run `metaad data pull` (or `metaad ingest`) first")
    return pd.read_parquet(path)


# -- 2. validate -------------------------------------------------------------------------
def validate(params: Params, root: Path, df: pd.DataFrame | None = None) -> Any:
    """Run the Great Expectations gate; raise ``ValidationFailed`` listing each failure.

    The reference profile (value ranges) is ``reference/profile.json`` in the project; the
    first validated version writes it, later versions are checked against it.
    """
    from metaad.validation import reference_profile, validate_or_raise

    lay = Layout(root)
    df = load_table(params, root) if df is None else df
    cats = _categorical(params)
    prof_path = root / "reference" / "profile.json"
    if prof_path.exists():
        profile = json.loads(prof_path.read_text())
    else:
        profile = reference_profile(df, categorical=cats)
        prof_path.parent.mkdir(parents=True, exist_ok=True)
        prof_path.write_text(json.dumps(profile, indent=1, sort_keys=True))
        log.info("validate: no reference profile yet; wrote %s from this table", prof_path)
    return validate_or_raise(
        df,
        params.validate,
        categorical=cats,
        min_rows_per_type=min_rows_per_type(params),
        profile=profile,
        report_dir=lay.validation,
    )


# -- 3. episodes -------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """The episodes stage's outputs, loaded."""

    split: TypeSplit
    preprocessor: Preprocessor
    pools: dict[str, Pool]
    episodes: EpisodeSet
    window: dict[str, int] | None


def _pool(df: pd.DataFrame, pre: Preprocessor, window: dict[str, int] | None) -> Pool:
    X = pre.transform(df)
    if window:
        W, y, t, g = make_windows(df, X, **window)
        return Pool(W, y, t, tuple(pre.output_names), g.astype(np.int64))
    return Pool(
        X,
        df[LABEL].to_numpy(np.int64),
        df[TYPE].astype(str).to_numpy(),
        tuple(pre.output_names),
    )


def build_episodes(params: Params, root: Path, df: pd.DataFrame | None = None) -> Prepared:
    """Split types, fit preprocessing on meta-train rows only, freeze evaluation episodes."""
    e = params.episodes
    lay = Layout(root)
    df = load_table(params, root) if df is None else df
    cats = _categorical(params)
    check_canonical(df, categorical=cats)
    split = split_types(
        anomaly_types(df),
        seed=e.seed,
        n_val=e.n_val_types,
        n_test=e.n_test_types,
        train=e.train_types,
        val=e.val_types,
        test=e.test_types,
    )
    by_source = e.normals == "source" or (e.normals == "auto" and SOURCE_SPLIT in df.columns)
    if by_source:  # the loader's files decide which normals are evaluation normals
        rows = assign_by_source(df, split, seed=e.seed)
        log.info("episodes: rows split by %r (episodes.normals=%s)", SOURCE_SPLIT, e.normals)
    else:
        rows = assign_rows(df, split, seed=e.seed)
    frames = {s: df[rows == s] for s in ("train", "val", "test")}
    pre = Preprocessor.fit(frames["train"], categorical=cats)
    window = {"window": e.window, "stride": e.stride} if SERIES in df.columns else None
    pools = {s: _pool(f, pre, window) for s, f in frames.items() if len(f)}
    need = min_rows_per_type(params)
    test_pool = pools["test"]
    for t in split.test:
        have = len(test_pool.type_index.get(t, ()))
        if have < need:
            raise DataError(
                f"unseen type {t!r} has {have} {'windows' if window else 'rows'}; K={max(e.shots)}"
                f" plus the query anomalies need {need}"
            )
    eps = build_eval_episodes(
        test_pool,
        shots=e.shots,
        n_episodes=e.n_episodes,
        n_support_normal=e.n_support_normal,
        n_query_normal=e.n_query_normal,
        contamination=e.contamination,
        seed=e.seed,
        types=split.test,
    )
    out = lay.episodes
    out.mkdir(parents=True, exist_ok=True)
    pre.save(out / "preprocessor.json")
    (out / "split.json").write_text(json.dumps(split.to_dict(), indent=1))
    for s, p in pools.items():
        with (out / f"pool_{s}.npz").open("wb") as fh:
            np.savez(
                fh,
                X=p.X,
                y=p.y,
                types=p.types.astype("U"),
                group=p.group if p.group is not None else np.empty(0, np.int64),
            )
    frames["test"].to_parquet(out / "test_rows.parquet", index=False)
    eps.save(out / "episodes.npz")
    manifest = {
        **eps.manifest(),
        "split": split.to_dict(),
        "window": window,
        "pool_sizes": {s: {"rows": len(p), "anomalies": int(p.y.sum())} for s, p in pools.items()},
        "features": pre.output_names,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    log.info("episodes: %d frozen episodes over unseen types %s", len(eps), list(split.test))
    return Prepared(split, pre, pools, eps, window)


def load_prepared(params: Params, root: Path) -> Prepared:
    d = Layout(root).episodes
    if not (d / "episodes.npz").exists():
        raise DataError(f"{d} has no episodes: run `metaad episodes` first")
    split_d = json.loads((d / "split.json").read_text())
    split = TypeSplit(tuple(split_d["train"]), tuple(split_d["val"]), tuple(split_d["test"]))
    pools = {}
    for s in ("train", "val", "test"):
        f = d / f"pool_{s}.npz"
        if f.exists():
            with np.load(f, allow_pickle=False) as z:
                pools[s] = Pool(
                    z["X"], z["y"], z["types"], (), z["group"] if len(z["group"]) else None
                )
    manifest = json.loads((d / "manifest.json").read_text())
    eps = EpisodeSet.load(d / "episodes.npz", pools["test"])
    return Prepared(
        split, Preprocessor.load(d / "preprocessor.json"), pools, eps, manifest.get("window")
    )


# -- 4. train ----------------------------------------------------------------------------
def train_method(
    params: Params,
    prep: Prepared,
    method: str,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
    hparams: dict[str, Any] | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[Detector, History, float]:
    """Build and meta-train one method on the meta-train pool; returns seconds taken.

    ``hooks`` (meta-learners only; ``metaad.distributed`` passes them) add gradient
    all-reduce, per-rank task streams, checkpoints and resume to the training loop.
    """
    seed_everything(params.train.seed)
    train_pool = prep.pools["train"]
    hp = dict(params.train.hparams if hparams is None else hparams)
    hp.setdefault("seed", params.train.seed)
    det = create(method, train_pool.input_shape, **hp)
    extra: dict[str, Any] = {} if hooks is None else {"hooks": hooks}
    t0 = time.perf_counter()
    hist = det.fit(
        train_pool,
        params.train.fit_config(progress),
        val=prep.pools.get("val"),
        callback=callback,
        **extra,
    )
    return det, hist, time.perf_counter() - t0


def calibrate_threshold(
    det: Detector, reference: np.ndarray, normals: np.ndarray, target_fpr: float
) -> float:
    """The zero-shot score quantile on held-out normals that gives ``target_fpr``."""
    s = det.adapt(reference, np.zeros(len(reference), np.int64)).score(normals)
    return float(np.quantile(s, 1.0 - target_fpr))


@dataclass(frozen=True)
class Trained:
    bundle: ModelBundle
    history: History
    seconds: float


def train(
    params: Params, root: Path, *, progress: bool = False, callback: StepCallback | None = None
) -> Trained:
    """Meta-train ``train.method`` and write the model bundle and its learning curve."""
    prep = load_prepared(params, root)
    method = params.train.method
    if family_of(method) == "baseline":
        raise DataError(f"train.method must be a meta-learner, {method!r} is a baseline")
    det, hist, secs = train_method(params, prep, method, progress=progress, callback=callback)
    return save_trained(params, root, prep, det, hist, secs)


def save_trained(
    params: Params,
    root: Path,
    prep: Prepared,
    det: Detector,
    hist: History,
    secs: float,
    *,
    extra_meta: dict[str, Any] | None = None,
) -> Trained:
    """Write a trained meta-learner's bundle, learning curve and plot under ``artifacts/model``.

    Apart from :func:`train` so that distributed training (``metaad.distributed``, whose
    rank 0 alone writes) produces exactly the bundle the single-process stage does.
    """
    lay = Layout(root)
    method = det.name
    rng = np.random.default_rng(params.train.seed)
    tr = prep.pools["train"]
    ref = tr.X[np.sort(rng.choice(tr.normal_idx, size=min(200, len(tr.normal_idx)), replace=False))]
    lib_idx = np.concatenate(
        [
            np.sort(
                rng.choice(tr.type_index[t], size=min(10, len(tr.type_index[t])), replace=False)
            )
            for t in tr.anomaly_types
        ]
    )
    heldout = prep.pools.get("val", prep.pools["train"])
    thr = calibrate_threshold(det, ref, heldout.X[heldout.normal_idx], params.register.target_fpr)
    meta = {
        "input_shape": list(tr.input_shape),
        "feature_columns": prep.preprocessor.input_columns,
        "window": prep.window,
        "threshold": thr,
        "target_fpr": params.register.target_fpr,
        "split": prep.split.to_dict(),
        "params_digest": params.digest(),
        "train_seconds": secs,
        # a run that blew up and kept its best-validated weights says so in the bundle
        **({"diverged_at": hist.diverged_at} if hist.diverged_at is not None else {}),
        **(extra_meta or {}),
    }
    bundle = ModelBundle(det, prep.preprocessor, ref, tr.X[lib_idx], tr.types[lib_idx], meta)
    bundle.save(lay.model)
    (lay.model / "history.json").write_text(json.dumps(hist.records))
    from metaad.evaluation.plots import plot_learning_curve

    steps, losses = hist.series("loss")
    vs, vv = hist.series("val_auprc")
    plot_learning_curve(
        steps, losses, lay.model / "learning_curve.png", val_steps=vs or None, val_values=vv or None
    )
    log.info("train: %s trained in %.1fs, bundle at %s", method, secs, lay.model)
    return Trained(bundle, hist, secs)


# -- 5. evaluate -------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    per_episode: pd.DataFrame
    summary: pd.DataFrame
    results: dict[str, Any]
    markdown: str


def evaluate(params: Params, root: Path, *, progress: bool = False) -> Evaluated:
    """Score the trained model and every listed method on the frozen episodes.

    The work is a list of independent units, one per method (``metaad.evaluation.units``);
    here they run one after another. A flow may instead map them as tasks on a Dask
    cluster and pass the results to :func:`finish_evaluation`: the same rows either way.
    """
    from metaad.evaluation.units import evaluate_unit, plan_units

    prep = load_prepared(params, root)
    bundle = ModelBundle.load(Layout(root).model)
    trained = bundle.detector.name
    results = [
        evaluate_unit(params, root, u, prep=prep, bundle=bundle, progress=progress)
        for u in plan_units(params, trained)
    ]
    return finish_evaluation(params, root, results, trained_method=trained, prep=prep)


def finish_evaluation(
    params: Params,
    root: Path,
    results: list[Any],
    *,
    trained_method: str,
    prep: Prepared | None = None,
) -> Evaluated:
    """Summarise evaluation units' results and write ``artifacts/eval`` (tables, plots).

    ``results`` are :class:`metaad.evaluation.units.UnitResult`, in plan order.
    """
    from metaad.evaluation.plots import plot_auprc_vs_k, plot_pr_curves
    from metaad.evaluation.report import dvc_metrics, markdown_table, per_type_table, results_json
    from metaad.evaluation.runner import best_by, summarise

    lay = Layout(root)
    prep = load_prepared(params, root) if prep is None else prep
    trained = trained_method
    gate_k = params.evaluate.gate_k
    frames = [r.per_episode for r in results]
    families = {r.label: r.family for r in results}
    curves = {r.label: r.curve for r in results if r.curve is not None}
    timings = {r.label: r.fit_seconds for r in results if r.fit_seconds is not None}
    per_episode = pd.concat(frames, ignore_index=True)
    summary = summarise(per_episode)
    best = best_by(summary, gate_k, family_of=families)
    results = results_json(
        per_episode,
        summary,
        {
            "trained_method": trained,
            "families": families,
            "best_at_gate_k": best,
            "gate_k": gate_k,
            "unseen_types": list(prep.split.test),
            "contamination": prep.episodes.contamination,
            "fit_seconds": timings,
        },
    )
    md = "\n\n".join(
        [
            f"## Macro AUPRC on unseen types {list(prep.split.test)} (mean ± 95% CI)",
            markdown_table(summary, metric="auprc", shots=params.episodes.shots),
            "## Macro AUROC",
            markdown_table(summary, metric="auroc", shots=params.episodes.shots),
            f"## AUPRC per unseen type at K={gate_k}",
            per_type_table(summary, gate_k, "auprc"),
        ]
    )
    out = lay.eval
    (out / "plots").mkdir(parents=True, exist_ok=True)
    per_episode.to_csv(out / "per_episode.csv", index=False)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(md + "\n")
    (out / "metrics.json").write_text(json.dumps(dvc_metrics(summary), indent=1, sort_keys=True))
    plot_auprc_vs_k(
        summary,
        out / "plots" / "auprc_vs_k.png",
        family_of=families,
        contamination=prep.episodes.contamination,
    )
    plot_pr_curves(
        curves,
        out / "plots" / "pr_curves.png",
        title=f"PR curves, one unseen-type episode at K={gate_k}",
    )
    return Evaluated(per_episode, summary, results, md)
