"""The synthetic default: determinism, block independence, contract, balance, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers_data import make_blobs_table, make_pool
from metaad.data import synthetic as syn
from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE, check_canonical
from metaad.errors import ConfigError

DOMAINS = list(syn.DOMAINS)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of 2000 rows so a few thousand rows span several blocks."""
    monkeypatch.setattr(syn, "BLOCK_ROWS", 2000)
    return 2000


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_table_and_other_seed_differs(domain: str) -> None:
    a = syn.generate(domain, 3000, seed=7)
    b = syn.generate(domain, 3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = syn.generate(domain, 3000, seed=8)
    num = syn.numeric_columns(domain)
    assert not np.allclose(a[num].to_numpy(), c[num].to_numpy())


@pytest.mark.parametrize("domain", DOMAINS)
def test_write_is_byte_identical_and_round_trips(domain: str, tmp_path, small_blocks) -> None:
    p1 = syn.write(domain, 5000, 3, tmp_path / "a" / "t.parquet")
    p2 = syn.write(domain, 5000, 3, tmp_path / "b" / "t.parquet")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (p1, p2)]
    assert digest[0] == digest[1]
    assert pq.ParquetFile(p1).metadata.num_row_groups == 3  # a row group per block
    assert not list(tmp_path.rglob("*.partial"))
    pd.testing.assert_frame_equal(pd.read_parquet(p1), syn.generate(domain, 5000, 3))
    p3 = syn.write(domain, 5000, 4, tmp_path / "c" / "t.parquet")
    assert hashlib.sha256(p3.read_bytes()).hexdigest() != digest[0]


@pytest.mark.parametrize("domain", DOMAINS)
def test_blocks_do_not_depend_on_table_size(domain: str, small_blocks: int) -> None:
    sizes = [len(c) for c in syn.iter_chunks(domain, 5000, 1)]
    assert sizes == [2000, 2000, 1000]
    long = syn.generate(domain, 5000, 1)
    short = syn.generate(domain, 4500, 1)
    # the two full blocks are the same whatever comes after them
    pd.testing.assert_frame_equal(long.iloc[:4000], short.iloc[:4000])
    # and any block can be regenerated on its own
    chunks = list(syn.iter_chunks(domain, 5000, 1))
    alone = syn._block(domain, 1, 1, 2000, 0.05)
    pd.testing.assert_frame_equal(chunks[1].reset_index(drop=True), alone)
    assert chunks[1].index[0] == 2000


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_contract_types_balance_and_rate(domain: str, rate: float) -> None:
    df = syn.generate(domain, 20_000, 0, anomaly_rate=rate)
    check_canonical(df, categorical=syn.categorical_columns(domain))
    assert list(df.columns[-2:]) == [LABEL, TYPE]
    assert abs(df[LABEL].mean() - rate) < 0.002
    counts = df.loc[df[LABEL] == 1, TYPE].value_counts()
    assert len(counts) >= 6
    assert sorted(counts.index) == sorted(syn.anomaly_type_names(domain))
    assert counts.max() - counts.min() <= 1  # one block: budgets differ by at most one row
    assert all(t == t.lower() and " " not in t for t in counts.index)  # snake_case
    assert (df.loc[df[LABEL] == 0, TYPE] == NORMAL).all()
    for c in syn.categorical_columns(domain):
        assert pd.api.types.is_string_dtype(df[c])
    assert set(syn.nuisance_columns(domain)) < set(syn.numeric_columns(domain))
    assert syn.numeric_columns(domain) == [
        c
        for c in df.columns
        if c not in (LABEL, TYPE, SERIES, TIMESTAMP) and c not in syn.categorical_columns(domain)
    ]


@pytest.mark.parametrize("domain", DOMAINS)
def test_anomalies_never_touch_nuisance_columns(domain: str) -> None:
    """The benchmark's promise: anomaly types change structured features only. With the
    anomaly rate as the only difference, nuisance columns are identical, and so is every
    row that is normal under both rates."""
    low = syn.generate(domain, 6000, 2, anomaly_rate=0.02)
    high = syn.generate(domain, 6000, 2, anomaly_rate=0.3)
    nuis = syn.nuisance_columns(domain)
    pd.testing.assert_frame_equal(low[nuis], high[nuis])
    both_normal = (low[LABEL] == 0) & (high[LABEL] == 0)
    assert both_normal.sum() > 3000
    pd.testing.assert_frame_equal(low[both_normal], high[both_normal])
    changed = (high[LABEL] == 1) & (low[LABEL] == 0)
    structured = [c for c in syn.numeric_columns(domain) if c not in nuis]
    diff = (low.loc[changed, structured] != high.loc[changed, structured]).any(axis=1)
    assert diff.mean() > 0.9  # anomalies do change the structured features


def test_anomalies_are_detectable_off_the_normal_subspace() -> None:
    """A Mahalanobis distance on the structured columns separates anomalies well: the
    structure is there to be learned (full difficulty table: bench/synthetic_difficulty.py)."""
    from sklearn.metrics import roc_auc_score

    df = syn.generate("card", 20_000, 0)
    cols = [c for c in syn.numeric_columns("card") if c not in syn.nuisance_columns("card")]
    X = df[cols].to_numpy(np.float64)
    normal = X[df[LABEL].to_numpy() == 0]
    mu, prec = normal.mean(0), np.linalg.inv(np.cov(normal, rowvar=False))
    d = np.einsum("ij,jk,ik->i", X - mu, prec, X - mu)
    assert roc_auc_score(df[LABEL], d) > 0.95


def test_sensor_series_and_fault_segments() -> None:
    df = syn.generate("sensor", 60_000, 0)
    assert syn.is_time_series("sensor") and not syn.is_time_series("card")
    assert syn.categorical_columns("sensor") == []
    assert df[SERIES].dtype == np.int64 and df[TIMESTAMP].dtype == np.int64
    lo, hi = syn.SENSOR_KNOBS.series_len
    for _, g in df.groupby(SERIES):
        assert (g[TIMESTAMP].to_numpy() == np.arange(len(g))).all()
        assert len(g) <= hi + lo
        lab = g[LABEL].to_numpy()
        assert not lab[: syn.SENSOR_KNOBS.warmup].any()
        edges = np.diff(np.r_[0, lab, 0])
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        assert (runs >= syn.SENSOR_KNOBS.segment_len[0]).all()
        typ = g[TYPE].to_numpy()
        for a in np.flatnonzero(edges == 1):  # one type per segment
            assert typ[a] != NORMAL


def test_minimum_size_and_extreme_rates_still_valid() -> None:
    for domain in DOMAINS:
        df = syn.generate(domain, syn.MIN_ROWS, 5, anomaly_rate=0.49)
        check_canonical(df, categorical=syn.categorical_columns(domain))
        assert len(df) == syn.MIN_ROWS
        assert df[LABEL].sum() == round(0.49 * syn.MIN_ROWS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domain": "retail"}, r"unknown synthetic domain 'retail'.*card.*sensor.*network"),
        ({"n_rows": 999}, r"n_rows must be >= 1000"),
        ({"n_rows": 5000.0}, r"n_rows must be an integer"),
        ({"anomaly_rate": 0.0}, r"anomaly_rate .* strictly between 0.0 and 0.5"),
        ({"anomaly_rate": 0.5}, r"anomaly_rate .* strictly between 0.0 and 0.5"),
        ({"anomaly_rate": "0.1"}, r"anomaly_rate"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_config_error_at_call_time(kwargs: dict, match: str) -> None:
    args = {"domain": "card", "n_rows": 5000, "seed": 0, "anomaly_rate": 0.05, **kwargs}
    with pytest.raises(ConfigError, match=match):
        syn.iter_chunks(**args)  # not lazily, at the first next()
    with pytest.raises(ConfigError, match=match):
        syn.generate(**args)


def test_unknown_domain_in_helpers() -> None:
    for fn in (syn.categorical_columns, syn.is_time_series, syn.nuisance_columns):
        with pytest.raises(ConfigError, match="valid domains"):
            fn("nope")


def test_blob_helpers() -> None:
    df = make_blobs_table(n_normal=300, types=("x", "y", "z"), n_per_type=20, d=4)
    check_canonical(df)
    assert df[TYPE].value_counts().to_dict() == {NORMAL: 300, "x": 20, "y": 20, "z": 20}
    pool = make_pool(n_normal=300, types=("x", "y"), n_per_type=20, d=4)
    assert pool.X.dtype == np.float32 and pool.X.shape == (340, 4)
    assert pool.anomaly_types == ["x", "y"]
    normal = pool.X[pool.normal_idx]
    assert np.allclose(normal.mean(0), 0, atol=1e-5) and np.allclose(normal.std(0), 1, atol=1e-4)
    # every blob sits well away from the normal cloud
    for t in pool.anomaly_types:
        assert np.linalg.norm(pool.X[pool.type_index[t]].mean(0)) > 3
