"""The canonical table contract shared by every stage.

One row per event (or per time step of a series): numeric feature columns, categorical
feature columns declared by the caller, ``label`` (0 normal, 1 anomaly), ``anomaly_type``
(``"normal"`` for normal rows) and, where they apply, ``timestamp``, ``series_id`` and
``source_split``. Keeping the contract in one module means the validator, the importers,
the episode builder and the Great Expectations suite cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from metaad.errors import DataError

LABEL = "label"
TYPE = "anomaly_type"
NORMAL = "normal"
TIMESTAMP = "timestamp"
SERIES = "series_id"
SOURCE_SPLIT = "source_split"

#: Columns that are never features.
RESERVED: tuple[str, ...] = (LABEL, TYPE, TIMESTAMP, SERIES, SOURCE_SPLIT)


def feature_columns(df: pd.DataFrame, categorical: Iterable[str] = ()) -> list[str]:
    """Numeric feature columns in table order (reserved and categorical columns excluded)."""
    cats = set(categorical)
    return [c for c in df.columns if c not in RESERVED and c not in cats]


def _sample(values: pd.Series | np.ndarray, n: int = 5) -> list[object]:
    arr = np.asarray(values)
    return [v.item() if hasattr(v, "item") else v for v in arr[:n]]


def check_canonical(
    df: pd.DataFrame,
    *,
    categorical: Sequence[str] = (),
    min_rows_per_type: int = 0,
    allow_nan: bool = False,
) -> None:
    """Raise :class:`DataError` listing every way ``df`` breaks the contract.

    All problems are collected before raising, so one run tells the user everything
    that needs fixing rather than one problem at a time. Nothing is modified.
    """
    problems: list[str] = []
    if len(df) == 0:
        raise DataError("the table is empty: no rows to build episodes from")
    missing = [c for c in (LABEL, TYPE) if c not in df.columns]
    if missing:
        problems.append(
            f"missing required column(s) {missing}; columns present: {list(df.columns)}"
        )
    missing_cat = [c for c in categorical if c not in df.columns]
    if missing_cat:
        problems.append(f"declared categorical column(s) {missing_cat} are not in the table")
    feats = feature_columns(df, categorical)
    if not feats and not categorical:
        problems.append(f"no feature columns: every column is reserved ({list(RESERVED)})")
    for c in feats:
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
            problems.append(
                f"feature column {c!r} has dtype {col.dtype}, not numeric "
                f"(declare it categorical?); sample values {_sample(bad)}"
            )
            continue
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        nan = np.isnan(values)
        if nan.any() and not allow_nan:
            rows = np.flatnonzero(nan)
            problems.append(
                f"feature column {c!r} has {int(nan.sum())} NaN value(s), e.g. at rows "
                f"{_sample(df.index.to_numpy()[rows])}"
            )
        inf = np.isinf(values)
        if inf.any():
            rows = np.flatnonzero(inf)
            problems.append(
                f"feature column {c!r} has {int(inf.sum())} infinite value(s), e.g. at rows "
                f"{_sample(df.index.to_numpy()[rows])}"
            )
    if LABEL in df.columns:
        lab = df[LABEL]
        ok = lab.isin([0, 1]) & lab.notna()
        if not ok.all():
            problems.append(f"column {LABEL!r} must be 0 or 1; found {_sample(lab[~ok].unique())}")
    if TYPE in df.columns:
        typ = df[TYPE]
        if typ.isna().any():
            problems.append(
                f"column {TYPE!r} is empty in {int(typ.isna().sum())} row(s), e.g. rows "
                f"{_sample(df.index[typ.isna()].to_numpy())}"
            )
        if LABEL in df.columns:
            lab = df[LABEL]
            bad_norm = (lab == 0) & (typ != NORMAL) & typ.notna()
            if bad_norm.any():
                problems.append(
                    f"{int(bad_norm.sum())} normal row(s) (label 0) have {TYPE} other than "
                    f"{NORMAL!r}: {_sample(typ[bad_norm].unique())}"
                )
            bad_anom = (lab == 1) & (typ == NORMAL)
            if bad_anom.any():
                problems.append(
                    f"{int(bad_anom.sum())} anomaly row(s) (label 1) have {TYPE} {NORMAL!r}; "
                    "every anomaly needs its type"
                )
            if min_rows_per_type > 0:
                counts = typ[(lab == 1) & typ.notna()].value_counts()
                few = counts[counts < min_rows_per_type]
                if len(few):
                    problems.append(
                        f"anomaly type(s) with fewer than {min_rows_per_type} rows: "
                        + ", ".join(f"{t}={n}" for t, n in few.items())
                    )
    if problems:
        raise DataError("the table breaks the canonical contract:\n- " + "\n- ".join(problems))


def anomaly_types(df: pd.DataFrame) -> list[str]:
    """Sorted anomaly type names present in the table."""
    return sorted(df.loc[df[LABEL] == 1, TYPE].astype(str).unique().tolist())
