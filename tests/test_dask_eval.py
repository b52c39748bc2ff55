"""Evaluation fanned out on Dask gives the sequential run's numbers.

A tiny project is prepared and evaluated by the sequential stage (``stages.evaluate``);
then the fan-out flow maps the same evaluation units as Prefect tasks on a
``DaskTaskRunner`` over a real 2-worker ``LocalCluster`` (worker processes, not threads).
The per-episode metrics, the summary tables, ``metrics.json`` and the headline comparison
must be identical; only wall-clock timings may differ. The units must have run in the
Dask worker processes, not in the test's process. The methods include the trained
meta-learner (loaded from the bundle), a torch baseline that draws random numbers (DevNet)
and sklearn baselines, so identity is not an accident of deterministic code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from helpers_procs import import_flow

REPO = Path(__file__).resolve().parents[1]
METRIC_COLS = ["method", "type", "shots", "rep", "auprc", "auroc", "recall_at_1fpr"]


def _fanout() -> Any:
    return import_flow("evaluate_fanout")


def _without_timings(node: Any) -> Any:
    """``results.json`` without wall-clock fields (the only thing allowed to differ)."""
    if isinstance(node, dict):
        return {
            k: _without_timings(v)
            for k, v in node.items()
            if k not in ("fit_seconds", "adapt_ms", "score_ms")
        }
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


def test_plan_units_orders_and_labels(tiny_overrides: Mapping[str, Any]) -> None:
    from metaad.config import load_params
    from metaad.evaluation.units import EvalUnit, plan_units

    params = load_params(REPO / "params.yaml", {**tiny_overrides, "train.seed": 3})
    units = plan_units(params, "proto", seeds=[3, 4])
    assert [u.method for u in units[:3]] == ["proto", "iforest", "lr_sup"]
    assert len(units) == 6 and {u.seed for u in units} == {3, 4}
    assert [u.label(3) for u in units] == [
        "proto", "iforest", "lr_sup", "proto@s4", "iforest@s4", "lr_sup@s4",
    ]  # fmt: skip
    assert EvalUnit("knn", 3).label(3) == "knn"
    with pytest.raises(ValueError, match="distinct"):
        plan_units(params, "proto", seeds=[1, 1])


def test_scale_section_is_checked() -> None:
    from metaad.config import load_params
    from metaad.errors import ConfigError

    params = load_params(REPO / "params.yaml")
    assert params.scale.task_runner == "sequential" and params.scale.dask_address is None
    for key, bad in (
        ("scale.task_runner", "spark"),
        ("scale.n_workers", 0),
        ("scale.ddp_backend", "mpi"),
        ("scale.checkpoint_every", -1),
    ):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_params(REPO / "params.yaml", {key: bad})


@pytest.mark.slow
def test_dask_fanout_equals_sequential(
    prefect_harness: None,
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
) -> None:
    from metaad import stages
    from metaad.config import load_params

    root = make_project(tmp_path / "p")
    overrides = {
        **tiny_overrides,
        "evaluate.methods": ["proto", "iforest", "lr_sup", "devnet"],
        "scale.task_runner": "dask",
        "scale.n_workers": 2,
    }
    params = load_params(root / "params.yaml", overrides)
    stages.ingest(params, root)
    stages.build_episodes(params, root)
    stages.train(params, root)
    seq = stages.evaluate(params, root)
    eval_dir = stages.Layout(root).eval
    seq_metrics = (eval_dir / "metrics.json").read_text()
    seq_results = json.loads((eval_dir / "results.json").read_text())
    for f in ("per_episode.csv", "metrics.json", "results.json"):
        (eval_dir / f).unlink()

    fan = _fanout()
    out = fan.run(params, root)  # scale.task_runner: dask, a 2-worker LocalCluster

    dask_per = pd.read_csv(eval_dir / "per_episode.csv")
    seq_per = seq.per_episode[METRIC_COLS].reset_index(drop=True)
    pd.testing.assert_frame_equal(dask_per[METRIC_COLS], seq_per, check_exact=True)
    assert (eval_dir / "metrics.json").read_text() == seq_metrics
    dask_results = json.loads((eval_dir / "results.json").read_text())
    assert _without_timings(dask_results) == _without_timings(seq_results)
    assert out["best"] == seq.results["extra"]["best_at_gate_k"]

    units = out["units"]
    assert [u["method"] for u in units] == ["proto", "iforest", "lr_sup", "devnet"]
    workers = {u["worker"] for u in units}
    me = f"{os.uname().nodename}:{os.getpid()}"
    assert me not in workers, f"units ran in the test process: {workers}"
