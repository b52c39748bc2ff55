"""Batch scoring with a registered model: the Prefect flow, ``metaad score``, flat memory.

A tiny model (the pipeline's stage functions and ``governance.register_and_gate``, the
flow's registration step, on ``TINY_OVERRIDES``; a small encoder and no memory bank, which
make scoring several times faster and change nothing batch scoring does) is registered as
``metaad-detector@champion`` in a SQLite store in a temporary folder. Then:

- the flow ``flows/batch_score.py:batch_score`` scores a folder of Parquet parts in chunks;
  every row comes back next to its ids, with the same scores the registered pyfunc gives the
  same rows in one request, and the summary (JSON, PNG, Prefect artifacts) adds up;
- ``metaad score`` does the same for a CSV without Prefect, and a file with a NaN fails
  naming the file and the rows, leaving no partial output;
- alerts are calibrated: held-out normals cross the alert line at the target rate, with or
  without a support set's detectors in the answer;
- peak memory (RSS of a ``metaad score`` subprocess) scoring a file of 10 chunks stays
  within a stated bound of scoring one chunk, while the same file read as one chunk
  exceeds it (so the measurement can tell the difference).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers_procs import import_flow
from metaad import governance, stages
from metaad.config import Params, load_params
from metaad.tracking import using_tracking_uri

REPO = Path(__file__).resolve().parents[1]
MODEL = "metaad-detector"

#: Rows per chunk in the memory test, and the bound on how much more peak RSS (MiB) a
#: 10-chunk file may take than a 1-chunk file. Why 64 MiB: holding a card file costs about
#: 0.7-1 KiB per row (raw frame and its copies, the float64 and float32 feature matrices,
#: per-detector scores, the output frame; measured +59 to +93 MiB for 90,000 extra rows), so
#: holding 180,000 extra rows exceeds 64 MiB by a wide margin; chunked runs measured +1 to
#: +31 MiB over one chunk (Arrow's buffer pool and the allocator keep some freed memory).
CHUNK = 20_000
BOUND_MIB = 64


def flow_module() -> Any:
    return import_flow("batch_score")


@dataclass(frozen=True)
class Registered:
    root: Path
    uri: str
    params: Params
    features: list[str]
    table: pd.DataFrame


@pytest.fixture(scope="module")
def registered(
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Registered:
    root = make_project(tmp_path_factory.mktemp("batch") / "project")
    small = {"memory": 0, "hidden": [32], "out_dim": 16}
    over = {**tiny_overrides, "evaluate.methods": ["proto"], "train.hparams": small}
    params = load_params(root / "params.yaml", over)
    stages.ingest(params, root)
    stages.build_episodes(params, root)
    stages.train(params, root)
    stages.evaluate(params, root)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    gate = governance.register_and_gate(params, root, validation_passed=True, tracking_uri=uri)
    assert gate.promoted and gate.version == "1", gate.reasons
    bundle = json.loads((root / "artifacts" / "model" / "bundle.json").read_text())
    table = stages.load_table(params, root)
    table.insert(0, "event_id", np.arange(len(table), dtype=np.int64) * 10 + 7)
    return Registered(root, uri, params, list(bundle["feature_columns"]), table)


def pyfunc(reg: Registered) -> Any:
    with using_tracking_uri(reg.uri):
        return mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")


# -- the flow --------------------------------------------------------------------------------
@pytest.mark.slow
def test_flow_scores_a_folder_in_chunks_next_to_its_ids(
    prefect_harness: None, registered: Registered, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    folder = tmp_path / "events"
    folder.mkdir()
    t = registered.table
    parts = [t.iloc[:5000], t.iloc[5000:8500]]
    for i, part in enumerate(parts):
        part.to_parquet(folder / f"part-{i}.parquet", index=False)
    out = tmp_path / "scores.parquet"

    state = flow_module().batch_score(
        input_path=str(folder),
        output_path=str(out),
        chunk_rows=2000,
        id_columns=["event_id"],
        root=str(registered.root),
        tracking_uri=registered.uri,
        return_state=True,
    )

    assert state.is_completed(), state.message
    summary = state.result()
    scores = pd.read_parquet(out)
    rows = pd.concat(parts, ignore_index=True)
    assert len(scores) == len(rows) == summary["rows_scored"] == summary["rows_read"] == 8500
    assert list(scores.columns) == [
        "source_file", "source_row", "event_id",
        "anomaly_score", "is_anomaly", "nearest_type", "nearest_type_score",
    ]  # fmt: skip
    assert scores["event_id"].tolist() == rows["event_id"].tolist()
    assert scores["source_file"].tolist() == ["part-0.parquet"] * 5000 + ["part-1.parquet"] * 3500
    assert scores["source_row"].tolist() == list(range(5000)) + list(range(3500))
    assert summary["chunks"] == 3 + 2 and summary["version"] == "1"

    # chunked scores are the registered pyfunc's answer to the same rows in one request
    direct = pyfunc(registered).predict(parts[0][registered.features])
    np.testing.assert_allclose(
        scores["anomaly_score"].iloc[:5000], direct["anomaly_score"], rtol=1e-6, atol=1e-9
    )
    assert (scores["nearest_type"].iloc[:5000].to_numpy() == direct["nearest_type"]).all()

    # the summary adds up, and the alerts mean something
    flags = scores["is_anomaly"].to_numpy(bool)
    assert summary["alerts"] == int(flags.sum()) == sum(summary["alerts_per_type"].values())
    assert sum(summary["histogram_counts"]) == 8500
    y = rows["label"].to_numpy()
    assert flags[y == 0].mean() <= 0.03 and flags[y == 1].mean() > 5 * flags[y == 0].mean()
    js = json.loads(Path(summary["summary_json"]).read_text())
    assert js["rows_scored"] == 8500 and js["alerts_per_type"] == summary["alerts_per_type"]
    assert Path(summary["histogram_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_key = {a.key: a for a in arts}
    assert {"metaad-batch-score", "metaad-batch-alerts"} <= set(by_key)
    assert "8500 rows scored" in by_key["metaad-batch-score"].data


# -- the command line ------------------------------------------------------------------------
@pytest.mark.slow
def test_metaad_score_csv_and_a_bad_file(
    registered: Registered, run_cmd: Callable[..., str], child_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:  # fmt: skip
    rows = registered.table.iloc[:2500]
    good = tmp_path / "good.csv"
    rows.to_csv(good, index=False)
    out = tmp_path / "good.scores.csv"
    common = ["--root", str(registered.root), "--tracking-uri", registered.uri, "--no-progress"]
    stdout = run_cmd(
        ["metaad", "score", str(good), "-o", str(out), "--chunk-rows", "1000",
         "--id-col", "event_id", *common],
        registered.root,
    )  # fmt: skip
    assert "scored 2500 rows" in stdout
    got = pd.read_csv(out)
    assert got["event_id"].tolist() == rows["event_id"].tolist()
    assert got["source_row"].tolist() == list(range(2500))
    assert (tmp_path / "good.scores.summary.json").is_file()

    bad_rows = rows.copy()
    bad_rows.loc[bad_rows.index[1234], "log_amount"] = np.nan
    bad = tmp_path / "bad.csv"
    bad_rows.to_csv(bad, index=False)
    bad_out = tmp_path / "bad.scores.parquet"
    res = subprocess.run(
        ["metaad", "score", str(bad), "-o", str(bad_out), "--chunk-rows", "1000", *common],
        cwd=registered.root, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{bad} rows 1000-1999" in res.stderr
    assert "column 'log_amount' has 1 NaN/missing value(s), at rows [234]" in res.stderr
    assert not bad_out.exists()


# -- calibration ------------------------------------------------------------------------------
def test_alerts_cross_held_out_normals_at_the_target_rate(registered: Registered) -> None:
    from metaad.typelib import ServedScorer

    bundle = pyfunc(registered).unwrap_python_model().bundle
    assert bundle.calibration_normals is not None and len(bundle.calibration_normals) >= 1000
    scorer = ServedScorer(bundle)
    fpr = bundle.target_fpr
    cal = bundle.calibration_normals
    rate = scorer.score(cal).is_anomaly.mean()
    assert abs(rate - fpr) <= 1.0 / len(cal) + 1e-9, rate
    # a support set adds detectors, and the line moves with them: still the target rate
    unseen = bundle.meta["split"]["test"][0]
    test_rows = pd.read_parquet(registered.root / "artifacts" / "episodes" / "test_rows.parquet")
    sup = test_rows[test_rows["anomaly_type"] == unseen].head(5)
    X = bundle.to_pool(sup).X
    with_support = scorer.score(cal, X, [unseen] * len(X))
    assert abs(with_support.is_anomaly.mean() - fpr) <= 1.0 / len(cal) + 1e-9
    # the rows of the support's type are scored higher once the request names it
    held = bundle.to_pool(test_rows[test_rows["anomaly_type"] == unseen].iloc[5:]).X
    before, after = scorer.score(held), scorer.score(held, X, [unseen] * len(X))
    assert after.anomaly_score.mean() > before.anomaly_score.mean()
    assert not (before.nearest_type == unseen).any() and (after.nearest_type == unseen).any()


# -- memory ------------------------------------------------------------------------------------
_PEAK = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(r.stdout + r.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def peak_rss_mib(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Peak RSS of ``args`` run as the only child of a fresh wrapper process.

    ``RUSAGE_CHILDREN`` is the maximum over every child a process has waited for, so the
    wrapper (whose one child is the command) isolates it from this test process's others.
    """
    res = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.strip().splitlines()[-1]) / 1024.0


@pytest.mark.slow
def test_batch_memory_stays_flat_over_ten_chunks(
    registered: Registered, child_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    from metaad.data.synthetic import write

    big = tmp_path / "ten_chunks.parquet"
    write("card", 10 * CHUNK, 123, tmp_path / "raw.parquet")
    frame = pd.read_parquet(tmp_path / "raw.parquet")
    # the same row-group size in both files: a Parquet reader holds one row group's column
    # chunks, so row groups as large as the file would measure the file, not the chunking
    frame.to_parquet(big, index=False, row_group_size=CHUNK)
    one = tmp_path / "one_chunk.parquet"
    frame.iloc[:CHUNK].to_parquet(one, index=False, row_group_size=CHUNK)
    env = child_env()
    common = ["--root", str(registered.root), "--tracking-uri", registered.uri, "--no-progress"]

    def run(path: Path, chunk: int) -> float:
        out = tmp_path / f"{path.stem}-{chunk}.scores.parquet"
        mib = peak_rss_mib(
            ["metaad", "score", str(path), "-o", str(out), "--chunk-rows", str(chunk), *common],
            registered.root,
            env,
        )
        assert len(pd.read_parquet(out, columns=["anomaly_score"])) == len(
            pd.read_parquet(path, columns=["label"])
        )
        return mib

    base = run(one, CHUNK)
    chunked = run(big, CHUNK)
    whole = run(big, 10 * CHUNK)
    text = (
        f"peak RSS: 1 chunk {base:.0f} MiB, 10 chunks {chunked:.0f} MiB, the 10-chunk file as "
        f"one chunk {whole:.0f} MiB; bound {base:.0f} + {BOUND_MIB} MiB"
    )
    print(text)  # the figures, for the record (pytest -s)
    assert chunked <= base + BOUND_MIB, text
    assert whole > base + BOUND_MIB, f"the bound cannot tell chunked from whole: {text}"
