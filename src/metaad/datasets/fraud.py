"""Card and mobile-money fraud: the Sparkov subset, a PaySim sample, the ULB card-fraud schema.

**Sparkov** (``credit_card_fraud.csv``): fraud in 14 merchant categories, so the category of a
fraud is its type (and is therefore never a feature: it would name the task). Its legitimate
rows come only from January 2019 and December 2020 while frauds span every month, so the
transaction date is a label leak: ``trans_date_trans_time`` is dropped, and nothing is derived
from it (no hour, no age at transaction). Birth year comes from ``dob``'s last four characters,
so it does not depend on which of the two date formats (which also differ by period) a row uses.
The subset has a second shortcut: about 10% of its frauds belong to customers who have no
legitimate row at all, so the customer's home coordinates alone would flag them. Those fraud
rows are removed (and counted in the report), so every remaining customer has both kinds.

**PaySim**: frauds only in ``TRANSFER`` and ``CASH_OUT``, the two types; the transaction type is
the fraud type and is not a feature. Only two types, so it suits a one-in one-out check, not
the main benchmark.

**ULB credit card** (undersampled: all 492 frauds + 492 normals): ``Time``, ``V1-V28`` (min-max
scaled within this sample by its publisher), ``Amount``; no fraud types (one type ``fraud``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, TYPE
from metaad.datasets.base import NORMALS_RANDOM, LoadedDataset, Protocol
from metaad.datasets.download import RemoteFile, locate
from metaad.errors import DataError

FOLDER = "fraud"
SPARKOV_FILE = RemoteFile(
    "sparkov_credit_card_fraud/credit_card_fraud.csv",
    "1cb592e2809d1fcc6da0772c61a926f6cf0642181ea3c1c26ba427fc13a25243",
    "https://raw.githubusercontent.com/GurveerSingh123/Fraud-Detection/"
    "900a37a1784e29e5847d1b77e8697aec739f4d07/credit_card_fraud.csv",
    2_583_031,
)
PAYSIM_FILE = RemoteFile(
    "paysim_sample/paysim_sample.csv",
    "ce343649c90e33214d15e10dad01c5e251ff9b0a6edc419855991e559dcc71d7",
    "https://raw.githubusercontent.com/Shivam-processing/SQL_FraudDetect/"
    "e09144be4da8af900a2bb82293a3b54491dad2a5/data/paysim_sample.csv",
    4_140_611,
)
ULB_FILE = RemoteFile(
    "ulb_creditcard_undersampled/creditcard_undersampled1.csv",
    "67c86831cca364a9d4e3a5804f06f107c22a632bb6fc61ba1e1d812a161b49ef",
    "https://raw.githubusercontent.com/feduss/BigDataProject/"
    "21a3874892fdc2f79528356c54e30167037a4943/CSV_Sources/creditcard_undersampled1.csv",
    548_698,
)

SPARKOV_NUMERIC: tuple[str, ...] = (
    "amt", "lat", "long", "city_pop", "merch_lat", "merch_long", "birth_year",
)  # fmt: skip
SPARKOV_CATEGORICAL: tuple[str, ...] = ("state",)
#: Sparkov columns that are never features, and why (quoted in the report).
SPARKOV_DROPPED: dict[str, str] = {
    "trans_date_trans_time": "label leak: legitimate rows exist only for Jan 2019 and Dec 2020",
    "category": "the fraud type itself (names the task)",
    "merchant": "free text, ~700 names",
    "city": "free text; the customer's coordinates are kept",
    "job": "free text",
    "dob": "replaced by birth_year (format-independent)",
    "trans_num": "transaction id",
}
PAYSIM_NUMERIC: tuple[str, ...] = (
    "step", "amount", "oldbalanceOrg", "newbalanceOrig", "oldbalanceDest", "newbalanceDest",
)  # fmt: skip
ULB_NUMERIC: tuple[str, ...] = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")


def _read(path: Path, needed: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; columns: {list(df.columns)}")
    return df


def _labels(col: pd.Series, name: str, path: Path) -> np.ndarray:
    y = pd.to_numeric(col, errors="coerce")
    if y.isna().any() or not y.isin([0, 1]).all():
        raise DataError(f"{path}: label column {name!r} must be 0/1 (or 0.0/1.0)")
    return y.to_numpy().astype(np.int64)


def sparkov_canonical(raw: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The Sparkov subset as a canonical table, and what was removed (see module docstring)."""
    y = _labels(raw["is_fraud"], "is_fraud", path)
    dob = raw["dob"].astype(str).str.strip()
    year = pd.to_numeric(dob.str[-4:], errors="coerce")
    if year.isna().any():
        raise DataError(f"{path}: dob values without a 4-digit year, e.g. {dob[year.isna()][:3]}")
    customer = raw["lat"].astype(str) + "|" + raw["long"].astype(str) + "|" + dob
    has_legit = customer.isin(set(customer[y == 0]))
    keep = (y == 0) | has_legit.to_numpy()
    df = raw.loc[keep, ["amt", "lat", "long", "city_pop", "merch_lat", "merch_long"]].astype(
        np.float64
    )
    df["birth_year"] = year[keep].astype(np.float64)
    df["state"] = raw.loc[keep, "state"].astype(str).str.strip().astype("str")
    yk = y[keep]
    df[LABEL] = yk
    cat = raw.loc[keep, "category"].astype(str).str.strip().to_numpy()
    df[TYPE] = pd.Series(np.where(yk == 1, cat, NORMAL), dtype="str", index=df.index)
    removed = {"fraud_rows_of_customers_without_legit_rows": int((~keep).sum())}
    return df.reset_index(drop=True), removed


def load_sparkov(
    path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    base = locate(FOLDER, (SPARKOV_FILE,), path=path, download=download, check=check)
    p = base / SPARKOV_FILE.relpath
    raw = _read(p, ("amt", "lat", "long", "city_pop", "merch_lat", "merch_long", "dob", "state",
                    "category", "is_fraud"))  # fmt: skip
    df, removed = sparkov_canonical(raw, p)
    counts = df.loc[df[LABEL] == 1, TYPE].value_counts().sort_index()
    protocol = Protocol(
        n_val_types=1,
        n_test_types=4,
        normals=NORMALS_RANDOM,
        n_support_normal=50,
        n_query_normal=190,
        contamination=0.05,
        notes=(
            "Types are the 14 merchant categories of the frauds; 4 unseen and 1 meta-val "
            "category are drawn by the benchmark seed.",
            "Not features: the transaction date (label leak), the category (the type), "
            "merchant, city, job, transaction id. Fraud rows of customers with no legitimate "
            f"row are removed ({removed['fraud_rows_of_customers_without_legit_rows']} rows).",
            "Normals dealt at random 60/10/30; support 50 normals + K, query 190 normals + 10 "
            "frauds (5%).",
        ),
    )
    report = {
        "files": {SPARKOV_FILE.relpath: SPARKOV_FILE.sha256},
        "rows": len(df),
        "fraud_rows_per_category": {str(k): int(v) for k, v in counts.items()},
        "dropped_columns": SPARKOV_DROPPED,
        "removed": removed,
    }
    return LoadedDataset(
        name="sparkov",
        table=df,
        categorical=SPARKOV_CATEGORICAL,
        protocol=protocol,
        report=report,
    )


def load_paysim(
    path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    base = locate(FOLDER, (PAYSIM_FILE,), path=path, download=download, check=check)
    p = base / PAYSIM_FILE.relpath
    raw = _read(p, (*PAYSIM_NUMERIC, "type", "isFraud"))
    y = _labels(raw["isFraud"], "isFraud", p)
    df = raw[list(PAYSIM_NUMERIC)].astype(np.float64)
    df[LABEL] = y
    df[TYPE] = pd.Series(np.where(y == 1, raw["type"].astype(str), NORMAL), dtype="str")
    protocol = Protocol(
        train_types=("CASH_OUT",),
        test_types=("TRANSFER",),
        n_val_types=0,
        normals=NORMALS_RANDOM,
        n_support_normal=50,
        n_query_normal=950,
        notes=("Two fraud types only: meta-train on CASH_OUT, evaluate on TRANSFER.",
               "Not features: type (the fraud type), nameOrig/nameDest (ids), isFlaggedFraud."),
    )  # fmt: skip
    report = {
        "files": {PAYSIM_FILE.relpath: PAYSIM_FILE.sha256},
        "rows": len(df),
        "fraud_rows_per_type": df.loc[y == 1, TYPE].value_counts().to_dict(),
    }
    return LoadedDataset(name="paysim", table=df, protocol=protocol, report=report)


def load_ulb(
    path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    base = locate(FOLDER, (ULB_FILE,), path=path, download=download, check=check)
    p = base / ULB_FILE.relpath
    raw = _read(p, (*ULB_NUMERIC, "Class"))
    y = _labels(raw["Class"], "Class", p)
    df = raw[list(ULB_NUMERIC)].astype(np.float64)
    df[LABEL] = y
    df[TYPE] = pd.Series(np.where(y == 1, "fraud", NORMAL), dtype="str")
    report = {
        "files": {ULB_FILE.relpath: ULB_FILE.sha256},
        "rows": len(df),
        "distinct_fraud_rows": int(df.loc[y == 1, list(ULB_NUMERIC)].drop_duplicates().shape[0]),
        "dropped_columns": {"Index": "row id of the undersampling"},
    }
    return LoadedDataset(name="ulb", table=df, protocol=None, report=report)


__all__ = [
    "PAYSIM_FILE",
    "SPARKOV_FILE",
    "ULB_FILE",
    "load_paysim",
    "load_sparkov",
    "load_ulb",
    "sparkov_canonical",
]
