"""The champion served by a real ``mlflow models serve`` process, adapting inside requests.

One tiny run of the real training flow (``flows/train_pipeline.py``, ``TINY_OVERRIDES`` plus
``serve.max_rows: 600``) registers ``metaad-detector`` version 1 as champion in a SQLite
store in a temporary folder. A ``mlflow models serve -m models:/metaad-detector@champion
--env-manager local`` process on 127.0.0.1 (free port) serves it; it is stopped by process
group at the end. The tests show:

- with 5 labelled examples of an unseen type in the request, that type's AUPRC on the same
  query rows is higher than the no-support answer of the same server, for every unseen type;
- every kind of bad input gets a 400 whose message names the problem, and the next good
  request is answered;
- ``metaad types add`` (the real CLI) registers version 2 through the type-addition gate, and
  a second server of the new champion flags held-out rows of the added type that version 1
  missed, without alerting more on normals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import average_precision_score

from helpers_procs import free_port, healthy, import_flow, stop

REPO = Path(__file__).resolve().parents[1]
MODEL = "metaad-detector"
MAX_ROWS = 600
STARTUP_TIMEOUT_S = 180.0


def flow_module() -> Any:
    return import_flow("train_pipeline")


@dataclass(frozen=True)
class Project:
    root: Path
    uri: str
    features: list[str]
    unseen: list[str]
    rows: pd.DataFrame  # the unseen-type rows and their normals (test_rows.parquet)


@pytest.fixture(scope="module")
def project(
    prefect_harness: None,
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Project:
    root = make_project(tmp_path_factory.mktemp("serving") / "project")
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    overrides = {**tiny_overrides, "evaluate.methods": ["proto"], "serve.max_rows": MAX_ROWS}
    state = flow_module().train_pipeline(
        root=str(root), overrides=overrides, tracking_uri=uri, return_state=True
    )
    assert state.is_completed(), state.message
    gate = state.result()["gate"]
    assert gate["promoted"] and gate["version"] == "1", gate["reasons"]
    bundle = json.loads((root / "artifacts" / "model" / "bundle.json").read_text())
    rows = pd.read_parquet(root / "artifacts" / "episodes" / "test_rows.parquet")
    return Project(root, uri, list(bundle["feature_columns"]), list(bundle["split"]["test"]), rows)


# -- the server ----------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_server(model_uri: str, tracking_uri: str, folder: Path, env: dict[str, str]) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / f"serve-{port}.log"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=folder, env={**env, "MLFLOW_TRACKING_URI": tracking_uri}, stdout=fh,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(url, proc, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{server.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve not healthy after {STARTUP_TIMEOUT_S}s")
            time.sleep(0.5)
    except BaseException:
        stop(proc)
        raise
    return server


@pytest.fixture(scope="module")
def server_v1(
    project: Project,
    tmp_path_factory: pytest.TempPathFactory,
    child_env: Callable[..., dict[str, str]],
) -> Iterator[Server]:
    server = start_server(
        f"models:/{MODEL}@champion", project.uri, tmp_path_factory.mktemp("serve-v1"), child_env()
    )
    try:
        yield server
    finally:
        stop(server.proc)


def post(url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def split(frame: pd.DataFrame) -> dict[str, Any]:
    """A request body in MLflow's ``dataframe_split`` format (NaN as JSON null)."""
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def answer(url: str, frame: pd.DataFrame) -> pd.DataFrame:
    status, body = post(url, split(frame))
    assert status == 200, body
    return pd.DataFrame(body["predictions"])


def request_with_support(
    query: pd.DataFrame, support: pd.DataFrame, label: str, features: list[str]
) -> pd.DataFrame:
    return pd.concat(
        [
            query[features].assign(support_label=None),
            support[features].assign(support_label=label),
        ],
        ignore_index=True,
    )


def query_rows(
    rows: pd.DataFrame, anomaly_type: str, *, skip: int, n_anomalies: int, n_normals: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(support candidates = the first ``skip`` anomalies, query = later anomalies + normals)."""
    an = rows[rows["anomaly_type"] == anomaly_type]
    normals = rows[rows["label"] == 0].sample(n_normals, random_state=1)
    query = pd.concat([normals, an.iloc[skip : skip + n_anomalies]], ignore_index=True)
    return an.iloc[:skip], query


# -- 1. a support set in the request ---------------------------------------------------------
@pytest.mark.slow
def test_five_examples_in_the_request_raise_the_unseen_types_auprc(
    project: Project, server_v1: Server
) -> None:
    results = {}
    for t in project.unseen:
        support, query = query_rows(project.rows, t, skip=5, n_anomalies=20, n_normals=380)
        y = query["label"].to_numpy()
        plain = answer(server_v1.url, query[project.features])
        adapted = answer(server_v1.url, request_with_support(query, support, t, project.features))
        # one answer per row to score, in request order; support rows get none
        assert len(plain) == len(adapted) == len(query)
        assert list(adapted.columns) == [
            "anomaly_score", "is_anomaly", "nearest_type", "nearest_type_score"
        ]  # fmt: skip
        ap0 = average_precision_score(y, plain["anomaly_score"])
        ap5 = average_precision_score(y, adapted["anomaly_score"])
        named = float((adapted.loc[y == 1, "nearest_type"] == t).mean())
        results[t] = (ap0, ap5, named)
        # the unseen type is not in the library: without support no row can be named after it
        assert not (plain["nearest_type"] == t).any()
    text = ", ".join(f"{t}: {a:.3f} -> {b:.3f} (named {n:.2f})" for t, (a, b, n) in results.items())
    print(f"AUPRC without -> with 5 support examples: {text}")  # for the record (pytest -s)
    assert all(b > a for a, b, _ in results.values()), text
    gain = np.mean([b - a for a, b, _ in results.values()])
    assert gain >= 0.10, text
    # the adapted type is what the query anomalies are mostly named after
    assert np.mean([n for _, _, n in results.values()]) >= 0.5, text


# -- 2. bad input: a 400 that names the problem, then the server still answers -------------
def _bad_cases(p: Project) -> dict[str, tuple[Any, list[str]]]:
    q = p.rows[p.features].head(4).reset_index(drop=True)
    num, cat = "txn_count_1h", "channel"
    anomalous = p.rows[p.rows["label"] == 1].head(2)
    with_inf = split(q)
    with_inf["dataframe_split"]["data"][1][0] = "__INF__"
    inf_body = json.dumps(with_inf).replace('"__INF__"', "Infinity").encode()
    only_normal_support = pd.concat(
        [q.assign(support_label=None), q.assign(support_label="normal")], ignore_index=True
    )
    return {
        "missing column": (
            split(q.drop(columns=["log_amount"])), ["missing required column(s) ['log_amount']"]
        ),
        "extra column": (split(q.assign(amount_usd=1.0)), ["unexpected column(s) ['amount_usd']"]),
        "canonical label columns": (
            split(p.rows.head(3)[[*p.features, "label", "anomaly_type"]]),
            ["unexpected column(s) ['label', 'anomaly_type']", "support_label"],
        ),
        "string in a numeric column": (
            split(q.assign(**{num: ["n/a", 1.0, 2.0, 3.0]})),
            [f"column '{num}' must hold numbers", "n/a"],
        ),
        "number in a categorical column": (
            split(q.assign(**{cat: [1, 2, 3, 4]})), [f"column '{cat}' must hold strings"]
        ),
        "NaN": (split(q.assign(log_amount=[np.nan, 1.0, np.nan, 2.0])),
                ["column 'log_amount' has 2 NaN/missing value(s), at rows [0, 2]"]),
        "infinity": (inf_body, ["column 'log_amount' has 1 infinite value(s), at rows [1]"]),
        "empty request": (split(q.iloc[:0]), ["the request has no rows"]),
        "support without anomalies": (
            split(only_normal_support), ["the support set has no anomalies"]
        ),
        "support rows only": (
            split(anomalous[p.features].assign(support_label="some_type")), ["nothing to score"]
        ),
        "too many rows": (
            split(pd.concat([q] * (MAX_ROWS // 4 + 1), ignore_index=True)),
            [f"the request has {4 * (MAX_ROWS // 4 + 1)} rows", f"at most {MAX_ROWS} per request"],
        ),
        "not a table": (
            b'{"dataframe_split": [1, 2, 3]}', ["Dataframe split format must be a dictionary"]
        ),
    }  # fmt: skip


BAD = [
    "missing column",
    "extra column",
    "canonical label columns",
    "string in a numeric column",
    "number in a categorical column",
    "NaN",
    "infinity",
    "empty request",
    "support without anomalies",
    "support rows only",
    "too many rows",
    "not a table",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_400_naming_it_and_the_server_keeps_serving(
    case: str, project: Project, server_v1: Server
) -> None:
    cases = _bad_cases(project)
    assert set(cases) == set(BAD)
    body, words = cases[case]
    status, err = post(server_v1.url, body)
    assert status == 400, (status, err)
    message = err.get("message", "")
    for w in words:
        assert w in message, f"{w!r} not in:\n{message[-1500:]}"
    good = project.rows[project.features].iloc[10:15]
    assert len(answer(server_v1.url, good)) == 5
    assert server_v1.proc.poll() is None


# -- 3. `metaad types add`, then the new version served -------------------------------------
@pytest.mark.slow
def test_types_add_registers_a_gated_version_that_flags_the_added_type(
    project: Project,
    server_v1: Server,
    run_cmd: Callable[..., str],
    child_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    # the unseen type version 1 misses most (no support in the request)
    recall_v1, held = {}, {}
    for t in project.unseen:
        _, query = query_rows(project.rows, t, skip=10, n_anomalies=60, n_normals=400)
        held[t] = query
        out = answer(server_v1.url, query[project.features])
        recall_v1[t] = float(out.loc[query["label"].to_numpy() == 1, "is_anomaly"].mean())
    t = min(recall_v1, key=recall_v1.__getitem__)
    examples = tmp_path / "examples.csv"
    project.rows[project.rows["anomaly_type"] == t].iloc[:10].to_csv(examples, index=False)

    out = run_cmd(
        ["metaad", "types", "add", "--name", t, "--examples", str(examples),
         "--root", str(project.root), "--tracking-uri", project.uri],
        project.root,
    )  # fmt: skip
    assert f"type '{t}' (10 examples) added to version 1 -> version 2: PROMOTED" in out, out
    assert "PASS meta-learner weights unchanged (nothing retrained)" in out
    client = MlflowClient(project.uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    mv = client.get_model_version(MODEL, "2")
    assert mv.tags["promotion.decision"] == "promoted"
    assert mv.tags["metaad.type"] == t and mv.tags["metaad.base_version"] == "1"
    decision = json.loads(mv.tags["promotion.reasons"])
    assert any(r.startswith("PASS leave-one-out recall") for r in decision), decision
    assert any(r.startswith("PASS served macro AUPRC change vs the champion") for r in decision)
    listing = ["metaad", "types", "list", "--json", "--root", str(project.root)]
    listed = json.loads(run_cmd([*listing, "--tracking-uri", project.uri], project.root))
    by_name = {r["type"]: r for r in listed["types"]}
    assert by_name[t]["source"] == "added" and by_name[t]["n_examples"] == 10
    assert by_name[t]["added_to_version"] == "1"

    server_v2 = start_server(f"models:/{MODEL}@champion", project.uri, tmp_path, child_env())
    try:
        query = held[t]
        y = query["label"].to_numpy()
        v1 = answer(server_v1.url, query[project.features])
        v2 = answer(server_v2.url, query[project.features])
    finally:
        stop(server_v2.proc)
    r1 = float(v1.loc[y == 1, "is_anomaly"].mean())
    r2 = float(v2.loc[y == 1, "is_anomaly"].mean())
    fa1 = float(v1.loc[y == 0, "is_anomaly"].mean())
    fa2 = float(v2.loc[y == 0, "is_anomaly"].mean())
    text = f"{t}: recall {r1:.2f} -> {r2:.2f}, alerts on normals {fa1:.3f} -> {fa2:.3f}"
    print(f"version 1 -> version 2 (type added): {text}")  # for the record (pytest -s)
    assert r2 >= r1 + 0.25, text
    assert fa2 <= fa1 + 0.01, text
    flagged = v2.loc[(y == 1) & v2["is_anomaly"].to_numpy(bool), "nearest_type"]
    assert (flagged == t).mean() >= 0.5, f"{text}; flagged named {flagged.value_counts()}"
    assert not (v1["nearest_type"] == t).any()
