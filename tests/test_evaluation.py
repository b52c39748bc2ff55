"""Evaluation: metric values, intervals, the episode runner, reports and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from metaad.episodes.pool import Pool
from metaad.episodes.sampler import EpisodeSet, build_eval_episodes
from metaad.errors import DataError
from metaad.evaluation import (
    MACRO,
    auprc,
    auroc,
    best_by,
    dvc_metrics,
    episode_metrics,
    evaluate_detector,
    markdown_table,
    mean_ci,
    paired_bootstrap,
    paired_values,
    per_type_table,
    plot_auprc_vs_k,
    plot_learning_curve,
    plot_pr_curves,
    precision_recall_points,
    recall_at_fpr,
    results_json,
    summarise,
)
from metaad.models.base import Detector, FitConfig, History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- fixtures -------------------------------------------------------------------------------------
class _Scorer:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def score(self, X: np.ndarray) -> np.ndarray:
        return self._fn(X)


class ProtoFake(Detector):
    """Distance to the support normals' mean minus distance to the support anomalies' mean."""

    name = "proto_fake"
    family = "metric"

    def fit(self, pool: Pool, cfg: FitConfig, *, val: Any = None, callback: Any = None) -> History:
        return History()

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> _Scorer:
        self.check_support(X_support, y_support)
        c0 = X_support[y_support == 0].mean(0)
        c1 = X_support[y_support == 1].mean(0) if (y_support == 1).any() else None

        def fn(X: np.ndarray) -> np.ndarray:
            d0 = np.linalg.norm(X - c0, axis=1)
            return d0 if c1 is None else d0 - np.linalg.norm(X - c1, axis=1)

        return _Scorer(fn)


class RandomFake(Detector):
    """Scores at random: the AUPRC floor."""

    name = "random_fake"
    family = "baseline"

    def fit(self, pool: Pool, cfg: FitConfig, *, val: Any = None, callback: Any = None) -> History:
        return History()

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> _Scorer:
        rng = np.random.default_rng(len(X_support))
        return _Scorer(lambda X: rng.random(len(X)))


class NaNFake(RandomFake):
    name = "nan_fake"

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> _Scorer:
        return _Scorer(lambda X: np.full(len(X), np.nan))


@pytest.fixture(scope="module")
def pool() -> Pool:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, 4))
    a = rng.normal(size=(25, 4)) + np.array([5.0, 0, 0, 0])
    b = rng.normal(size=(25, 4)) + np.array([0, -5.0, 0, 0])
    X = np.vstack([normal, a, b]).astype(np.float32)
    y = np.r_[np.zeros(300), np.ones(50)].astype(np.int64)
    types = np.array(["normal"] * 300 + ["a"] * 25 + ["b"] * 25)
    return Pool(X=X, y=y, types=types, feature_names=("f0", "f1", "f2", "f3"))


@pytest.fixture(scope="module")
def episodes(pool: Pool) -> EpisodeSet:
    return build_eval_episodes(
        pool,
        shots=(0, 1, 5),
        n_episodes=3,
        n_support_normal=10,
        n_query_normal=95,
        contamination=0.05,
        seed=0,
    )


@pytest.fixture(scope="module")
def per_episode(pool: Pool, episodes: EpisodeSet) -> pd.DataFrame:
    frames = [
        evaluate_detector(ProtoFake((4,)), pool, episodes, method="proto_fake"),
        evaluate_detector(RandomFake((4,)), pool, episodes, method="random_fake"),
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def summary(per_episode: pd.DataFrame) -> pd.DataFrame:
    return summarise(per_episode)


FAMILY = {"proto_fake": "metric", "random_fake": "baseline"}


# -- metrics ---------------------------------------------------------------------------------
def test_hand_computed_auprc_auroc() -> None:
    y = [1, 0, 1, 0]
    s = [4.0, 3.0, 2.0, 1.0]
    # precision 1/1 at recall 1/2, 2/3 at recall 2/2
    assert auprc(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # anomaly 4 beats both normals, anomaly 2 beats one: 3 of 4 pairs
    assert auroc(y, s) == pytest.approx(0.75)


def test_perfect_and_reversed_scorers() -> None:
    y = np.r_[np.zeros(95), np.ones(5)]
    s = np.arange(100.0)
    assert auprc(y, s) == 1.0
    assert auroc(y, s) == 1.0
    assert recall_at_fpr(y, s, 0.01) == 1.0
    assert auprc(y, -s) < 0.06
    assert auroc(y, -s) == 0.0
    assert recall_at_fpr(y, -s, 0.01) == 0.0


def test_recall_at_fpr_by_hand() -> None:
    # sorted: a .9, n .85, a .8, n .7, a .5, n .4, a .2, then normals .1
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.85, 0.8, 0.7, 0.5, 0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    # 10 normals; a 10% budget allows one false positive: threshold .8 -> 2 of 4 anomalies
    assert recall_at_fpr(y, s, 0.1) == pytest.approx(0.5)
    assert recall_at_fpr(y, s, 0.0) == pytest.approx(0.25)
    # 30% allows three: at threshold .2 the false positives are .85, .7 and .4 -> 4 of 4
    assert recall_at_fpr(y, s, 0.3) == pytest.approx(1.0)


def test_recall_at_fpr_ties_are_conservative() -> None:
    # one anomaly ties with a normal: with no FP allowed the tied group cannot be flagged
    y = np.array([1, 1, 0] + [0] * 9)
    s = np.array([0.9, 0.8, 0.8] + [0.1] * 9)
    assert recall_at_fpr(y, s, 0.0) == pytest.approx(0.5)
    assert recall_at_fpr(y, s, 0.1) == pytest.approx(1.0)


def test_metrics_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        y[:2] = (0, 1)
        s = rng.integers(0, 6, 60).astype(float)
        m = episode_metrics(y, s)
        assert m["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pr_points_enclose_the_auprc() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(200), np.ones(12)]
    s = y + rng.normal(0, 0.7, len(y))
    recall, precision = precision_recall_points(y, s)
    assert recall[0] == 0.0 and recall[-1] == 1.0
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(auprc(y, s))


def test_import_does_not_pull_matplotlib_or_torch() -> None:
    code = (
        "import sys, metaad.evaluation; "
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([0, 1, 0], [0.1, 0.2], "length mismatch"),
        ([0, 0, 0], [0.1, 0.2, 0.3], "single class"),
        ([1, 1], [0.1, 0.2], "single class"),
        ([0, 1, 0], [0.1, np.nan, 0.3], "NaN"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "0 .normal. or 1"),
        ([], [], "empty"),
    ],
)
def test_metrics_reject_bad_input(y: Any, s: Any, match: str) -> None:
    for fn in (auprc, auroc, recall_at_fpr, episode_metrics):
        with pytest.raises(ValueError, match=match):
            fn(y, s)


def test_recall_at_fpr_rejects_bad_fpr() -> None:
    with pytest.raises(ValueError, match="fpr"):
        recall_at_fpr([0, 1], [0.0, 1.0], fpr=1.5)


# -- intervals ------------------------------------------------------------------------------------
def test_mean_ci_contains_mean_and_shrinks() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(0.5, 0.1, 10)
    large = rng.normal(0.5, 0.1, 1000)
    m, lo, hi = mean_ci(small)
    assert lo < m < hi
    assert m == pytest.approx(small.mean())
    m2, lo2, hi2 = mean_ci(large)
    assert lo2 < m2 < hi2
    assert hi2 - lo2 < (hi - lo) / 3
    # t quantile, not z: n=3 values 1, 2, 3 -> sd 1, t(0.975, 2) = 4.3027
    _, lo3, hi3 = mean_ci([1.0, 2.0, 3.0])
    assert (hi3 - lo3) / 2 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)


def test_mean_ci_single_value_and_bad_input() -> None:
    assert mean_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([0.1, np.nan])
    with pytest.raises(ValueError, match="alpha"):
        mean_ci([0.1, 0.2], alpha=1.5)


def test_paired_bootstrap_identical_inputs() -> None:
    a = np.random.default_rng(0).random(40)
    d, lo, hi = paired_bootstrap(a, a.copy(), n_boot=500, seed=0, alpha=0.05)
    assert d == lo == hi == 0.0


def test_paired_bootstrap_detects_better_challenger_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 0.7, 40)
    b = a + 0.05 + rng.normal(0, 0.02, 40)
    strata = np.repeat(["x", "y", "z", "w"], 10)
    first = paired_bootstrap(a, b, n_boot=1000, seed=3, alpha=0.05, strata=strata)
    assert first[1] > 0
    assert first[1] <= first[0] <= first[2]
    assert paired_bootstrap(a, b, n_boot=1000, seed=3, alpha=0.05, strata=strata) == first
    assert paired_bootstrap(a, b, n_boot=1000, seed=4, alpha=0.05, strata=strata) != first
    # worse challenger: the interval lies below zero
    assert paired_bootstrap(b, a, n_boot=1000, seed=3, alpha=0.05)[2] < 0


def test_paired_bootstrap_strata_are_macro_and_safe_for_singletons() -> None:
    a = np.zeros(5)
    b = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    strata = ["big"] * 4 + ["single"]
    d, lo, hi = paired_bootstrap(a, b, n_boot=200, seed=0, strata=strata)
    # macro over strata: (1 + 0) / 2, and every resample keeps each stratum's episodes
    assert d == lo == hi == pytest.approx(0.5)
    # without strata: the plain mean 0.8
    assert paired_bootstrap(a, b, n_boot=200, seed=0)[0] == pytest.approx(0.8)


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        paired_bootstrap([0.1, 0.2], [0.1], n_boot=10, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([0.1, np.nan], [0.1, 0.2], n_boot=10, seed=0)
    with pytest.raises(ValueError, match="strata"):
        paired_bootstrap([0.1, 0.2], [0.1, 0.3], n_boot=10, seed=0, strata=["a"])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([0.1], [0.2], n_boot=0, seed=0)


# -- runner ---------------------------------------------------------------------------------------
def test_evaluate_detector_rows(per_episode: pd.DataFrame, episodes: EpisodeSet) -> None:
    assert list(per_episode.columns) == [
        "method",
        "type",
        "shots",
        "rep",
        "auprc",
        "auroc",
        "recall_at_1fpr",
        "adapt_ms",
        "score_ms",
    ]
    assert len(per_episode) == 2 * len(episodes)
    proto = per_episode[per_episode["method"] == "proto_fake"]
    rand = per_episode[per_episode["method"] == "random_fake"]
    # the shifted types are easy for the prototype scorer and not for the random one
    assert proto["auprc"].mean() > 0.8
    assert rand["auprc"].mean() < 0.4
    assert set(proto["shots"]) == {0, 1, 5}
    assert set(proto["rep"]) == {0, 1, 2}
    assert (per_episode[["adapt_ms", "score_ms"]] >= 0).all().all()


def test_evaluate_detector_shot_filter_and_progress(pool: Pool, episodes: EpisodeSet) -> None:
    df = evaluate_detector(ProtoFake((4,)), pool, episodes, method="p", shots=[5], progress=True)
    assert set(df["shots"]) == {5}
    assert len(df) == 2 * 3
    with pytest.raises(ValueError, match=r"shots \[10\]"):
        evaluate_detector(ProtoFake((4,)), pool, episodes, method="p", shots=[5, 10])


def test_evaluate_detector_names_bad_scores_and_pools(pool: Pool, episodes: EpisodeSet) -> None:
    with pytest.raises(ValueError, match=r"nan_fake.*NaN"):
        evaluate_detector(NaNFake((4,)), pool, episodes, method="nan_fake")
    other = pool.subset(np.arange(len(pool.X) - 1))
    with pytest.raises(DataError, match="another pool"):
        evaluate_detector(ProtoFake((4,)), other, episodes, method="p")


def test_summarise_shapes_and_macro(per_episode: pd.DataFrame, summary: pd.DataFrame) -> None:
    # 2 methods x 3 K x (2 types + macro)
    assert len(summary) == 2 * 3 * 3
    for c in ("auprc", "auroc", "recall_at_1fpr", "adapt_ms"):
        assert {f"{c}_mean", f"{c}_lo", f"{c}_hi"} <= set(summary.columns)
    macro = summary[summary["type"] == MACRO]
    assert len(macro) == 6
    assert (macro["n"] == 3).all() and (macro["n_types"] == 2).all()
    per_type = summary[summary["type"] != MACRO]
    assert (per_type["n"] == 3).all()
    assert (summary["auprc_lo"] <= summary["auprc_mean"]).all()
    assert (summary["auprc_mean"] <= summary["auprc_hi"]).all()

    # macro mean and interval recomputed by hand: average over types per rep, t-CI over reps
    sub = per_episode[(per_episode["method"] == "proto_fake") & (per_episode["shots"] == 5)]
    by_rep = sub.groupby("rep")["auprc"].mean().to_numpy()
    m, lo, hi = mean_ci(by_rep)
    row = macro[(macro["method"] == "proto_fake") & (macro["shots"] == 5)].iloc[0]
    assert row["auprc_mean"] == pytest.approx(sub.groupby("type")["auprc"].mean().mean())
    assert row["auprc_mean"] == pytest.approx(m)
    assert (row["auprc_lo"], row["auprc_hi"]) == pytest.approx((lo, hi))
    # the macro row comes after the per-type rows of its (method, K)
    block = summary[(summary["method"] == "proto_fake") & (summary["shots"] == 5)]
    assert block["type"].tolist() == ["a", "b", MACRO]


def test_summarise_rejects_bad_frames(per_episode: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="duplicated"):
        summarise(pd.concat([per_episode, per_episode.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        summarise(per_episode.drop(columns=["rep"]))
    with pytest.raises(ValueError, match="empty"):
        summarise(per_episode.iloc[:0])


def test_best_by(summary: pd.DataFrame) -> None:
    best = best_by(summary, 5, family_of=FAMILY)
    assert best["meta"]["method"] == "proto_fake"
    assert best["baseline"]["method"] == "random_fake"
    assert best["delta"] > 0.4
    assert best["overlap"] is False
    with pytest.raises(ValueError, match="family"):
        best_by(summary, 5, family_of={"proto_fake": "metric"})
    with pytest.raises(ValueError, match="K=7"):
        best_by(summary, 7, family_of=FAMILY)


def test_paired_values(per_episode: pd.DataFrame) -> None:
    champ = per_episode[per_episode["method"] == "random_fake"]
    chall = per_episode[per_episode["method"] == "proto_fake"]
    a, b, types = paired_values(champ, chall, shots=5)
    assert len(a) == len(b) == len(types) == 6
    d, lo, _ = paired_bootstrap(a, b, n_boot=500, seed=0, strata=types)
    assert lo > 0 and d > 0.4
    with pytest.raises(ValueError, match="different episodes"):
        paired_values(champ, chall[chall["shots"] == 5].iloc[1:], shots=5)


# -- reports --------------------------------------------------------------------------------------
def test_results_json(per_episode: pd.DataFrame, summary: pd.DataFrame) -> None:
    res = results_json(per_episode, summary, {"contamination": 0.05, "seed": np.int64(0)})
    text = json.dumps(res)
    assert json.loads(text) == res
    assert res["contamination"] == 0.05
    assert res["n_episodes"] == 2 * 3 * 3
    assert res["n_rows"] == len(per_episode)
    assert list(res["results"]["proto_fake"]) == ["k0", "k1", "k5"]
    k5 = res["results"]["proto_fake"]["k5"]
    assert set(k5["per_type"]) == {"a", "b"}
    assert k5["macro"]["auprc"]["lo"] <= k5["macro"]["auprc"]["mean"] <= k5["macro"]["auprc"]["hi"]
    # same input, same text
    assert json.dumps(results_json(per_episode, summary, {"seed": 0, "contamination": 0.05})) == (
        json.dumps(res)
    )
    with pytest.raises(ValueError, match="not JSON"):
        results_json(per_episode, summary, {"x": object()})


def test_markdown_table_bolds_best(summary: pd.DataFrame) -> None:
    md = markdown_table(summary)
    lines = md.strip().splitlines()
    assert lines[0] == "| method | K=0 | K=1 | K=5 |"  # K=10 was not scored: no column
    assert "proto_fake" in lines[2] and "random_fake" in lines[3]  # sorted by K=5 AUPRC
    assert lines[2].count("**") == 2 * 3  # best in every column
    assert "**" not in lines[3]
    assert " ± " in lines[2]


def test_per_type_table(summary: pd.DataFrame) -> None:
    md = per_type_table(summary, 5, "auroc")
    assert md.splitlines()[0] == "| method | a | b | macro |"
    assert "proto_fake" in md and "random_fake" in md
    with pytest.raises(ValueError, match="K=7"):
        per_type_table(summary, 7, "auprc")


def test_dvc_metrics(summary: pd.DataFrame) -> None:
    d = dvc_metrics(summary)
    assert set(d) == {"proto_fake", "random_fake"}
    assert set(d["proto_fake"]) == {"k0", "k1", "k5"}
    assert set(d["proto_fake"]["k5"]) == {"auprc", "auroc", "recall_at_1fpr"}
    json.dumps(d)


# -- plots ----------------------------------------------------------------------------------------
def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path: Path, summary: pd.DataFrame, per_episode: pd.DataFrame) -> None:
    p1 = plot_auprc_vs_k(summary, tmp_path / "k.png", family_of=FAMILY, contamination=0.05)
    assert _is_png(p1)
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(10)]
    curves = {"good": (y, y + rng.normal(0, 0.3, 210)), "random": (y, rng.random(210))}
    p2 = plot_pr_curves(curves, tmp_path / "sub" / "pr.png", title="PR")
    assert _is_png(p2)
    steps = np.arange(100)
    p3 = plot_learning_curve(
        steps,
        np.exp(-steps / 30) + rng.normal(0, 0.05, 100),
        tmp_path / "lc.png",
        val_steps=[0, 50, 99],
        val_values=[0.2, 0.5, 0.6],
    )
    assert _is_png(p3)
    with pytest.raises(ValueError, match="equal length"):
        plot_learning_curve([0, 1], [0.5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no curves"):
        plot_pr_curves({}, tmp_path / "none.png")
