"""The unseen-type benchmark, the ADBench protocol, and a user's CSV through the pipeline.

- A CSV written here, with its own column names and a categorical column, goes through
  ``metaad ingest`` and the whole Prefect training flow (validate -> ... -> register ->
  promote) with nothing but parameters: no code change.
- The benchmark runner on a tiny configuration freezes one episode file per seed, scores
  every method on exactly that file (its digest recorded per method), writes its reports and
  plots, logs one MLflow run, and its headline arithmetic follows the issue's wording.
- ``assign_by_source`` keeps training files out of evaluation and vice versa.
- ``adbench_split`` is ADBench's own generator (checked against a transcription that uses
  numpy's global generator exactly as ADBench does) and the check prints published numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers_data import make_blobs_table
from helpers_procs import import_flow
from metaad.benchmark import (
    VAL_EPISODES,
    assign_by_source,
    headline,
    headline_markdown,
    overall_verdict,
    paired_margin,
    prepare_dataset,
    run_benchmark,
    val_episodes,
    val_selected,
)
from metaad.config import BenchmarkConfig
from metaad.data.schema import LABEL, NORMAL, SOURCE_SPLIT, TYPE
from metaad.datasets import LoadedDataset, Protocol
from metaad.episodes.sampler import EpisodeSet
from metaad.episodes.split import TypeSplit

REPO = Path(__file__).resolve().parents[1]
USER_TYPES = ("account_takeover", "bust_out", "card_testing", "phishing", "refund_abuse")


def flow_module(name: str) -> Any:
    return import_flow(name)


def write_user_csv(path: Path, seed: int = 0) -> Path:
    """A user's export: their own column names, text labels, a text channel, a type column."""
    df = make_blobs_table(n_normal=2500, types=USER_TYPES, n_per_type=90, d=6, seed=seed)
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(
        {
            "txn_amount": df["f0"] * 40 + 120,
            **{f"signal_{j}": df[f"f{j}"] for j in range(1, 6)},
            "channel": rng.choice(["web", "app", "pos"], len(df)),
            "is_fraud": np.where(df[LABEL] == 1, "yes", "no"),
            "scheme": np.where(df[LABEL] == 1, df[TYPE], ""),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_a_users_csv_with_a_mapping_runs_through_the_whole_pipeline(
    tmp_path: Path,
    make_project: Callable[..., Path],
    run_cmd: Callable[..., str],
    tiny_overrides: Mapping[str, Any],
    prefect_harness: None,
) -> None:
    root = make_project(tmp_path / "project")
    csv = write_user_csv(tmp_path / "exports" / "card_events.csv")
    mapping = {
        "ingest.source": "csv",
        "ingest.path": str(csv),
        "ingest.label_col": "is_fraud",
        # quoted: unquoted, YAML reads no/yes/on/off as booleans (in params.yaml too)
        "ingest.normal_value": '"no"',
        "ingest.type_col": "scheme",
        "ingest.categorical": ["channel"],
    }
    cli = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in mapping.items()]
    args = [part for s in cli for part in ("-S", s)]
    out = run_cmd(["metaad", "ingest", *args], root)
    assert "data/table.parquet" in out
    table = pd.read_parquet(root / "data" / "table.parquet")
    assert set(table.loc[table[LABEL] == 1, TYPE]) == set(USER_TYPES)
    assert table["channel"].dtype == "str" and "is_fraud" not in table.columns

    overrides = {**tiny_overrides, **mapping}
    overrides.pop("ingest.n_rows", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = flow_module("train_pipeline").train_pipeline(
        root=str(root), overrides=overrides, tracking_uri=uri, return_state=True
    )
    assert state.is_completed(), state.message
    gate = state.result()["gate"]
    assert str(gate["version"]) == "1" and gate["model_name"] == "metaad-detector"
    res = json.loads((root / "artifacts" / "eval" / "results.json").read_text())
    unseen = res["types"]
    assert unseen and set(unseen) <= set(USER_TYPES)
    assert set(res["methods"]) == {"proto", "iforest", "lr_sup"}
    pre = json.loads((root / "artifacts" / "episodes" / "preprocessor.json").read_text())
    assert pre["categorical"] == {"channel": ["app", "pos", "web"]}
    client = MlflowClient(tracking_uri=uri)
    assert client.get_model_version("metaad-detector", "1").status == "READY"


# -- the benchmark runner ----------------------------------------------------------------
def blobs_dataset(seed: int = 0) -> LoadedDataset:
    df = make_blobs_table(n_normal=1500, types=("a", "b", "c", "d", "e"), n_per_type=60, seed=seed)
    return LoadedDataset(
        "blobs",
        df,
        protocol=Protocol(
            test_types=("c", "d"),
            val_types=("e",),
            n_support_normal=20,
            n_query_normal=114,
            notes=("a test set",),
        ),
        report={"files": {}},
    )


TINY = BenchmarkConfig(
    datasets=("blobs",),
    methods=("proto", "lr_sup", "proto_raw", "iforest", "hgb_sup"),
    shots=(0, 1, 5),
    seeds=(3, 4),
    n_episodes=2,
    steps=15,
    meta_batch=4,
    hparams={"hgb_sup": {"max_iter": 10}},
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("bench")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    return run_benchmark(TINY, out / "results", datasets=[blobs_dataset()], tracking_uri=uri), uri


def test_every_method_is_scored_on_the_same_frozen_episodes(tiny_run: Any) -> None:
    res, _ = tiny_run
    out = res.out_dir
    info = res.results["datasets"]["blobs"]
    digests = info["episodes_sha256"]
    assert set(digests) == {"3", "4"} and digests["3"] != digests["4"]
    for method in TINY.methods:
        assert info["method_episodes_sha256"][method] == digests
    per = pd.read_csv(out / "per_episode.csv")
    keys = {
        m: set(map(tuple, g[["seed", "type", "shots", "rep"]].to_numpy().tolist()))
        for m, g in per.groupby("method")
    }
    assert len(keys) == len(TINY.methods) and len({frozenset(k) for k in keys.values()}) == 1
    # 2 types x 3 K x 2 episodes x 2 seeds, repetitions numbered across seeds
    assert len(next(iter(keys.values()))) == 2 * 3 * 2 * 2
    assert sorted(per["rep"].unique()) == [0, 1, 2, 3]
    # the stored files are the episodes: re-scoring one from disk gives the recorded AUPRC
    from metaad.evaluation.metrics import auprc
    from metaad.models.registry import create

    ds = blobs_dataset()
    prep = prepare_dataset(ds, shots=TINY.shots, split_seed=TINY.split_seed)
    eps = EpisodeSet.load(out / "blobs" / "episodes_seed4.npz", prep.pools["test"])
    ep = next(e for e in eps if e.shots == 5)
    test = prep.pools["test"]
    lr = create("lr_sup", test.input_shape, seed=4)
    score = lr.adapt(test.X[ep.support_idx], ep.support_y).score(test.X[ep.query_idx])
    row = per[
        (per["method"] == "lr_sup")
        & (per["seed"] == 4)
        & (per["type"] == ep.type)
        & (per["shots"] == 5)
        & (per["rep"] == ep.seed + TINY.n_episodes)
    ]
    assert row["auprc"].item() == pytest.approx(auprc(ep.query_y, score))


def test_reports_plots_and_one_mlflow_run(tiny_run: Any) -> None:
    res, uri = tiny_run
    out = res.out_dir
    assert (out / "plots" / "auprc_vs_k_blobs.png").stat().st_size > 10_000
    md = (out / "results.md").read_text()
    assert "## Unseen-type benchmark: headline" in md and "Macro AUPRC" in md
    assert "± " in md and "a test set" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdict"] == res.results["verdict"]
    assert saved["hardware"]["cpu_count"] >= 1
    block = saved["datasets"]["blobs"]["results"]["results"]["proto"]["k5"]["macro"]["auprc"]
    assert 0.0 <= block["lo"] <= block["mean"] <= block["hi"] <= 1.0
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["benchmark.seeds"] == "[3, 4]"
    assert "blobs.auprc.k5.proto.macro" in run.data.metrics
    names = {a.path for a in client.list_artifacts(res.mlflow_run_id, "benchmark")}
    assert {"benchmark/results.json", "benchmark/results.md", "benchmark/plots"} <= names


def test_the_meta_learner_picked_on_meta_validation_is_scored_on_the_unseen_types(
    tiny_run: Any,
) -> None:
    """Per seed, the meta-learner with the best meta-val AUPRC is picked (no unseen type
    looked at) and scored on that seed's episodes; runs without a validation number for every
    meta-learner and seed get no pick rather than a pick among a subset."""
    res, uri = tiny_run
    # the episodes every meta-learner is validated on: the test protocol, val types, K=5
    prep = prepare_dataset(blobs_dataset(), shots=TINY.shots, split_seed=TINY.split_seed)
    ve = val_episodes(prep, seed=3)
    assert ve is not None and len(ve) == VAL_EPISODES
    assert {e.type for e in ve} == {"e"} and {e.shots for e in ve} == {5}
    assert all(set(e.support_idx).isdisjoint(e.query_idx) for e in ve)
    r = res.per_dataset["blobs"]
    assert set(r.val_auprc) == {"proto"}  # meta-learners only
    assert set(r.val_auprc["proto"]) == {3, 4}
    assert all(0.0 <= v <= 1.0 for v in r.val_auprc["proto"].values())
    saved = json.loads((res.out_dir / "results.json").read_text())
    assert saved["datasets"]["blobs"]["val_auprc"]["proto"] == {
        str(k): v for k, v in r.val_auprc["proto"].items()
    }
    head = next(h for h in res.results["headline"] if h["dataset"] == "blobs")
    chosen = head["val_selected"]
    assert chosen["picks"] == {"3": "proto", "4": "proto"}  # the only meta-learner
    best = head["k5"]["best_meta"]
    assert best["method"] == "proto"
    assert chosen["auprc"]["k5"] == pytest.approx({k: best[k] for k in ("mean", "lo", "hi")})
    delta = chosen["k5_delta_vs_best_baseline"]
    assert delta == pytest.approx(best["mean"] - head["k5"]["best_baseline"]["mean"])
    md = (res.out_dir / "results.md").read_text()
    assert "chosen per seed by its meta-validation AUPRC" in md
    run = MlflowClient(tracking_uri=uri).get_run(res.mlflow_run_id)
    assert run.data.metrics["blobs.auprc.k5.val_selected.macro"] == pytest.approx(best["mean"])

    # a second meta-learner, better on seed 3's validation and worse on seed 4's
    per = r.per_episode
    other = per[per["method"] == "proto"].assign(method="triplet", auprc=lambda d: 1 - d["auprc"])
    two = replace(
        r,
        per_episode=pd.concat([per, other], ignore_index=True),
        families={**r.families, "triplet": "metric"},
        val_auprc={**r.val_auprc, "triplet": {3: 1.5, 4: -1.0}},
    )
    chosen = val_selected(two)
    assert chosen is not None and chosen["picks"] == {"3": "triplet", "4": "proto"}
    want = pd.concat(
        [other[(other["seed"] == 3)], per[(per["method"] == "proto") & (per["seed"] == 4)]]
    )
    k5 = want[want["shots"] == 5]
    assert chosen["auprc"]["k5"]["mean"] == pytest.approx(k5.groupby("type")["auprc"].mean().mean())
    tie = replace(two, val_auprc={**two.val_auprc, "triplet": dict(r.val_auprc["proto"])})
    assert val_selected(tie)["picks"] == {"3": "proto", "4": "proto"}  # ties: first by name
    gap = replace(two, val_auprc={**two.val_auprc, "triplet": {3: 0.5}})
    assert val_selected(gap) is None  # triplet has no validation number for seed 4


def test_the_k5_margin_carries_a_paired_interval_over_the_same_episodes(tiny_run: Any) -> None:
    """The headline's delta (best meta-learner minus best baseline at K=5) comes with a
    paired 95% CI over the shared episodes: its mean is the delta, it is in results.md and
    MLflow, and a method that is better by the same amount on every episode has a zero-width
    interval even where the two methods' own intervals overlap."""
    res, uri = tiny_run
    head = next(h for h in res.results["headline"] if h["dataset"] == "blobs")
    k5 = head["k5"]
    paired = k5["delta_paired"]
    assert paired["mean"] == pytest.approx(k5["delta"])
    assert paired["lo"] <= paired["mean"] <= paired["hi"]
    assert paired["n_episodes"] == 2 * 2 * 2  # 2 types x 2 episodes x 2 seeds at K=5
    vs = head["val_selected"]["k5_delta_paired"]
    assert vs["mean"] == pytest.approx(head["val_selected"]["k5_delta_vs_best_baseline"])
    md = (res.out_dir / "results.md").read_text()
    assert "paired 95% CI" in md
    assert f"[{paired['lo']:+.3f}, {paired['hi']:+.3f}]" in md
    run = MlflowClient(tracking_uri=uri).get_run(res.mlflow_run_id)
    assert run.data.metrics["blobs.k5_delta_paired.lo"] == pytest.approx(paired["lo"])

    per = res.per_dataset["blobs"].per_episode
    base = per[per["method"] == "iforest"]
    assert base.loc[base["shots"] == 5, "auprc"].std() > 0.01
    # noisy per episode (so each method's own interval is wide), but exactly +0.05 each time
    better = base.assign(method="shifted", auprc=base["auprc"] + 0.05)
    got = paired_margin(per, better, "iforest", 5)
    assert got is not None
    assert got["mean"] == pytest.approx(0.05)
    assert got["lo"] == pytest.approx(0.05) and got["hi"] == pytest.approx(0.05)
    # the two methods' own intervals overlap, so overlap alone would have called it a tie
    from metaad.evaluation.runner import MACRO, summarise

    both = summarise(pd.concat([base, better]).drop(columns=["dataset", "seed"]))
    m = both[(both["type"] == MACRO) & (both["shots"] == 5)].set_index("method")
    assert m.loc["shifted", "auprc_lo"] < m.loc["iforest", "auprc_hi"]
    # not the same episodes: no paired interval, rather than a wrong one
    assert paired_margin(per, better[better["seed"] == 3], "iforest", 5) is None
    moved = better.assign(rep=better["rep"] + 100)
    assert paired_margin(per, moved, "iforest", 5) is None


def test_one_label_is_held_against_the_stronger_boosted_classifier_at_ten(tiny_run: Any) -> None:
    """The K=1 check's bar is the stronger of hgb_sup and catboost at K=10, by name."""
    from metaad.evaluation.runner import summarise

    res, _ = tiny_run
    r = res.per_dataset["blobs"]
    per = r.per_episode
    hgb10 = per[(per["method"] == "hgb_sup") & (per["shots"] == 5)].assign(shots=10)
    for lift, want in ((0.01, "catboost"), (-0.01, "hgb_sup")):
        cat10 = hgb10.assign(method="catboost", auprc=(hgb10["auprc"] + lift).clip(0, 1))
        rows = pd.concat([per, hgb10, cat10], ignore_index=True)
        two = replace(
            r,
            per_episode=rows,
            summary=summarise(rows.drop(columns=["dataset", "seed"])),
            families={**r.families, "catboost": "baseline"},
        )
        check = headline(two)["k1_vs_gbm_k10"]
        assert check["gbm_k10"]["method"] == want
        k1 = check["best_meta_k1"]["mean"]
        assert check["meta_wins"] == (k1 > check["gbm_k10"]["mean"])


def test_a_method_that_fails_is_reported_and_the_others_still_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One diverging method (here: proto raising on its second seed) must not throw away
    the other methods' results; it is left out of every table, by name, with the reason."""
    import metaad.stages as stages
    from metaad.errors import MetaADError

    real = stages.train_method

    def flaky(params, prep, method, **kw):
        if method == "proto" and params.train.seed == 4:
            raise MetaADError("proto: meta-training diverged at step 7 (loss nan)")
        return real(params, prep, method, **kw)

    monkeypatch.setattr(stages, "train_method", flaky)
    cfg = BenchmarkConfig(
        datasets=("blobs",),
        methods=("proto", "lr_sup", "proto_raw"),
        shots=(0, 5),
        seeds=(3, 4),
        n_episodes=2,
        steps=10,
        meta_batch=4,
    )
    res = run_benchmark(cfg, tmp_path / "r", datasets=[blobs_dataset()], tracking_uri=None)
    info = res.results["datasets"]["blobs"]
    assert set(info["failed_methods"]) == {"proto"}
    assert "seed 4" in info["failed_methods"]["proto"]
    assert "diverged" in info["failed_methods"]["proto"]
    per = pd.read_csv(res.out_dir / "per_episode.csv")
    assert set(per["method"]) == {"lr_sup", "proto_raw"}  # seed 3's proto rows dropped too
    assert set(per["seed"]) == {3, 4}
    md = (res.out_dir / "results.md").read_text()
    assert "proto failed and is left out of these tables" in md


def test_runs_of_different_methods_on_the_same_episodes_merge_into_one_report(
    tmp_path: Path,
) -> None:
    """Methods run as separate jobs give the report one run of all of them gives; runs on
    other episodes or other seeds, or repeating a method with other numbers, are refused by
    name; a run that reproduces a method exactly joins with a note."""
    from metaad.benchmark import merge_benchmarks
    from metaad.errors import ConfigError, DataError

    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("lr_sup", "proto_raw", "iforest"), shots=(0, 5),
        seeds=(3, 4), n_episodes=2,
    )  # fmt: skip

    def run(name: str, methods: tuple[str, ...], data_seed: int = 0, **kw: Any) -> Path:
        c = replace(cfg, methods=methods, **kw)
        run_benchmark(c, tmp_path / name, datasets=[blobs_dataset(data_seed)], tracking_uri=None)
        return tmp_path / name

    whole = run("whole", cfg.methods)
    a, b = run("a", ("lr_sup", "proto_raw")), run("b", ("iforest",))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    merged = merge_benchmarks([a, b], tmp_path / "merged", tracking_uri=uri)

    def quality(tree: Any) -> Any:  # everything but the wall-clock timings
        if isinstance(tree, dict):
            return {k: quality(v) for k, v in tree.items() if not k.endswith("_ms")}
        return tree

    want = json.loads((whole / "results.json").read_text())["datasets"]["blobs"]["results"]
    got = merged.results["datasets"]["blobs"]["results"]
    assert quality(got) == quality(want) and "iforest" in got["results"]
    whole_info = json.loads((whole / "results.json").read_text())["datasets"]["blobs"]
    assert merged.results["datasets"]["blobs"]["val_auprc"] == whole_info["val_auprc"]
    assert merged.results["config"]["methods"] == ["lr_sup", "proto_raw", "iforest"]
    assert (tmp_path / "merged" / "plots" / "auprc_vs_k_blobs.png").stat().st_size > 10_000
    assert "iforest" in (tmp_path / "merged" / "results.md").read_text()
    assert MlflowClient(tracking_uri=uri).get_run(merged.mlflow_run_id).info.status == "FINISHED"
    with pytest.raises(DataError, match="other episodes"):
        merge_benchmarks([a, run("other_data", ("iforest",), data_seed=1)], tmp_path / "x")
    with pytest.raises(ConfigError, match=r"benchmark\.seeds"):
        merge_benchmarks([a, run("other_seeds", ("iforest",), seeds=(3,))], tmp_path / "x")
    # a method in two runs joins once when it is a reproduction (every per-episode metric
    # equal), with a note; any difference is refused
    again = merge_benchmarks([a, whole], tmp_path / "again")
    assert quality(again.results["datasets"]["blobs"]["results"]) == quality(want)
    notes = again.results["datasets"]["blobs"]["method_notes"]
    assert any("reproduced exactly by whole" in n for n in notes["lr_sup"])
    assert len(again.per_dataset["blobs"].per_episode) == len(
        pd.read_csv(whole / "per_episode.csv")
    )
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(whole, changed)
    per = pd.read_csv(changed / "per_episode.csv")
    per.loc[per.index[per["method"] == "lr_sup"][0], "auprc"] -= 0.25
    per.to_csv(changed / "per_episode.csv", index=False)
    with pytest.raises(ConfigError, match=r"'lr_sup' is in both .*largest difference 0\.25"):
        merge_benchmarks([a, changed], tmp_path / "x")


def test_a_failed_method_rerun_on_the_same_episodes_replaces_its_failure_in_the_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """proto fails in run a (seed 4); run b, after the fix, reruns it on the same episodes and
    one of its seeds stopped at a divergence. The merge counts b's numbers, keeps a's failure
    and b's divergence as notes beside them, and refuses a run given twice."""
    import metaad.stages as stages
    from metaad.benchmark import merge_benchmarks
    from metaad.errors import ConfigError, MetaADError

    real = stages.train_method
    mode = {"fail": True}

    def patched(params, prep, method, **kw):
        if method == "proto" and params.train.seed == 4 and mode["fail"]:
            raise MetaADError("proto: meta-training diverged at step 7 (loss nan)")
        det, hist, secs = real(params, prep, method, **kw)
        if method == "proto" and params.train.seed == 3 and not mode["fail"]:
            hist.diverged_at = 9  # as MAML's fit records a blow-up it recovered from
        return det, hist, secs

    monkeypatch.setattr(stages, "train_method", patched)
    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("proto", "lr_sup"), shots=(0, 5), seeds=(3, 4),
        n_episodes=2, steps=10, meta_batch=4,
    )  # fmt: skip
    a = run_benchmark(cfg, tmp_path / "a", datasets=[blobs_dataset()], tracking_uri=None)
    assert set(a.results["datasets"]["blobs"]["failed_methods"]) == {"proto"}
    mode["fail"] = False
    b = run_benchmark(
        replace(cfg, methods=("proto",)), tmp_path / "b", datasets=[blobs_dataset()],
        tracking_uri=None,
    )  # fmt: skip
    b_info = b.results["datasets"]["blobs"]
    assert b_info["method_notes"] == {
        "proto": ["seed 3: meta-training diverged at step 9 of 10; the weights of its best "
                  "validation before that were kept"]
    }  # fmt: skip
    merged = merge_benchmarks([a.out_dir, b.out_dir], tmp_path / "m")
    info = merged.results["datasets"]["blobs"]
    assert info["failed_methods"] == {}
    assert set(info["results"]["results"]) == {"proto", "lr_sup"}
    assert info["results"]["results"]["proto"] == b_info["results"]["results"]["proto"]
    assert info["fit_seconds"]["proto"] == b_info["fit_seconds"]["proto"]
    notes = info["method_notes"]["proto"]
    assert notes[0].startswith("seed 3: meta-training diverged at step 9")
    assert "failed in a (seed 4: MetaADError" in notes[1] and "rerun's numbers, from b" in notes[1]
    md = (tmp_path / "m" / "results.md").read_text()
    assert "- proto, failed in a (seed 4" in md and "failed and is left out" not in md
    with pytest.raises(ConfigError, match="is given twice"):
        merge_benchmarks([a.out_dir, b.out_dir, b.out_dir], tmp_path / "x")


def test_a_stopped_benchmark_resumes_from_the_units_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped inside its second seed (KeyboardInterrupt from proto's training, as a
    kill leaves it) keeps every seed x method it finished; resuming trains only the rest and
    gives the report of a run never stopped. A unit of other settings is refused with the
    difference named; one whose marker was never written is computed again; without
    resume everything is computed again."""
    import metaad.stages as stages
    from metaad.errors import ConfigError

    real = stages.train_method
    calls: list[tuple[int, str]] = []
    mode = {"stop": False}

    def patched(params, prep, method, **kw):
        calls.append((params.train.seed, method))
        if mode["stop"] and method == "proto" and params.train.seed == 4:
            raise KeyboardInterrupt
        return real(params, prep, method, **kw)

    monkeypatch.setattr(stages, "train_method", patched)
    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("lr_sup", "proto", "proto_raw"), shots=(0, 5),
        seeds=(3, 4), n_episodes=2, steps=10, meta_batch=4,
    )  # fmt: skip

    def run(name: str, c: BenchmarkConfig = cfg, *, resume: bool = False) -> Any:
        return run_benchmark(
            c, tmp_path / name, datasets=[blobs_dataset()], tracking_uri=None, resume=resume
        )

    whole = run("whole")
    mode["stop"] = True
    with pytest.raises(KeyboardInterrupt):
        run("r")
    units = tmp_path / "r" / "blobs" / "units"
    assert sorted(p.name for p in units.glob("*.json")) == [
        "seed3__lr_sup.json", "seed3__proto.json", "seed3__proto_raw.json", "seed4__lr_sup.json"
    ]  # fmt: skip
    assert not (tmp_path / "r" / "results.json").exists()
    mode["stop"] = False
    calls.clear()
    resumed = run("r", resume=True)
    assert calls == [(4, "proto"), (4, "proto_raw")]

    def quality(tree: Any) -> Any:  # everything but the wall-clock timings
        if isinstance(tree, dict):
            return {k: quality(v) for k, v in tree.items() if not k.endswith("_ms")}
        return tree

    want, got = whole.results["datasets"]["blobs"], resumed.results["datasets"]["blobs"]
    assert quality(got["results"]) == quality(want["results"])
    assert got["val_auprc"] == want["val_auprc"] and set(got["val_auprc"]) == {"proto"}
    assert got["method_episodes_sha256"] == want["method_episodes_sha256"]
    a, b = (pd.read_csv(tmp_path / d / "per_episode.csv") for d in ("r", "whole"))
    timings = [c for c in a.columns if c.endswith("_ms")]
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))
    # the seed-3 timings are the stopped run's, taken back with its rows
    seed3 = json.loads((units / "seed3__proto.json").read_text())
    assert got["fit_seconds"]["proto"][0] == seed3["fit_s"]

    with pytest.raises(ConfigError, match=r"cannot resume lr_sup seed 3: .*train\.steps: 10 -> 11"):
        run("r", replace(cfg, steps=11), resume=True)
    (units / "seed4__proto_raw.json").unlink()  # died between the rows and the marker
    calls.clear()
    again = run("r", resume=True)
    assert calls == [(4, "proto_raw")]
    assert quality(again.results["datasets"]["blobs"]["results"]) == quality(want["results"])
    assert "method_notes" not in again.results["datasets"]["blobs"] or not any(
        "code" in n
        for ns in again.results["datasets"]["blobs"]["method_notes"].values()
        for n in ns
    )  # same code: nothing to say
    # Units from other code are taken back and say so (the code is recorded, not checked).
    import metaad.benchmark_units as bu

    marker = units / "seed3__lr_sup.json"
    stored = json.loads(marker.read_text())
    assert stored["code"] == bu.code_identity()
    stored["code"] = {"source_sha256": "ab" * 32, "git_commit": "0123456789abcdef"}
    marker.write_text(json.dumps(stored))
    legacy = json.loads((units / "seed3__proto.json").read_text())
    del legacy["code"]  # a unit written before the code was recorded
    (units / "seed3__proto.json").write_text(json.dumps(legacy))
    calls.clear()
    other = run("r", resume=True)
    assert calls == []
    assert quality(other.results["datasets"]["blobs"]["results"]) == quality(want["results"])
    notes = other.results["datasets"]["blobs"]["method_notes"]
    now = bu.code_identity()["source_sha256"][:12]
    assert any(
        n.startswith("seed 3: computed by other code (commit 012345678, source abababababab;")
        and f"source {now})" in n
        for n in notes["lr_sup"]
    ), notes
    assert "seed 3: taken back from a unit that does not record its code" in notes["proto"]
    assert "computed by other code" in (tmp_path / "r" / "results.md").read_text()
    calls.clear()
    run("r")  # without resume: every unit anew
    assert calls == [(s, m) for s in (3, 4) for m in cfg.methods]


def _refused_before_reading(tmp_path: Path, match: str, **changes: Any) -> None:
    """TINY with ``changes`` is refused with ``match`` before any data is read or written."""
    from metaad.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        run_benchmark(
            replace(TINY, **changes), tmp_path / "x", tracking_uri=None,
            datasets=[blobs_dataset()],
        )  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_hparams_for_sets_a_methods_hyperparameters_on_one_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmark.hparams_for`` merges settings over ``benchmark.hparams`` for one dataset
    (as params.yaml turns on the whole-window k-NN term on Tennessee Eastman only), nested
    mappings key by key; the settings are in the report, in each unit's fingerprint (a
    resume under others is refused by name) and survive a merge and a rename."""
    import metaad.stages as stages
    from metaad.benchmark import merge_benchmarks
    from metaad.config import load_params
    from metaad.errors import ConfigError

    real = stages.train_method
    seen: dict[str, dict] = {}

    def patched(params, prep, method, **kw):
        seen[method] = dict(params.train.hparams)
        return real(params, prep, method, **kw)

    monkeypatch.setattr(stages, "train_method", patched)
    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("proto", "siamese", "lr_sup"), shots=(0, 5), seeds=(3,),
        n_episodes=2, steps=10, meta_batch=4,
        hparams={"siamese": {"memory": 8, "out_dim": 16}, "lr_sup": {"C": 1.0}},
        hparams_for={"blobs": {"siamese": {"raw_knn": True, "memory": 12}},
                     "tep": {"proto": {"raw_knn": True}}},
    )  # fmt: skip
    res = run_benchmark(cfg, tmp_path / "r", datasets=[blobs_dataset()], tracking_uri=None)
    assert seen["siamese"] == {"memory": 12, "out_dim": 16, "raw_knn": True}
    assert seen["proto"] == {} and seen["lr_sup"] == {"C": 1.0}  # tep's entry is tep's
    info = res.results["datasets"]["blobs"]
    assert info["description"]["hparams_for"] == {"siamese": {"raw_knn": True, "memory": 12}}
    line = '- On this set only (benchmark.hparams_for): siamese {"memory": 12, "raw_knn": true}.'
    assert line in (tmp_path / "r" / "results.md").read_text()
    assert res.results["config"]["hparams_for"]["tep"] == {"proto": {"raw_knn": True}}
    with pytest.raises(ConfigError, match=r"siamese seed 3: .*raw_knn"):
        run_benchmark(
            replace(cfg, hparams_for={}), tmp_path / "r", datasets=[blobs_dataset()],
            tracking_uri=None, resume=True,
        )  # fmt: skip
    r, b = tmp_path / "r", tmp_path / "b"  # b: another method, no per-set settings
    run_benchmark(
        replace(cfg, methods=("deviation",), hparams_for={}), b, datasets=[blobs_dataset()],
        tracking_uri=None,
    )  # fmt: skip
    merged = merge_benchmarks([r, b], tmp_path / "m", rename={(r, "siamese"): "sia_knn"})
    got = merged.results["datasets"]["blobs"]["description"]["hparams_for"]
    assert got == {"sia_knn": {"raw_knn": True, "memory": 12}}
    assert merged.results["config"]["hparams_for"]["blobs"] == got
    assert "sia_knn {" in merged.markdown

    # nested settings merge key by key: the members keep their banks
    p = load_params(
        tmp_path / "none.yaml",
        {
            "benchmark.hparams.metric_ens": {"member_hparams": {"proto": {"memory": 512}}},
            "benchmark.hparams_for.tep.metric_ens.member_hparams.proto.raw_knn": "true",
        },
    )
    assert p.benchmark.hparams_of("tep", "metric_ens") == {
        "member_hparams": {"proto": {"memory": 512, "raw_knn": True}}
    }
    assert p.benchmark.hparams_of("skab", "metric_ens") == {
        "member_hparams": {"proto": {"memory": 512}}
    }

    _refused_before_reading(
        tmp_path, r"hparams_for names dataset 'blbos', which is neither",
        hparams_for={"blbos": {"proto": {}}},
    )  # fmt: skip
    _refused_before_reading(
        tmp_path, r"hparams_for\.blobs\.nope: no method 'nope'", hparams_for={"blobs": {"nope": {}}}
    )
    for bad, match in [
        ({"blobs": 3}, r"hparams_for\.blobs must map methods to hparams"),
        ({"blobs": {"proto": 3}}, r"hparams_for\.blobs\.proto must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=match):
            replace(TINY, hparams_for=bad)
    assert not (tmp_path / "x").exists()


def test_steps_for_gives_one_meta_learner_its_own_length_on_one_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmark.steps_for`` sets the meta-training steps of one meta-learner on one
    dataset (as params.yaml does for metasgd on Sparkov); everything else keeps ``steps``.
    The length is in the report and in each unit's fingerprint, so a resume under another
    length is refused by name."""
    import metaad.stages as stages
    from metaad.config import load_params
    from metaad.errors import ConfigError

    real = stages.train_method
    seen: dict[str, int] = {}

    def patched(params, prep, method, **kw):
        seen[method] = params.train.steps
        return real(params, prep, method, **kw)

    monkeypatch.setattr(stages, "train_method", patched)
    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("proto", "siamese", "lr_sup"), shots=(0, 5), seeds=(3,),
        n_episodes=2, steps=10, meta_batch=4,
        steps_for={"blobs": {"siamese": 14}, "sparkov": {"metasgd": 3000}},
    )  # fmt: skip
    res = run_benchmark(cfg, tmp_path / "r", datasets=[blobs_dataset()], tracking_uri=None)
    assert seen == {"proto": 10, "siamese": 14, "lr_sup": 10}
    info = res.results["datasets"]["blobs"]
    assert info["description"]["meta_training_steps"] == {"proto": 10, "siamese": 14}
    assert "- Meta-training steps: 10 (siamese 14)." in (tmp_path / "r" / "results.md").read_text()
    assert res.results["config"]["steps_for"] == {
        "blobs": {"siamese": 14}, "sparkov": {"metasgd": 3000}
    }  # fmt: skip
    # merged with a run on the same episodes, each learner keeps the length it ran with;
    # a run written before lengths were recorded per learner ran all at its benchmark.steps
    from metaad.benchmark import merge_benchmarks

    b = replace(cfg, methods=("deviation",), steps=12, steps_for={})
    run_benchmark(b, tmp_path / "b", datasets=[blobs_dataset()], tracking_uri=None)
    legacy = json.loads((tmp_path / "b" / "results.json").read_text())
    del legacy["datasets"]["blobs"]["description"]["meta_training_steps"]
    (tmp_path / "b" / "results.json").write_text(json.dumps(legacy))
    merged = merge_benchmarks([tmp_path / "r", tmp_path / "b"], tmp_path / "m")
    steps = merged.results["datasets"]["blobs"]["description"]["meta_training_steps"]
    assert steps == {"proto": 10, "siamese": 14, "deviation": 12}
    assert "- Meta-training steps: 10 (siamese 14, deviation 12)." in merged.markdown

    # two lengths of one learner on the same episodes: a merge refuses the clash unless told
    # which run's numbers count (--take), and then notes the other
    from typer.testing import CliRunner

    from metaad_cli.main import app

    # (a length that changes the numbers here: 14 and 15 keep the same best-validated weights)
    other = replace(cfg, steps_for={"blobs": {"siamese": 1}})
    r1 = tmp_path / "r1"
    run_benchmark(replace(other, methods=("siamese",)), r1, datasets=[blobs_dataset()])
    with pytest.raises(ConfigError, match=r"'siamese' is in both .* with different numbers"):
        merge_benchmarks([tmp_path / "r", r1], tmp_path / "x")
    took = merge_benchmarks([tmp_path / "r", r1], tmp_path / "t", take={"siamese": r1})
    info = took.results["datasets"]["blobs"]
    assert info["description"]["meta_training_steps"] == {"proto": 10, "siamese": 1}
    assert (
        info["fit_seconds"]["siamese"]
        == json.loads((r1 / "results.json").read_text())["datasets"]["blobs"]["fit_seconds"][
            "siamese"
        ]
    )
    rows = took.per_dataset["blobs"].per_episode
    want15 = pd.read_csv(r1 / "per_episode.csv")
    pd.testing.assert_series_equal(
        rows[rows["method"] == "siamese"]["auprc"].reset_index(drop=True),
        want15["auprc"].reset_index(drop=True),
    )
    assert any(
        n.startswith("also in r (largest difference") and n.endswith("these are r1's (take)")
        for n in info["method_notes"]["siamese"]
    )
    with pytest.raises(ConfigError, match=r"take siamese=.*nowhere is not one of the runs"):
        merge_benchmarks([tmp_path / "r", r1], tmp_path / "x", take={"siamese": "nowhere"})
    with pytest.raises(ConfigError, match=r"take lr_sup=.*r1 has no finished 'lr_sup'"):
        merge_benchmarks([tmp_path / "r", r1], tmp_path / "x", take={"lr_sup": r1})
    cli = CliRunner()
    args = ["benchmark-merge", str(tmp_path / "r"), str(r1), "--no-mlflow"]
    got = cli.invoke(app, [*args, "--out", str(tmp_path / "c"), "--take", f"siamese={r1}"])
    assert got.exit_code == 0, got.output
    assert "- Meta-training steps: 1 (proto 10)." in got.stdout  # a tie: the shorter first
    bad = cli.invoke(app, [*args, "--out", str(tmp_path / "x"), "--take", "siamese"])
    assert bad.exit_code == 2 and "--take 'siamese': expected METHOD=RUN" in bad.output
    assert not (tmp_path / "x").exists()

    with pytest.raises(ConfigError, match=r"siamese seed 3: .*train\.steps: 14 -> 1;"):
        run_benchmark(
            other, tmp_path / "r", datasets=[blobs_dataset()], tracking_uri=None, resume=True
        )

    # from params.yaml or an override, as the CLI and the flow read it
    p = load_params(tmp_path / "none.yaml", {"benchmark.steps_for.sparkov.maml": "2000"})
    assert p.benchmark.steps_of("sparkov", "maml") == 2000
    assert p.benchmark.steps_of("sparkov", "anil") == p.benchmark.steps
    assert p.benchmark.steps_of("skab", "maml") == p.benchmark.steps

    # entries that would do nothing, or are not lengths, are refused before any data is read
    def refused(steps_for: Any, match: str) -> None:
        _refused_before_reading(tmp_path, match, steps_for=steps_for)

    refused({"blobs": {"lr_sup": 50}}, r"steps_for\.blobs\.lr_sup: 'lr_sup' is not a meta-learner")
    refused({"blbos": {"proto": 50}}, r"names dataset 'blbos', which is neither registered")
    refused({"blobs": {"nope": 50}}, r"'nope' is not a meta-learner")
    for bad, match in [
        ({"blobs": 50}, r"steps_for\.blobs must map meta-learners to steps"),
        ({"blobs": {"proto": -1}}, r"steps_for\.blobs\.proto must be a whole number >= 0"),
        ({"blobs": {"proto": 2.5}}, r"steps_for\.blobs\.proto must be a whole number"),
        ({"blobs": {"proto": True}}, r"steps_for\.blobs\.proto must be a whole number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            replace(TINY, steps_for=bad)
    assert not (tmp_path / "x").exists()


def test_two_lengths_of_one_learner_stand_side_by_side_and_meta_val_picks_between_them(
    tmp_path: Path,
) -> None:
    """``benchmark-merge --rename RUN:METHOD=NAME`` keeps a second setting of a learner as a
    method of its own (rows, family, steps, meta-val numbers and a note), so the per-seed
    meta-val pick chooses the length, rather than a person who has seen the unseen types.
    Every malformed or clashing rename is refused by name before anything is written."""
    from typer.testing import CliRunner

    from metaad.benchmark import merge_benchmarks
    from metaad.errors import ConfigError
    from metaad_cli.main import app

    cfg = BenchmarkConfig(
        datasets=("blobs",), methods=("siamese", "lr_sup"), shots=(1, 5), seeds=(3, 4),
        n_episodes=2, steps=10, meta_batch=4,
    )  # fmt: skip
    r10, r1 = tmp_path / "r10", tmp_path / "r1"
    run_benchmark(cfg, r10, datasets=[blobs_dataset()], tracking_uri=None)
    short = replace(cfg, methods=("siamese",), steps_for={"blobs": {"siamese": 1}})
    run_benchmark(short, r1, datasets=[blobs_dataset()], tracking_uri=None)
    on_disk = (r1 / "results.json").read_text(), (r1 / "per_episode.csv").read_text()

    merged = merge_benchmarks([r10, r1], tmp_path / "m", rename={(r1, "siamese"): "siamese_1"})
    info = merged.results["datasets"]["blobs"]
    assert info["families"] == {"siamese": "metric", "lr_sup": "baseline", "siamese_1": "metric"}
    assert info["description"]["meta_training_steps"] == {"siamese": 10, "siamese_1": 1}
    assert "- Meta-training steps: 1 (siamese 10)." in merged.markdown  # a tie: the shorter
    assert info["method_notes"]["siamese_1"][0] == "siamese of r1, renamed siamese_1 in this merge"
    rows = merged.per_dataset["blobs"].per_episode
    want = pd.read_csv(r1 / "per_episode.csv")
    pd.testing.assert_series_equal(
        rows[rows["method"] == "siamese_1"]["auprc"].reset_index(drop=True),
        want["auprc"].reset_index(drop=True),
    )
    assert len(rows[rows["method"] == "siamese"]) == len(want)
    # the meta-val pick runs over both lengths, with each run's own validation numbers
    val10 = json.loads((r10 / "results.json").read_text())["datasets"]["blobs"]["val_auprc"]
    val1 = json.loads(on_disk[0])["datasets"]["blobs"]["val_auprc"]
    assert info["val_auprc"] == {"siamese": val10["siamese"], "siamese_1": val1["siamese"]}
    head = next(h for h in merged.results["headline"] if h["dataset"] == "blobs")
    for seed in ("3", "4"):
        scores = {"siamese": val10["siamese"][seed], "siamese_1": val1["siamese"][seed]}
        best = min(scores, key=lambda m, scores=scores: (-scores[m], m))
        assert head["val_selected"]["picks"][seed] == best
    # the renamed run's own files are not touched
    assert ((r1 / "results.json").read_text(), (r1 / "per_episode.csv").read_text()) == on_disk

    # a new name another run holds meets it like any method in two runs: the merged run's
    # siamese_1 is r1's siamese, so renamed again it is a reproduction; a clash is refused
    again = merge_benchmarks(
        [tmp_path / "m", r1], tmp_path / "t", rename={(r1, "siamese"): "siamese_1"}
    )
    assert any(
        n.startswith("reproduced exactly by r1")
        for n in again.results["datasets"]["blobs"]["method_notes"]["siamese_1"]
    )
    with pytest.raises(ConfigError, match=r"'siamese_1' is in both .* with different numbers"):
        merge_benchmarks(
            [tmp_path / "m", r10], tmp_path / "x", rename={(r10, "siamese"): "siamese_1"}
        )

    for rename, match in [
        ({(tmp_path / "nowhere", "siamese"): "s1"}, r"rename .*nowhere:siamese=s1: .* is not one"),
        ({(r1, "proto"): "p1"}, r"rename .*r1:proto=p1: .*r1 has no 'proto' to rename"),
        ({(r1, "siamese"): "siamese.1"}, r"siamese\.1: a method name is a letter"),
        ({(r10, "siamese"): "lr_sup"}, r"r10 already has a method 'lr_sup'"),
        ({(r1, "siamese"): "x", (r10, "siamese"): "x"}, r"'x' is in both .* different numbers"),
    ]:
        with pytest.raises(ConfigError, match=match):
            merge_benchmarks([r10, r1], tmp_path / "x", rename=rename)
    assert not (tmp_path / "x").exists()

    cli = CliRunner()
    args = ["benchmark-merge", str(r10), str(r1), "--no-mlflow", "--out"]
    got = cli.invoke(app, [*args, str(tmp_path / "c"), "--rename", f"{r1}:siamese=siamese_1"])
    assert got.exit_code == 0, got.output
    assert "siamese_1" in got.stdout
    for bad, says in [
        ("siamese=s1", "expected RUN:METHOD=NAME"),
        (f"{r1}:siamese", "expected RUN:METHOD=NAME"),
        (f"{r1}:lr_sup=x", "has no 'lr_sup' to rename"),
    ]:
        out = cli.invoke(app, [*args, str(tmp_path / "x"), "--rename", bad])
        assert out.exit_code == 2 and says in out.output, out.output
    twice = ["--rename", f"{r1}:siamese=a", "--rename", f"{r1}:siamese=b"]
    out = cli.invoke(app, [*args, str(tmp_path / "x"), *twice])
    assert out.exit_code == 2 and "is renamed twice" in out.output
    assert not (tmp_path / "x").exists()


def test_the_steps_line_names_the_common_length_then_the_others() -> None:
    from metaad.benchmark import _steps_line

    assert _steps_line({}) is None and _steps_line(None) is None
    assert _steps_line({"proto": 300, "maml": 300}) == "- Meta-training steps: 300."
    assert (
        _steps_line({"proto": 300, "siamese": 300, "metasgd": 3000, "maml": 1500})
        == "- Meta-training steps: 300 (metasgd 3000, maml 1500)."
    )
    # a tie goes to the shorter length, so the line reads the same whatever the order
    assert _steps_line({"a": 3000, "b": 300}) == "- Meta-training steps: 300 (a 3000)."


def test_maml_validation_counts_a_diverged_adaptation_as_a_failed_task() -> None:
    """Finite outer loss, overflowing evaluation-time adaptation: validation gives 0 for
    those tasks (so early stopping keeps an earlier initialisation) instead of raising."""
    import torch

    from metaad.models.base import FitConfig
    from metaad.models.registry import create

    ds = blobs_dataset()
    prep = prepare_dataset(ds, shots=(0, 5), split_seed=0)
    val = prep.pools["val"]
    det = create("maml", val.input_shape)
    cfg = FitConfig(steps=1, meta_batch=4, shots=(5,), n_query_normal=32, n_query_anomaly=8)
    tasks = det._val_tasks(val, cfg)
    assert 0.0 < det._validate(*tasks) <= 1.0
    with torch.no_grad():
        next(iter(det.model.parameters())).fill_(float("inf"))
    assert det._validate(*tasks) == 0.0


def _head(name: str, meta: float, base: float, half: float, k1: float, gbm10: float) -> dict:
    iv = lambda m, v: {"method": m, "mean": v, "lo": v - half, "hi": v + half}  # noqa: E731
    return {
        "dataset": name,
        "k5": {
            "best_meta": iv("proto", meta),
            "best_baseline": iv("lr_sup", base),
            "delta": meta - base,
            "meta_is_best_overall": meta > base,
            "meta_wins_by_margin": meta - base >= 0.05,
            "meta_within_baseline_ci": meta >= base - half,
        },
        "k1_vs_gbm_k10": {
            "best_meta_k1": iv("proto", k1),
            "gbm_k10": iv("hgb_sup", gbm10),
            "meta_wins": k1 > gbm10,
        },
    }


def test_headline_verdict_follows_the_issue_wording() -> None:
    heads = [
        _head("a", 0.90, 0.80, 0.02, 0.7, 0.6),
        _head("b", 0.70, 0.60, 0.02, 0.5, 0.6),
        _head("c", 0.66, 0.60, 0.02, 0.5, 0.6),
        _head("d", 0.59, 0.60, 0.02, 0.7, 0.6),  # behind, but within the baseline's CI
    ]
    v = overall_verdict(heads)
    assert v["k5_meta_wins_by_margin_on"] == ["a", "b", "c"]
    assert v["k5_claim_holds"] and v["k1_claim_holds"]
    assert v["k1_beats_gbm_k10_on"] == ["a", "d"]
    heads[3] = _head("d", 0.55, 0.60, 0.02, 0.5, 0.6)  # behind by more than the CI
    heads[1] = _head("b", 0.64, 0.60, 0.02, 0.5, 0.6)  # ahead by less than 0.05
    v = overall_verdict(heads)
    assert not v["k5_claim_holds"] and not v["k1_claim_holds"]
    assert "does not hold" in headline_markdown(heads, v)
    assert not overall_verdict(heads[:3])["k5_claim_holds"]  # needs all four sets


def test_source_split_keeps_files_apart() -> None:
    df = pd.DataFrame(
        {
            "x": np.arange(12.0),
            LABEL: [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1],
            TYPE: [NORMAL] * 4 + ["tr", "tr", "te", "te"] + [NORMAL] * 2 + ["va", "va"],
            SOURCE_SPLIT: [
                *("train", "train", "test", "test"),
                *("train", "test", "test", "train"),
                *("train", "val", "train", "test"),
            ],
        }
    )
    rows = assign_by_source(df, TypeSplit(("tr",), ("va",), ("te",)), seed=0, val_share=0.5)
    assert list(rows[[2, 3]]) == ["test", "test"]  # test-file normals: evaluation only
    assert set(rows[[0, 1, 8]]) <= {"train", "val"} and rows[9] == "val"
    assert rows[4] == "train" and rows[5] == ""  # a training type's test-file row: unused
    assert rows[6] == "test" and rows[7] == ""  # an unseen type's training-file row: unused
    assert rows[10] == "val" and rows[11] == ""


# -- ADBench ---------------------------------------------------------------------------------
def adbench_reference(X: np.ndarray, y: np.ndarray, seed: int, la: float) -> tuple:
    """ADBench's generator transcribed with numpy's *global* generator, as ADBench runs it."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    np.random.seed(seed)
    if len(y) < 1000:
        np.random.seed(seed)
        idx = np.random.choice(np.arange(len(y)), 1000, replace=True)
        X, y = X[idx], y[idx]
    if len(y) > 10000:
        np.random.seed(seed)
        idx = np.random.choice(np.arange(len(y)), 10000, replace=False)
        X, y = X[idx], y[idx]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, shuffle=True, stratify=y)
    sc = MinMaxScaler().fit(X_tr)
    X_tr, X_te = sc.transform(X_tr), sc.transform(X_te)
    idx_a = np.where(y_tr == 1)[0]
    lab = np.random.choice(idx_a, math.ceil(la * len(idx_a)), replace=False)
    y_semi = np.zeros_like(y_tr)
    y_semi[lab] = 1
    return X_tr, y_semi, X_te, y_te


@pytest.mark.parametrize(("n", "seed"), [(300, 1), (2500, 2), (12000, 3)])
def test_adbench_split_is_adbenchs_generator(n: int, seed: int) -> None:
    from metaad.adbench import adbench_split

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 4))
    y = (rng.random(n) < 0.08).astype(np.int64)
    sp = adbench_split(X, y, seed=seed, ratio=0.05)
    state = np.random.get_state()
    try:
        ref = adbench_reference(X, y, seed, 0.05)
    finally:
        np.random.set_state(state)
    np.testing.assert_allclose(sp.X_train, ref[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sp.y_train, ref[1])
    np.testing.assert_allclose(sp.X_test, ref[2], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sp.y_test, ref[3])
    total = min(max(n, 1000), 10000)
    assert len(sp.y_train) + len(sp.y_test) == total and len(sp.y_test) == math.ceil(0.3 * total)
    assert sp.n_labelled == math.ceil(0.05 * sp.n_train_anomalies) >= 1
    assert sp.X_train.min() >= 0 and sp.X_train.max() <= 1 + 1e-6


def test_adbench_check_puts_published_numbers_beside_ours(tmp_path: Path) -> None:
    from metaad.adbench import read_published, run_adbench

    shared = REPO.parent / "shared" / "datasets"
    if not (shared / "adbench" / "42_WBC.npz").is_file():
        pytest.skip(f"the shared ADBench copies are not at {shared}")
    res = run_adbench(
        ["WBC"],
        ratios=[0.01],
        seeds=[1],
        methods=["lr_sup", "proto"],
        steps=10,
        data_dir=shared,
        out_dir=tmp_path,
    )
    row = res["ratios"]["0.01"]["rows"][0]
    assert row["dataset"] == "WBC" and row["n_labelled"] == [1]
    pub = read_published()
    cat = pub[(pub.table == "D7") & (pub.dataset == "WBC") & (pub.method == "CatB")]
    assert row["AUCPR"]["published"]["CatB"] == pytest.approx(cat["value"].item())
    assert set(row["AUCROC"]["published"]) == {"CatB", "PReNet", "DevNet", "XGBOD", "IForest"}
    assert 0.0 <= row["AUCROC"]["metaad"]["proto"] <= 1.0
    md = (tmp_path / "adbench.md").read_text()
    assert "Han, S." in md and "| WBC | 1 |" in md and "**mean**" in md
    assert len(pd.read_csv(tmp_path / "adbench_runs.csv")) == 2


def test_a_stopped_adbench_check_resumes_from_its_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every finished run is journalled as it ends; resuming runs only the rest and gives
    the numbers of a check never stopped. A line cut short by the stop is dropped and its
    run redone; runs journalled under other settings are refused by name."""
    import metaad.adbench as adb
    import metaad.datasets.adbench as adb_data
    from metaad.errors import ConfigError

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(580, 6)), rng.normal(2.5, 1.0, size=(40, 6))])
    y = np.r_[np.zeros(580, int), np.ones(40, int)]
    monkeypatch.setattr(adb_data, "arrays", lambda name, data_dir=None: (X, y))
    real, calls, stop = adb.run_one, [], {"after": None}

    def counted(sp, method, **kw):
        if stop["after"] is not None and len(calls) == stop["after"]:
            raise KeyboardInterrupt
        calls.append((kw["seed"], method))
        return real(sp, method, **kw)

    monkeypatch.setattr(adb, "run_one", counted)
    kw: dict[str, Any] = dict(ratios=[0.05], seeds=[1, 2], methods=["lr_sup", "iforest"], steps=5)
    whole = adb.run_adbench(["blobs"], out_dir=tmp_path / "whole", **kw)
    calls.clear()
    stop["after"] = 3
    with pytest.raises(KeyboardInterrupt):
        adb.run_adbench(["blobs"], out_dir=tmp_path / "r", **kw)
    journal = tmp_path / "r" / "adbench_runs.jsonl"
    assert len(journal.read_text().splitlines()) == 3
    calls.clear()
    stop["after"] = None
    resumed = adb.run_adbench(["blobs"], out_dir=tmp_path / "r", resume=True, **kw)
    assert calls == [(2, "iforest")]

    def scores(res: dict) -> Any:
        return [(r["dataset"], r["AUCROC"]["metaad"], r["AUCPR"]["metaad"])
                for r in res["ratios"]["0.05"]["rows"]]  # fmt: skip

    assert scores(resumed) == scores(whole)
    assert len(pd.read_csv(tmp_path / "r" / "adbench_runs.csv")) == 4
    with journal.open("a") as fh:
        fh.write('{"fingerprint": {"steps": 5}, "run": {"data')  # killed mid-line
    calls.clear()
    again = adb.run_adbench(["blobs"], out_dir=tmp_path / "r", resume=True, **kw)
    assert calls == [] and scores(again) == scores(whole)
    assert len(journal.read_text().splitlines()) == 4  # the cut line is gone
    with pytest.raises(ConfigError, match=r"cannot resume blobs ratio 0.05 seed 1 lr_sup"):
        adb.run_adbench(["blobs"], out_dir=tmp_path / "r", resume=True, **{**kw, "steps": 6})


def test_published_adbench_numbers_ship_inside_the_package() -> None:
    """The published table is package data, so ``metaad adbench`` works from a wheel too."""
    import tomllib

    import metaad
    from metaad.adbench import default_published_path, read_published

    path = default_published_path()
    assert path.is_file() and path.parent.parent == Path(metaad.__file__).parent
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["metaad"]
    assert any(path.match(g) for g in globs)
    pub = read_published()
    assert set(pub["label_ratio_pct"]) == {"unsup", "1", "5", "10"}
    assert set(pub["method"]) == {"CatB", "PReNet", "DevNet", "XGBOD", "IForest"}


def test_published_adbench_numbers_are_the_parsed_appendix_rows_complete() -> None:
    """The packaged numbers are a verbatim subset of the parsed appendix tables, and complete.

    Every row must equal its row in ``../shared/datasets/adbench``'s parsed copy of the
    paper's tables (a typo while copying would otherwise go into the README unnoticed), and
    every (set, metric, ratio, method) the check prints must be there exactly once: the
    eleven sets x two metrics x (four methods at 1/5/10% + Isolation Forest unsupervised).
    """
    from metaad.adbench import PUBLISHED_METHODS, read_published

    shared = REPO.parent / "shared" / "datasets" / "adbench" / "published_results_adbench_2022.csv"
    pub = read_published()
    key = ["table", "metric", "label_ratio_pct", "dataset", "method"]
    assert not pub.duplicated(key).any()
    sets = {
        "annthyroid", "campaign", "cardio", "donors", "mammography", "pendigits",
        "satellite", "shuttle", "thyroid", "WBC", "backdoor",
    }  # fmt: skip
    assert set(pub["dataset"]) == sets
    for metric in ("AUCROC", "AUCPR"):
        for m in PUBLISHED_METHODS:
            ratios = {"unsup"} if m == "IForest" else {"1", "5", "10"}
            sub = pub[(pub.metric == metric) & (pub.method == m)]
            got = set(zip(sub.dataset, sub.label_ratio_pct, strict=True))
            assert got == {(s, r) for s in sets for r in ratios}, (metric, m)
    if not shared.is_file():
        pytest.skip(f"the parsed appendix tables are not at {shared}")
    ref = pd.read_csv(shared, dtype=str, keep_default_na=False)
    joined = pub.merge(ref, on=key, how="left", suffixes=("", "_ref"), validate="one_to_one")
    missing = joined[joined["value_pct_ref"].fillna("") == ""]
    assert missing.empty, f"not in the parsed tables: {missing[key].values.tolist()[:5]}"
    differ = joined[joined["value_pct"].astype(float) != joined["value_pct_ref"].astype(float)]
    assert differ.empty, differ[[*key, "value_pct", "value_pct_ref"]].to_string()


# -- the weekly flow and the commands ----------------------------------------------------
@pytest.mark.slow
def test_benchmark_flow_and_cli_on_a_real_dataset(
    tmp_path: Path, prefect_harness: None, run_cmd: Callable[..., str]
) -> None:
    shared = REPO.parent / "shared" / "datasets"
    if not (shared / "fraud").is_dir():
        pytest.skip(f"the shared dataset copies are not at {shared}")
    overrides = {
        "benchmark.datasets": ["sparkov"],
        "benchmark.methods": ["lr_sup", "proto_raw"],
        "benchmark.shots": [0, 1],
        "benchmark.seeds": [0],
        "benchmark.n_episodes": 1,
        "benchmark.data_dir": str(shared),
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = flow_module("benchmark").benchmark_flow(
        root=str(REPO), overrides=overrides, out_dir=str(tmp_path / "b"), tracking_uri=uri
    )
    assert out["mlflow_run_id"] and (tmp_path / "b" / "results.json").is_file()
    assert "sparkov" in out["markdown"]
    assert (tmp_path / "b" / "sparkov" / "validation" / "report.json").is_file()
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["validation"]["sparkov"]["success"] is True
    assert saved["validation"]["sparkov"]["expectations"] > 10
    # resumed on the same folder, the flow takes every finished unit back: none is rewritten
    units = sorted((tmp_path / "b" / "sparkov" / "units").glob("*.json"))
    assert [u.name for u in units] == ["seed0__lr_sup.json", "seed0__proto_raw.json"]
    stamps = [u.stat().st_mtime_ns for u in units]
    again = flow_module("benchmark").benchmark_flow(
        root=str(REPO), overrides=overrides, out_dir=str(tmp_path / "b"), tracking_uri=uri,
        resume=True,
    )  # fmt: skip
    assert [u.stat().st_mtime_ns for u in units] == stamps
    resaved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert (
        resaved["datasets"]["sparkov"]["fit_seconds"] == saved["datasets"]["sparkov"]["fit_seconds"]
    )
    assert again["mlflow_run_id"] != out["mlflow_run_id"]
    text = run_cmd(["metaad", "datasets"], tmp_path)
    assert "nsl_kdd" in text and "adbench_WBC" in text
    text = run_cmd(
        ["metaad", "import-dataset", "skab", "--path", str(shared), "--output", "t/skab.parquet"],
        tmp_path,
    )
    assert "validation passed" in text and "46806 rows" in text
    assert len(pd.read_parquet(tmp_path / "t" / "skab.parquet")) == 46806


# -- benchmark-compare: any two methods of a run, paired --------------------------------------
def test_compare_reproduces_the_headline_paired_margin_from_the_csv_alone(tiny_run: Any) -> None:
    """`metaad benchmark-compare` read back from per_episode.csv gives the headline's paired
    delta and interval for the same two methods, and the report's macro means for each."""
    from metaad.benchmark_compare import compare_methods, read_per_episode

    res, _ = tiny_run
    head = next(h for h in res.results["headline"] if h["dataset"] == "blobs")["k5"]
    meta, base = head["best_meta"]["method"], head["best_baseline"]["method"]
    table = compare_methods(read_per_episode(res.out_dir), base, meta)
    assert sorted(table["shots"]) == [0, 1, 5] and set(table["dataset"]) == {"blobs"}
    row = table[table["shots"] == 5].iloc[0]
    paired = head["delta_paired"]
    assert row["delta"] == pytest.approx(paired["mean"])
    assert row["lo"] == pytest.approx(paired["lo"]) and row["hi"] == pytest.approx(paired["hi"])
    assert row["n_episodes"] == paired["n_episodes"]
    assert row["a_mean"] == pytest.approx(head["best_baseline"]["mean"])
    assert row["b_mean"] == pytest.approx(head["best_meta"]["mean"])
    # a dataset folder's own csv (no dataset column) gives the same rows
    again = compare_methods(read_per_episode(res.out_dir / "blobs"), base, meta, shots=[5])
    assert again.iloc[0]["delta"] == pytest.approx(row["delta"])


def _toy_per_episode() -> pd.DataFrame:
    """Two types with unequal episode counts (6 and 2), so the macro mean is not the pooled
    one; method b is a + 0.1 on type x and a - 0.3 on type y, episode by episode."""
    rng = np.random.default_rng(0)
    rows = []
    for t, n, shift in (("x", 6, 0.1), ("y", 2, -0.3)):
        for rep in range(n):
            a = float(rng.uniform(0.4, 0.6))
            for m, v in (("a", a), ("b", a + shift)):
                rows.append(
                    {
                        "dataset": "toy",
                        "seed": 1,
                        "method": m,
                        "type": t,
                        "shots": 5,
                        "rep": rep,
                        "auprc": v,
                        "auroc": v,
                        "recall_at_1fpr": v,
                    }
                )
    return pd.DataFrame(rows)


def test_compare_is_macro_over_types_and_paired_episode_by_episode() -> None:
    from metaad.benchmark_compare import compare_methods, comparison_markdown

    per = _toy_per_episode()
    row = compare_methods(per, "a", "b").iloc[0]
    # macro: (0.1 + (-0.3)) / 2, not the pooled (6 * 0.1 + 2 * -0.3) / 8 = 0
    assert row["delta"] == pytest.approx(-0.1)
    # every episode moves by its type's exact shift: no spread left to resample
    assert row["lo"] == pytest.approx(-0.1) and row["hi"] == pytest.approx(-0.1)
    a = per[per["method"] == "a"]
    assert row["a_mean"] == pytest.approx(a.groupby("type")["auprc"].mean().mean())
    assert row["n_episodes"] == 8
    md = comparison_markdown(compare_methods(per, "a", "b"), "a", "b")
    assert "| toy | 5 |" in md and "-0.100 [-0.100, -0.100] | 8 |" in md


def test_compare_refuses_what_it_cannot_pair_by_name(tmp_path: Path) -> None:
    from metaad.benchmark_compare import compare_methods, read_per_episode
    from metaad.errors import ConfigError, DataError

    per = _toy_per_episode()
    with pytest.raises(DataError, match=r"method 'c' is not in this run \(it has \['a', 'b'\]\)"):
        compare_methods(per, "a", "c")
    with pytest.raises(ConfigError, match="two different methods"):
        compare_methods(per, "a", "a")
    with pytest.raises(ConfigError, match="metric 'f1'"):
        compare_methods(per, "a", "b", metric="f1")
    with pytest.raises(DataError, match=r"K=\[10\] not scored"):
        compare_methods(per, "a", "b", shots=[10])
    with pytest.raises(DataError, match=r"dataset\(s\) \['nsl'\] not in this run"):
        compare_methods(per, "a", "b", datasets=["nsl"])
    # one episode of b missing: not the same episodes, so no paired interval
    short = per.drop(per[(per["method"] == "b") & (per["rep"] == 0) & (per["type"] == "x")].index)
    with pytest.raises(
        DataError,
        match=r"toy: 'a' and 'b' were scored on different episodes at K=5 \(8 and 7 "
        r"episodes; 1 only in 'a', 0 only in 'b'\); compare methods of one run",
    ):
        compare_methods(short, "a", "b")
    # two runs concatenated without benchmark-merge: the same episode twice
    dup = r"duplicated episode row\(s\) \(same method, shots, seed, type, rep\)"
    with pytest.raises(DataError, match=dup):
        compare_methods(pd.concat([per, per]), "a", "b")
    with pytest.raises(DataError, match=r"no per_episode\.csv here"):
        read_per_episode(tmp_path)
    (tmp_path / "per_episode.csv").write_text("method,auprc\nx,0.5\n")
    with pytest.raises(DataError, match=r"missing columns \['rep', 'seed', 'shots', 'type'\]"):
        read_per_episode(tmp_path)


def test_benchmark_compare_command(tiny_run: Any) -> None:
    """The CLI prints the same table, filters K, and fails with exit code 2 and the reason."""
    from typer.testing import CliRunner

    from metaad_cli.main import app

    res, _ = tiny_run
    cli = CliRunner()
    got = cli.invoke(
        app,
        [
            "benchmark-compare",
            str(res.out_dir),
            "--a",
            "iforest",
            "--b",
            "proto",
            "--k",
            "5",
            "--json",
        ],
    )
    assert got.exit_code == 0, got.output
    rows = json.loads(got.stdout)
    assert [r["shots"] for r in rows] == [5] and rows[0]["dataset"] == "blobs"
    md = cli.invoke(app, ["benchmark-compare", str(res.out_dir), "--a", "iforest", "--b", "proto"])
    assert md.exit_code == 0 and "`proto` - `iforest` [paired 95% CI]" in md.stdout
    bad = cli.invoke(app, ["benchmark-compare", str(res.out_dir), "--a", "iforest", "--b", "nope"])
    assert bad.exit_code == 2 and "method 'nope' is not in this run" in bad.output


def test_benchmark_compare_draws_the_differences(tiny_run: Any, tmp_path: Path) -> None:
    """--plot writes a PNG of the same rows the table prints; a table it cannot draw is
    refused by the missing column's name, and an empty one as empty."""
    import pandas as pd
    from typer.testing import CliRunner

    from metaad.evaluation.plots import plot_paired_differences
    from metaad_cli.main import app

    res, _ = tiny_run
    png = tmp_path / "sub" / "diff.png"
    args = ["benchmark-compare", str(res.out_dir), "--a", "iforest", "--b", "proto"]
    got = CliRunner().invoke(app, [*args, "--plot", str(png), "--target", "0.05"])
    assert got.exit_code == 0, got.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    table = pd.DataFrame({"dataset": ["x"], "shots": [5], "delta": [0.1], "lo": [0.0]})
    with pytest.raises(ValueError, match="lacks column 'hi'"):
        plot_paired_differences(table, tmp_path / "no.png", a="a", b="b")
    with pytest.raises(ValueError, match="no rows"):
        plot_paired_differences(table.assign(hi=0.2).iloc[:0], tmp_path / "no.png", a="a", b="b")
    assert not (tmp_path / "no.png").exists()


def test_compare_across_runs_needs_the_same_episode_files(tiny_run: Any, tmp_path: Path) -> None:
    """One method in two runs (say with and without an option) pairs up only when both
    runs' results.json record the same frozen episode files; B's rows come from B's run."""
    import shutil

    from typer.testing import CliRunner

    from metaad.benchmark_compare import compare_runs
    from metaad.errors import DataError
    from metaad_cli.main import app

    res, _ = tiny_run
    other = tmp_path / "other"
    shutil.copytree(res.out_dir, other)
    per = pd.read_csv(other / "per_episode.csv")
    per.loc[per["method"] == "proto", "auprc"] += 0.05
    per.to_csv(other / "per_episode.csv", index=False)
    table = compare_runs(res.out_dir, "proto", other, "proto", shots=[0, 5])
    assert list(table["shots"]) == [0, 5]
    assert table["delta"].to_numpy() == pytest.approx([0.05, 0.05])
    assert table["lo"].to_numpy() == pytest.approx([0.05, 0.05])
    args = ["benchmark-compare", str(res.out_dir), "--a", "proto", "--b", "proto", "--k", "5"]
    got = CliRunner().invoke(app, [*args, "--b-run", str(other)])
    assert got.exit_code == 0, got.output
    assert "`proto (other)` - `proto (results)`" in got.stdout and "+0.050 [+0.050" in got.stdout

    info = json.loads((other / "results.json").read_text())
    info["datasets"]["blobs"]["method_episodes_sha256"]["proto"]["3"] = "0" * 64
    (other / "results.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="blobs seed 3: the runs were scored on different frozen"):
        compare_runs(res.out_dir, "proto", other, "proto")
    del info["datasets"]["blobs"]["method_episodes_sha256"]["proto"]["4"]
    (other / "results.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"blobs: the runs hold different seeds \(.*\['3', '4'\]"):
        compare_runs(res.out_dir, "proto", other, "proto")
    (other / "results.json").unlink()
    with pytest.raises(DataError, match=r"no results\.json beside the per-episode table"):
        compare_runs(res.out_dir, "proto", other, "proto")
