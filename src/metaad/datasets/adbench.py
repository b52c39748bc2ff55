"""ADBench "Classical" ``.npz`` sets (binary X, y) and UNSW-NB15 Backdoor (DevNet / ADBench).

These sets have no anomaly types: each is one binary problem. They serve the published
comparison (:mod:`metaad.adbench`, ADBench's semi-supervised protocol), and as canonical
tables with the single type ``anomaly`` for anyone who wants to run the pipeline on them.

The backdoor set is UNSW-NB15's Backdoor attacks against normal traffic, 196 features (one-hot
protocol/service/state and normalised numeric ones), as DevNet published it; its shape and
count match ADBench's ``3_backdoor.npz``. It is read straight from the ``.tar.xz`` (52 MB
unpacked, never written to disk).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, TYPE
from metaad.datasets.base import LoadedDataset
from metaad.datasets.download import RemoteFile, locate
from metaad.errors import DataError

FOLDER = "adbench"
_BASE = (
    "https://raw.githubusercontent.com/Minqi824/ADBench/"
    "f7fed68dea6901fe9a81ed51b251b1d2456790cd/adbench/datasets/Classical"
)
#: ADBench file stem -> (short name used in ADBench's tables, sha256).
NPZ: dict[str, tuple[str, str]] = {
    "2_annthyroid": (
        "annthyroid",
        "e738f7c58a8740d2c4aac4c71ff49ce5e1d1aa16f44178135fc9c09df05fad1b",
    ),
    "5_campaign": (
        "campaign",
        "74dd4d0072d6c6f1aabab63bc102f9633454f32bb936fa9bcfbd38f9f2386bcd",
    ),
    "6_cardio": (
        "cardio",
        "bc5009bde6930b4d298b594f31b34485a9a17210cff0e8fb00a8c3068b885a2d",
    ),
    "11_donors": (
        "donors",
        "5824ec854465f2763b4bfe3da1ae9f25ed5433b5c6e265d42e37da4f82a58679",
    ),
    "23_mammography": (
        "mammography",
        "a0308ac9712d78321073b1c2dc98dc37665c0f35c1cc33019416fe8f8d7de7ea",
    ),
    "28_pendigits": (
        "pendigits",
        "c4936b89dcdad59d303020e492f763a0f54170080d787c77497609acbb9c2d79",
    ),
    "30_satellite": (
        "satellite",
        "1f048f5686f1b8c16a227fdfa3c81a62cd9a92715714a6b24c69b1c5ad96b46e",
    ),
    "32_shuttle": (
        "shuttle",
        "26900b0f6be45d9ddb7a402c9b2f956ceda42d23a8ca4cf4406b8bc1352823d1",
    ),
    "38_thyroid": (
        "thyroid",
        "8de161b3f235b7647bb0b39a836d983ff61d67bf234edac461da2d71e889cb87",
    ),
    "42_WBC": (
        "WBC",
        "650f9dcb129248f67a291be0974f533ef259fcbde50fce5c8ad2a1cb2652d03b",
    ),
}
#: Short name -> the file describing it.
ADBENCH_SETS: dict[str, RemoteFile] = {
    short: RemoteFile(f"{stem}.npz", sha, f"{_BASE}/{stem}.npz")
    for stem, (short, sha) in NPZ.items()
}

BACKDOOR_FOLDER = "unsw_nb15_backdoor"
BACKDOOR_FILE = RemoteFile(
    "UNSW_NB15_traintest_backdoor.tar.xz",
    "b3f703966c1cc952f55d73f707611be8157500f20a296a8598438a2f572bfdfe",
    "https://raw.githubusercontent.com/GuansongPang/ADRepository-Anomaly-detection-datasets/"
    "3361daccc4384a60025b6b684ccf55699decbed5/numerical%20data/DevNet%20datasets/"
    "UNSW_NB15_traintest_backdoor.tar.xz",
    2_696_104,
)
BACKDOOR_MEMBER = "UNSW_NB15_traintest_backdoor.csv"


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (float64) and ``y`` (int64, 0/1) of one ADBench file; nothing is unpickled."""
    try:
        with np.load(path, allow_pickle=False) as z:
            X, y = np.asarray(z["X"], np.float64), np.asarray(z["y"]).astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path} as an ADBench .npz (keys X and y): {exc}") from exc
    if X.ndim != 2 or len(X) != len(y) or not np.isin(y, (0, 1)).all():
        raise DataError(
            f"{path}: expected X (n, d) and 0/1 labels y (n,), got {X.shape}, {y.shape}"
        )
    return X, y


def read_backdoor(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The backdoor CSV inside the archive: features, labels (``class``), feature names."""
    try:
        with tarfile.open(path, "r:xz") as tf:
            member = tf.getmember(BACKDOOR_MEMBER)
            fh = tf.extractfile(member)
            if fh is None:
                raise DataError(f"{path}: {BACKDOOR_MEMBER} is not a regular file")
            df = pd.read_csv(fh)
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read {BACKDOOR_MEMBER} from {path}: {exc}") from exc
    if "class" not in df.columns:
        raise DataError(f"{path}: the backdoor CSV has no 'class' column")
    names = [c for c in df.columns if c != "class"]
    y = pd.to_numeric(df["class"], errors="coerce")
    if y.isna().any() or not y.isin([0, 1]).all():
        raise DataError(f"{path}: column 'class' must be 0/1")
    return df[names].to_numpy(np.float64), y.to_numpy().astype(np.int64), names


def arrays(
    name: str, path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of an ADBench set by its short name, or ``backdoor``."""
    if name == "backdoor":
        base = locate(BACKDOOR_FOLDER, (BACKDOOR_FILE,), path=path, download=download, check=check)
        X, y, _ = read_backdoor(base / BACKDOOR_FILE.relpath)
        return X, y
    if name not in ADBENCH_SETS:
        raise DataError(f"unknown ADBench set {name!r}; have {sorted(ADBENCH_SETS)} and backdoor")
    f = ADBENCH_SETS[name]
    base = locate(FOLDER, (f,), path=path, download=download, check=check)
    return read_npz(base / f.relpath)


def _table(X: np.ndarray, y: np.ndarray, names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(X, columns=names)
    df[LABEL] = y
    df[TYPE] = pd.Series(np.where(y == 1, "anomaly", NORMAL), dtype="str")
    return df


def load_npz(
    name: str, path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    X, y = arrays(name, path, download=download, check=check)
    f = ADBENCH_SETS[name]
    return LoadedDataset(
        name=f"adbench_{name}",
        table=_table(X, y, [f"x{j}" for j in range(X.shape[1])]),
        report={"files": {f.relpath: f.sha256}, "rows": len(y), "anomalies": int(y.sum())},
    )


def load_backdoor(
    path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    base = locate(BACKDOOR_FOLDER, (BACKDOOR_FILE,), path=path, download=download, check=check)
    X, y, names = read_backdoor(base / BACKDOOR_FILE.relpath)
    return LoadedDataset(
        name="backdoor",
        table=_table(X, y, names),
        report={
            "files": {BACKDOOR_FILE.relpath: BACKDOOR_FILE.sha256},
            "rows": len(y),
            "anomalies": int(y.sum()),
        },
    )


__all__ = [
    "ADBENCH_SETS",
    "BACKDOOR_FILE",
    "arrays",
    "load_backdoor",
    "load_npz",
    "read_backdoor",
    "read_npz",
]
