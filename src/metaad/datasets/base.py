"""What a dataset loader returns: the canonical table plus how a fair benchmark must use it.

A loader knows things about its data that the generic pipeline cannot guess: which anomaly
types are the published "unseen" split (NSL-KDD's Test+-only attacks), which normal rows are
comparable to the anomalies (Tennessee Eastman's time in run), which columns leak the label
(Sparkov's dates). It states them in a :class:`Protocol` next to the table, so the benchmark
applies them and the report can quote them, instead of each caller re-deriving them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from metaad.errors import ConfigError

#: ``Protocol.normals``: normal rows are dealt to train/val/test at random (by series).
NORMALS_RANDOM = "random"
#: ``Protocol.normals``: the ``source_split`` column decides (``train`` rows may go to train or
#: val, ``test`` rows only to test); anomalies whose source disagrees with their type's split
#: are left out, so no evaluation row ever comes from a training file and vice versa.
NORMALS_SOURCE = "source"


@dataclass(frozen=True)
class Protocol:
    """How the benchmark splits, windows and samples one dataset.

    Listed types win (``test_types`` is the unseen split); otherwise ``n_test_types`` and
    ``n_val_types`` are drawn by seed. Test types with too few rows (or windows) for the
    largest K plus the query anomalies are dropped from the evaluation and reported, never
    sampled with replacement.
    """

    train_types: tuple[str, ...] = ()
    val_types: tuple[str, ...] = ()
    test_types: tuple[str, ...] = ()
    n_val_types: int = 1
    n_test_types: int = 3
    normals: str = NORMALS_RANDOM
    window: int | None = None
    stride: int | None = None
    n_support_normal: int = 50
    n_query_normal: int = 950
    contamination: float = 0.05
    #: NORMALS_SOURCE only: share of the ``train`` source's normals (by series when there are
    #: series) that meta-validation gets; it needs ``n_support_normal + 200`` of them.
    val_normal_share: float = 1.0 / 7.0
    #: Cap on one anomaly type's rows (or windows) in the meta-train and meta-val pools,
    #: drawn by the split seed; ``None`` keeps all. Meta-training samples types uniformly
    #: anyway; the cap keeps one huge type (NSL-KDD's neptune) from dominating pooled
    #: baselines and their per-episode refits. Evaluation pools are never capped.
    max_rows_per_train_type: int | None = None
    #: Plain-language statements that the report quotes (which normals, what was left out).
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.normals not in (NORMALS_RANDOM, NORMALS_SOURCE):
            raise ConfigError(
                f"protocol normals must be {NORMALS_RANDOM!r} or {NORMALS_SOURCE!r}, "
                f"got {self.normals!r}"
            )
        if (self.window is None) != (self.stride is None):
            raise ConfigError("protocol window and stride go together (both set or both None)")
        if self.window is not None and (self.window < 1 or (self.stride or 0) < 1):
            raise ConfigError("protocol window and stride must be >= 1")
        if not 0 < self.contamination < 1:
            raise ConfigError(f"protocol contamination must be in (0, 1), got {self.contamination}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_types": list(self.train_types),
            "val_types": list(self.val_types),
            "test_types": list(self.test_types),
            "n_val_types": self.n_val_types,
            "n_test_types": self.n_test_types,
            "normals": self.normals,
            "window": self.window,
            "stride": self.stride,
            "n_support_normal": self.n_support_normal,
            "n_query_normal": self.n_query_normal,
            "contamination": self.contamination,
            "val_normal_share": self.val_normal_share,
            "max_rows_per_train_type": self.max_rows_per_train_type,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset in the canonical contract, with its protocol and what the loader found.

    Attributes:
        name: registry name (``nsl_kdd``, ``tep``, ...).
        table: canonical table (features, ``label``, ``anomaly_type``; ``series_id``,
            ``timestamp``, ``source_split`` where they apply).
        categorical: categorical feature columns, encoded by the pipeline.
        protocol: how the benchmark must use it; ``None`` for binary sets without types.
        type_groups: anomaly type to a coarser family (NSL-KDD's DoS/Probe/R2L/U2R), for
            reports only; never a feature.
        report: counts, files and digests, dropped columns and why, known data problems.
    """

    name: str
    table: pd.DataFrame
    categorical: tuple[str, ...] = ()
    protocol: Protocol | None = None
    type_groups: Mapping[str, str] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)


__all__ = ["NORMALS_RANDOM", "NORMALS_SOURCE", "LoadedDataset", "Protocol"]
