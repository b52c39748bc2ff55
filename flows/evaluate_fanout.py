"""Evaluation fanned out: one Prefect task per evaluation unit, on any task runner.

The units (one method, fitted with one seed, scored on every frozen episode of a project:
``metaad.evaluation.units``) do not depend on each other, so they are mapped as tasks and
the task runner decides where they run: a Dask ``LocalCluster`` on one machine, or an
existing Dask cluster by address (``scale.task_runner: dask``, ``scale.dask_address``).
The merge task writes ``artifacts/eval`` with :func:`metaad.stages.finish_evaluation`,
the same function the sequential stage ends with, so the outputs are the same files with
the same numbers (only the per-episode wall-clock timings differ).

Workers must see the project folder (the frozen episodes and the trained bundle are read
from ``root``): on one machine that is given; on a cluster, put the project on storage all
workers mount, at the same path.

Run alone:  python flows/evaluate_fanout.py --root . --task-runner dask
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

import cloudpickle
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from metaad import stages
from metaad.config import Params, ScaleConfig, load_params
from metaad.evaluation.units import EvalUnit, UnitResult, evaluate_unit, plan_units

ROOT = Path(__file__).resolve().parents[1]

# Dask workers unpickle the tasks below. Loaded from a deployment's entrypoint or run as a
# script, this module is not importable under its name on a worker, so its functions
# travel by value; what they call (metaad, prefect) is installed everywhere.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def make_task_runner(
    kind: str,
    *,
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
) -> TaskRunner[Any]:
    """``dask``: a ``DaskTaskRunner`` (an existing cluster at ``address``, else a local one
    with ``n_workers`` processes); ``sequential``: one task at a time, in this process."""
    if kind == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if kind != "dask":
        raise ValueError(f"task_runner must be 'sequential' or 'dask', got {kind!r}")
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker,
            "processes": True,
            "dashboard_address": ":0",  # any free port: never collide with a running one
        },
    )


def runner_from_params(scale: ScaleConfig, kind: str | None = None) -> TaskRunner[Any]:
    return make_task_runner(
        kind or scale.task_runner,
        address=scale.dask_address,
        n_workers=scale.n_workers,
        threads_per_worker=scale.threads_per_worker,
    )


@task(cache_policy=NO_CACHE, task_run_name="evaluate {unit.method} (seed {unit.seed})")
def evaluate_unit_task(params: Params, root: str, unit: EvalUnit) -> UnitResult:
    """One unit, wherever the task runner puts it (offline, like every metaad process)."""
    set_offline_env()
    return evaluate_unit(params, Path(root), unit)


@task(cache_policy=NO_CACHE)
def finish_task(
    params: Params, root: str, results: list[UnitResult], trained_method: str
) -> dict[str, Any]:
    """Write ``artifacts/eval`` from the units' results, as the sequential stage does."""
    res = stages.finish_evaluation(params, Path(root), results, trained_method=trained_method)
    return {
        "markdown": res.markdown,
        "best": res.results["extra"]["best_at_gate_k"],
        "units": [
            {
                "method": r.label,
                "seconds": round(r.seconds, 2),
                "fit_seconds": r.fit_seconds,
                "worker": r.worker,
            }
            for r in results
        ],
    }


@flow(name="metaad-evaluate-fanout")
def evaluate_fanout(params: Params, root: str, seeds: list[int] | None = None) -> dict[str, Any]:
    """Map every evaluation unit of the project at ``root`` as a task, then merge."""
    trained = json.loads((stages.Layout(Path(root)).model / "bundle.json").read_text())["method"]
    units = plan_units(params, trained, seeds=seeds)
    get_run_logger().info(
        "evaluating %d units as tasks: %s",
        len(units),
        ", ".join(u.label(params.train.seed) for u in units),
    )
    futures = evaluate_unit_task.map(params=unmapped(params), root=unmapped(root), unit=units)
    results = [f.result() for f in futures]
    return finish_task(params, root, results, trained)


def run(
    params: Params,
    root: str | Path,
    *,
    task_runner: str | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """Run :func:`evaluate_fanout` on the runner ``scale`` (or ``task_runner``) names."""
    runner = runner_from_params(params.scale, task_runner)
    return evaluate_fanout.with_options(task_runner=runner)(params, str(root), seeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--task-runner", choices=["sequential", "dask"], default=None)
    args = ap.parse_args(argv)
    set_offline_env()
    params = load_params(Path(args.root) / args.params, dict(kv.split("=", 1) for kv in args.set))
    out = run(params, args.root, task_runner=args.task_runner)
    print(out["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
