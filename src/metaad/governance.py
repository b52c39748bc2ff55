"""Register and promote: the pipeline's last two stages, as plain functions.

``register_and_gate`` records the pipeline run in MLflow, registers the trained bundle as
``challenger``, checks that it loads and predicts through MLflow, scores the current
``champion`` on the same frozen episodes, applies the gate and moves ``champion`` only
when every rule passes. ``record_failed_validation`` leaves an auditable MLflow run when
the data gate stops the pipeline. The flow and the CLI both call these.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metaad.config import Params, set_offline_env
from metaad.stages import Layout, load_prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    champion: str | None
    reasons: list[str]
    decision_path: str
    tracking_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _champion_per_episode(uri: str, params: Params, root: Path, version: str) -> Any:
    """Score the current champion (if any other version holds it) on today's episodes."""
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from metaad.promotion import champion_version, per_episode_at, score_champion_on_episodes
    from metaad.tracking import using_tracking_uri

    client = MlflowClient(tracking_uri=uri)
    name = params.register.model_name
    champ = champion_version(client, name)
    if champ is None or str(champ.version) == version:
        return None, None
    lay = Layout(root)
    prep = load_prepared(params, root)
    test_rows = pd.read_parquet(lay.episodes / "test_rows.parquet")
    with using_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    bundle = model.unwrap_python_model().bundle
    df = score_champion_on_episodes(bundle, test_rows, prep.episodes, params.promote.k)
    return per_episode_at(df, "champion", params.promote.k), str(champ.version)


def register_and_gate(
    params: Params,
    root: Path,
    *,
    validation_passed: bool,
    flow_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> GateResult:
    """Log the run, register the challenger, decide, and promote only on a pass."""
    from mlflow import MlflowClient

    from metaad.promotion import check_loads, decide, per_episode_at, promote
    from metaad.tracking import (
        default_tracking_uri,
        input_example,
        log_and_register_model,
        log_pipeline_run,
    )
    from metaad.typelib import write_serving_bundle

    set_offline_env()
    root = Path(root)
    lay = Layout(root)
    uri = tracking_uri or default_tracking_uri(root)
    per_episode = pd.read_csv(lay.eval / "per_episode.csv")
    run_id = log_pipeline_run(
        params, root, per_episode=per_episode, flow_run_id=flow_run_id, tracking_uri=uri
    )
    test_rows = pd.read_parquet(lay.episodes / "test_rows.parquet")
    with tempfile.TemporaryDirectory() as tmp:
        # The registered bundle carries calibration normals and the serving limits
        # (metaad.typelib); written to a copy, since artifacts/model is a DVC output.
        served = write_serving_bundle(lay.model, params, root, Path(tmp) / "bundle")
        mv = log_and_register_model(
            served,
            params,
            test_rows,
            run_id=run_id,
            root=root,
            tracking_uri=uri,
            flow_run_id=flow_run_id,
        )
    name, version = params.register.model_name, str(mv.version)
    sample = input_example(lay.model, test_rows, n=50)
    loads_ok, load_error = check_loads(f"models:/{name}/{version}", sample, tracking_uri=uri)
    method = json.loads((lay.model / "bundle.json").read_text())["method"]
    challenger = per_episode_at(per_episode, method, params.promote.k)
    champion, _champ_version = None, None
    champion_note = None
    try:
        champion, _champ_version = _champion_per_episode(uri, params, root, version)
    except Exception as exc:  # a champion that cannot be re-scored must not block forever
        champion_note = f"the current champion could not be scored on these episodes: {exc}"
        log.warning(champion_note)
    decision = decide(
        challenger,
        champion,
        params.promote,
        validation_passed=validation_passed,
        loads_ok=loads_ok,
        load_error=load_error,
    )
    if champion_note:
        decision = type(decision)(
            promote=False,
            reasons=[*decision.reasons, f"FAIL champion comparison: {champion_note}"],
            metrics=decision.metrics,
        )
    client = MlflowClient(tracking_uri=uri)
    outcome = promote(
        client, name, version, decision, decision_path=lay.artifacts / "promotion" / "decision.json"
    )
    client.log_artifact(run_id, str(lay.artifacts / "promotion" / "decision.json"), "promotion")
    client.set_tag(run_id, "promotion.decision", decision.label)
    after = version if outcome.promoted else outcome.previous_champion
    return GateResult(
        run_id,
        name,
        version,
        outcome.promoted,
        after,
        list(decision.reasons),
        str(outcome.decision_path),
        uri,
    )


def record_failed_validation(
    params: Params,
    root: Path,
    report: Any,
    *,
    flow_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """An MLflow run marked FAILED that carries the validation report; nothing is registered."""
    from mlflow import MlflowClient

    from metaad.tracking import default_tracking_uri, ensure_experiment, lineage_tags

    set_offline_env()
    uri = tracking_uri or default_tracking_uri(Path(root))
    exp = ensure_experiment(params.register.experiment, Path(root), tracking_uri=uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(
        exp,
        run_name="validation-failed",
        tags={**lineage_tags(Path(root), params, flow_run_id), "validation": "failed"},
    )
    rid = run.info.run_id
    lay = Layout(Path(root))
    if (lay.validation / "report.json").exists():
        client.log_artifact(rid, str(lay.validation / "report.json"), "validation")
    if (lay.validation / "data_docs").exists():
        client.log_artifacts(rid, str(lay.validation / "data_docs"), "validation/data_docs")
    client.set_tag(rid, "validation.summary", str(report.summary())[:4900])
    client.set_terminated(rid, status="FAILED")
    return rid
