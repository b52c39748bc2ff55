"""Batch scoring as a Prefect flow: a file or folder scored by the champion, in chunks.

The flow loads a registered version (``models:/metaad-detector@champion`` unless told
otherwise), scores the input with :func:`metaad.scoring.score_files` (the same checks and
the same answer as a served request, chunk by chunk so memory stays flat), and leaves a
summary artifact: rows scored, alerts per nearest type, and the score histogram's PNG path.
``metaad score`` does the same without Prefect.

Run it:  python flows/batch_score.py INPUT [--output OUT] [--version N] [--chunk-rows N]
Deploy it: the entrypoint is ``flows/batch_score.py:batch_score``.
"""

from __future__ import annotations

from metaad.config import set_offline_env

# Before Prefect is imported or starts its server: the server process inherits this
# environment, and its telemetry service would otherwise try the network.
set_offline_env()

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from metaad.config import load_params

ROOT = Path(__file__).resolve().parents[1]


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def check_model(model_uri: str, tracking_uri: str) -> str:
    """I/O with the registry: resolve the URI to a version before the long work starts."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.partition("/")
    return str(client.get_model_version(name, version).version)


@task(cache_policy=NO_CACHE)
def score_input(
    model_uri: str,
    tracking_uri: str,
    input_path: str,
    output_path: str,
    chunk_rows: int,
    id_columns: list[str],
    support_path: str | None,
) -> dict[str, Any]:
    """Load the model and score the input chunk by chunk (not retried: it writes output)."""
    import pandas as pd

    from metaad.scoring import score_files, support_from_frame
    from metaad.typelib import load_registered_bundle

    bundle, py = load_registered_bundle(model_uri, tracking_uri)
    support = None
    if support_path:
        frame = (
            pd.read_csv(support_path)
            if support_path.lower().endswith(".csv")
            else pd.read_parquet(support_path)
        )
        support = support_from_frame(frame)
    summary = score_files(
        bundle,
        input_path,
        output_path,
        chunk_rows=chunk_rows,
        scorer=py.scorer,
        id_columns=id_columns,
        support=support,
        model_label=model_uri,
    )
    return {**summary.to_dict(), "markdown": summary.markdown()}


@flow(name="metaad-batch-score", log_prints=False)
def batch_score(
    input_path: str,
    output_path: str | None = None,
    version: str | None = None,
    model_uri: str | None = None,
    chunk_rows: int | None = None,
    id_columns: list[str] | None = None,
    support_path: str | None = None,
    params_path: str = "params.yaml",
    root: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score ``input_path`` (a CSV/Parquet file or folder) with the champion or a version."""
    from metaad.scoring import default_output, model_uri_for
    from metaad.tracking import default_tracking_uri

    set_offline_env()
    base = Path(root) if root else ROOT
    params = load_params(base / params_path)
    uri = tracking_uri or default_tracking_uri(base)
    model = model_uri_for(params.register.model_name, version, model_uri)
    resolved = check_model(model, uri)
    logger = get_run_logger()
    logger.info("scoring %s with %s (version %s)", input_path, model, resolved)
    out = output_path or str(default_output(input_path))
    summary = score_input(
        model,
        uri,
        input_path,
        out,
        chunk_rows or params.serve.chunk_rows,
        list(id_columns or []),
        support_path,
    )
    summary["version"] = resolved
    create_markdown_artifact(
        key="metaad-batch-score",
        markdown=summary["markdown"] + f"\n\nModel version: {resolved}",
        description="Batch scoring summary",
    )
    rows = [{"nearest_type": t, "alerts": n} for t, n in summary["alerts_per_type"].items()]
    create_table_artifact(
        key="metaad-batch-alerts",
        table=rows or [{"nearest_type": "(none)", "alerts": 0}],
        description=f"Alerts per nearest type, {summary['rows_scored']} rows scored",
    )
    logger.info(
        "%d rows scored, %d alerts, %.0f rows/s; scores in %s",
        summary["rows_scored"],
        summary["alerts"],
        summary["rows_per_second"],
        out,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="CSV/Parquet file or folder")
    ap.add_argument("--output", default=None)
    ap.add_argument("--version", default=None, help="model version (default: the champion)")
    ap.add_argument("--model-uri", default=None)
    ap.add_argument("--chunk-rows", type=int, default=None)
    ap.add_argument("--id-col", action="append", default=[])
    ap.add_argument("--support", default=None, help="labelled rows to adapt to first")
    ap.add_argument("--root", default=None)
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args(argv)
    out = batch_score(
        input_path=args.input,
        output_path=args.output,
        version=args.version,
        model_uri=args.model_uri,
        chunk_rows=args.chunk_rows,
        id_columns=args.id_col,
        support_path=args.support,
        root=args.root,
        tracking_uri=args.tracking_uri,
    )
    print(json.dumps({k: out[k] for k in ("rows_scored", "alerts", "output", "summary_json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
