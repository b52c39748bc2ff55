"""Preprocessed arrays that episodes index into.

Episodes are index arrays into a :class:`Pool`, never per-episode DataFrame copies: a pool
holds the feature tensor once and every task is a pair of integer arrays into it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from metaad.data.schema import NORMAL
from metaad.errors import DataError


@dataclass(frozen=True)
class Pool:
    """Feature rows (``(n, d)``) or windows (``(n, T, d)``) with labels and type names.

    Attributes:
        X: float32 features, already preprocessed.
        y: int64 labels, 0 normal and 1 anomaly.
        types: anomaly type per row (``"normal"`` for normal rows), as a numpy str array.
        feature_names: names of the last axis of ``X``.
        group: optional int64 id per row (series id for windows) for group-aware sampling.
    """

    X: np.ndarray
    y: np.ndarray
    types: np.ndarray
    feature_names: tuple[str, ...] = ()
    group: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.X)
        if self.X.ndim not in (2, 3):
            raise DataError(
                f"pool features must be 2-D rows or 3-D windows, got shape {self.X.shape}"
            )
        if len(self.y) != n or len(self.types) != n:
            raise DataError(
                f"pool arrays disagree in length: X {n}, y {len(self.y)}, types {len(self.types)}"
            )
        if not np.isfinite(self.X).all():
            raise DataError("pool features contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def is_windowed(self) -> bool:
        return self.X.ndim == 3

    @cached_property
    def type_index(self) -> dict[str, np.ndarray]:
        """Row indices per type name (``"normal"`` included), each sorted ascending."""
        order = np.argsort(self.types, kind="stable")
        names, starts = np.unique(self.types[order], return_index=True)
        bounds = [*starts.tolist(), len(order)]
        return {
            str(name): np.sort(order[bounds[i] : bounds[i + 1]]).astype(np.int64)
            for i, name in enumerate(names)
        }

    @property
    def normal_idx(self) -> np.ndarray:
        return self.type_index.get(NORMAL, np.empty(0, dtype=np.int64))

    @property
    def anomaly_types(self) -> list[str]:
        return sorted(t for t in self.type_index if t != NORMAL)

    def subset(self, idx: np.ndarray) -> Pool:
        return Pool(
            X=self.X[idx],
            y=self.y[idx],
            types=self.types[idx],
            feature_names=self.feature_names,
            group=None if self.group is None else self.group[idx],
        )

    def fingerprint(self) -> str:
        """A short hash of the pool's content, stored with episodes to catch mismatches."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        h.update("\x00".join(self.types.tolist()).encode())
        return h.hexdigest()[:16]
