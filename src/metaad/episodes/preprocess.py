"""Preprocessing fitted on meta-train rows only, and saved as JSON with the model.

Scaling statistics come from the meta-train normals (the population every task shares);
categorical levels come from meta-train rows, with unseen levels mapped to an all-zero
one-hot. Fitting on anything from evaluation types would leak what the test is about.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, SERIES, TIMESTAMP, TYPE, feature_columns
from metaad.errors import DataError

#: Scaled values are clipped here, so one wild row cannot dominate a distance or a gradient.
CLIP = 20.0


@dataclass
class Preprocessor:
    """Robust standardisation of numeric columns plus one-hot categorical columns."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, df: pd.DataFrame, categorical: Sequence[str] = ()) -> Preprocessor:
        """Fit on meta-train rows; scale statistics from their normal rows."""
        numeric = feature_columns(df, categorical)
        normal = df[df[LABEL] == 0]
        ref = normal if len(normal) >= 2 else df
        values = ref[numeric].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError("cannot fit preprocessing: numeric features hold NaN or infinity")
        center = np.median(values, axis=0) if len(values) else np.zeros(len(numeric))
        q75, q25 = np.percentile(values, [75, 25], axis=0) if len(values) else (1.0, 0.0)
        iqr = (np.asarray(q75) - np.asarray(q25)) / 1.349
        std = values.std(axis=0) if len(values) else np.ones(len(numeric))
        scale = np.where(iqr > 1e-9, iqr, np.where(std > 1e-9, std, 1.0))
        cats = {c: sorted(df[c].astype(str).unique().tolist()) for c in categorical}
        return cls(numeric, cats, center.tolist(), scale.tolist())

    @property
    def output_names(self) -> list[str]:
        names = list(self.numeric)
        for c, levels in self.categorical.items():
            names += [f"{c}={lv}" for lv in levels]
        return names

    @property
    def input_columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.input_columns if c not in df.columns]
        if missing:
            raise DataError(f"missing feature column(s) {missing}; expected {self.input_columns}")

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """float32 ``(n, d)``; raises DataError for missing, non-numeric or NaN features."""
        self.check_columns(df)
        try:
            num = df[self.numeric].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"numeric feature columns must be numbers: {exc}") from exc
        bad = ~np.isfinite(num)
        if bad.any():
            cols = sorted({self.numeric[j] for j in np.flatnonzero(bad.any(axis=0))})
            raise DataError(f"feature column(s) {cols} hold NaN or infinite values")
        out = np.clip((num - self.center) / np.asarray(self.scale), -CLIP, CLIP)
        parts = [out.astype(np.float32)]
        for c, levels in self.categorical.items():
            codes = pd.Categorical(df[c].astype(str), categories=levels).codes
            onehot = np.zeros((len(df), len(levels)), dtype=np.float32)
            ok = codes >= 0
            onehot[np.flatnonzero(ok), codes[ok]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "center": self.center,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        return cls(
            list(d["numeric"]),
            {k: list(v) for k, v in d["categorical"].items()},
            [float(x) for x in d["center"]],
            [float(x) for x in d["scale"]],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        return cls.from_dict(json.loads(Path(path).read_text()))


def make_windows(
    df: pd.DataFrame, X: np.ndarray, *, window: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed windows per series: ``(windows (n, T, d), label, type, series)``.

    Rows are ordered by ``timestamp`` within each ``series_id``. A window is anomalous if
    any of its rows is; its type is the most frequent anomaly type among its rows. Windows
    never cross a series boundary.
    """
    if SERIES not in df.columns:
        raise DataError(f"windows need a {SERIES!r} column")
    sort_cols = [SERIES, TIMESTAMP] if TIMESTAMP in df.columns else [SERIES]
    order = np.lexsort([df[c].to_numpy() for c in reversed(sort_cols)])
    series = df[SERIES].to_numpy()[order]
    labels = df[LABEL].to_numpy()[order]
    types = df[TYPE].astype(str).to_numpy()[order]
    Xo = X[order]
    bounds = np.flatnonzero(np.r_[True, series[1:] != series[:-1], True])
    starts: list[np.ndarray] = []
    for a, b in itertools.pairwise(bounds):
        if b - a >= window:
            starts.append(np.arange(a, b - window + 1, stride))
    if not starts:
        raise DataError(f"no series has the {window} rows a window needs")
    st = np.concatenate(starts)
    idx = st[:, None] + np.arange(window)[None, :]
    W = Xo[idx]
    lab_w = labels[idx]
    y = (lab_w.max(axis=1) > 0).astype(np.int64)
    typ_w = types[idx]
    out_types = np.full(len(st), "normal", dtype=object)
    for i in np.flatnonzero(y):
        vals, counts = np.unique(typ_w[i][lab_w[i] == 1], return_counts=True)
        out_types[i] = vals[np.argmax(counts)]
    return W.astype(np.float32), y, out_types.astype(str), series[st]
