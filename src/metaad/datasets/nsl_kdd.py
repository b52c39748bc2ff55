"""NSL-KDD (Tavallaee et al., 2009): network connections labelled with the attack name.

The standard unseen-type split: attack types of the training file (``KDDTrain+_20Percent``)
for meta-training, the 18 types that occur only in ``KDDTest+`` for evaluation. Two traps
(CALIBRATION.md) decide the protocol:

- the two files' normals differ, so the episode's normals must be stated. Here evaluation
  episodes draw support *and* query normals from the Test+ file, the same rows for every
  method, while everything fitted on the pool (meta-training, pooled baselines, scaling) sees
  only training-file rows. Test+ rows of training types are left out: they would put the test
  file's distribution into training.
- some Test+-only attacks copy normal rows exactly (a third of ``snmpgetattack``): no method
  can rank those above the normal they copy. :func:`duplicate_report` counts them per type.

The ``difficulty`` column (how many of 21 reference learners got the row right) is dropped:
it was computed from the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, SOURCE_SPLIT, TYPE
from metaad.datasets.base import NORMALS_SOURCE, LoadedDataset, Protocol
from metaad.datasets.download import RemoteFile, locate
from metaad.errors import DataError

FOLDER = "nsl_kdd"
_BASE = (
    "https://raw.githubusercontent.com/defcom17/NSL_KDD/27bbbdf5c5cccf9970b8b6037a0f19dc09c5a0a9"
)
TRAIN_FILE = RemoteFile(
    "KDDTrain+_20Percent.txt",
    "7ea86479faab5ca2190b7f18b4982fb058ce5bf2b46e0e1017d0d9ef90f9c16e",
    f"{_BASE}/KDDTrain%2B_20Percent.txt",
    3_822_033,
)
TEST_FILE = RemoteFile(
    "KDDTest+.txt",
    "fa46b0935342616aa83b7c2578db355b6a7aaabbc492248172c7a1e8b7ab8f84",
    f"{_BASE}/KDDTest%2B.txt",
    3_441_513,
)
FILES = (TRAIN_FILE, TEST_FILE)

#: The 41 features, in file order (``Field Names.csv``).
FEATURES: tuple[str, ...] = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
)  # fmt: skip
CATEGORICAL: tuple[str, ...] = ("protocol_type", "service", "flag")

#: The usual NSL-KDD attack categories (PROVENANCE.md); some papers put httptunnel in U2R.
CATEGORY: dict[str, str] = {
    **dict.fromkeys(
        ("apache2", "back", "land", "neptune", "mailbomb", "pod", "processtable", "smurf",
         "teardrop", "udpstorm", "worm"), "DoS"),
    **dict.fromkeys(("ipsweep", "mscan", "nmap", "portsweep", "saint", "satan"), "Probe"),
    **dict.fromkeys(
        ("buffer_overflow", "loadmodule", "perl", "ps", "rootkit", "sqlattack", "xterm"), "U2R"),
    **dict.fromkeys(
        ("ftp_write", "guess_passwd", "httptunnel", "imap", "multihop", "named", "phf",
         "sendmail", "snmpgetattack", "snmpguess", "spy", "warezclient", "warezmaster", "xlock",
         "xsnoop"), "R2L"),
}  # fmt: skip

#: Meta-validation types (best-checkpoint selection): one Probe and one DoS training type with
#: enough rows, so validation is neither trivial nor empty.
VAL_TYPES: tuple[str, ...] = ("back", "portsweep")


def read_file(path: Path) -> pd.DataFrame:
    """One NSL-KDD file (no header, 43 columns) with named columns."""
    try:
        df = pd.read_csv(path, header=None, names=[*FEATURES, "attack", "difficulty"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path} as NSL-KDD: {exc}") from exc
    if df["difficulty"].isna().any() or df[list(FEATURES)].isna().any().any():
        raise DataError(f"{path} has rows with fewer than 43 fields; is it an NSL-KDD file?")
    return df


def to_canonical(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Both files as one canonical table; ``source_split`` says which file a row is from."""
    parts = []
    for frame, src in ((train, "train"), (test, "test")):
        f = frame[list(FEATURES)].copy()
        attack = frame["attack"].astype(str).str.strip()
        f[LABEL] = (attack != NORMAL).to_numpy().astype(np.int64)
        f[TYPE] = pd.Series(np.where(f[LABEL] == 1, attack, NORMAL), dtype="str")
        f[SOURCE_SPLIT] = pd.Series([src] * len(f), dtype="str")
        parts.append(f)
    df = pd.concat(parts, ignore_index=True)
    for c in CATEGORICAL:
        df[c] = df[c].astype("str")
    num = [c for c in FEATURES if c not in CATEGORICAL]
    df[num] = df[num].astype(np.float64)
    return df


def duplicate_report(df: pd.DataFrame, types: list[str]) -> dict[str, dict[str, float]]:
    """Per anomaly type: rows whose features equal some normal row's exactly.

    Such a row gets the same score as the normal it copies under any detector, so its
    share caps what any method can reach on that type; reported, not removed.
    """
    feats = list(FEATURES)
    normal_keys = set(map(tuple, df.loc[df[LABEL] == 0, feats].astype(str).to_numpy().tolist()))
    out: dict[str, dict[str, float]] = {}
    for t in types:
        rows = df.loc[df[TYPE] == t, feats].astype(str).to_numpy().tolist()
        n_dup = sum(tuple(r) in normal_keys for r in rows)
        out[t] = {"rows": len(rows), "copies_of_a_normal": n_dup,
                  "fraction": round(n_dup / len(rows), 4) if rows else 0.0}  # fmt: skip
    return out


def load(
    path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    """Read (or download) the two files and return the canonical table and its protocol."""
    base = locate(FOLDER, FILES, path=path, download=download, check=check)
    train = read_file(base / TRAIN_FILE.relpath)
    test = read_file(base / TEST_FILE.relpath)
    df = to_canonical(train, test)
    train_types = sorted(set(df.loc[(df[LABEL] == 1) & (df[SOURCE_SPLIT] == "train"), TYPE]))
    test_all = sorted(set(df.loc[(df[LABEL] == 1) & (df[SOURCE_SPLIT] == "test"), TYPE]))
    test_only = [t for t in test_all if t not in train_types]
    counts = {
        src: df.loc[(df[LABEL] == 1) & (df[SOURCE_SPLIT] == src), TYPE].value_counts().to_dict()
        for src in ("train", "test")
    }
    protocol = Protocol(
        train_types=tuple(t for t in train_types if t not in VAL_TYPES),
        val_types=VAL_TYPES,
        test_types=tuple(test_only),
        normals=NORMALS_SOURCE,
        n_support_normal=50,
        n_query_normal=950,
        contamination=0.05,
        max_rows_per_train_type=1000,
        notes=(
            "Unseen types: the attack types that occur only in KDDTest+ (the standard split); "
            "those with too few rows for K_max plus the query anomalies are dropped and listed.",
            "Episode normals (support and query) are KDDTest+ normals, the same rows for every "
            "method; meta-training, pooled baselines and scaling see KDDTrain+_20Percent rows "
            "only (val types: " + ", ".join(VAL_TYPES) + ").",
            "KDDTest+ rows of training types are not used; a training type keeps at most "
            "1,000 rows (neptune has 8,282).",
            "difficulty (derived from the labels) is dropped.",
        ),
    )
    report = {
        "files": {f.relpath: f.sha256 for f in FILES},
        "rows": {"train": len(train), "test": len(test)},
        "anomaly_rows_per_type": counts,
        "train_types": train_types,
        "test_only_types": test_only,
        "duplicates_of_normals": duplicate_report(df, test_only),
        "dropped_columns": {"difficulty": "derived from how reference learners did on the label"},
    }
    return LoadedDataset(
        name="nsl_kdd",
        table=df,
        categorical=CATEGORICAL,
        protocol=protocol,
        type_groups={t: CATEGORY.get(t, "unknown") for t in sorted({*train_types, *test_all})},
        report=report,
    )


__all__ = ["CATEGORICAL", "CATEGORY", "FEATURES", "FILES", "duplicate_report", "load"]
