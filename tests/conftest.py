"""Shared test setup: offline environment, one thread, small shared fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metaad.config import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- the pipeline's end-to-end tests (test_pipeline, test_dvc, test_mlflow_server) ---------
REPO = Path(__file__).resolve().parents[1]

#: Small enough for a 2-core machine, big enough that every stage really runs: 20k rows of
#: the synthetic card domain, 3 unseen types x K in {0, 5} x 3 episodes, a few dozen
#: meta-training steps, two cheap baselines.
TINY_OVERRIDES: Mapping[str, Any] = types.MappingProxyType(
    {
        "ingest.n_rows": 20000,
        "episodes.shots": [0, 5],
        "episodes.n_episodes": 3,
        "episodes.n_query_normal": 250,
        "train.steps": 40,
        "train.meta_batch": 8,
        "train.val_every": 20,
        "evaluate.methods": ["proto", "iforest", "lr_sup"],
        "evaluate.n_bootstrap": 300,
        "promote.n_bootstrap": 300,
    }
)


@pytest.fixture(scope="session")
def tiny_overrides() -> Mapping[str, Any]:
    """Tiny params for end-to-end runs, read-only: use ``{**tiny_overrides, ...}``."""
    return TINY_OVERRIDES


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # this interpreter's scripts first: dvc stages call `metaad` even when the venv is not
    # activated (pytest run as .venv/bin/python -m pytest)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(OFFLINE_ENV)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra)
    return env


def _run_cmd(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> str:
    res = subprocess.run(
        args, cwd=cwd, env=_child_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {res.returncode}\n--- stdout\n"
            f"{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"
        )
    return res.stdout


@pytest.fixture(scope="session")
def child_env() -> Callable[..., dict[str, str]]:
    """``child_env(**extra)``: a subprocess environment that is offline (``OFFLINE_ENV``),
    single-threaded (two shared cores), finds this venv's ``metaad``/``dvc``/``mlflow``
    first and is free of an inherited ``MLFLOW_TRACKING_URI``."""
    return _child_env


@pytest.fixture(scope="session")
def run_cmd() -> Callable[..., str]:
    """``run_cmd(args, cwd, timeout=300, **env)``: run a command in :func:`child_env`, fail
    the test with its output when it exits non-zero, return its stdout."""
    return _run_cmd


def _git_init(root: Path) -> None:
    _run_cmd(["git", "init", "-q", "-b", "main"], root)
    _run_cmd(["git", "config", "user.email", "tests@metaad.invalid"], root)
    _run_cmd(["git", "config", "user.name", "metaad tests"], root)
    _run_cmd(["git", "config", "commit.gpgsign", "false"], root)


@pytest.fixture(scope="session")
def make_project() -> Callable[..., Path]:
    """``make_project(root, dvc=False)``: a minimal project root (the repo's params.yaml and
    .gitignore in a git repository with one commit); with ``dvc=True`` also the tiny
    synthetic table, tracked by DVC through a committed ``data.dvc``."""

    def make(root: Path, *, dvc: bool = False) -> Path:
        from metaad import stages
        from metaad.config import load_params

        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        shutil.copy(REPO / ".gitignore", root / ".gitignore")
        _git_init(root)
        if dvc:
            stages.ingest(load_params(root / "params.yaml", TINY_OVERRIDES), root)
            _run_cmd(["dvc", "init", "-q"], root)
            _run_cmd(["dvc", "add", "-q", "data"], root)
        _run_cmd(["git", "add", "-A"], root)
        _run_cmd(["git", "commit", "-q", "-m", "test project"], root)
        return root

    return make


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API (its own SQLite database) for the whole test session.

    Start-up costs ~12 s, so it is shared; only tests that run flows request it. Results
    that tasks persist (the cached episodes stage) go to a temporary folder too, so no
    test reads or leaves a cache entry in ``~/.prefect``.
    """
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield
