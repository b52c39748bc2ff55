"""The flow against a real ``mlflow server`` (the team set-up), started by the test.

The server runs on 127.0.0.1 on a free port with a SQLite backend and a proxied artifact
folder in a temporary directory, is waited for with a bounded poll of ``/health``, and is
stopped by process id at teardown. The flow gets ``tracking_uri='http://127.0.0.1:PORT'``;
its run, the registered version, the aliases and the artifacts must all be on the server,
and nothing in the project's default SQLite store. A data-gate failure is recorded there
too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers_procs import free_port, healthy, import_flow, stop
from metaad.pyfunc_model import SCORE
from metaad.tracking import CHALLENGER, CHAMPION, using_tracking_uri

REPO = Path(__file__).resolve().parents[1]
MODEL = "metaad-detector"
STARTUP_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, child_env: Callable[..., dict[str, str]]
) -> Iterator[tuple[str, Path]]:
    """``(url, folder)`` of a running ``mlflow server``; stopped by its process id after."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (base / "server.log").open("wb")
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{base / 'server.db'}",
        "--artifacts-destination",
        str(base / "artifacts"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=base, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers go down with it
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode}:\n{_tail(base)}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S}s:\n{_tail(base)}")
            time.sleep(0.5)
        yield url, base
    finally:
        stop(proc)
        log.close()


def _tail(base: Path) -> str:
    return (base / "server.log").read_text(errors="replace")[-3000:]


def flow_module() -> Any:
    return import_flow("train_pipeline")


@pytest.mark.slow
def test_flow_logs_and_registers_on_mlflow_server(
    prefect_harness: None,
    mlflow_server: tuple[str, Path],
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
) -> None:
    url, server_dir = mlflow_server
    root = make_project(tmp_path / "project")  # no data yet: the flow regenerates it
    flow = flow_module()

    state = flow.train_pipeline(
        root=str(root), overrides=dict(tiny_overrides), tracking_uri=url, return_state=True
    )

    assert state.is_completed(), state.message
    gate = state.result()["gate"]
    assert gate["tracking_uri"] == url and gate["version"] == "1" and gate["promoted"]
    client = MlflowClient(url)
    run = client.get_run(gate["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.params["train.steps"] == "40"
    assert len(client.get_metric_history(run.info.run_id, "train.loss")) == 40
    assert "auprc.k5.proto.macro" in run.data.metrics
    names = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "validation")}
    assert "report.json" in names
    assert client.get_model_version_by_alias(MODEL, CHALLENGER).version == "1"
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == "1"
    assert client.get_model_version(MODEL, "1").run_id == run.info.run_id
    # artifacts went through the server to its destination, not next to the project
    assert list((server_dir / "artifacts").rglob("report.json"))
    assert list((server_dir / "artifacts").rglob("weights.pt"))
    assert not (root / "mlflow" / "mlflow.db").exists()

    # the champion loads from the server and scores canonical rows
    import mlflow.pyfunc

    rows = pd.read_parquet(root / "artifacts" / "episodes" / "test_rows.parquet").head(20)
    with using_tracking_uri(url):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    features = [c for c in rows.columns if c not in ("label", "anomaly_type")]
    scored = model.predict(rows[features])
    assert len(scored) == 20 and scored[SCORE].notna().all()

    # a data-gate failure is recorded on the same server, and registers nothing
    table = root / "data" / "table.parquet"
    pd.read_parquet(table).drop(columns=["log_amount"]).to_parquet(table, index=False)
    bad = flow.train_pipeline(
        root=str(root), overrides=dict(tiny_overrides), tracking_uri=url, return_state=True
    )
    assert bad.is_failed()
    failed = client.search_runs(
        [run.info.experiment_id], f"tags.flow_run_id = '{bad.state_details.flow_run_id}'"
    )
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "missing column(s) ['log_amount']" in failed[0].data.tags["validation.summary"]
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert not (root / "mlflow" / "mlflow.db").exists()
    assert (
        json.loads((root / "artifacts" / "validation" / "report.json").read_text())["report"][
            "success"
        ]
        is False
    )
