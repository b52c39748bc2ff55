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

from metaad.data.schema import LABEL, SERIES, TYPE, anomaly_types
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


__all__ = ["SPLITS", "TypeSplit", "anomaly_types", "assign_rows", "split_types"]
