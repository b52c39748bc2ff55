"""The unseen-type benchmark (and the ADBench check) as a Prefect flow, for the weekly run.

Each dataset is a task: load it from the checked copies, run its Great Expectations suite,
then every method of ``benchmark.methods`` on the seed's frozen episodes
(:func:`metaad.benchmark.benchmark_dataset`). A last task writes the tables, the plots and
the headline checks and logs one MLflow run (:func:`metaad.benchmark.finish_benchmark`).
The ADBench check runs after it when ``adbench`` is true. Orchestration only: every number
comes from ``metaad.benchmark`` / ``metaad.adbench``, as with ``metaad benchmark``.

Run it:    python flows/benchmark.py [-S benchmark.seeds=[0,1] ...] [--adbench] [--resume]
Deploy it: the entrypoint is ``flows/benchmark.py:benchmark_flow``.
"""

from __future__ import annotations

from metaad.config import set_offline_env

# Before Prefect is imported or starts its server: the server process inherits this
# environment, and its telemetry service would otherwise try the network.
set_offline_env()

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from metaad.config import BenchmarkConfig, load_params

ROOT = Path(__file__).resolve().parents[1]


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_dataset_checked(name: str, data_dir: str | None, report_dir: str) -> tuple[Any, dict]:
    """I/O: read (or download) the files, verify their digests, run the dataset's GX suite."""
    from metaad.benchmark import load_checked

    return load_checked(name, data_dir=data_dir, report_dir=Path(report_dir))


@task(cache_policy=NO_CACHE)
def run_one_dataset(ds: Any, cfg: BenchmarkConfig, out_dir: str, resume: bool) -> Any:
    """Every method on the dataset's frozen episodes, seed by seed (not retried: long; a
    stopped run is continued with ``resume``, which keeps every finished seed x method)."""
    from metaad.benchmark import benchmark_dataset

    return benchmark_dataset(ds, cfg, out_dir, resume=resume)


@task(cache_policy=NO_CACHE)
def report(
    cfg: BenchmarkConfig,
    out_dir: str,
    per: dict[str, Any],
    validation: dict[str, Any],
    seconds: float,
    tracking_uri: str | None,
) -> dict[str, Any]:
    from metaad.benchmark import finish_benchmark

    res = finish_benchmark(
        cfg,
        out_dir,
        per,
        validation=validation,
        seconds=seconds,
        tracking_uri=tracking_uri,
    )
    return {
        "markdown": res.markdown,
        "verdict": res.results["verdict"],
        "mlflow_run_id": res.mlflow_run_id,
        "out_dir": str(res.out_dir),
    }


@task(cache_policy=NO_CACHE)
def adbench_check(
    cfg: BenchmarkConfig, out_dir: str, data_dir: str | None, resume: bool = False
) -> dict[str, Any]:
    from metaad.adbench import adbench_markdown, run_adbench

    res = run_adbench(
        cfg.adbench_sets,
        ratios=cfg.adbench_ratios,
        seeds=cfg.adbench_seeds,
        methods=cfg.adbench_methods,
        steps=cfg.adbench_steps,
        hparams=cfg.hparams,
        data_dir=data_dir,
        out_dir=Path(out_dir) / "adbench",
        device=cfg.device,
        resume=resume,
    )
    return {"markdown": adbench_markdown(res)}


@flow(name="metaad-benchmark", log_prints=False)
def benchmark_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    root: str | None = None,
    out_dir: str | None = None,
    tracking_uri: str | None = None,
    adbench: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """The benchmark of ``params.yaml``'s ``benchmark`` section on real datasets.

    ``resume`` continues a stopped run in the same output folder (``metaad benchmark
    --resume``): what it finished under the same settings is taken back, not rerun.

    ``tracking_uri`` defaults to the project's MLflow store (``MLFLOW_TRACKING_URI`` or
    ``<root>/mlflow/mlflow.db``); results go to ``benchmark.output`` under ``root``.
    """
    from metaad.tracking import default_tracking_uri

    set_offline_env()
    base = Path(root) if root else ROOT
    params = load_params(base / params_path, overrides or {})
    cfg = params.benchmark
    out = Path(out_dir) if out_dir else base / cfg.output
    (out / "plots").mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(base)
    logger = get_run_logger()
    t0 = time.perf_counter()
    per, checked = {}, {}
    for name in cfg.datasets:
        ds, checked[name] = load_dataset_checked(name, cfg.data_dir, str(out / name / "validation"))
        per[name] = run_one_dataset(ds, cfg, str(out), resume)
        logger.info("benchmark: %s finished", name)
    summary = report(cfg, str(out), per, checked, time.perf_counter() - t0, uri)
    md = summary["markdown"]
    if adbench:
        check = adbench_check(cfg, str(out), cfg.data_dir, resume)
        md += "\n\n## ADBench check\n\n" + check["markdown"]
    create_markdown_artifact(key="metaad-benchmark", markdown=md, description="metaad benchmark")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--root", default=None)
    ap.add_argument("--out", default=None, help="output folder (default benchmark.output)")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--adbench", action="store_true", help="also run the ADBench check")
    ap.add_argument(
        "--resume", action="store_true", help="continue a stopped run in the same --out"
    )
    args = ap.parse_args(argv)
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set expects KEY=VALUE, got {bad}")
    res = benchmark_flow(
        params_path=args.params,
        overrides=dict(kv.split("=", 1) for kv in args.set),
        root=args.root,
        out_dir=args.out,
        tracking_uri=args.tracking_uri,
        adbench=args.adbench,
        resume=args.resume,
    )
    print(res["markdown"])
    print(json.dumps({"verdict": res["verdict"], "out_dir": res["out_dir"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
