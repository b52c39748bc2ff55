"""``dvc.yaml`` for real: ``dvc repro``, ``dvc exp run`` and ``dvc metrics diff`` in a clone.

The repository is cloned into a temporary folder, with the working tree's uncommitted
changes laid over it as one more commit, so the test checks the code as it is now (and
``data.dvc`` / ``reference/profile.json`` before they are first committed). ``metaad data
pull`` then regenerates the tracked synthetic data (no remote is reachable), which must
match ``data.dvc`` exactly, and the clone's ``params.yaml`` is cut down for speed in the
train/evaluate/episodes sections only, so the regenerated data is still the tracked one.
Every command runs offline (``OFFLINE_ENV``) and single-threaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("validate", "episodes", "train", "evaluate")

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _overlay_working_tree(clone: Path, run_cmd: Callable[..., str]) -> None:
    """Copy tracked and untracked-but-not-ignored files of the working tree into ``clone``
    and drop the ones deleted there, then commit them in the clone."""
    listed = run_cmd(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    deleted = set(run_cmd(["git", "ls-files", "-z", "--deleted"], REPO).split("\0"))
    for rel in filter(None, listed.split("\0")):
        src, dst = REPO / rel, clone / rel
        if rel in deleted or not src.is_file():
            if dst.is_file():
                dst.unlink()
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    run_cmd(["git", "add", "-A"], clone)
    run_cmd(["git", "commit", "-q", "--allow-empty", "-m", "working tree under test"], clone)


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory, run_cmd: Callable[..., str]) -> Path:
    """A clone with data/ obtained by `metaad data pull` and tiny train/evaluate params."""
    clone = tmp_path_factory.mktemp("dvc") / "clone"
    run_cmd(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], REPO.parent)
    for key, value in (
        ("user.email", "tests@metaad.invalid"),
        ("user.name", "metaad tests"),
        ("commit.gpgsign", "false"),
    ):
        run_cmd(["git", "config", key, value], clone)
    _overlay_working_tree(clone, run_cmd)
    assert (clone / "data.dvc").is_file(), "data.dvc is missing from the repository"
    assert (clone / "reference" / "profile.json").is_file()
    assert not (clone / "data").exists()

    out = run_cmd(["metaad", "data", "pull"], clone)
    assert "regenerated" in out and "dvc status is clean" in out, out
    assert json.loads(run_cmd(["dvc", "status", "--json", "data.dvc"], clone)) == {}

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["episodes"].update(shots=[0, 5], n_episodes=2, n_query_normal=200)
    params["train"].update(steps=30, meta_batch=8, val_every=1000)
    params["evaluate"].update(methods=["proto", "iforest"], n_bootstrap=200)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "commit", "-q", "-am", "tiny params for the test"], clone)
    return clone


@pytest.fixture(scope="module")
def reproduced(pulled: Path, run_cmd: Callable[..., str]) -> tuple[Path, str]:
    """The first ``dvc repro`` of the clone, and its output."""
    return pulled, run_cmd(["dvc", "repro"], pulled, timeout=600)


@pytest.mark.slow
def test_data_pull_matches_data_dvc(pulled: Path, run_cmd: Callable[..., str]) -> None:
    from metaad.datafetch import dvc_md5, recorded_md5

    assert dvc_md5(pulled / "data") == recorded_md5(pulled)
    assert run_cmd(["git", "status", "--porcelain", "--", "data.dvc", ".gitignore"], pulled) == ""


@pytest.mark.slow
def test_repro_runs_every_stage_then_is_a_noop(
    reproduced: tuple[Path, str], run_cmd: Callable[..., str]
) -> None:
    clone, first = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, first
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    metrics = json.loads((clone / "artifacts" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"proto", "iforest"} and set(metrics["proto"]) == {"k0", "k5"}
    for out in ("report.json", "data_docs"):
        assert (clone / "artifacts" / "validation" / out).exists()
    assert (clone / "artifacts" / "model" / "bundle.json").is_file()

    second = run_cmd(["dvc", "repro"], clone)
    assert "Data and pipelines are up to date." in second, second
    assert "Running stage" not in second
    assert json.loads(run_cmd(["dvc", "status", "--json"], clone)) == {}


@pytest.mark.slow
def test_exp_run_and_metrics_diff(
    reproduced: tuple[Path, str], run_cmd: Callable[..., str]
) -> None:
    clone, _ = reproduced
    run_cmd(["git", "add", "dvc.lock"], clone)
    run_cmd(["git", "commit", "-q", "-m", "baseline run"], clone)

    out = run_cmd(["dvc", "exp", "run", "-S", "train.method=triplet"], clone, timeout=600)
    assert "Ran experiment(s)" in out, out
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'episodes'" not in out  # train params do not touch the episodes
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["method"] == "triplet"

    # the experiment against the committed run: the new method appears, the others are
    # read at both revisions (from the DVC cache through dvc.lock) and agree
    diff = json.loads(run_cmd(["dvc", "metrics", "diff", "--all", "--json"], clone))
    rows = diff["artifacts/eval/metrics.json"]
    assert rows["triplet.k5.auprc"]["old"] is None
    assert 0.0 <= rows["triplet.k5.auprc"]["new"] <= 1.0
    for key in ("proto.k5.auprc", "proto.k0.auroc", "iforest.k5.auprc"):
        assert rows[key]["old"] is not None and rows[key]["old"] == rows[key]["new"], rows[key]

    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], clone))
    exps = [rev for row in shown for group in row.get("experiments") or [] for rev in group["revs"]]
    assert len(exps) == 1
    data = exps[0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["method"] == "triplet"
    exp_metrics = data["metrics"]["artifacts/eval/metrics.json"]["data"]
    assert exp_metrics["triplet"]["k5"]["auprc"] == rows["triplet.k5.auprc"]["new"]
