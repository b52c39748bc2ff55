"""Type splits, preprocessing and episodes: disjoint, fitted on meta-train only, repeatable."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from metaad.data.schema import check_canonical
from metaad.episodes.pool import Pool
from metaad.episodes.preprocess import Preprocessor, make_windows
from metaad.episodes.sampler import EpisodeSet, build_eval_episodes, sample_task_batch
from metaad.episodes.split import TypeSplit, assign_rows, split_types
from metaad.errors import ConfigError, DataError


def _table(n_normal: int = 3000, n_per_type: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    types = [f"t{i}" for i in range(6)]
    rows = [rng.normal(size=(n_normal, 4))]
    labels = ["normal"] * n_normal
    for i, t in enumerate(types):
        rows.append(rng.normal(size=(n_per_type, 4)) + 3 * np.eye(4)[i % 4] * (1 + i // 4))
        labels += [t] * n_per_type
    X = np.concatenate(rows)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    df["channel"] = np.where(rng.random(len(df)) < 0.5, "web", "pos")
    df["anomaly_type"] = labels
    df["label"] = (df["anomaly_type"] != "normal").astype("int64")
    return df


def test_split_is_disjoint_and_seeded() -> None:
    types = [f"t{i}" for i in range(8)]
    a = split_types(types, seed=3, n_val=1, n_test=3)
    b = split_types(types, seed=3, n_val=1, n_test=3)
    assert a == b
    assert not (set(a.train) & set(a.test)) and not (set(a.val) & set(a.test))
    assert sorted(a.train + a.val + a.test) == sorted(types)
    assert split_types(types, seed=4, n_val=1, n_test=3) != a


def test_split_rejects_overlap_and_unknown_types() -> None:
    with pytest.raises(ConfigError, match="both train and test"):
        TypeSplit(("a", "b"), (), ("b",))
    with pytest.raises(ConfigError, match="not in the data"):
        split_types(["a", "b"], seed=0, n_val=0, n_test=1, test=["zz"])
    with pytest.raises(ConfigError, match="still leave one"):
        split_types(["a", "b"], seed=0, n_val=1, n_test=1)


def test_rows_follow_their_type_and_normals_are_disjoint() -> None:
    df = _table()
    split = split_types(df.anomaly_type[df.label == 1].unique(), seed=0, n_val=1, n_test=2)
    rows = assign_rows(df, split, seed=0)
    for s in ("train", "val", "test"):
        got = set(df.anomaly_type[(rows == s) & (df.label == 1)])
        assert got == set(split.of(s))
    # every normal row goes to exactly one split
    assert set(rows[df.label == 0]) <= {"train", "val", "test"}


def test_preprocessing_is_fitted_on_meta_train_only() -> None:
    df = _table()
    split = split_types(df.anomaly_type[df.label == 1].unique(), seed=0, n_val=1, n_test=2)
    rows = assign_rows(df, split, seed=0)
    train = df[rows == "train"]
    pre = Preprocessor.fit(train, categorical=["channel"])
    poisoned = df.copy()
    poisoned.loc[rows == "test", "f0"] += 1000.0  # evaluation rows must not move the fit
    pre2 = Preprocessor.fit(poisoned[rows == "train"], categorical=["channel"])
    assert pre.to_dict() == pre2.to_dict()
    assert pre.center == pytest.approx(
        np.median(train[train.label == 0][pre.numeric].to_numpy(), axis=0).tolist()
    )
    X = pre.transform(df)
    assert X.shape == (len(df), 4 + 2) and X.dtype == np.float32


def test_preprocessor_round_trip_and_errors(tmp_path) -> None:
    df = _table()
    pre = Preprocessor.fit(df, categorical=["channel"])
    pre.save(tmp_path / "p.json")
    again = Preprocessor.load(tmp_path / "p.json")
    np.testing.assert_array_equal(pre.transform(df), again.transform(df))
    with pytest.raises(DataError, match="missing feature column"):
        pre.transform(df.drop(columns=["f1"]))
    bad = df.copy()
    bad.loc[3, "f2"] = np.nan
    with pytest.raises(DataError, match="f2"):
        pre.transform(bad)
    unseen = df.head(3).assign(channel="atm")  # an unseen level encodes as all zeros
    assert pre.transform(unseen)[:, 4:].sum() == 0


def _pool(df: pd.DataFrame) -> Pool:
    pre = Preprocessor.fit(df, categorical=["channel"])
    return Pool(pre.transform(df), df.label.to_numpy(), df.anomaly_type.to_numpy(dtype=str))


def test_same_seed_gives_byte_identical_episodes(tmp_path) -> None:
    pool = _pool(_table())
    kw = dict(
        shots=[0, 1, 5, 10],
        n_episodes=4,
        n_support_normal=50,
        n_query_normal=400,
        contamination=0.05,
        seed=5,
    )
    a = build_eval_episodes(pool, **kw).save(tmp_path / "a.npz")
    b = build_eval_episodes(pool, **kw).save(tmp_path / "b.npz")
    c = build_eval_episodes(pool, **{**kw, "seed": 6}).save(tmp_path / "c.npz")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]


def test_episodes_are_well_formed(tmp_path) -> None:
    pool = _pool(_table())
    eps = build_eval_episodes(
        pool,
        shots=[0, 5],
        n_episodes=3,
        n_support_normal=50,
        n_query_normal=380,
        contamination=0.05,
        seed=1,
    )
    assert len(eps) == 6 * 2 * 3
    for ep in eps:
        assert len(set(ep.support_idx) & set(ep.query_idx)) == 0
        assert (ep.support_y == 1).sum() == ep.shots
        assert set(pool.types[ep.support_idx[ep.support_y == 1]]) <= {ep.type}
        assert set(pool.types[ep.query_idx[ep.query_y == 1]]) == {ep.type}
        assert ep.query_y.mean() == pytest.approx(20 / 400)  # 5% contamination exactly
    loaded = EpisodeSet.load(eps.save(tmp_path / "e.npz"), pool)
    np.testing.assert_array_equal(loaded.query_idx, eps.query_idx)
    other = Pool(pool.X + 1, pool.y, pool.types)
    with pytest.raises(DataError, match="another pool"):
        EpisodeSet.load(tmp_path / "e.npz", other)


def test_type_with_fewer_rows_than_k_is_a_clear_error() -> None:
    df = _table(n_per_type=12)
    with pytest.raises(DataError, match=r"anomaly type 't0' has 12 rows.*K=10"):
        build_eval_episodes(
            _pool(df),
            shots=[10],
            n_episodes=1,
            n_support_normal=10,
            n_query_normal=100,
            contamination=0.05,
            seed=0,
        )


def test_bad_episode_arguments() -> None:
    pool = _pool(_table())
    with pytest.raises(ConfigError, match="contamination"):
        build_eval_episodes(
            pool,
            shots=[1],
            n_episodes=1,
            n_support_normal=5,
            n_query_normal=10,
            contamination=1.5,
            seed=0,
        )
    with pytest.raises(ConfigError, match="batch_size"):
        sample_task_batch(
            pool,
            np.random.default_rng(0),
            batch_size=0,
            shots=1,
            n_support_normal=5,
            n_query_normal=5,
            n_query_anomaly=5,
        )


def test_task_batches_are_index_arrays_of_one_type() -> None:
    pool = _pool(_table())
    tb = sample_task_batch(
        pool,
        np.random.default_rng(0),
        batch_size=32,
        shots=5,
        n_support_normal=20,
        n_query_normal=30,
        n_query_anomaly=10,
    )
    assert tb.support_idx.shape == (32, 25) and tb.query_idx.shape == (32, 40)
    for b in range(32):
        assert len(set(tb.support_idx[b]) & set(tb.query_idx[b])) == 0
        anoms = np.r_[tb.support_idx[b][tb.support_y[b] == 1], tb.query_idx[b][tb.query_y[b] == 1]]
        assert set(pool.types[anoms]) == {tb.types[b]}
        assert len(set(anoms)) == len(anoms)


def test_windows_stay_inside_series_and_carry_types() -> None:
    n = 200
    df = pd.DataFrame(
        {
            "series_id": np.repeat([0, 1], n // 2),
            "timestamp": np.tile(np.arange(n // 2), 2),
            "s0": np.arange(n, dtype=float),
        }
    )
    df["label"] = 0
    df["anomaly_type"] = "normal"
    df.loc[(df.series_id == 1) & (df.timestamp.between(40, 60)), ["label", "anomaly_type"]] = [
        1,
        "step",
    ]
    X = df[["s0"]].to_numpy(np.float32)
    W, y, t, g = make_windows(df, X, window=16, stride=8)
    assert W.shape[1:] == (16, 1)
    # no window mixes two series: consecutive values inside each window
    assert np.all(np.diff(W[:, :, 0], axis=1) == 1)
    assert set(t[y == 1]) == {"step"} and set(g[y == 1]) == {1}


def test_check_canonical_names_every_problem() -> None:
    df = _table()
    check_canonical(df, categorical=["channel"])
    bad = df.drop(columns=["label"])
    with pytest.raises(DataError, match="missing required column"):
        check_canonical(bad, categorical=["channel"])
    nan = df.copy()
    nan.loc[[1, 2], "f3"] = np.nan
    with pytest.raises(DataError, match="'f3' has 2 NaN"):
        check_canonical(nan, categorical=["channel"])
    with pytest.raises(DataError, match="fewer than 100 rows: t0=80"):
        check_canonical(df, categorical=["channel"], min_rows_per_type=100)
    with pytest.raises(DataError, match="empty"):
        check_canonical(df.iloc[:0])
    text = df.assign(f0=df.f0.astype(str).where(df.index > 5, "oops"))
    with pytest.raises(DataError, match="'f0' has dtype"):
        check_canonical(text, categorical=["channel"])


@pytest.mark.parametrize("normals", ["auto", "random"])
def test_pipeline_follows_the_tables_source_split(normals: str, tmp_path) -> None:
    """``metaad episodes`` on a loader's table: with ``episodes.normals: auto`` evaluation
    normals come only from its test files and training normals only from its training
    files (NSL-KDD's Test+ normals differ from KDDTrain+'s); ``random`` deals them anyway."""
    from pathlib import Path

    from helpers_data import make_blobs_table
    from metaad import stages
    from metaad.config import load_params
    from metaad.data.schema import LABEL, SOURCE_SPLIT, TYPE

    df = make_blobs_table(n_normal=3000, types=("a", "b", "c", "d", "e"), n_per_type=150)
    rng = np.random.default_rng(0)
    src = np.where(rng.random(len(df)) < 0.3, "test", "train").astype(object)
    unseen = df[TYPE].isin(["d", "e"]).to_numpy()
    anom = (df[LABEL] == 1).to_numpy()
    src[anom] = np.where(unseen, "test", "train")[anom]  # each type from its own file
    df[SOURCE_SPLIT] = src
    root = Path(tmp_path)
    params = load_params(
        Path(__file__).resolve().parents[1] / "params.yaml",
        {
            "ingest.source": "csv",
            "ingest.path": "unused.csv",  # the table is passed in
            "episodes.normals": normals,
            "episodes.train_types": ["a", "b"],
            "episodes.val_types": ["c"],
            "episodes.test_types": ["d", "e"],
            "episodes.n_episodes": 2,
            "episodes.n_query_normal": 200,
        },
    )
    stages.build_episodes(params, root, df=df)
    test_rows = pd.read_parquet(root / "artifacts" / "episodes" / "test_rows.parquet")
    test_normals = test_rows[test_rows[LABEL] == 0]
    if normals == "auto":
        assert set(test_normals[SOURCE_SPLIT]) == {"test"}
        assert len(test_normals) == int(((df[LABEL] == 0) & (df[SOURCE_SPLIT] == "test")).sum())
    else:
        assert set(test_normals[SOURCE_SPLIT]) == {"train", "test"}
    with pytest.raises(ConfigError, match=r"episodes\.normals"):
        load_params(Path(__file__).resolve().parents[1] / "params.yaml", {"episodes.normals": "x"})
