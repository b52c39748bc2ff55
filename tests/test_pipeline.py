"""The governed pipeline end to end, on real Prefect, Great Expectations and MLflow.

One good flow run on tiny params (``TINY_OVERRIDES`` in conftest) builds a project root in
a temporary git repository with ``data.dvc`` and a SQLite MLflow store; the other tests
start from copies of that root:

- the good run registers ``metaad-detector`` version 1 as ``challenger`` and, the floors
  passing with no champion yet, ``champion``; its MLflow run carries params, the stepped
  learning curve, per-method metrics, lineage tags and the reports; ``main()`` prints the
  results, the decision and where to look;
- each kind of bad data fails the flow at the data gate, names the problem, leaves an
  MLflow run marked FAILED with the validation report, and registers nothing;
- the promotion gate refuses a tie, a worse challenger and a broken artifact, and promotes
  a better one, with the decision in a file, in version tags and in the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers_procs import import_flow
from metaad import governance, stages
from metaad.config import Params, load_params
from metaad.datafetch import recorded_md5
from metaad.tracking import CHALLENGER, CHAMPION, default_tracking_uri
from metaad.validation import ValidationFailed

REPO = Path(__file__).resolve().parents[1]
MODEL = "metaad-detector"


def flow_module() -> Any:
    """``flows/train_pipeline.py`` as a module."""
    return import_flow("train_pipeline")


def copy_project(src: Path, dst: Path, *, with_store: bool = False) -> Path:
    """A copy of a project root (git repository, data, artifacts); the MLflow store only
    when asked, since its experiment records the original root's artifact folder."""
    ignore = None if with_store else shutil.ignore_patterns("mlflow")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


def versions(client: MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))


def alias_version(client: MlflowClient, alias: str) -> str | None:
    from metaad.promotion import champion_version

    mv = champion_version(client, MODEL, alias)
    return None if mv is None else str(mv.version)


@dataclass(frozen=True)
class GoodRun:
    root: Path
    uri: str
    params: Params
    flow_run_id: str
    out: dict[str, Any]


@pytest.fixture(scope="module")
def good_run(
    prefect_harness: None,
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> GoodRun:
    """The whole flow once, on the default store of a fresh project (``<root>/mlflow``)."""
    root = make_project(tmp_path_factory.mktemp("good") / "project", dvc=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = flow_module().train_pipeline(
            root=str(root), overrides=dict(tiny_overrides), return_state=True
        )
        uri = default_tracking_uri(root)
    assert state.is_completed(), state.message
    params = load_params(root / "params.yaml", dict(tiny_overrides))
    return GoodRun(root, uri, params, str(state.state_details.flow_run_id), state.result())


# -- 1. the good run ---------------------------------------------------------------------
@pytest.mark.slow
def test_flow_registers_challenger_and_first_champion(good_run: GoodRun) -> None:
    gate = good_run.out["gate"]
    assert gate["model_name"] == MODEL and gate["version"] == "1"
    assert gate["promoted"] is True and gate["champion"] == "1", gate["reasons"]
    assert gate["tracking_uri"] == f"sqlite:///{good_run.root}/mlflow/mlflow.db"
    assert all(r.startswith("PASS") for r in gate["reasons"]), gate["reasons"]
    assert any("no champion yet" in r for r in gate["reasons"])

    client = MlflowClient(good_run.uri)
    assert versions(client) == ["1"]
    assert alias_version(client, CHALLENGER) == "1"
    assert alias_version(client, CHAMPION) == "1"
    mv = client.get_model_version(MODEL, "1")
    assert mv.run_id == gate["run_id"]
    assert mv.tags["promotion.decision"] == "promoted"
    assert mv.tags["flow_run_id"] == good_run.flow_run_id

    decision = json.loads(Path(gate["decision_path"]).read_text())
    assert decision["promote"] is True
    assert decision["challenger_version"] == "1" and decision["champion_after"] == "1"
    assert decision["previous_champion"] is None


@pytest.mark.slow
def test_flow_run_has_params_metrics_lineage_and_reports(good_run: GoodRun) -> None:
    client = MlflowClient(good_run.uri)
    run = client.get_run(good_run.out["gate"]["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "metaad"

    # the resolved configuration, overrides included
    p = run.data.params
    assert p["train.method"] == "proto" and p["train.steps"] == "40"
    assert p["ingest.n_rows"] == "20000"
    assert json.loads(p["episodes.shots"]) == [0, 5]
    assert json.loads(p["evaluate.methods"]) == ["proto", "iforest", "lr_sup"]

    # the learning curve, one point per step; validation AUPRC at its own steps
    loss = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in loss] == list(range(1, 41))
    assert all(np.isfinite(m.value) for m in loss)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.val_auprc")] == [
        20,
        40,
    ]

    # final metrics per method and K, with intervals, and per unseen type
    metrics = run.data.metrics
    for method in ("proto", "iforest", "lr_sup"):
        for k in (0, 5):
            for m in ("auprc", "auroc"):
                assert 0.0 <= metrics[f"{m}.k{k}.{method}.macro"] <= 1.0
        base = f"auprc.k5.{method}.macro"
        assert metrics[f"{base}.ci_lo"] <= metrics[base] <= metrics[f"{base}.ci_hi"]
    unseen = good_run.out["evaluated"]["markdown"]
    per_type = [k for k in metrics if k.startswith("auprc.k5.proto.type.")]
    assert len(per_type) == 3 and all(k.split(".type.")[1] in unseen for k in per_type)

    # lineage: the commit, the DVC data version, the params hash, the Prefect flow run
    tags = run.data.tags
    head = subprocess.run(
        ["git", "-C", str(good_run.root), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert tags["git_commit"] == head
    assert tags["data_version"] == recorded_md5(good_run.root)
    assert tags["data_version"].endswith(".dir")
    assert tags["params_hash"] == good_run.params.digest()
    assert tags["flow_run_id"] == good_run.flow_run_id
    assert tags["promotion.decision"] == "promoted"

    # reports and plots
    def listed(path: str) -> set[str]:
        return {Path(f.path).name for f in client.list_artifacts(run.info.run_id, path)}

    assert "report.json" in listed("validation")
    assert "index.html" in listed("validation/data_docs")
    assert {"manifest.json", "split.json"} <= listed("episodes")
    assert {"auprc_vs_k.png", "pr_curves.png", "learning_curve.png"} <= listed("plots")
    assert {"results.md", "results.json", "metrics.json", "per_episode.csv"} <= listed("eval")
    assert "params.json" in listed("config")
    assert "decision.json" in listed("promotion")


@pytest.mark.slow
def test_flow_leaves_prefect_artifacts(good_run: GoodRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[good_run.flow_run_id])
            )
        )
    by_key = {a.key: a for a in arts}
    assert {"metaad-validation", "metaad-results", "metaad-promotion"} <= set(by_key)
    assert "PROMOTED" in by_key["metaad-promotion"].data
    assert "Data validation passed" in by_key["metaad-validation"].data


@pytest.mark.slow
def test_main_prints_results_decision_and_hints(
    good_run: GoodRun,
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``main()`` on a copy of the project: its own default store, episodes from the cache."""
    root = copy_project(good_run.root, tmp_path / "project")
    npz = root / "artifacts" / "episodes" / "episodes.npz"
    built = npz.stat().st_mtime_ns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sets = [a for k, v in tiny_overrides.items() for a in ("-S", f"{k}={json.dumps(v)}")]

    assert flow_module().main(["--root", str(root), *sets]) == 0

    out = capsys.readouterr().out
    uri = f"sqlite:///{root}/mlflow/mlflow.db"
    assert "Macro AUPRC on unseen types" in out
    for method in ("proto", "iforest", "lr_sup"):
        assert f"| {method} |" in out
    assert f"Model {MODEL} version 1: PROMOTED to @champion" in out
    assert "PASS no champion yet" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out
    assert f"MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{MODEL}@champion" in out
    decision = json.loads(out.strip().splitlines()[-1])["decision"]
    assert json.loads(Path(decision).read_text())["champion_after"] == "1"
    # same data, params and code: the cached episodes stage did not rebuild the files
    assert npz.stat().st_mtime_ns == built
    assert alias_version(MlflowClient(uri), CHAMPION) == "1"


@pytest.mark.slow
def test_episodes_cache_only_when_the_files_are_there(
    good_run: GoodRun, tiny_overrides: Mapping[str, Any], tmp_path: Path
) -> None:
    """The Prefect cache holds a result for these inputs; deleted or foreign episode files
    must still be rebuilt (a cache hit would skip writing them and training would fail)."""
    flow = flow_module()
    root = copy_project(good_run.root, tmp_path / "project")
    params = good_run.params
    assert flow.episodes_outputs_current(params, root)
    other = load_params(root / "params.yaml", {**tiny_overrides, "episodes.seed": 12})
    assert not flow.episodes_outputs_current(other, root)
    (root / "artifacts" / "episodes" / "pool_test.npz").unlink()
    assert not flow.episodes_outputs_current(params, root)

    shutil.rmtree(root / "artifacts" / "episodes")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    state = flow.train_pipeline(
        root=str(root), overrides=dict(tiny_overrides), tracking_uri=uri, return_state=True
    )
    assert state.is_completed(), state.message
    assert (root / "artifacts" / "episodes" / "episodes.npz").is_file()
    assert flow.episodes_outputs_current(params, root)


def test_flow_script_help() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "flows" / "train_pipeline.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    for opt in ("--params", "--set", "--root", "--tracking-uri"):
        assert opt in res.stdout


# -- 2. bad data stops the flow at the gate ----------------------------------------------
def _missing_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["log_amount"])


def _wrong_dtype(df: pd.DataFrame) -> pd.DataFrame:
    col = df["txn_count_1h"].astype(str)
    col.iloc[:10] = "n/a"
    return df.assign(txn_count_1h=col)


def _nan_burst(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[2000:2600], "log_distance_home_km"] = np.nan
    return df


def _out_of_range(df: pd.DataFrame) -> pd.DataFrame:  # e.g. a unit change upstream
    return df.assign(log_credit_limit=df["log_credit_limit"] + np.float32(1e4))


def _infinite(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:3], "income_score"] = np.inf
    return df


def _label_outside(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:7], "label"] = 2
    return df


def _anomaly_without_type(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    rows = df.index[df["label"] == 1][:20]
    df["anomaly_type"] = df["anomaly_type"].astype(object)
    df.loc[rows, "anomaly_type"] = None
    return df


def _anomaly_typed_normal(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[df["label"] == 1][:20], "anomaly_type"] = "normal"
    return df


def _rare_type(df: pd.DataFrame) -> pd.DataFrame:
    rare = df.index[df["anomaly_type"] == "bust_out"][5:]
    return df.drop(index=rare).reset_index(drop=True)


def _empty(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[:0]


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[:2000]], ignore_index=True)


# (corruption, words the failure message must contain)
BAD_DATA: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], list[str]]] = {
    "missing_column": (_missing_column, ["missing column(s) ['log_amount']"]),
    "wrong_dtype": (_wrong_dtype, ["'txn_count_1h'", "expected a numeric dtype", "n/a"]),
    "nan_burst": (_nan_burst, ["'log_distance_home_km'", "600 null/NaN value(s)"]),
    "out_of_range": (_out_of_range, ["'log_credit_limit'", "outside the reference range"]),
    "infinite": (_infinite, ["'income_score'", "3 infinite value(s)"]),
    "label_outside": (_label_outside, ["'label'", "7 value(s) not in {0, 1}"]),
    "anomaly_without_type": (_anomaly_without_type, ["'anomaly_type'", "20 null/NaN"]),
    "anomaly_typed_normal": (_anomaly_typed_normal, ["20 anomaly row(s) (label 1)"]),
    "rare_type": (_rare_type, ["fewer than 18 rows", "bust_out=5"]),
    "empty": (_empty, ["the table is empty"]),
    "duplicates": (_duplicates, ["duplicate row(s)"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_the_flow_and_registers_nothing(
    case: str, good_run: GoodRun, tiny_overrides: Mapping[str, Any], tmp_path: Path
) -> None:
    corrupt, words = BAD_DATA[case]
    root = copy_project(good_run.root, tmp_path / "project")
    table = root / "data" / "table.parquet"
    corrupt(pd.read_parquet(table)).to_parquet(table, index=False)
    model_mtime = (root / "artifacts" / "model" / "bundle.json").stat().st_mtime_ns
    client = MlflowClient(good_run.uri)  # the shared store: it already holds version 1
    before = versions(client)

    state = flow_module().train_pipeline(
        root=str(root),
        overrides=dict(tiny_overrides),
        tracking_uri=good_run.uri,
        return_state=True,
    )

    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ValidationFailed), repr(exc)
    message = str(exc)
    assert message.startswith("data validation failed"), message
    for w in words:
        assert w in message, f"{w!r} not in:\n{message}"
    assert "ValidationFailed" in (state.message or "")
    # the flow stopped at the gate: nothing trained, nothing registered, champion kept
    assert (root / "artifacts" / "model" / "bundle.json").stat().st_mtime_ns == model_mtime
    assert versions(client) == before
    assert alias_version(client, CHAMPION) == "1"
    # an auditable MLflow run, FAILED, with the report
    flow_run_id = str(state.state_details.flow_run_id)
    exp = client.get_experiment_by_name("metaad")
    runs = client.search_runs([exp.experiment_id], f"tags.flow_run_id = '{flow_run_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["validation"] == "failed"
    assert words[0] in run.data.tags["validation.summary"]
    assert {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "validation")} >= {
        "report.json",
        "data_docs",
    }
    report = json.loads((root / "artifacts" / "validation" / "report.json").read_text())
    assert report["report"]["success"] is False and report["report"]["failures"]


@pytest.mark.slow
def test_main_exits_1_on_bad_data(
    good_run: GoodRun,
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = copy_project(good_run.root, tmp_path / "project")
    table = root / "data" / "table.parquet"
    _label_outside(pd.read_parquet(table)).to_parquet(table, index=False)
    sets = [a for k, v in tiny_overrides.items() for a in ("-S", f"{k}={json.dumps(v)}")]
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"

    assert flow_module().main(["--root", str(root), "--tracking-uri", uri, *sets]) == 1

    err = capsys.readouterr().err
    assert "nothing was registered" in err and "not in {0, 1}" in err
    assert versions(MlflowClient(uri)) == []


# -- 3. the promotion gate ---------------------------------------------------------------
@pytest.fixture
def promo_root(good_run: GoodRun, tmp_path: Path) -> Path:
    """A copy of the project with its frozen episodes and no MLflow store yet."""
    return copy_project(good_run.root, tmp_path / "project")


def train_register(
    root: Path, uri: str, tiny: Mapping[str, Any], *, retrain: bool = True, **extra: Any
) -> governance.GateResult:
    """Meta-train proto with ``extra`` overrides, score it on the frozen episodes, and
    register it through the gate; ``retrain=False`` re-registers the artifacts as they are."""
    over = {**tiny, "evaluate.methods": ["proto"], **extra}
    params = load_params(root / "params.yaml", over)
    if retrain:
        stages.train(params, root)
        stages.evaluate(params, root)
    return governance.register_and_gate(params, root, validation_passed=True, tracking_uri=uri)


def decision_of(res: governance.GateResult) -> dict[str, Any]:
    return json.loads(Path(res.decision_path).read_text())


def assert_refused(client: MlflowClient, res: governance.GateResult, champion: str) -> None:
    d = decision_of(res)
    assert res.promoted is False and d["promote"] is False
    assert d["challenger_version"] == res.version
    assert d["previous_champion"] == champion and d["champion_after"] == champion
    assert alias_version(client, CHAMPION) == champion
    assert alias_version(client, CHALLENGER) == res.version
    mv = client.get_model_version(MODEL, res.version)
    assert mv.tags["promotion.decision"] == "refused"
    assert json.loads(mv.tags["promotion.reasons"]) == d["reasons"]
    assert client.get_run(res.run_id).data.tags["promotion.decision"] == "refused"


@pytest.mark.slow
def test_promotion_tie_better_worse(
    promo_root: Path, tiny_overrides: Mapping[str, Any], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client = MlflowClient(uri)
    floors_off = {"promote.min_auprc": 0.0, "promote.min_auroc": 0.0}

    # a deliberately weak first model (one meta-training step) becomes the champion
    weak = train_register(promo_root, uri, tiny_overrides, **{"train.steps": 1}, **floors_off)
    assert weak.promoted and weak.version == "1" and alias_version(client, CHAMPION) == "1"

    # the same artifacts again: identical per-episode AUPRC is a tie, and a tie is refused
    tie = train_register(promo_root, uri, tiny_overrides, retrain=False, **{"train.steps": 1})
    assert tie.version == "2"
    assert_refused(client, tie, champion="1")
    d = decision_of(tie)
    assert d["metrics"]["tie"] is True and abs(d["metrics"]["delta_auprc"]) < 1e-9
    assert any(r.startswith("FAIL tie") for r in d["reasons"]), d["reasons"]

    # sixty steps beat one on the same frozen episodes: promoted, with the default floors
    better = train_register(promo_root, uri, tiny_overrides, **{"train.steps": 60})
    assert better.version == "3"
    assert better.promoted, better.reasons
    d = decision_of(better)
    assert d["promote"] is True and d["previous_champion"] == "1" and d["champion_after"] == "3"
    assert d["metrics"]["delta_auprc"] >= 0.005 and d["metrics"]["delta_ci_lo"] > 0
    assert all(r.startswith("PASS") for r in d["reasons"]), d["reasons"]
    assert alias_version(client, CHAMPION) == "3" and alias_version(client, CHALLENGER) == "3"
    assert client.get_model_version(MODEL, "3").tags["promotion.decision"] == "promoted"

    # one step again is worse than the champion now: refused, champion stays on 3
    worse = train_register(promo_root, uri, tiny_overrides, **{"train.steps": 1})
    assert worse.version == "4"
    assert_refused(client, worse, champion="3")
    d = decision_of(worse)
    assert d["metrics"]["delta_auprc"] < 0
    assert any(r.startswith("FAIL mean paired AUPRC difference -") for r in d["reasons"])
    assert versions(client) == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_promotion_refuses_broken_artifacts(
    promo_root: Path,
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from metaad import tracking

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client = MlflowClient(uri)
    floors_off = {"promote.min_auprc": 0.0, "promote.min_auroc": 0.0}
    champ = train_register(promo_root, uri, tiny_overrides, **{"train.steps": 1}, **floors_off)
    assert champ.promoted and alias_version(client, CHAMPION) == "1"

    # (a) a better model whose stored weights are damaged after registration (a bad
    # upload, a truncated object): the registered version does not load -> refused
    real = tracking.log_and_register_model

    def register_then_damage(*args: Any, **kwargs: Any) -> Any:
        mv = real(*args, **kwargs)
        logged = client.get_logged_model(mv.source.rsplit("/", 1)[-1])
        (weights,) = Path(logged.artifact_location.removeprefix("file://")).rglob("weights.pt")
        weights.write_bytes(b"not a torch file")
        return mv

    monkeypatch.setattr(tracking, "log_and_register_model", register_then_damage)
    damaged = train_register(promo_root, uri, tiny_overrides, **{"train.steps": 60})
    monkeypatch.undo()
    assert_refused(client, damaged, champion="1")
    reasons = decision_of(damaged)["reasons"]
    assert any(r.startswith("FAIL challenger does not load or predict:") for r in reasons)

    # (b) a bundle whose weights are NaN (a diverged run): registered, but its predictions
    # are not finite -> refused
    params = load_params(promo_root / "params.yaml", {**tiny_overrides, "train.steps": 60})
    wfile = stages.Layout(promo_root).model / "detector" / "weights.pt"
    state = torch.load(wfile, weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in state.items()}, wfile)  # fmt: skip
    nan = governance.register_and_gate(params, promo_root, validation_passed=True, tracking_uri=uri)
    assert_refused(client, nan, champion="1")
    reasons = decision_of(nan)["reasons"]
    assert any("non-finite scores" in r for r in reasons if r.startswith("FAIL")), reasons
    assert versions(client) == ["1", "2", "3"]
