"""Scheduled retraining for real: ``prefect server``, a process worker, ``prefect.yaml``.

The test starts, on 127.0.0.1 and free ports, a ``prefect server`` (its own PREFECT_HOME
and SQLite database in a temporary folder, the scheduler service off so no cron run fires
during the test) and an ``mlflow server`` (SQLite backend, artifact folder). It copies the
working tree to a temporary folder (what a team deploys: no .venv, data or artifacts),
creates the process work pool and runs ``prefect --no-prompt deploy --all`` there, plus
the Kubernetes and Docker variants into pools built from their base job templates (the
server validates their job variables). A process worker started from the copy then runs
two retraining runs triggered together, with small parameters, each on its own project
folder (as two pods would). Both must complete; the MLflow server must hold a new model
version per run, tagged with its flow run; the deployment's concurrency limit must have
kept the runs apart; the champion lock spans (tags written inside the lock) must not
overlap and each version must be created inside its run's span; and the promotion
decisions must chain: each run was judged against the champion the previous decision left,
and ``@champion`` moved at most once per passing run. Every process is stopped by its
process-group id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers_procs import copy_working_tree, free_port, start, stop, tail, wait_http

MODEL = "metaad-detector"
POOL = "metaad-process"
RUN_TIMEOUT_S = 420.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    child_env: Callable[..., dict[str, str]],
    run_cmd: Callable[..., str],
) -> Iterator[dict[str, Any]]:
    """Both servers up, the deployments created from the copied repo; all stopped after."""
    base = tmp_path_factory.mktemp("deploy")
    repo = copy_working_tree(base / "repo", run_cmd)
    procs = []
    try:
        mport, pport = free_port(), free_port()
        mlflow_url = f"http://127.0.0.1:{mport}"
        api = f"http://127.0.0.1:{pport}/api"
        mlog = base / "mlflow.log"
        procs.append(
            start(
                [
                    "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mport),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{base / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(base / "mlflow-artifacts"),
                ],
                cwd=base,
                env=child_env(),
                log=mlog,
            )
        )
        prefect_env = child_env(
            PREFECT_HOME=str(base / "prefect-home"),
            PREFECT_API_URL=api,
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
        )
        plog = base / "prefect-server.log"
        procs.append(
            start(
                ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
                cwd=base,
                env=prefect_env,
                log=plog,
            )
        )
        wait_http(f"{api}/health", procs[-1], plog, timeout_s=180)
        wait_http(f"{mlflow_url}/health", procs[0], mlog, timeout_s=180)

        def prefect(*args: str) -> str:
            return run_cmd(["prefect", *args], repo, timeout=300, **prefect_env)

        _create_pools(
            api,
            {
                POOL: ("process", None),
                "metaad-k8s": ("kubernetes", repo / "deploy/kubernetes-gpu.base-job-template.json"),
                "metaad-docker": ("docker", repo / "deploy/docker-gpu.base-job-template.json"),
            },
        )
        deployed = prefect("--no-prompt", "deploy", "--all")
        deployed += prefect(
            "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.kubernetes.yaml"
        )
        deployed += prefect(
            "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.docker.yaml"
        )
        worker_env = {
            **prefect_env,
            "MLFLOW_TRACKING_URI": mlflow_url,
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        }
        wlog = base / "worker.log"
        procs.append(
            start(
                ["prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                cwd=repo,
                env=worker_env,
                log=wlog,
            )
        )
        yield {
            "base": base,
            "repo": repo,
            "api": api,
            "mlflow": mlflow_url,
            "deploy_output": deployed,
            "worker_log": wlog,
            "worker": procs[-1],
        }
    finally:
        for p in reversed(procs):
            stop(p, grace_s=8)


def _create_pools(api: str, pools: Mapping[str, tuple[str, Path | None]]) -> None:
    """Work pools, as `prefect work-pool create NAME --type T [--base-job-template F]`."""
    from prefect.client.schemas.actions import WorkPoolCreate

    with _client(api) as c:
        for name, (kind, template) in pools.items():
            if template is None:  # what the CLI uses for --type process
                from prefect.workers.process import ProcessWorker

                tmpl = ProcessWorker.get_default_base_job_template()
            else:
                tmpl = json.loads(template.read_text())
            c.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=tmpl))


def _client(api: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        def __enter__(self) -> Any:
            self.settings = temporary_settings(updates={PREFECT_API_URL: api})
            self.settings.__enter__()
            self.client = get_client(sync_client=True)
            return self.client.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return _Ctx()


def _deployments(api: str) -> dict[str, Any]:
    with _client(api) as c:
        return {f"{d.work_pool_name}/{d.name}": d for d in c.read_deployments()}


def test_prefect_yaml_deploys_every_deployment(stack: dict[str, Any]) -> None:
    deps = _deployments(stack["api"])
    assert {
        f"{POOL}/nightly-retrain",
        f"{POOL}/weekly-benchmark",
        f"{POOL}/batch-score",
        "metaad-k8s/nightly-retrain-k8s",
        "metaad-k8s/weekly-benchmark-k8s",
        "metaad-k8s/batch-score-k8s",
        "metaad-docker/nightly-retrain-docker",
        "metaad-docker/weekly-benchmark-docker",
        "metaad-docker/batch-score-docker",
    } <= set(deps), sorted(deps)

    nightly = deps[f"{POOL}/nightly-retrain"]
    assert nightly.entrypoint == "flows/train_pipeline.py:train_pipeline"
    (sched,) = nightly.schedules
    assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "Europe/Berlin"
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1
    assert str(nightly.concurrency_options.collision_strategy).endswith("ENQUEUE")
    # no pull section: deploy recorded the copied checkout as the runs' working directory
    (pull,) = nightly.pull_steps
    step = pull["prefect.deployments.steps.set_working_directory"]
    assert Path(step["directory"]).resolve() == stack["repo"].resolve()
    (weekly,) = deps[f"{POOL}/weekly-benchmark"].schedules
    assert weekly.schedule.cron == "0 4 * * 0" and weekly.schedule.timezone == "Europe/Berlin"
    assert deps[f"{POOL}/weekly-benchmark"].entrypoint == "flows/benchmark.py:benchmark_flow"
    assert deps[f"{POOL}/batch-score"].entrypoint == "flows/batch_score.py:batch_score"

    # the variants: image and GPU request in job variables the server validated
    k8s = deps["metaad-k8s/nightly-retrain-k8s"].job_variables
    assert k8s["image"] and k8s["gpu_limit"] == 1
    assert k8s["node_selector"] == {"nvidia.com/gpu.present": "true"}
    dock = deps["metaad-docker/nightly-retrain-docker"].job_variables
    (req,) = dock["container_create_kwargs"]["device_requests"]
    assert req["capabilities"] == [["gpu"]] and dock["image"]


def _wait_final(api: str, ids: list[Any], worker: Any, log: Path) -> dict[Any, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    seen: dict[Any, set[str]] = {i: set() for i in ids}
    with _client(api) as c:
        while True:
            runs = {i: c.read_flow_run(i) for i in ids}
            for i, r in runs.items():
                seen[i].add(r.state.name if r.state else "?")
            if all(r.state and r.state.is_final() for r in runs.values()):
                return {"runs": runs, "seen": seen}
            if worker.poll() is not None:
                pytest.fail(f"the worker exited {worker.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                states = {str(i): r.state.name if r.state else None for i, r in runs.items()}
                pytest.fail(f"runs not final after {RUN_TIMEOUT_S}s: {states}\n{tail(log)}")
            time.sleep(2)


def _decision(client: MlflowClient, run_id: str, tmp: Path) -> dict[str, Any]:
    path = client.download_artifacts(run_id, "promotion/decision.json", str(tmp))
    return json.loads(Path(path).read_text())


def test_two_retraining_runs_triggered_together(
    stack: dict[str, Any],
    make_project: Callable[..., Path],
    tiny_overrides: Mapping[str, Any],
    tmp_path: Path,
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    small = {
        **tiny_overrides,
        "evaluate.methods": ["lr_sup"],
        "promote.min_auprc": 0.1,
        "promote.min_auroc": 0.5,
    }
    # two runs as two pods would do them: each its own project folder, one registry
    runs = [
        ("weak", {**small, "train.method": "fomaml", "train.steps": 2}),
        ("strong", {**small, "train.steps": 20, "train.val_every": 10}),
    ]
    ids, roots = [], {}
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        for name, overrides in runs:
            root = make_project(tmp_path / name)
            fr = run_deployment(
                "metaad-train/nightly-retrain",
                parameters={"root": str(root), "overrides": overrides},
                timeout=0,
            )
            ids.append(fr.id)
            roots[fr.id] = name
    done = _wait_final(stack["api"], ids, stack["worker"], stack["worker_log"])
    flow_runs = done["runs"]
    for i, r in flow_runs.items():
        assert r.state.is_completed(), f"{roots[i]}: {r.state.name} {r.state.message}"

    # the deployment's limit kept the runs apart: one started after the other ended
    first, second = sorted(flow_runs.values(), key=lambda r: r.start_time)
    assert second.start_time >= first.end_time, (first.end_time, second.start_time)

    client = MlflowClient(stack["mlflow"])
    versions = {v.run_id: v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert len(versions) == 2, versions
    by_flow = {}
    for run_id, v in versions.items():
        run = client.get_run(run_id)
        by_flow[run.data.tags["flow_run_id"]] = (run, v)
    assert set(by_flow) == {str(i) for i in ids}

    # lock spans: disjoint, each version created inside its own span; in order of the spans
    spans = []
    for fid, (run, v) in by_flow.items():
        lo = int(run.data.tags["champion_lock.acquired_ms"])
        hi = int(run.data.tags["champion_lock.released_ms"])
        assert lo <= int(v.creation_timestamp) <= hi, (fid, lo, v.creation_timestamp, hi)
        spans.append((lo, hi, run, v))
    spans.sort(key=lambda s: s[0])
    assert spans[0][1] <= spans[1][0], "two runs held the champion lock at the same time"

    # the decisions chain, and @champion moved once per passing run and never otherwise
    champion: str | None = None
    moves = 0
    for _lo, _hi, run, v in spans:
        d = _decision(client, run.info.run_id, tmp_path / run.info.run_id)
        assert d["challenger_version"] == str(v.version)
        assert d["previous_champion"] == champion, (d["previous_champion"], champion)
        assert v.tags["promotion.decision"] == ("promoted" if d["promote"] else "refused")
        if d["promote"]:
            assert d["champion_after"] == str(v.version)
            moves += 1
        else:
            assert d["champion_after"] == champion
        champion = d["champion_after"]
        verdict = "promoted" if d["promote"] else "refused"
        print(f"version {v.version}: {verdict}, champion now {champion}")
    assert moves >= 1  # the first run had no champion to beat
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == champion
