"""The promotion gate: every rule of ``decide`` alone, then its side effects on a real registry.

Rules are checked on hand-made per-episode frames (3 unseen types x 20 repetitions at K=5),
so each test states the numbers it is about. Registry tests use a real MLflow SQLite store in
a temporary folder (no server) and a tiny real model bundle: an untrained metric learner on 4
numeric columns, saved with its fitted preprocessor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from metaad.bundle import ModelBundle
from metaad.config import Params, PromoteConfig
from metaad.episodes.preprocess import Preprocessor
from metaad.episodes.sampler import build_eval_episodes
from metaad.models.metric import MetricLearner
from metaad.promotion import (
    TAG_DECISION,
    TAG_REASONS,
    Decision,
    champion_version,
    check_loads,
    decide,
    per_episode_at,
    promote,
    score_champion_on_episodes,
)
from metaad.tracking import CHALLENGER, CHAMPION, ensure_experiment, log_and_register_model

CFG = PromoteConfig(k=5, min_auprc=0.30, min_auroc=0.70, min_delta=0.005, n_bootstrap=500)
TYPES = ("a", "b", "c")
REPS = 20


def frame(method: str, auprc: np.ndarray | float, auroc: float = 0.9, k: int = 5) -> pd.DataFrame:
    """A per-episode frame for one method: TYPES x REPS episodes at K=k."""
    keys = [(t, r) for t in TYPES for r in range(REPS)]
    ap = np.broadcast_to(np.asarray(auprc, dtype=np.float64), (len(keys),))
    return pd.DataFrame(
        {
            "method": method,
            "type": [t for t, _ in keys],
            "shots": k,
            "rep": [r for _, r in keys],
            "auprc": ap,
            "auroc": auroc,
            "recall_at_1fpr": 0.5,
        }
    )


def base_auprc(seed: int = 0) -> np.ndarray:
    """Episode-to-episode spread much larger than the differences the gate must detect."""
    return np.random.default_rng(seed).uniform(0.4, 0.8, len(TYPES) * REPS)


def gate(chal: pd.DataFrame, champ: pd.DataFrame | None, **flags: object) -> Decision:
    kw = {"validation_passed": True, "loads_ok": True, **flags}
    return decide(
        per_episode_at(chal, "chal", 5),
        None if champ is None else per_episode_at(champ, "champ", 5),
        CFG,
        **kw,  # type: ignore[arg-type]
    )


def failures(d: Decision) -> list[str]:
    return [r for r in d.reasons if r.startswith("FAIL")]


# -- decide() ------------------------------------------------------------------------------
def test_first_model_passing_the_floors_is_promoted() -> None:
    d = gate(frame("chal", base_auprc()), None)
    assert d.promote, d.reasons
    assert not failures(d)
    assert any("no champion" in r for r in d.reasons)
    assert d.metrics["challenger_macro_auprc"] == pytest.approx(base_auprc().mean())


def test_auprc_floor_failure_names_the_floor() -> None:
    d = gate(frame("chal", 0.2), None)
    assert not d.promote
    (fail,) = failures(d)
    assert "min_auprc" in fail and "0.2000" in fail and "0.3000" in fail


def test_auroc_floor_failure_names_the_floor() -> None:
    d = gate(frame("chal", 0.6, auroc=0.55), None)
    assert not d.promote
    (fail,) = failures(d)
    assert "min_auroc" in fail


def test_worse_challenger_is_refused() -> None:
    champ = base_auprc()
    d = gate(frame("chal", champ - 0.03), frame("champ", champ))
    assert not d.promote
    assert any("min_delta" in r for r in failures(d))
    assert any("bootstrap" in r for r in failures(d))
    assert d.metrics["delta_auprc"] == pytest.approx(-0.03)


def test_clearly_better_challenger_is_promoted() -> None:
    champ = base_auprc()
    noise = np.random.default_rng(1).normal(0.0, 0.01, champ.shape)
    d = gate(frame("chal", champ + 0.05 + noise), frame("champ", champ))
    assert d.promote, d.reasons
    assert d.metrics["delta_ci_lo"] > 0.0
    assert d.metrics["delta_auprc"] == pytest.approx(0.05, abs=0.01)


def test_better_on_average_but_not_reliably_is_refused() -> None:
    # Mean gain above min_delta, but the paired differences are noise of +-0.2: the
    # bootstrap interval includes zero, so the gain is not shown.
    champ = base_auprc()
    noise = np.random.default_rng(2).normal(0.0, 0.2, champ.shape)
    noise -= noise.mean() - 0.01
    d = gate(frame("chal", champ + noise), frame("champ", champ))
    assert not d.promote
    (fail,) = failures(d)
    assert "includes zero" in fail


def test_tie_is_refused_even_without_a_delta_margin() -> None:
    champ = base_auprc()
    cfg = PromoteConfig(k=5, min_delta=0.0, n_bootstrap=200)
    d = decide(
        per_episode_at(frame("chal", champ), "chal", 5),
        per_episode_at(frame("champ", champ), "champ", 5),
        cfg,
        validation_passed=True,
        loads_ok=True,
    )
    assert not d.promote
    assert any("tie" in r for r in failures(d))
    assert d.metrics["tie"] is True


def test_failed_validation_is_refused() -> None:
    d = gate(frame("chal", base_auprc()), None, validation_passed=False)
    assert not d.promote
    assert failures(d) == ["FAIL data validation failed"]


def test_broken_artifact_is_refused_with_the_error() -> None:
    d = gate(frame("chal", base_auprc()), None, loads_ok=False, load_error="JSONDecodeError: x")
    assert not d.promote
    (fail,) = failures(d)
    assert "does not load" in fail and "JSONDecodeError" in fail


def test_misaligned_episodes_are_refused_with_a_clear_reason() -> None:
    champ = base_auprc()
    other = frame("champ", champ)
    other["rep"] += 100  # same types, other repetitions: not the same episodes
    d = gate(frame("chal", champ + 0.1), other)
    assert not d.promote
    (fail,) = failures(d)
    assert "do not align" in fail and "only in the challenger" in fail
    # Fewer episodes on one side is a misalignment too.
    d = gate(frame("chal", champ + 0.1), frame("champ", champ).iloc[:-1])
    assert not d.promote and "do not align" in failures(d)[0]


def test_decision_is_deterministic_and_round_trips_json() -> None:
    champ = base_auprc()
    a = gate(frame("chal", champ + 0.02), frame("champ", champ))
    b = gate(frame("chal", champ + 0.02), frame("champ", champ))
    assert a == b
    assert Decision.from_json(a.to_json()) == a
    assert json.loads(a.to_json())["promote"] is a.promote


def test_per_episode_at_selects_sorts_and_reports() -> None:
    df = pd.concat([frame("chal", base_auprc()), frame("chal", 0.1, k=1), frame("x", 0.5)])
    pe = per_episode_at(df.sample(frac=1.0, random_state=0), "chal", 5)
    assert len(pe) == len(TYPES) * REPS
    assert pe.keys == sorted(pe.keys)
    with pytest.raises(ValueError, match="no episodes for method 'chal' at K=10"):
        per_episode_at(df, "chal", 10)
    with pytest.raises(ValueError, match="duplicated"):
        per_episode_at(pd.concat([frame("chal", 0.5), frame("chal", 0.5)]), "chal", 5)


# -- a tiny real bundle ----------------------------------------------------------------------
FEATURES = ["f0", "f1", "f2", "f3"]


def canonical(seed: int = 0, n_normal: int = 300, n_anom: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [
        pd.DataFrame(rng.normal(0, 1, (n_normal, 4)), columns=FEATURES).assign(
            label=0, anomaly_type="normal"
        )
    ]
    for i, t in enumerate(("a", "b")):
        centre = np.zeros(4)
        centre[i] = 4.0
        parts.append(
            pd.DataFrame(rng.normal(centre, 0.5, (n_anom, 4)), columns=FEATURES).assign(
                label=1, anomaly_type=t
            )
        )
    return pd.concat(parts, ignore_index=True)


def make_bundle(directory: Path, seed: int = 0) -> Path:
    df = canonical(seed)
    pre = Preprocessor.fit(df)
    det = MetricLearner((4,), hidden=(8,), out_dim=4, k_nn=3, seed=seed)
    X = pre.transform(df)
    normals = X[df["label"].to_numpy() == 0]
    anom = df["label"].to_numpy() == 1
    bundle = ModelBundle(
        det,
        pre,
        normals[:40],
        X[anom][:10],
        df["anomaly_type"].to_numpy()[anom][:10],
        {
            "feature_columns": pre.input_columns,
            "threshold": 0.0,
            "window": None,
            "input_shape": [4],
        },
    )
    return bundle.save(directory)


def test_champion_is_scored_on_the_same_frozen_episodes(tmp_path: Path) -> None:
    from metaad.evaluation.runner import evaluate_detector

    bundle = ModelBundle.load(make_bundle(tmp_path / "b"))
    rows = canonical(seed=5)
    pool = bundle.to_pool(rows)
    eps = build_eval_episodes(
        pool,
        shots=(0, 2),
        n_episodes=3,
        n_support_normal=10,
        n_query_normal=40,
        contamination=0.1,
        seed=0,
    )
    got = score_champion_on_episodes(bundle, rows, eps, k=2)
    assert len(got) == 2 * 3 and set(got["shots"]) == {2}
    assert got["auprc"].between(0, 1).all() and got["auroc"].between(0, 1).all()
    # Same numbers as the evaluation stage's runner on the same episodes.
    ref = evaluate_detector(bundle.detector, pool, eps, method="x", shots=[2])
    np.testing.assert_allclose(got["auprc"].to_numpy(), ref["auprc"].to_numpy(), atol=1e-9)
    # Rows in another order: the episodes no longer index them, and that is an error.
    with pytest.raises(ValueError, match="do not index"):
        score_champion_on_episodes(bundle, rows.iloc[::-1].reset_index(drop=True), eps, k=2)
    with pytest.raises(ValueError, match="no K=5"):
        score_champion_on_episodes(bundle, rows, eps, k=5)


# -- registry side effects -------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One SQLite store with two good versions and one broken version of a tiny model."""
    root = tmp_path_factory.mktemp("mlflow_root")
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    params = Params()
    example = canonical(seed=9).head(8)
    versions = []
    for seed in (0, 1):
        mv = log_and_register_model(
            make_bundle(root / f"bundle{seed}", seed),
            params,
            example,
            root=root,
            tracking_uri=uri,
            lineage={"git_commit": "test", "data_version": "untracked"},
        )
        versions.append(str(mv.version))
    return {
        "uri": uri,
        "root": root,
        "versions": versions,
        "params": params,
        "example": example,
        "name": params.register.model_name,
    }


def test_registration_sets_challenger_and_lineage(registry: dict) -> None:
    client = MlflowClient(tracking_uri=registry["uri"])
    name = registry["name"]
    v1, v2 = registry["versions"]
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == v2
    mv = client.get_model_version(name, v1)
    assert mv.tags["git_commit"] == "test" and mv.tags["run_id"]


def test_promote_moves_champion_only_on_pass(registry: dict, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=registry["uri"])
    name = registry["name"]
    v1, v2 = registry["versions"]
    champ = base_auprc()

    first = gate(frame("chal", champ), None)
    out = promote(client, name, v1, first, decision_path=tmp_path / "d1.json")
    assert out.promoted and out.previous_champion is None
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v1

    worse = gate(frame("chal", champ - 0.05), frame("champ", champ))
    out = promote(client, name, v2, worse, decision_path=tmp_path / "d2.json")
    assert not out.promoted and out.previous_champion == v1
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v1  # untouched
    mv = client.get_model_version(name, v2)
    assert mv.tags[TAG_DECISION] == "refused"
    assert json.loads(mv.tags[TAG_REASONS]) == worse.reasons
    saved = json.loads((tmp_path / "d2.json").read_text())
    assert saved["promote"] is False and saved["champion_after"] == v1

    better = gate(frame("chal", champ + 0.05), frame("champ", champ))
    out = promote(client, name, v2, better)
    assert out.promoted and out.previous_champion == v1 and out.decision_path is None
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v2
    assert client.get_model_version(name, v2).tags[TAG_DECISION] == "promoted"
    assert str(champion_version(client, name).version) == v2
    assert champion_version(client, "no-such-model") is None


def test_check_loads_predicts_through_the_registry(registry: dict) -> None:
    uri, name = registry["uri"], registry["name"]
    ok, err = check_loads(
        f"models:/{name}@{CHALLENGER}", registry["example"][FEATURES], tracking_uri=uri
    )
    assert ok and err is None, err


def test_check_loads_catches_a_broken_artifact(registry: dict, tmp_path: Path) -> None:
    import mlflow

    from metaad.pyfunc_model import MetaADPyfunc
    from metaad.tracking import using_tracking_uri

    bundle_dir = make_bundle(tmp_path / "broken")
    (bundle_dir / "bundle.json").write_text("{ not json")
    uri, name = registry["uri"], registry["name"]
    exp_id = ensure_experiment("metaad", tracking_uri=uri)  # not experiment 0: ./mlruns
    with using_tracking_uri(uri), mlflow.start_run(experiment_id=exp_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=MetaADPyfunc(), artifacts={"bundle": str(bundle_dir)}
        )
        mv = mlflow.register_model(info.model_uri, name)
    ok, err = check_loads(
        f"models:/{name}/{mv.version}", registry["example"][FEATURES], tracking_uri=uri
    )
    assert not ok
    assert "JSONDecodeError" in err or "Expecting" in err, err
    d = gate(frame("chal", base_auprc()), None, loads_ok=ok, load_error=err)
    assert not d.promote
