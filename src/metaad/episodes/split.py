"""Disjoint anomaly-type splits and the matching split of normal rows.

Meta-train, meta-val and meta-test types never overlap, and neither do their normal rows:
evaluation episodes draw their normals from rows that training never saw. For time series
the normals are split by series, so windows of one run never straddle two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, SERIES, SOURCE_SPLIT, TYPE, anomaly_types
from metaad.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TypeSplit:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        sets = [set(self.train), set(self.val), set(self.test)]
        for i in range(3):
            for j in range(i + 1, 3):
                both = sets[i] & sets[j]
                if both:
                    raise ConfigError(
                        f"anomaly types {sorted(both)} are in both {SPLITS[i]} and {SPLITS[j]}"
                    )
        if not self.train:
            raise ConfigError("the meta-train split has no anomaly type")
        if not self.test:
            raise ConfigError("the meta-test split has no anomaly type")

    def of(self, split: str) -> tuple[str, ...]:
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_types(
    types: Sequence[str],
    *,
    seed: int,
    n_val: int,
    n_test: int,
    train: Sequence[str] = (),
    val: Sequence[str] = (),
    test: Sequence[str] = (),
) -> TypeSplit:
    """Listed types win; the rest are shuffled by ``seed`` and dealt test, val, train."""
    all_types = sorted(set(types))
    listed = set(train) | set(val) | set(test)
    unknown = sorted(listed - set(all_types))
    if unknown:
        raise ConfigError(f"listed anomaly types {unknown} are not in the data; have {all_types}")
    if train or val or test:
        rest = [t for t in all_types if t not in listed]
        return TypeSplit(
            train=tuple(sorted(set(train) | (set(rest) if not train else set()))),
            val=tuple(sorted(val)),
            test=tuple(sorted(test)),
        )
    if n_test + n_val >= len(all_types):
        raise ConfigError(
            f"{len(all_types)} anomaly types cannot give {n_test} test + {n_val} val types and "
            "still leave one for training"
        )
    order = np.random.default_rng(seed).permutation(len(all_types))
    shuffled = [all_types[i] for i in order]
    return TypeSplit(
        test=tuple(sorted(shuffled[:n_test])),
        val=tuple(sorted(shuffled[n_test : n_test + n_val])),
        train=tuple(sorted(shuffled[n_test + n_val :])),
    )


def assign_rows(
    df: pd.DataFrame,
    split: TypeSplit,
    *,
    seed: int,
    normal_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
) -> np.ndarray:
    """Split name per row (``"train"``/``"val"``/``"test"``) or ``""`` for unused rows.

    Anomalies follow their type's split. Normals are dealt at random by ``seed`` in
    ``normal_fractions`` (by series when the table has ``series_id``). With no val types,
    the val share of normals goes to training.
    """
    if df[TYPE].isna().any():
        raise DataError(f"column {TYPE!r} has missing values")
    out = np.full(len(df), "", dtype=object)
    types = df[TYPE].astype(str).to_numpy()
    is_anom = df[LABEL].to_numpy() == 1
    for name in SPLITS:
        out[is_anom & np.isin(types, split.of(name))] = name
    fr = np.asarray(normal_fractions, dtype=float)
    if not split.val:
        fr = np.array([fr[0] + fr[1], 0.0, fr[2]])
    fr = fr / fr.sum()
    rng = np.random.default_rng([seed, 1])
    if SERIES in df.columns:
        series = df[SERIES].to_numpy()
        uniq = np.unique(series)
        deal = rng.choice(3, size=len(uniq), p=fr)
        lookup = dict(zip(uniq.tolist(), deal.tolist(), strict=True))
        which = np.fromiter((lookup[s] for s in series.tolist()), dtype=np.int64, count=len(df))
        # A series' anomalies follow their type; its normal rows follow the series' deal.
        out[~is_anom] = np.asarray(SPLITS, dtype=object)[which[~is_anom]]
    else:
        deal = rng.choice(3, size=int((~is_anom).sum()), p=fr)
        out[~is_anom] = np.asarray(SPLITS, dtype=object)[deal]
    return out


def assign_by_source(
    df: pd.DataFrame, split: TypeSplit, *, seed: int, val_share: float = 1.0 / 7.0
) -> np.ndarray:
    """Row splits when the protocol's normals follow ``source_split`` (e.g. NSL-KDD's files).

    Anomalies follow their type's split, but only when their source agrees with it (a
    training type's rows from the test file, or a test type's rows from the training file,
    are left out). Normals from a ``test`` source go to test; from ``train`` to train or, for
    a ``val_share`` of them, val (by series when the table has one); from ``val`` to val.
    """
    if SOURCE_SPLIT not in df.columns:
        raise DataError(f"this protocol needs a {SOURCE_SPLIT!r} column")
    src = df[SOURCE_SPLIT].astype(str).to_numpy()
    bad = sorted(set(src) - set(SPLITS))
    if bad:
        raise DataError(f"{SOURCE_SPLIT} must be one of {list(SPLITS)}; found {bad}")
    types = df[TYPE].astype(str).to_numpy()
    is_anom = df[LABEL].to_numpy() == 1
    out = np.full(len(df), "", dtype=object)
    for name in SPLITS:
        of_split = is_anom & np.isin(types, split.of(name))
        ok_src = ("test",) if name == "test" else ("train", "val")
        out[of_split & np.isin(src, ok_src)] = name
    normal = ~is_anom
    out[normal & (src == "test")] = "test"
    out[normal & (src == "val")] = "val"
    tr = normal & (src == "train")
    rng = np.random.default_rng([seed, 2])
    share = val_share if split.val else 0.0
    if SERIES in df.columns:
        series = df[SERIES].astype(str).to_numpy()
        uniq = np.unique(series[tr])
        to_val = set(uniq[rng.random(len(uniq)) < share].tolist())
        val_rows = tr & np.isin(series, list(to_val))
    else:
        val_rows = tr.copy()
        val_rows[tr] = rng.random(int(tr.sum())) < share
    out[tr] = "train"
    out[val_rows] = "val"
    return out


__all__ = ["SPLITS", "TypeSplit", "anomaly_types", "assign_by_source", "assign_rows", "split_types"]
