"""Bring any CSV or Parquet table into the canonical contract with a column mapping.

Why a mapping rather than guessing: real tables name their label ``Class``, ``attack`` or
``is_fraud``, mark normals with ``0``, ``"normal"`` or ``"BENIGN"``, and mix identifiers with
features. Guessing gets some of that silently wrong; a mapping the user states once (in
``params.yaml``) is checked column by column, and every problem is reported with the column
or file it concerns. The input file is only ever read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, RESERVED, SERIES, TIMESTAMP, TYPE, check_canonical
from metaad.errors import DataError

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv")
#: Type name given to every anomaly when the table has no type column.
DEFAULT_ANOMALY_TYPE = "anomaly"
#: Category given to missing values of a declared categorical column.
MISSING_CATEGORY = "missing"


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def _read_one(path: Path, kind: str) -> pd.DataFrame:
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.name.lower().endswith(".tsv") else ","
        return pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty: no header and no rows") from exc
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path} as {kind}: {exc}") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"cannot read {path} as {kind}: {type(exc).__name__}: {exc}") from exc


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one CSV/Parquet file, or a folder of parts of one kind (in file-name order).

    Parts whose name starts with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are ignored, as
    Spark and Dask write them next to the data.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_dir():
        parts = sorted(
            p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_"))
        )
        kinds = {p: _kind(p) for p in parts}
        found = {k for k in kinds.values() if k is not None}
        if not found:
            raise DataError(
                f"folder {path} holds no {'/'.join(PARQUET_SUFFIXES + CSV_SUFFIXES)} parts"
            )
        if len(found) > 1:
            raise DataError(f"folder {path} mixes Parquet and CSV parts; keep one kind per folder")
        kind = found.pop()
        used = [p for p, k in kinds.items() if k == kind]
        skipped = [p.name for p, k in kinds.items() if k is None]
        if skipped:
            log.debug("ignoring non-data files in %s: %s", path, skipped)
        frames = [_read_one(p, kind) for p in used]
        cols = [list(map(str, f.columns)) for f in frames]
        odd = [p.name for p, c in zip(used, cols, strict=True) if c != cols[0]]
        if odd:
            raise DataError(
                f"parts of {path} disagree on columns: {odd} differ from {used[0].name}"
            )
        return pd.concat(frames, ignore_index=True)
    kind = _kind(path)
    if kind is None:
        raise DataError(
            f"unknown file type {path.name!r}: expected one of "
            f"{list(PARQUET_SUFFIXES + CSV_SUFFIXES)} (or a folder of such parts)"
        )
    return _read_one(path, kind)


def _sample(values: object, n: int = 5) -> list[object]:
    arr = np.asarray(values, dtype=object)[:n]
    return [v.item() if hasattr(v, "item") else v for v in arr]


def _labels(col: pd.Series, name: str, normal_value: str | int | None) -> np.ndarray:
    """0/1 labels from the source label column, or a DataError naming the bad values."""
    if col.isna().any():
        rows = _sample(col.index[col.isna()])
        raise DataError(
            f"label column {name!r} is empty in {int(col.isna().sum())} row(s), e.g. {rows}"
        )
    if normal_value is not None:
        is_normal = col == normal_value
        if not is_normal.any():  # e.g. normal_value "0" for an integer column, or 0 for "0"
            is_normal = col.astype(str) == str(normal_value)
        if not is_normal.any():
            raise DataError(
                f"normal_value {normal_value!r} never occurs in label column {name!r}; "
                f"values present: {_sample(pd.unique(col), 10)}"
            )
        return (~is_normal).to_numpy().astype(np.int64)
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy().astype(np.int64)
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() | ~num.isin([0, 1])
    if bad.any():
        raise DataError(
            f"label column {name!r} must hold 0/1 when no normal_value is given; found "
            f"{_sample(pd.unique(col[bad]), 10)} (set normal_value to the value that marks "
            "normal rows)"
        )
    return num.to_numpy().astype(np.int64)


def import_table(
    path: str | Path,
    *,
    label_col: str,
    type_col: str | None,
    normal_value: str | int | None = None,
    categorical: Sequence[str] = (),
    feature_cols: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    timestamp_col: str | None = None,
    series_col: str | None = None,
) -> pd.DataFrame:
    """Read a CSV/Parquet file (or folder of parts) into the canonical table.

    Args:
        path: ``.csv``/``.tsv`` (optionally compressed) or ``.parquet``/``.pq`` file, or a
            folder of parts of one kind.
        label_col: source column that says normal or anomaly.
        type_col: source column with the anomaly type (may equal ``label_col`` for a
            multi-class label such as NSL-KDD's attack name); ``None`` gives every anomaly
            the type ``"anomaly"``.
        normal_value: the label value of normal rows; every other value is an anomaly.
            ``None`` means the label column already holds 0/1.
        categorical: columns kept as strings (missing values become ``"missing"``) for the
            pipeline to encode.
        feature_cols: numeric features to keep; ``None`` keeps every column not otherwise
            mapped, declared categorical or dropped.
        drop: columns to leave out (identifiers, free text, leakage).
        timestamp_col, series_col: renamed to ``timestamp`` and ``series_id``.

    Raises:
        DataError: unreadable file, unknown suffix, missing columns, labels outside the
            mapping, or a result that breaks the contract (e.g. NaN features).
    """
    path = Path(path)
    raw = read_table(path)
    raw.columns = [str(c) for c in raw.columns]
    dupes = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path} has duplicate column name(s) {dupes}")
    categorical = list(categorical)
    drop = list(drop)

    wanted = {"label_col": [label_col], "categorical": categorical, "drop": drop}
    if type_col is not None:
        wanted["type_col"] = [type_col]
    if feature_cols is not None:
        wanted["feature_cols"] = list(feature_cols)
    if timestamp_col is not None:
        wanted["timestamp_col"] = [timestamp_col]
    if series_col is not None:
        wanted["series_col"] = [series_col]
    missing = {
        arg: [c for c in cols if c not in raw.columns]
        for arg, cols in wanted.items()
        if any(c not in raw.columns for c in cols)
    }
    if missing:
        what = "; ".join(f"{arg}: {cols}" for arg, cols in missing.items())
        raise DataError(
            f"column(s) not found in {path}: {what}. Columns present: {list(raw.columns)}"
        )

    mapped = {label_col, type_col, timestamp_col, series_col} - {None}
    overlap = sorted(mapped & (set(categorical) | set(feature_cols or ())))
    if overlap:
        raise DataError(
            f"column(s) {overlap} are mapped to label/type/timestamp/series and cannot also "
            "be features"
        )
    if feature_cols is None:
        taken = mapped | set(drop) | set(categorical)
        features = [c for c in raw.columns if c not in taken]
    else:
        features = [c for c in feature_cols if c not in drop]
    clash = sorted(c for c in [*features, *categorical] if c in RESERVED)
    if clash:
        raise DataError(
            f"feature column(s) {clash} in {path} use reserved canonical names {list(RESERVED)}; "
            "map them (label_col, type_col, timestamp_col, series_col) or drop them"
        )

    y = _labels(raw[label_col], label_col, normal_value)
    if type_col is None:
        types = np.where(y == 1, DEFAULT_ANOMALY_TYPE, NORMAL).astype(object)
    else:
        src = raw[type_col]
        absent = (y == 1) & (src.isna().to_numpy() | (src.astype(str).str.strip() == "").to_numpy())
        if absent.any():
            raise DataError(
                f"type column {type_col!r} is empty for {int(absent.sum())} anomaly row(s), e.g. "
                f"rows {_sample(raw.index[absent])}"
            )
        types = np.where(y == 1, src.astype(str).to_numpy(dtype=object), NORMAL).astype(object)

    out: dict[str, object] = {}
    if series_col is not None:
        out[SERIES] = raw[series_col].to_numpy()
    if timestamp_col is not None:
        out[TIMESTAMP] = raw[timestamp_col].to_numpy()
    for c in features:
        out[c] = raw[c].to_numpy()
    df = pd.DataFrame(out, index=pd.RangeIndex(len(raw)))
    for c in categorical:
        col = raw[c]
        n_missing = int(col.isna().sum())
        if n_missing:
            log.info(
                "categorical column %r: %d missing value(s) -> %r", c, n_missing, MISSING_CATEGORY
            )
        df[c] = pd.Series(
            np.where(col.isna().to_numpy(), MISSING_CATEGORY, col.astype(str).to_numpy()),
            dtype="str",
        )
    df[LABEL] = y
    df[TYPE] = pd.Series(types, dtype="str")
    check_canonical(df, categorical=categorical)
    log.info(
        "imported %s: %d rows, %d numeric + %d categorical features, %d anomalies of %d type(s)",
        path,
        len(df),
        len(features),
        len(categorical),
        int(y.sum()),
        len(set(types[y == 1])),
    )
    return df


__all__ = ["DEFAULT_ANOMALY_TYPE", "MISSING_CATEGORY", "import_table", "read_table"]
