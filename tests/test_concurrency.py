"""Two promotions at once: the champion lock makes them take turns, and the alias moves once.

Two copies of one trained project (as two pods would hold) run the flow's register and
promote step at the same moment, from two threads, against one real MLflow store (SQLite)
and the session's Prefect API, where the flow creates the one-slot ``metaad-champion``
concurrency limit. The challengers are the same model, so whichever goes second ties with
the first: it must be judged against the champion the first one just set and be refused.
Without the lock both could read "no champion yet", both pass and ``@champion`` would
move twice. The test also checks that the second really waited for the lock (contention
happened) and that the two lock spans recorded on the MLflow runs do not overlap. Whoever
gets the lock first holds it until the other run has reached it, so contention happens
however the machine schedules the two threads (on a loaded machine the first could
otherwise finish before the second arrives, and the lock would go untested).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers_procs import import_flow

REPO = Path(__file__).resolve().parents[1]
MODEL = "metaad-detector"


def _flow_module() -> Any:
    return import_flow("train_pipeline")


@pytest.mark.slow
def test_concurrent_promotions_take_turns(
    prefect_harness: None,
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect import flow

    from metaad import stages
    from metaad.config import load_params

    tp = _flow_module()
    arrived, both_arrived, count = threading.Lock(), threading.Event(), [0]
    real_ensure, real_gate = tp.ensure_champion_lock, tp.governance.register_and_gate

    def ensure_and_count() -> None:  # the last call before a run asks for the lock
        real_ensure()
        with arrived:
            count[0] += 1
            if count[0] == 2:
                both_arrived.set()

    def gate_once_both_arrived(*args: Any, **kw: Any) -> Any:  # runs under the lock
        assert both_arrived.wait(timeout=300), "the second promotion never reached the lock"
        time.sleep(1.5)  # the other run is now queued on the lock
        return real_gate(*args, **kw)

    monkeypatch.setattr(tp, "ensure_champion_lock", ensure_and_count)
    monkeypatch.setattr(tp.governance, "register_and_gate", gate_once_both_arrived)
    overrides = {**tiny_overrides, "evaluate.methods": ["lr_sup"]}
    first = make_project(tmp_path / "a")
    params = load_params(first / "params.yaml", overrides)
    stages.ingest(params, first)
    stages.validate(params, first)
    stages.build_episodes(params, first)
    stages.train(params, first)
    stages.evaluate(params, first)
    second = tmp_path / "b"
    shutil.copytree(first, second)
    uri = f"sqlite:///{tmp_path / 'registry.db'}"

    @flow(name="metaad-promote-only")
    def promote_only(root: str) -> dict[str, Any]:
        return tp.register_and_promote(params, Path(root), uri)

    start = threading.Barrier(2)
    out: dict[str, Any] = {}

    def go(root: Path) -> None:
        start.wait()
        try:
            out[root.name] = promote_only(str(root))
        except BaseException as exc:  # surfaced by the asserts below
            out[root.name] = exc

    threads = [threading.Thread(target=go, args=(r,)) for r in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a promotion never finished"
    errors = {k: v for k, v in out.items() if isinstance(v, BaseException)}
    assert not errors, errors

    gates = sorted(out.values(), key=lambda g: int(g["version"]))
    assert [g["version"] for g in gates] == ["1", "2"]
    assert [g["promoted"] for g in gates] == [True, False]
    assert gates[0]["champion"] == "1" and gates[1]["champion"] == "1"
    assert any(r.startswith("FAIL tie") for r in gates[1]["reasons"]), gates[1]["reasons"]
    # contention happened: the second waited while the first held the lock
    assert gates[1]["lock_waited_s"] > 1.0, gates[1]["lock_waited_s"]

    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    spans = []
    for g in gates:
        tags = client.get_run(g["run_id"]).data.tags
        lo, hi = int(tags["champion_lock.acquired_ms"]), int(tags["champion_lock.released_ms"])
        created = int(client.get_model_version(MODEL, g["version"]).creation_timestamp)
        assert lo <= created <= hi
        spans.append((lo, hi))
    assert spans[0][1] <= spans[1][0], spans
    decision = client.get_model_version(MODEL, "2").tags["promotion.decision"]
    assert decision == "refused"
