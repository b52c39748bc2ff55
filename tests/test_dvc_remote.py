"""A DVC remote for real: push, lose the cache and data/, pull them back, clean status.

The repository (with the working tree's changes) is cloned into a temporary folder, its
tracked data is obtained with ``metaad data pull`` (no remote yet: regenerated to the md5
that ``data.dvc`` records), and a local-folder remote is added the way a team adds an S3
one (``dvc remote add -d``). ``dvc push`` must fill the remote; after deleting the DVC cache
and ``data/``, ``dvc pull`` must restore ``data/`` byte for byte (the md5 in data.dvc), and
``dvc status`` (workspace) and ``dvc status --cloud`` (remote) must both be clean for the
tracked data (the pipeline's outputs in ``dvc.lock`` are rebuilt by ``dvc repro``, not
pushed, so the commands name ``data.dvc``).
``metaad data pull`` then takes the remote path too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers_procs import REPO, copy_working_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]


def _clone(dst: Path, run_cmd: Callable[..., str]) -> Path:
    run_cmd(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dst)], REPO.parent)
    for key, value in (
        ("user.email", "tests@metaad.invalid"),
        ("user.name", "metaad tests"),
        ("commit.gpgsign", "false"),
    ):
        run_cmd(["git", "config", key, value], dst)
    copy_working_tree(dst, run_cmd)  # the code as it is now, not as last committed
    run_cmd(["git", "add", "-A"], dst)
    run_cmd(["git", "commit", "-q", "--allow-empty", "-m", "working tree under test"], dst)
    return dst


def test_push_delete_pull_restores_data(tmp_path: Path, run_cmd: Callable[..., str]) -> None:
    from metaad.datafetch import dvc_md5, recorded_md5

    clone = _clone(tmp_path / "clone", run_cmd)
    assert not (clone / "data").exists()
    out = run_cmd(["metaad", "data", "pull"], clone)
    assert "regenerated" in out, out
    recorded = recorded_md5(clone)
    assert recorded and dvc_md5(clone / "data") == recorded

    store = tmp_path / "dvc-store"  # a team writes s3://bucket/metaad here
    run_cmd(["dvc", "remote", "add", "-d", "storage", str(store)], clone)
    pushed = run_cmd(["dvc", "push", "data.dvc"], clone)
    assert "pushed" in pushed, pushed
    assert any(f.is_file() for f in store.rglob("*")), "the remote is empty after dvc push"
    assert json.loads(run_cmd(["dvc", "status", "--cloud", "--json", "data.dvc"], clone)) == {}

    shutil.rmtree(clone / ".dvc" / "cache")
    shutil.rmtree(clone / "data")
    missing = json.loads(run_cmd(["dvc", "status", "--json", "data.dvc"], clone))
    assert missing, "dvc status should report the deleted data"

    pulled = run_cmd(["dvc", "pull", "data.dvc"], clone)
    assert "added" in pulled.lower() or "fetched" in pulled.lower(), pulled
    assert dvc_md5(clone / "data") == recorded
    assert json.loads(run_cmd(["dvc", "status", "--json", "data.dvc"], clone)) == {}
    assert json.loads(run_cmd(["dvc", "status", "--cloud", "--json", "data.dvc"], clone)) == {}
    # with the data/ commit unchanged, git sees nothing to commit about the data
    assert run_cmd(["git", "status", "--porcelain", "--", "data.dvc"], clone) == ""

    # metaad's own data command now takes the remote path
    shutil.rmtree(clone / "data")
    shutil.rmtree(clone / ".dvc" / "cache")
    out = run_cmd(["metaad", "data", "pull"], clone)
    assert "pulled data/ from the DVC remote" in out, out
    assert dvc_md5(clone / "data") == recorded
