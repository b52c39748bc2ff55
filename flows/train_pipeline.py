"""The governed training pipeline as a Prefect flow.

validate -> episodes -> meta-train -> evaluate -> register -> promote, on the data that
``data.dvc`` tracks (obtained first when missing). Every task wraps a function of the
``metaad`` core; this file holds orchestration only: retries on I/O, caching on the
deterministic episodes stage, artifacts for people, and a failed state that names the
reason when the data gate refuses the data.

Run it:  python flows/train_pipeline.py [--set train.method=maml ...]
"""

from __future__ import annotations

from metaad.config import set_offline_env

# Before Prefect is imported or starts its server: the server process inherits this
# environment, and its telemetry service would otherwise try the network.
set_offline_env()

import argparse
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from metaad import governance, stages
from metaad.config import Params, load_params
from metaad.datafetch import pull_or_regenerate

try:  # imported as the package module (tests, other flows)
    from flows.evaluate_fanout import evaluate_fanout, runner_from_params
except ImportError:  # run as a script, or loaded from a deployment's entrypoint path
    from evaluate_fanout import evaluate_fanout, runner_from_params  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()


#: Written by the flow's episodes task beside ``artifacts/episodes`` (not inside it, which
#: is a DVC output): the cache key the files were built for and the digests of the files.
EPISODES_STAMP = ".flow_episodes_cache.json"


def episodes_inputs_key(params: Params, root: Path) -> str:
    """Inputs that fully determine the episodes: the data, their params, the code.

    Only the ``ingest`` and ``episodes`` sections count: a new ``train.steps`` must not
    rebuild the episodes. Whether the files are really there is checked apart from the
    key (:func:`episodes_outputs_current`).
    """
    cfg = params.to_dict()
    parts = [
        json.dumps({"ingest": cfg["ingest"], "episodes": cfg["episodes"]}, sort_keys=True),
        _file_digest(stages.Layout(root).table(params)),
        _file_digest(Path(stages.__file__)),
        _file_digest(Path(stages.__file__).parent / "episodes"),
    ]
    return "metaad-episodes-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _episodes_outputs_digest(root: Path) -> str:
    return _file_digest(stages.Layout(root).episodes)


def episodes_outputs_current(params: Params, root: Path) -> bool:
    """True when ``artifacts/episodes`` holds, unmodified, what these inputs build.

    The flow uses a cached result only then: a cache key alone cannot know that the files
    were deleted or rebuilt from other inputs (by ``metaad episodes``, ``dvc repro``) after
    the cached run, and a hit would then skip writing them.
    """
    d = stages.Layout(root).episodes
    stamp = stages.Layout(root).artifacts / EPISODES_STAMP
    if not (stamp.is_file() and (d / "episodes.npz").is_file()):
        return False
    try:
        rec = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return bool(
        rec.get("key") == episodes_inputs_key(params, root)
        and rec.get("outputs") == _episodes_outputs_digest(root)
    )


def _episodes_cache_key(context: Any, arguments: dict[str, Any]) -> str:
    return episodes_inputs_key(arguments["params"], Path(arguments["root"]))


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def obtain_data(params: Params, root: Path) -> str:
    """I/O: pull data/ from the DVC remote, or regenerate the synthetic default."""
    if stages.Layout(root).table(params).exists():
        return "data/ already present"
    return pull_or_regenerate(params, root)


@task(cache_policy=NO_CACHE)
def validate_data(params: Params, root: Path, tracking_uri: str | None) -> dict[str, Any]:
    """The Great Expectations gate; a failure records an MLflow run and fails the flow."""
    from metaad.validation import ValidationFailed

    logger = get_run_logger()
    try:
        report = stages.validate(params, root)
    except ValidationFailed as exc:
        create_markdown_artifact(
            key="metaad-validation",
            markdown="# Data validation FAILED\n\n```\n" + exc.report.summary() + "\n```",
            description="Great Expectations gate",
        )
        rid = governance.record_failed_validation(
            params, root, exc.report, flow_run_id=flow_run.get_id(), tracking_uri=tracking_uri
        )
        logger.error("validation failed (MLflow run %s):\n%s", rid, exc.report.summary())
        raise
    create_markdown_artifact(
        key="metaad-validation",
        markdown=f"# Data validation passed\n\n{report.n_expectations} expectations, "
        f"{report.n_rows} rows. Data Docs: `{report.data_docs}`",
        description="Great Expectations gate",
    )
    return {"success": True, "n_expectations": report.n_expectations}


@task(cache_key_fn=_episodes_cache_key, persist_result=True)
def make_episodes(params: Params, root: Path) -> dict[str, Any]:
    """Deterministic given data, params and code: cached on exactly those.

    The flow forces a refresh when the files on disk are not the ones this key built
    (:func:`episodes_outputs_current`).
    """
    prep = stages.build_episodes(params, root)
    stamp = {"key": episodes_inputs_key(params, root), "outputs": _episodes_outputs_digest(root)}
    (stages.Layout(root).artifacts / EPISODES_STAMP).write_text(json.dumps(stamp))
    return {"split": prep.split.to_dict(), "n_episodes": len(prep.episodes)}


@task(cache_policy=NO_CACHE)
def meta_train(params: Params, root: Path) -> dict[str, Any]:
    res = stages.train(params, root)
    return {
        "method": params.train.method,
        "seconds": res.seconds,
        "threshold": res.bundle.threshold,
    }


@task(cache_policy=NO_CACHE)
def evaluate_all(params: Params, root: Path) -> dict[str, Any]:
    res = stages.evaluate(params, root)
    create_markdown_artifact(
        key="metaad-results",
        markdown=res.markdown,
        description="Unseen-type results on the frozen episodes",
    )
    return {"markdown": res.markdown, "best": res.results["extra"]["best_at_gate_k"]}


#: The Prefect global concurrency limit (one slot) that every run holds from registering
#: its challenger to the last write of the promotion decision.
CHAMPION_LOCK = "metaad-champion"
#: How long a run waits for another run's promotion before failing (seconds).
CHAMPION_LOCK_TIMEOUT_S = 3600.0


def ensure_champion_lock() -> None:
    """Create the one-slot limit on the Prefect server the first time (idempotent).

    Prefect skips a ``concurrency()`` block whose limit does not exist, so the flow makes
    sure it does; a limit someone changed to more than one slot is a configuration error.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            lim = client.read_global_concurrency_limit_by_name(CHAMPION_LOCK)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=CHAMPION_LOCK, limit=1)
                )
            lim = client.read_global_concurrency_limit_by_name(CHAMPION_LOCK)
    if lim.limit != 1 or not lim.active:
        raise RuntimeError(
            f"the Prefect concurrency limit {CHAMPION_LOCK!r} must be active with 1 slot "
            f"(it has {lim.limit}, active={lim.active}): `prefect gcl update {CHAMPION_LOCK} "
            "--limit 1 --enable`"
        )


@task(cache_policy=NO_CACHE)
def register_and_promote(params: Params, root: Path, tracking_uri: str | None) -> dict[str, Any]:
    """I/O with the MLflow store: register the challenger and apply the promotion gate.

    The whole step holds :data:`CHAMPION_LOCK`, so two retraining runs (another pod,
    another deployment, a manual run) never interleave: the second registers its version
    after the first has decided, and is judged against the champion that decision left.
    Inside, the gate reads the champion, decides and moves the alias at most once, after
    every rule (``metaad.promotion.promote``): atomic with respect to other runs.

    No automatic retries: registration is not idempotent, and a retry after a version was
    created would register a duplicate; a failed run is re-run whole.
    """
    logger = get_run_logger()
    ensure_champion_lock()
    waited = time.time()
    with concurrency(CHAMPION_LOCK, occupy=1, strict=True, timeout_seconds=CHAMPION_LOCK_TIMEOUT_S):
        acquired = time.time()
        logger.info("holding %r (waited %.1fs)", CHAMPION_LOCK, acquired - waited)
        res = governance.register_and_gate(
            params,
            root,
            validation_passed=True,
            flow_run_id=flow_run.get_id(),
            tracking_uri=tracking_uri,
        )
        _record_lock_span(res.tracking_uri, res.run_id, acquired)
    verdict = "PROMOTED to champion" if res.promoted else "NOT promoted"
    create_markdown_artifact(
        key="metaad-promotion",
        markdown=f"# {res.model_name} version {res.version}: {verdict}\n\n"
        + "\n".join(f"- {r}" for r in res.reasons)
        + f"\n\nChampion now: version {res.champion}",
        description="Promotion gate",
    )
    return {**res.to_dict(), "lock_waited_s": acquired - waited}


def _record_lock_span(uri: str, run_id: str, acquired: float) -> None:
    """Tag the MLflow run with when this run held the champion lock (an audit trail:
    two runs' spans never overlap, and each version was created inside its run's span)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, "champion_lock.acquired_ms", str(int(acquired * 1000)))
    client.set_tag(run_id, "champion_lock.released_ms", str(int(time.time() * 1000)))


@flow(name="metaad-train", log_prints=False)
def train_pipeline(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    root: str | None = None,
    tracking_uri: str | None = None,
    task_runner: str | None = None,
) -> dict[str, Any]:
    """validate -> episodes -> meta-train -> evaluate -> register -> promote.

    ``task_runner`` (default ``scale.task_runner``): ``dask`` maps the evaluation units as
    tasks on a Dask cluster (``scale.dask_address``, else a LocalCluster), ``sequential``
    scores them in this process; the results are the same.
    """
    set_offline_env()
    base = Path(root) if root else ROOT
    params = load_params(base / params_path, overrides or {})
    runner = task_runner or params.scale.task_runner
    logger = get_run_logger()
    logger.info("data: %s", obtain_data(params, base))
    validate_data(params, base, tracking_uri)
    current = episodes_outputs_current(params, base)
    make_episodes.with_options(refresh_cache=not current)(params, base)
    trained = meta_train(params, base)
    if runner == "sequential":
        evaluated = evaluate_all(params, base)
    else:
        evaluated = evaluate_fanout.with_options(
            task_runner=runner_from_params(params.scale, runner)
        )(params, str(base))
        create_markdown_artifact(
            key="metaad-results",
            markdown=evaluated["markdown"],
            description="Unseen-type results on the frozen episodes (evaluation fanned out)",
        )
    gate = register_and_promote(params, base, tracking_uri)
    create_markdown_artifact(
        key="metaad-run-summary",
        markdown=evaluated["markdown"]
        + "\n\n## Promotion\n\n"
        + ("promoted" if gate["promoted"] else "not promoted")
        + "\n\n"
        + "\n".join(f"- {r}" for r in gate["reasons"]),
        description="metaad pipeline run",
    )
    return {"trained": trained, "evaluated": evaluated, "gate": gate}


def main(argv: list[str] | None = None) -> int:
    """The main job: run the flow, then say what happened and where to look."""
    from metaad.validation import ValidationFailed

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    ap.add_argument(
        "--set",
        "-S",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. -S train.method=maml",
    )
    ap.add_argument(
        "--root", default=None, help=f"project root: data/, artifacts/, mlflow/ (default {ROOT})"
    )
    ap.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <root>/mlflow/mlflow.db)",
    )
    ap.add_argument(
        "--task-runner",
        choices=["sequential", "dask"],
        default=None,
        help="evaluation units in this process or on Dask (default: scale.task_runner)",
    )
    args = ap.parse_args(argv)
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set expects KEY=VALUE, got {bad}")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    try:
        out = train_pipeline(
            params_path=args.params,
            overrides=overrides,
            root=args.root,
            tracking_uri=args.tracking_uri,
            task_runner=args.task_runner,
        )
    except ValidationFailed as exc:
        print(
            f"The data gate stopped the pipeline; nothing was registered.\n{exc}", file=sys.stderr
        )
        return 1
    gate = out["gate"]
    print(out["evaluated"]["markdown"])
    print()
    print(
        f"Model {gate['model_name']} version {gate['version']}: "
        f"{'PROMOTED to @champion' if gate['promoted'] else 'not promoted'}"
    )
    for r in gate["reasons"]:
        print(f"  {r}")
    print(f"Champion: version {gate['champion']}")
    print(f"\nLook at it:  mlflow ui --backend-store-uri {gate['tracking_uri']}")
    print(
        f"Serve it:    MLFLOW_TRACKING_URI={gate['tracking_uri']} mlflow models serve "
        f"-m models:/{gate['model_name']}@champion --env-manager local -p 5001"
    )
    print(json.dumps({"decision": gate["decision_path"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
