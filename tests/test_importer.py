"""The CSV/Parquet importer: mapping to the canonical table, and errors that name the problem."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metaad.data.importer import DEFAULT_ANOMALY_TYPE, MISSING_CATEGORY, import_table
from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE
from metaad.errors import DataError


def _raw(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A source table with odd column names, an id, a categorical and a string label."""
    rng = np.random.default_rng(seed)
    cls = np.array(["legit"] * (n - 10) + ["fraud ring"] * 6 + ["skimming"] * 4, dtype=object)
    return pd.DataFrame(
        {
            "Txn ID": np.arange(n),
            "Amount ($)": rng.gamma(2.0, 30.0, n).round(2),
            "n items": rng.integers(1, 5, n),
            "Merchant Type": rng.choice(["food", "fuel", "web"], n),
            "Class": cls,
        }
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz", ".tsv"])
def test_round_trip_with_string_label_and_categorical(tmp_path: Path, suffix: str) -> None:
    raw = _raw()
    path = tmp_path / f"source{suffix}"
    if suffix == ".parquet":
        raw.to_parquet(path, index=False)
    else:
        raw.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    before = _sha(path)
    df = import_table(
        path,
        label_col="Class",
        type_col="Class",
        normal_value="legit",
        categorical=["Merchant Type"],
        drop=["Txn ID"],
    )
    assert _sha(path) == before  # the input is never modified
    assert list(df.columns) == ["Amount ($)", "n items", "Merchant Type", LABEL, TYPE]
    assert df[LABEL].dtype == np.int64
    assert df[LABEL].tolist() == (raw["Class"] != "legit").astype(int).tolist()
    assert df[TYPE].value_counts().to_dict() == {NORMAL: 50, "fraud ring": 6, "skimming": 4}
    assert pd.api.types.is_string_dtype(df["Merchant Type"])
    np.testing.assert_allclose(df["Amount ($)"], raw["Amount ($)"])


def test_timestamp_series_renamed_and_01_labels_without_type(tmp_path: Path) -> None:
    n = 40
    raw = pd.DataFrame(
        {
            "unit": np.repeat([3, 4], n // 2),
            "t": np.tile(np.arange(n // 2), 2),
            "pressure": np.linspace(0, 1, n),
            "temp": np.linspace(5, 6, n),
            "fault": [0] * 35 + [1] * 5,
        }
    )
    path = tmp_path / "plant.parquet"
    raw.to_parquet(path, index=False)
    df = import_table(path, label_col="fault", type_col=None, timestamp_col="t", series_col="unit")
    assert list(df.columns) == [SERIES, TIMESTAMP, "pressure", "temp", LABEL, TYPE]
    assert df[SERIES].tolist() == raw["unit"].tolist()
    assert df[TIMESTAMP].tolist() == raw["t"].tolist()
    assert set(df.loc[df[LABEL] == 1, TYPE]) == {DEFAULT_ANOMALY_TYPE}
    assert set(df.loc[df[LABEL] == 0, TYPE]) == {NORMAL}


def test_feature_cols_select_and_label_value_types(tmp_path: Path) -> None:
    raw = _raw()
    raw["is_fraud"] = (raw["Class"] != "legit").astype(int)
    path = tmp_path / "t.csv"
    raw.to_csv(path, index=False)
    # normal_value given as a string for an integer column still matches
    df = import_table(
        path, label_col="is_fraud", type_col="Class", normal_value="0", feature_cols=["n items"]
    )
    assert list(df.columns) == ["n items", LABEL, TYPE]
    assert df[LABEL].sum() == 10
    # boolean and "0"/"1" string labels are accepted as 0/1 without normal_value
    raw["is_fraud"] = raw["is_fraud"].astype(bool)
    raw.to_parquet(tmp_path / "b.parquet", index=False)
    df = import_table(
        tmp_path / "b.parquet", label_col="is_fraud", type_col=None, feature_cols=["Amount ($)"]
    )
    assert df[LABEL].sum() == 10


def test_folder_of_parts(tmp_path: Path) -> None:
    raw = _raw(80)
    folder = tmp_path / "parts"
    folder.mkdir()
    raw.iloc[:30].to_parquet(folder / "part-000.parquet", index=False)
    raw.iloc[30:].to_parquet(folder / "part-001.parquet", index=False)
    (folder / "_SUCCESS").write_text("")
    kw = {
        "label_col": "Class",
        "type_col": "Class",
        "normal_value": "legit",
        "categorical": ["Merchant Type"],
        "drop": ["Txn ID"],
    }
    df = import_table(folder, **kw)
    assert len(df) == 80
    assert df["Amount ($)"].tolist() == raw["Amount ($)"].tolist()  # parts in name order
    csv = tmp_path / "csvparts"
    csv.mkdir()
    raw.iloc[:50].to_csv(csv / "a.csv", index=False)
    raw.iloc[50:].to_csv(csv / "b.csv", index=False)
    assert len(import_table(csv, **kw)) == 80
    raw.iloc[:5].to_csv(folder / "stray.csv", index=False)
    with pytest.raises(DataError, match="mixes Parquet and CSV"):
        import_table(folder, **kw)


def test_missing_categorical_values_become_a_category(tmp_path: Path) -> None:
    raw = _raw()
    raw.loc[[1, 2], "Merchant Type"] = None
    raw.to_parquet(tmp_path / "t.parquet", index=False)
    df = import_table(
        tmp_path / "t.parquet",
        label_col="Class",
        type_col="Class",
        normal_value="legit",
        categorical=["Merchant Type"],
        drop=["Txn ID"],
    )
    assert (df.loc[[1, 2], "Merchant Type"] == MISSING_CATEGORY).all()


# -- errors ------------------------------------------------------------------------------
@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    _raw().to_csv(path, index=False)
    return path


def test_missing_columns_are_named(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"label_col: \['is_fraud'\].*Columns present"):
        import_table(csv_path, label_col="is_fraud", type_col=None)
    with pytest.raises(DataError, match=r"categorical: \['mcc'\]"):
        import_table(
            csv_path, label_col="Class", type_col="Class", normal_value="legit", categorical=["mcc"]
        )


def test_labels_outside_mapping(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"must hold 0/1.*'legit'.*normal_value"):
        import_table(csv_path, label_col="Class", type_col=None, drop=["Merchant Type"])
    with pytest.raises(DataError, match=r"normal_value 'benign' never occurs.*'legit'"):
        import_table(
            csv_path,
            label_col="Class",
            type_col=None,
            normal_value="benign",
            drop=["Merchant Type"],
        )
    raw = _raw()
    raw["y"] = [0, 1, 2] * 20
    raw.to_csv(csv_path, index=False)
    with pytest.raises(DataError, match=r"found \[2\]"):
        import_table(csv_path, label_col="y", type_col=None, feature_cols=["n items"])


def test_nan_feature_fails_the_contract(tmp_path: Path) -> None:
    raw = _raw()
    raw.loc[[4, 9], "Amount ($)"] = np.nan
    raw.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        DataError, match=r"'Amount \(\$\)' has 2 NaN value\(s\), e.g. at rows \[4, 9\]"
    ):
        import_table(
            tmp_path / "t.csv",
            label_col="Class",
            type_col="Class",
            normal_value="legit",
            categorical=["Merchant Type"],
        )


def test_undeclared_text_column_is_reported(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"'Merchant Type'.*not numeric.*declare it categorical"):
        import_table(csv_path, label_col="Class", type_col="Class", normal_value="legit")


def test_empty_type_for_anomaly(tmp_path: Path) -> None:
    raw = _raw()
    raw["kind"] = np.where(raw["Class"] == "legit", None, raw["Class"])
    raw.loc[55, "kind"] = None
    raw.to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(DataError, match=r"type column 'kind' is empty for 1 anomaly row"):
        import_table(
            tmp_path / "t.parquet",
            label_col="Class",
            type_col="kind",
            normal_value="legit",
            categorical=["Merchant Type"],
        )


def test_reserved_name_and_overlap(tmp_path: Path) -> None:
    raw = _raw()
    raw["label"] = 0
    raw.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"\['label'\].*reserved"):
        import_table(
            tmp_path / "t.csv",
            label_col="Class",
            type_col="Class",
            normal_value="legit",
            categorical=["Merchant Type"],
        )
    with pytest.raises(DataError, match=r"cannot also be features"):
        import_table(
            tmp_path / "t.csv",
            label_col="Class",
            type_col="Class",
            normal_value="legit",
            categorical=["Merchant Type", "Class"],
        )


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_table(tmp_path / "nope.csv", label_col="y", type_col=None)
    odd = tmp_path / "table.xlsx"
    odd.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"unknown file type 'table.xlsx'.*\.parquet"):
        import_table(odd, label_col="y", type_col=None)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match=r"cannot read .*broken.parquet as parquet"):
        import_table(broken, label_col="y", type_col=None)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        import_table(empty, label_col="y", type_col=None)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no"):
        import_table(folder, label_col="y", type_col=None)
