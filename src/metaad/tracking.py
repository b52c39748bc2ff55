"""MLflow tracking and registration for a pipeline run.

One MLflow run per pipeline run holds the resolved configuration, the learning curve, the
final metrics per method / K / unseen type, the plots and reports, and lineage tags (git
commit, data version from ``data.dvc``, params hash, flow run), so any number in the UI can
be traced back to the code, data and configuration that produced it. The model bundle is
then logged as a pyfunc and registered under ``params.register.model_name`` with the alias
``challenger``; the promotion gate (``metaad.promotion``) decides about ``champion``.

The default store is a SQLite database under ``<root>/mlflow/`` with artifacts beside it
(DESIGN.md); ``MLFLOW_TRACKING_URI`` points elsewhere. Functions take an explicit
``tracking_uri`` and switch MLflow's global URI only for the duration of a call, because
``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` and would otherwise leak
one project's store into the next call (or the next test).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import metaad
from metaad.config import Params, set_offline_env
from metaad.stages import Layout

log = logging.getLogger(__name__)

#: Registry aliases (DESIGN.md, "Names that docs, tests and checks share").
CHALLENGER = "challenger"
CHAMPION = "champion"
#: Artifact path of the pyfunc model inside its MLflow logged model.
MODEL_NAME_IN_RUN = "model"

#: Lineage tag keys, on the run and on every registered model version.
TAG_GIT_COMMIT = "git_commit"
TAG_GIT_DIRTY = "git_dirty"
TAG_DATA_VERSION = "data_version"
TAG_PARAMS_HASH = "params_hash"
TAG_FLOW_RUN = "flow_run_id"

#: Distributions pinned exactly in the served model's environment. ``catboost`` is there
#: because ``metaad.models.registry`` imports every detector module, baselines included,
#: when it loads a bundle; ``cloudpickle`` because it unpickles the pyfunc shell.
SERVING_REQUIREMENTS: tuple[str, ...] = (
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pyod",
    "catboost",
    "pyyaml",
    "tqdm",
    "cloudpickle",
    "mlflow",
)

# MLflow's limits (mlflow.utils.validation), restated so a batch never trips them.
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE = 6000
_MAX_METRICS_PER_BATCH = 1000
_MAX_KEY = 250
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


# -- store ---------------------------------------------------------------------------------
def default_tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``<root>/mlflow/mlflow.db``.

    A database-backed store, not a file store, because the model registry needs one.
    """
    set_offline_env()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(root).absolute() / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite URI, or None for any other store.

    SQLAlchemy's form: ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix) :].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(path).absolute()


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite database (``<db dir>/artifacts``), as a file URI.

    Without it MLflow would put them under ``./mlruns`` of whatever directory the process
    started in; a server store decides its own location, so None there.
    """
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "artifacts").absolute().as_uri()


def _resolve_uri(root: Path | None, tracking_uri: str | None) -> str:
    set_offline_env()  # before any MLflow call: telemetry would otherwise try the network
    return tracking_uri or default_tracking_uri(Path.cwd() if root is None else Path(root))


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore the previous state.

    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``; restoring the environment
    variable as it was keeps a user's own setting intact and keeps ours from leaking.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before is None:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(before)


def ensure_experiment(
    name: str, root: Path | None = None, *, tracking_uri: str | None = None
) -> str:
    """Return the id of experiment ``name``, creating it if needed.

    On a local SQLite store the experiment's artifacts go to ``<db dir>/artifacts``
    (``<root>/mlflow/artifacts`` for the default store), so the database and its artifacts
    live, move and get git-ignored together.
    """
    uri = _resolve_uri(root, tracking_uri)
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri))
        log.info("created MLflow experiment %r (%s) in %s", name, exp_id, uri)
        return str(exp_id)
    except MlflowException:
        # Another process created it between our lookup and our create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


# -- lineage -------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def data_version(root: Path) -> str:
    """The md5 that ``data.dvc`` records for ``data/`` (``"untracked"`` without one).

    The DVC md5 identifies the exact data content, which a git commit alone does not: the
    data lives in the DVC cache, not in git.
    """
    path = Path(root) / "data.dvc"
    if not path.exists():
        return "untracked"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        md5 = doc["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        log.warning("cannot read the data version from %s: %s", path, exc)
        return "untracked"
    return str(md5)


def lineage_tags(root: Path, params: Params, flow_run_id: str | None = None) -> dict[str, str]:
    """Git commit and dirty flag, data version, params hash and flow run id, as tag strings.

    A dirty working tree is recorded rather than refused: experiments run from uncommitted
    code, but a result tagged ``git_dirty=true`` is known not to be reproducible from the
    commit alone. Outside a git repository both read ``"unknown"``.
    """
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain") if commit is not None else None
    return {
        TAG_GIT_COMMIT: commit.strip() if commit else "unknown",
        TAG_GIT_DIRTY: "unknown" if status is None else str(bool(status.strip())).lower(),
        TAG_DATA_VERSION: data_version(root),
        TAG_PARAMS_HASH: params.digest(),
        TAG_FLOW_RUN: flow_run_id or "none",
    }


# -- names and batches ---------------------------------------------------------------------
def sanitize_name(name: str) -> str:
    """A metric or param name within MLflow's charset: alphanumerics, ``_ - .``.

    Slashes, spaces and colons are allowed by MLflow but replaced too: slashes are read as
    paths by some stores, and anomaly-type names come from user data.
    """
    parts = [_BAD_NAME_CHARS.sub("_", p) or "_" for p in str(name).split(".")]
    return ".".join(parts)[:_MAX_KEY]


def _unique_names(raw: Sequence[str]) -> dict[str, str]:
    """Sanitised names for ``raw``, with a short hash where two raw names would collide."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for r in raw:
        s = sanitize_name(r)
        if s in taken:
            s = f"{s[: _MAX_KEY - 7]}-{hashlib.md5(r.encode()).hexdigest()[:6]}"
            log.warning("metric name %r collides after sanitising; logged as %r", r, s)
        taken.add(s)
        out[r] = s
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _log_params(client: MlflowClient, run_id: str, flat: Mapping[str, Any]) -> None:
    params = []
    for key, value in flat.items():
        text = "null" if value is None else str(value)
        if len(text) > _MAX_PARAM_VALUE:
            log.warning(
                "param %s is %d characters; truncated (the full config is an artifact)",
                key,
                len(text),
            )
            text = text[:_MAX_PARAM_VALUE]
        params.append(Param(sanitize_name(key), text))
    for chunk in _chunks(params, _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=list(chunk))


def _log_metrics(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    for chunk in _chunks(metrics, _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(chunk))


def history_metrics(
    history: Sequence[Mapping[str, Any]], *, prefix: str = "train", timestamp: int | None = None
) -> list[Metric]:
    """Learning-curve records (``{"step", "loss", "val_auprc"?, ...}``) as stepped metrics."""
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    out: list[Metric] = []
    for rec in history:
        if "step" not in rec:
            raise ValueError(f"history record without a 'step': {dict(rec)}")
        step = int(rec["step"])
        for key, value in rec.items():
            if key == "step" or value is None:
                continue
            out.append(Metric(sanitize_name(f"{prefix}.{key}"), float(value), ts, step))
    return out


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Final metrics per method, K and unseen type, with macro means and their intervals.

    Names: ``<metric>.k<K>.<method>.macro`` (plus ``.ci_lo`` / ``.ci_hi``) and
    ``<metric>.k<K>.<method>.type.<type>``, sanitised to MLflow's charset.
    """
    from metaad.evaluation.runner import MACRO, METRICS

    raw: dict[str, float] = {}
    for row in summary.to_dict("records"):
        base = f"k{int(row['shots'])}.{row['method']}"
        is_macro = row["type"] == MACRO
        where = "macro" if is_macro else f"type.{row['type']}"
        for m in METRICS:
            mean = row.get(f"{m}_mean")
            if mean is None:
                continue
            raw[f"{m}.{base}.{where}"] = float(mean)
            if is_macro:
                for bound, col in (("ci_lo", f"{m}_lo"), ("ci_hi", f"{m}_hi")):
                    if row.get(col) is not None:
                        raw[f"{m}.{base}.{where}.{bound}"] = float(row[col])
    names = _unique_names(list(raw))
    return {names[k]: v for k, v in raw.items()}


# -- the pipeline run ----------------------------------------------------------------------
def _artifact_plan(layout: Layout) -> list[tuple[Path, str]]:
    """(local path, artifact folder) for every report a run should carry, if it exists."""
    ev, model = layout.eval, layout.model
    plan: list[tuple[Path, str]] = [
        (ev / "results.md", "eval"),
        (ev / "results.json", "eval"),
        (ev / "metrics.json", "eval"),
        (ev / "per_episode.csv", "eval"),
        (ev / "plots", "plots"),
        (model / "learning_curve.png", "plots"),
        (model / "history.json", "train"),
        (layout.validation / "report.json", "validation"),
        (layout.validation / "data_docs", "validation/data_docs"),
        (layout.episodes / "manifest.json", "episodes"),
        (layout.episodes / "split.json", "episodes"),
    ]
    return plan


def _log_files(client: MlflowClient, run_id: str, plan: Sequence[tuple[Path, str]]) -> None:
    for path, dest in plan:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), dest)
        elif path.is_file():
            client.log_artifact(run_id, str(path), dest)
        else:
            log.debug("no %s to log (not produced by this run)", path)


def log_pipeline_run(
    params: Params,
    root: Path,
    *,
    per_episode: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    layout: Layout | None = None,
    flow_run_id: str | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Record one pipeline run in MLflow and return its run id.

    Whatever is not passed is read from the stage outputs in ``layout`` (default
    ``Layout(root)``, i.e. ``<root>/artifacts``): ``eval/per_episode.csv`` for the metrics
    (summarised with :func:`metaad.evaluation.runner.summarise` when no ``summary`` is
    given) and ``model/history.json`` for the learning curve. So the flow passes what its
    stages returned, and the CLI can pass nothing but ``params`` and ``root``.

    The run is ended before returning (``FINISHED``, or ``FAILED`` if logging raised);
    :func:`log_and_register_model` reopens it by id to attach the model.
    """
    root = Path(root)
    uri = _resolve_uri(root, tracking_uri)
    layout = Layout(root) if layout is None else layout
    exp_id = ensure_experiment(params.register.experiment, root, tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri)

    if per_episode is None and (layout.eval / "per_episode.csv").exists():
        per_episode = pd.read_csv(layout.eval / "per_episode.csv")
    if summary is None and per_episode is not None and len(per_episode):
        from metaad.evaluation.runner import summarise

        summary = summarise(per_episode)
    if history is None and (layout.model / "history.json").exists():
        history = json.loads((layout.model / "history.json").read_text())

    tags = lineage_tags(root, params, flow_run_id)
    if tags[TAG_GIT_COMMIT] != "unknown":
        tags["mlflow.source.git.commit"] = tags[TAG_GIT_COMMIT]
    bundle_meta = layout.model / "bundle.json"
    if bundle_meta.exists():
        diverged = json.loads(bundle_meta.read_text()).get("diverged_at")
        if diverged is not None:  # kept its best-validated weights after a blow-up
            tags["train.diverged_at"] = str(diverged)
    tags.update(extra_tags or {})
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        _log_params(client, run_id, params.flat())
        ts = int(time.time() * 1000)
        metrics: list[Metric] = history_metrics(history or [], timestamp=ts)
        if summary is not None and len(summary):
            metrics += [
                Metric(k, v, ts, 0)
                for k, v in summary_metrics(summary).items()
                if not math.isnan(v)
            ]
        _log_metrics(client, run_id, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "params.json"
            cfg.write_text(json.dumps(params.to_dict(), indent=1, sort_keys=True))
            client.log_artifact(run_id, str(cfg), "config")
        _log_files(client, run_id, _artifact_plan(layout))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    log.info("MLflow run %s: %d metrics logged to %s", run_id, len(metrics), uri)
    return run_id


# -- the model -----------------------------------------------------------------------------
def _exact_version(dist: str) -> str:
    # A local build tag (torch's "+cpu") is not on the index; the exact public version is
    # what selects the CPU wheel on these machines (DESIGN.md).
    return importlib.metadata.version(dist).split("+", 1)[0]


def serving_requirements() -> list[str]:
    """Exact pins of the installed versions, so the served model runs what was tested."""
    return [f"{d}=={_exact_version(d)}" for d in SERVING_REQUIREMENTS]


def _package_copy(dst: Path) -> Path:
    """A copy of the installed ``metaad`` package, without byte-code caches, for code_paths."""
    src = Path(metaad.__file__).parent
    out = dst / "metaad"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def input_example(bundle_dir: Path, frame: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """A few rows of the model's input columns, with the canonical table's own dtypes.

    The dtypes are kept, not coerced, because the signature is enforced on in-process
    predictions (batch scoring reads the same canonical Parquet, so the types match), and
    the scoring server casts JSON requests to the signature's types before enforcing it.
    Label and type columns are dropped: a request carries features only.
    """
    from metaad.bundle import ModelBundle
    from metaad.pyfunc_model import required_columns

    bundle = ModelBundle.load(bundle_dir)
    cols = required_columns(bundle)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"input example lacks the model's column(s) {missing}")
    if bundle.window:
        from metaad.data.schema import SERIES, TIMESTAMP

        part = frame[frame[SERIES] == frame[SERIES].iloc[0]]
        if TIMESTAMP in part.columns:
            cols = [*cols, TIMESTAMP]
            part = part.sort_values(TIMESTAMP)
        ex = part[cols].head(max(n, int(bundle.window["window"])))
    else:
        ex = frame[cols].head(n)
    return ex.reset_index(drop=True)


@contextlib.contextmanager
def _run_for_model(
    run_id: str | None, uri: str, experiment: str, root: Path | None
) -> Iterator[str]:
    """The run to log the model in: ``run_id``, else the active run, else a new one."""
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active.info.run_id
        return
    if active is not None:
        raise ValueError(
            f"run {active.info.run_id} is active; cannot log the model into run {run_id}"
        )
    with using_tracking_uri(uri):
        if run_id is None:
            exp_id = ensure_experiment(experiment, root, tracking_uri=uri)
            cm = mlflow.start_run(experiment_id=exp_id, run_name="register")
        else:
            cm = mlflow.start_run(run_id=run_id)
        with cm as run:
            yield run.info.run_id


def log_and_register_model(
    bundle_dir: Path,
    params: Params,
    input_example_df: pd.DataFrame,
    *,
    run_id: str | None = None,
    root: Path | None = None,
    tracking_uri: str | None = None,
    flow_run_id: str | None = None,
    lineage: Mapping[str, str] | None = None,
    alias: str = CHALLENGER,
) -> ModelVersion:
    """Log the bundle as a pyfunc, register it, point ``alias`` at it and tag it with lineage.

    The model goes into run ``run_id`` (typically the one :func:`log_pipeline_run`
    returned), else the active run, else a new run. The input example is a few rows of
    ``input_example_df`` (canonical rows; only the request columns are kept). The signature
    declares the output only: MLflow's input enforcement would drop unknown columns
    silently, so the model checks requests itself (``metaad.pyfunc_model.parse_request``)
    and its input contract is recorded in the MLmodel metadata. ``alias`` is
    ``challenger``: only the promotion gate moves ``champion``.
    """
    from metaad.bundle import ModelBundle
    from metaad.pyfunc_model import (
        BUNDLE_ARTIFACT,
        SUPPORT,
        MetaADPyfunc,
        input_contract,
        predict_frame,
        serving_signature,
    )

    set_offline_env()
    bundle_dir = Path(bundle_dir)
    base = Path.cwd() if root is None else Path(root)
    active = mlflow.active_run()
    uri = (
        mlflow.get_tracking_uri()
        if active is not None and run_id in (None, active.info.run_id)
        else _resolve_uri(base, tracking_uri)
    )
    # Load and score before logging anything: a bundle that cannot predict is never registered.
    example = input_example(bundle_dir, input_example_df)
    bundle = ModelBundle.load(bundle_dir)
    predict_frame(bundle, example)
    signature = serving_signature()
    contract = {"metaad_input": input_contract(bundle), "metaad_support_column": SUPPORT}
    tags = dict(lineage) if lineage is not None else lineage_tags(base, params, flow_run_id)
    name = params.register.model_name

    with (
        tempfile.TemporaryDirectory() as tmp,
        _run_for_model(run_id, uri, params.register.experiment, base) as rid,
    ):
        code = _package_copy(Path(tmp))
        with using_tracking_uri(uri):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=MetaADPyfunc(),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                metadata=contract,
                pip_requirements=serving_requirements(),
            )
            mv = mlflow.register_model(info.model_uri, name)
    client = MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias(name, alias, mv.version)
    for key, value in {**tags, "run_id": rid}.items():
        client.set_model_version_tag(name, mv.version, key, value)
    log.info("registered %s version %s (@%s) from run %s", name, mv.version, alias, rid)
    return client.get_model_version(name, mv.version)


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "TAG_DATA_VERSION",
    "TAG_FLOW_RUN",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_PARAMS_HASH",
    "data_version",
    "default_tracking_uri",
    "ensure_experiment",
    "history_metrics",
    "input_example",
    "lineage_tags",
    "log_and_register_model",
    "log_pipeline_run",
    "sanitize_name",
    "serving_requirements",
    "summary_metrics",
    "using_tracking_uri",
]
