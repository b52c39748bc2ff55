"""The Great Expectations gate: a good table passes and leaves reports; each kind of bad data
fails with a message that names the expectation and the column; the caller's frame is never
changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metaad.config import ValidateConfig
from metaad.errors import DataError
from metaad.validation import (
    DERIVED,
    ValidationFailed,
    ValidationReport,
    build_suite,
    reference_profile,
    validate_or_raise,
    validate_table,
)

CATS = ("channel",)
TYPES = ("a", "b", "c", "d")
PER_TYPE = 60
MIN_ROWS_PER_TYPE = 20  # e.g. max(shots)=10 plus 10 query anomalies


def make_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A valid canonical table: 6 numeric features, a text category, 4 types x 60 rows."""
    rng = np.random.default_rng(seed)
    n_anom = len(TYPES) * PER_TYPE
    df = pd.DataFrame({f"f{i}": rng.normal(size=n) for i in range(5)})
    df["f5"] = rng.integers(0, 100, size=n)
    df["channel"] = rng.choice(["web", "pos", "atm"], size=n)
    df["label"] = np.r_[np.zeros(n - n_anom, dtype=np.int64), np.ones(n_anom, dtype=np.int64)]
    df["anomaly_type"] = ["normal"] * (n - n_anom) + [t for t in TYPES for _ in range(PER_TYPE)]
    return df


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


@pytest.fixture(scope="module")
def profile(table: pd.DataFrame) -> dict:
    return reference_profile(table, categorical=CATS)


@pytest.fixture(scope="module")
def cfg() -> ValidateConfig:
    return ValidateConfig()


def run(df: pd.DataFrame, cfg: ValidateConfig, profile: dict | None, **kw) -> ValidationReport:
    return validate_table(
        df, cfg, categorical=CATS, min_rows_per_type=MIN_ROWS_PER_TYPE, profile=profile, **kw
    )


def test_profile_is_json_and_covers_numeric_features(profile: dict, table: pd.DataFrame) -> None:
    again = json.loads(json.dumps(profile, allow_nan=False))
    assert again["columns"] == list(table.columns)
    assert set(again["numeric"]) == {f"f{i}" for i in range(6)}
    assert again["numeric"]["f0"]["min"] == pytest.approx(table["f0"].min())
    assert again["dtypes"]["channel"] == "str"
    assert again["anomaly_types"] == dict.fromkeys(TYPES, PER_TYPE)


def test_build_suite_in_code(profile: dict, cfg: ValidateConfig) -> None:
    suite = build_suite(profile, cfg, categorical=CATS, min_rows_per_type=MIN_ROWS_PER_TYPE)
    kinds = {type(e).__name__ for e in suite.expectations}
    assert {
        "ExpectTableColumnsToMatchSet",
        "ExpectTableRowCountToBeBetween",
        "ExpectColumnValuesToBeInTypeList",
        "ExpectColumnValuesToBeOfType",
        "ExpectColumnValuesToNotBeNull",
        "ExpectColumnValuesToBeBetween",
        "ExpectColumnValuesToBeInSet",
        "ExpectColumnValuesToNotBeInSet",
    } <= kinds
    ranges = [
        e for e in suite.expectations if (e.meta or {}).get("check") == "range" and e.column == "f0"
    ]
    (rng,) = ranges
    lo, hi = profile["numeric"]["f0"]["min"], profile["numeric"]["f0"]["max"]
    slack = cfg.range_slack * (hi - lo)
    assert rng.min_value == pytest.approx(lo - slack) and rng.max_value == pytest.approx(hi + slack)


def test_valid_table_passes_and_writes_reports(
    table: pd.DataFrame, profile: dict, cfg: ValidateConfig, tmp_path: Path
) -> None:
    before = table.copy()
    report = run(table, cfg, profile, report_dir=tmp_path)
    assert report.success, report.summary()
    assert report.failures == []
    assert report.n_expectations > 30
    assert "passed" in report.summary()
    pd.testing.assert_frame_equal(table, before)
    assert not set(DERIVED) & set(table.columns)

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["report"]["success"] is True
    assert saved["gx_result"]["statistics"]["unsuccessful_expectations"] == 0
    index = tmp_path / "data_docs" / "index.html"
    assert index.exists()
    assert "Great Expectations" in index.read_text()
    pages = list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert pages, "GX rendered no validation page"
    json.loads(report.to_json())  # strict JSON


def test_first_version_without_profile_passes(table: pd.DataFrame, cfg: ValidateConfig) -> None:
    assert run(table, cfg, None).success


# Each bad case: (mutation of a copy, text that must appear in the summary).
def _drop_feature(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["f4"])


def _feature_as_text(df: pd.DataFrame) -> pd.DataFrame:
    df["f3"] = df["f3"].map(lambda v: f"{v:.3f}").astype("str")
    df.loc[7, "f3"] = "n/a"
    return df


def _nan_burst(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[100:399, "f2"] = np.nan
    return df


def _out_of_range(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[0:4, "f0"] = 1e6
    return df


def _label_two(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[5, 6], "label"] = 2
    return df


def _type_none(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[df.index[-3:], "anomaly_type"] = None
    return df


def _type_nan_object(df: pd.DataFrame) -> pd.DataFrame:
    df["anomaly_type"] = df["anomaly_type"].astype(object)
    df.loc[df.index[-1], "anomaly_type"] = np.nan
    return df


def _too_few_of_a_type(df: pd.DataFrame) -> pd.DataFrame:
    rare = df.index[df["anomaly_type"] == "d"][5:]
    return df.drop(index=rare)


def _empty(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[:0]


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[:300]], ignore_index=True)  # 300 / 3300 = 9.1% > 5%


def _infinite(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[10:12, "f1"] = np.inf
    df.loc[13, "f1"] = -np.inf
    return df


def _normal_with_type(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[0, "anomaly_type"] = "a"
    return df


def _anomaly_named_normal(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[df.index[-1], "anomaly_type"] = "normal"
    return df


def _category_not_text(df: pd.DataFrame) -> pd.DataFrame:
    df["channel"] = np.arange(len(df))
    return df


BAD: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], tuple[str, ...]]] = {
    "missing column": (
        _drop_feature,
        ("expect_table_columns_to_match_set", "missing column(s) ['f4']"),
    ),
    "wrong dtype": (
        _feature_as_text,
        ("expect_column_values_to_be_in_type_list column 'f3'", "dtype is 'str'", "'n/a'"),
    ),
    "NaN burst": (
        _nan_burst,
        ("expect_column_values_to_not_be_null column 'f2'", "300 null/NaN"),
    ),
    "out of range": (
        _out_of_range,
        (
            "expect_column_values_to_be_between column 'f0'",
            "outside the reference range",
            "1000000.0",
        ),
    ),
    "label outside 0/1": (
        _label_two,
        ("expect_column_values_to_be_in_set column 'label'", "not in {0, 1}", "[2, 2]"),
    ),
    "anomaly without type (None)": (
        _type_none,
        ("expect_column_values_to_not_be_null column 'anomaly_type'", "3 null/NaN"),
    ),
    "anomaly without type (NaN, object)": (
        _type_nan_object,
        ("expect_column_values_to_not_be_null column 'anomaly_type'", "1 null/NaN"),
    ),
    "too few rows for K": (
        _too_few_of_a_type,
        ("'__metaad_type_rows'", "fewer than 20 rows", "d=5"),
    ),
    "empty table": (
        _empty,
        ("expect_table_row_count_to_be_between", "the table is empty"),
    ),
    "duplicate rows": (
        _duplicates,
        ("'__metaad_is_duplicate'", "300 duplicate row(s)", "allowed 5.00%"),
    ),
    "infinite values": (
        _infinite,
        ("expect_column_values_to_be_between column 'f1'", "4 infinite value(s)", "'inf'"),
    ),
    "normal row with a type": (
        _normal_with_type,
        ("expect_column_values_to_be_in_set column 'anomaly_type'", "normal row(s)"),
    ),
    "anomaly row typed normal": (
        _anomaly_named_normal,
        ("expect_column_values_to_not_be_in_set column 'anomaly_type'", "anomaly row(s)"),
    ),
    "categorical not text": (
        _category_not_text,
        ("expect_column_values_to_be_of_type column 'channel'", "expected text"),
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_fails_with_a_named_problem(
    case: str, table: pd.DataFrame, profile: dict, cfg: ValidateConfig
) -> None:
    mutate, expected = BAD[case]
    bad = mutate(table.copy())
    snapshot = bad.copy()
    report = run(bad, cfg, profile)
    summary = report.summary()
    assert not report.success, f"{case}: passed unexpectedly"
    for text in expected:
        assert text in summary, f"{case}: {text!r} not in\n{summary}"
    # The caller's frame is left as it was: no derived columns, no changed values.
    pd.testing.assert_frame_equal(bad, snapshot)
    assert not set(DERIVED) & set(bad.columns)
    json.loads(report.to_json())  # strict JSON even with NaN/inf samples
    for f in report.failures:
        assert len(f["sample_values"]) <= 5


def test_validate_or_raise(
    table: pd.DataFrame, profile: dict, cfg: ValidateConfig, tmp_path: Path
) -> None:
    ok = validate_or_raise(
        table, cfg, categorical=CATS, min_rows_per_type=MIN_ROWS_PER_TYPE, profile=profile
    )
    assert ok.success
    bad = _label_two(table.copy())
    with pytest.raises(ValidationFailed) as info:
        validate_or_raise(
            bad,
            cfg,
            categorical=CATS,
            min_rows_per_type=MIN_ROWS_PER_TYPE,
            profile=profile,
            report_dir=tmp_path,
        )
    err = info.value
    assert isinstance(err, DataError)
    assert str(err) == err.report.summary()
    assert "column 'label'" in str(err)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["report"]["success"] is False
    assert (tmp_path / "data_docs" / "index.html").exists()


def test_config_allows_listed_nullable_columns(
    table: pd.DataFrame, profile: dict, cfg: ValidateConfig
) -> None:
    bad = _nan_burst(table.copy())
    relaxed = ValidateConfig(nullable=("f2",))
    assert run(bad, relaxed, profile).success
    fraction = ValidateConfig(max_null_fraction=0.2)
    assert run(bad, fraction, profile).success


def test_validation_failed_survives_pickling() -> None:
    """Prefect stores task exceptions; the report must come back, not just the text."""
    import pickle

    from metaad.validation import ValidationFailed, ValidationReport

    rep = ValidationReport(
        success=False,
        n_expectations=3,
        failures=[],
        statistics={},
        n_rows=0,
        data_docs=None,
        gx_result={},
    )
    again = pickle.loads(pickle.dumps(ValidationFailed(rep)))
    assert isinstance(again, ValidationFailed) and again.report.n_expectations == 3
