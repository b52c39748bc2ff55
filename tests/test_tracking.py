"""MLflow tracking against a real SQLite store in a temporary folder (no server).

A fake stage-output tree (``artifacts/``: per-episode metrics, plots, validation report,
episodes manifest, learning curve) stands in for a pipeline run, and a tiny real model
bundle (an untrained metric learner on 4 numeric columns) is logged, registered and loaded
back through the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from metaad.bundle import ModelBundle
from metaad.config import Params, load_params
from metaad.episodes.preprocess import Preprocessor
from metaad.models.metric import MetricLearner
from metaad.pyfunc_model import FLAG, OUTPUT_COLUMNS, SCORE, predict_frame
from metaad.stages import Layout
from metaad.tracking import (
    CHALLENGER,
    TAG_DATA_VERSION,
    TAG_FLOW_RUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_PARAMS_HASH,
    default_tracking_uri,
    ensure_experiment,
    lineage_tags,
    log_and_register_model,
    log_pipeline_run,
    sanitize_name,
    serving_requirements,
    summary_metrics,
    using_tracking_uri,
)
from metaad.typelib import ServedScorer

FEATURES = ["f0", "f1", "f2", "f3"]


def canonical(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    normal = pd.DataFrame(rng.normal(0, 1, (200, 4)), columns=FEATURES)
    anom = pd.DataFrame(rng.normal(4, 0.5, (20, 4)), columns=FEATURES)
    return pd.concat(
        [normal.assign(label=0, anomaly_type="normal"), anom.assign(label=1, anomaly_type="a")],
        ignore_index=True,
    )


def make_bundle(directory: Path, threshold: float = 0.0) -> Path:
    df = canonical()
    pre = Preprocessor.fit(df)
    X = pre.transform(df)
    det = MetricLearner((4,), hidden=(8,), out_dim=4, k_nn=3)
    meta = {"feature_columns": pre.input_columns, "threshold": threshold, "window": None}
    bundle = ModelBundle(det, pre, X[:40], X[-5:], np.full(5, "a"), meta)
    return bundle.save(directory)


def per_episode() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"method": m, "type": t, "shots": k, "rep": r, "auprc": rng.uniform(0.2, 0.9),
         "auroc": rng.uniform(0.6, 1.0), "recall_at_1fpr": rng.uniform(0, 1)}
        for m in ("proto", "iforest")
        for t in ("dos", "probe attack/v2")
        for k in (0, 5)
        for r in range(4)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def fake_stage_outputs(root: Path) -> Layout:
    lay = Layout(root)
    (lay.eval / "plots").mkdir(parents=True)
    per_episode().to_csv(lay.eval / "per_episode.csv", index=False)
    (lay.eval / "results.md").write_text("## results\n")
    (lay.eval / "plots" / "auprc_vs_k.png").write_bytes(b"\x89PNG fake")
    lay.model.mkdir(parents=True)
    history = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(0, 50, 10)]
    history += [{"step": 50, "loss": 0.01, "val_auprc": 0.7}]
    (lay.model / "history.json").write_text(json.dumps(history))
    (lay.model / "learning_curve.png").write_bytes(b"\x89PNG fake")
    (lay.validation / "data_docs").mkdir(parents=True)
    (lay.validation / "report.json").write_text('{"success": true}')
    (lay.validation / "data_docs" / "index.html").write_text("<html></html>")
    lay.episodes.mkdir(parents=True)
    (lay.episodes / "manifest.json").write_text('{"n_episodes": 32}')
    return lay


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One project root with stage outputs and the default SQLite store, logged once."""
    root = tmp_path_factory.mktemp("project")
    fake_stage_outputs(root)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    params = Params()
    run_id = log_pipeline_run(params, root, tracking_uri=uri, flow_run_id="flow-123")
    return {"root": root, "uri": uri, "params": params, "run_id": run_id}


# -- store and lineage -----------------------------------------------------------------------
def test_default_uri_is_the_project_sqlite_store_unless_the_env_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"]


def test_experiment_artifacts_live_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp_id = ensure_experiment("metaad", tmp_path)
    assert ensure_experiment("metaad", tmp_path) == exp_id
    exp = MlflowClient(default_tracking_uri(tmp_path)).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing leaked into the environment


def test_using_tracking_uri_restores_a_user_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///user.db")
    with using_tracking_uri("sqlite:///other.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///other.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///user.db"
    assert mlflow.get_tracking_uri() == "sqlite:///user.db"


def test_lineage_outside_a_repository(tmp_path: Path) -> None:
    params = Params()
    tags = lineage_tags(tmp_path, params, None)
    assert tags[TAG_GIT_COMMIT] == "unknown" and tags[TAG_GIT_DIRTY] == "unknown"
    assert tags[TAG_DATA_VERSION] == "untracked"
    assert tags[TAG_PARAMS_HASH] == params.digest()
    assert tags[TAG_FLOW_RUN] == "none"


def test_lineage_in_a_repository_with_dvc_data(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        cmd = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: data\n")
    git("add", "data.dvc")
    git("commit", "-q", "-m", "data")
    params = load_params(tmp_path / "params.yaml", overrides={"train.steps": "7"})
    tags = lineage_tags(tmp_path, params, "flow-1")
    assert tags[TAG_GIT_COMMIT] == git("rev-parse", "HEAD")
    assert tags[TAG_GIT_DIRTY] == "false"
    assert tags[TAG_DATA_VERSION] == "0123abcd.dir"
    assert tags[TAG_FLOW_RUN] == "flow-1"
    assert tags[TAG_PARAMS_HASH] != Params().digest()
    (tmp_path / "data.dvc").write_text("outs:\n- md5: ffff.dir\n  path: data\n")
    tags = lineage_tags(tmp_path, params, "flow-1")
    assert tags[TAG_GIT_DIRTY] == "true" and tags[TAG_DATA_VERSION] == "ffff.dir"


def test_metric_names_are_sanitised_and_unique() -> None:
    assert sanitize_name("auprc.k5.proto.type.probe attack/v2:x") == (
        "auprc.k5.proto.type.probe_attack_v2_x"
    )
    from metaad.evaluation.runner import summarise

    df = per_episode()
    df.loc[df["type"] == "dos", "type"] = "probe attack_v2"  # collides once sanitised
    names = summary_metrics(summarise(df))
    assert len([n for n in names if n.startswith("auprc.k5.proto.type.probe_attack_v2")]) == 2
    assert "auprc.k5.proto.macro" in names and "auprc.k5.proto.macro.ci_lo" in names


# -- the pipeline run ------------------------------------------------------------------------
def test_pipeline_run_holds_config_metrics_curves_artifacts_and_lineage(store: dict) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    run = client.get_run(store["run_id"])
    params: Params = store["params"]
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == set(params.flat())
    assert run.data.params["train.method"] == params.train.method
    m = run.data.metrics
    for name in (
        "auprc.k5.proto.macro",
        "auroc.k0.iforest.macro",
        "auprc.k5.proto.type.dos",
        "auprc.k5.proto.type.probe_attack_v2",
        "recall_at_1fpr.k5.proto.macro",
    ):
        assert name in m, name
    expected = per_episode().query("method == 'proto' and shots == 5")
    assert m["auprc.k5.proto.macro"] == pytest.approx(
        expected.groupby("type")["auprc"].mean().mean()
    )
    curve = client.get_metric_history(store["run_id"], "train.loss")
    assert [p.step for p in curve] == [0, 10, 20, 30, 40, 50]
    assert len(client.get_metric_history(store["run_id"], "train.val_auprc")) == 1
    tags = run.data.tags
    assert tags[TAG_FLOW_RUN] == "flow-123" and tags[TAG_PARAMS_HASH] == params.digest()
    assert tags[TAG_DATA_VERSION] == "untracked"
    assert "train.diverged_at" not in tags

    def listing(path: str | None = None) -> set[str]:
        return {f.path for f in client.list_artifacts(store["run_id"], path)}

    assert {"config", "eval", "plots", "train", "validation", "episodes"} <= listing()
    assert {"plots/auprc_vs_k.png", "plots/learning_curve.png"} <= listing("plots")
    assert "validation/data_docs" in listing("validation")
    assert "episodes/manifest.json" in listing("episodes")
    assert "eval/results.md" in listing("eval")


def test_a_run_that_stopped_at_a_divergence_is_tagged(tmp_path: Path) -> None:
    """A model that kept its best-validated weights after its loss blew up (bundle.json
    ``diverged_at``) carries that on its MLflow run, where the promotion reviewer looks."""
    lay = fake_stage_outputs(tmp_path)
    make_bundle(lay.model)
    meta = json.loads((lay.model / "bundle.json").read_text())
    (lay.model / "bundle.json").write_text(json.dumps({**meta, "diverged_at": 166}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_pipeline_run(Params(), tmp_path, tracking_uri=uri)
    assert MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["train.diverged_at"] == "166"


# -- the model -------------------------------------------------------------------------------
def test_model_is_logged_into_the_run_registered_and_served(store: dict, tmp_path: Path) -> None:
    params: Params = store["params"]
    bundle_dir = make_bundle(tmp_path / "model")
    mv = log_and_register_model(
        bundle_dir, params, canonical(3), run_id=store["run_id"], root=store["root"],
        tracking_uri=store["uri"], flow_run_id="flow-123",
    )  # fmt: skip
    client = MlflowClient(tracking_uri=store["uri"])
    name = params.register.model_name
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(mv.version)
    assert CHALLENGER in mv.aliases
    assert mv.tags["run_id"] == store["run_id"]
    assert mv.tags[TAG_FLOW_RUN] == "flow-123" and mv.tags[TAG_PARAMS_HASH] == params.digest()
    assert "MLFLOW_TRACKING_URI" not in os.environ

    with using_tracking_uri(store["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHALLENGER}")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}"))
    # outputs-only signature: the model checks its input itself (metaad.pyfunc_model)
    assert model.metadata.get_input_schema() is None
    contract = model.metadata.metadata["metaad_input"]
    assert [c["name"] for c in contract if c["required"]] == FEATURES
    reqs = (local / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs
    assert {r.split("==")[0] for r in reqs} >= {"numpy", "pandas", "scikit-learn", "mlflow"}
    assert all("==" in r for r in reqs)
    assert (local / "code" / "metaad" / "pyfunc_model.py").exists()
    assert not list((local / "code").rglob("__pycache__"))

    rows = canonical(4)
    out = model.predict(rows[FEATURES])
    assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == len(rows)
    assert out[SCORE].dtype == np.float64 and out[FLAG].dtype == bool
    bundle = ModelBundle.load(bundle_dir)
    served = ServedScorer(bundle).score(bundle.preprocessor.transform(rows))
    np.testing.assert_allclose(out[SCORE], served.anomaly_score, rtol=1e-5)
    assert (out[FLAG] == (out[SCORE] >= 1.0)).all()  # the calibrated alert line


def test_predict_names_every_missing_column(tmp_path: Path) -> None:
    bundle = ModelBundle.load(make_bundle(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"\['f1', 'f3'\]"):
        predict_frame(bundle, canonical()[["f0", "f2"]])
    with pytest.raises(ValueError, match="no rows"):
        predict_frame(bundle, canonical()[FEATURES].iloc[:0])


def test_serving_requirements_pin_exactly() -> None:
    reqs = serving_requirements()
    assert "torch==2.13.0" in reqs
    assert all("==" in r and "+" not in r for r in reqs)
