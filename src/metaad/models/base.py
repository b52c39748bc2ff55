"""The one contract every detector follows, meta-learner or baseline.

``fit(pool, cfg)`` learns from the meta-train pool (tasks built from known anomaly types);
``adapt(X_support, y_support)`` returns an :class:`Adapted` detector for one new type from
its support set (K labelled anomalies plus some normals; K may be 0); ``Adapted.score(X)``
returns one float per row, higher meaning more anomalous. Evaluation, the pipeline and
serving only ever use these three calls, so any detector can stand in for any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from metaad.episodes.pool import Pool
from metaad.errors import ConfigError


class Adapted(Protocol):
    """A detector adapted to one task."""

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row of ``X``; higher means more anomalous."""
        ...


@dataclass(frozen=True)
class FitConfig:
    """Settings shared by every meta-training run (the ``train`` section of params.yaml).

    A batch of ``meta_batch`` tasks is drawn per outer step; all tasks of one batch share a
    shot count drawn from ``shots`` so the batch can be vmapped.
    """

    steps: int = 300
    meta_batch: int = 16
    shots: tuple[int, ...] = (1, 5, 10)
    n_support_normal: int = 50
    n_query_normal: int = 64
    n_query_anomaly: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    val_every: int = 50
    progress: bool = False
    #: Compile the MAML family's meta-loss with ``torch.compile`` (inductor). On the 2-core
    #: CPU of bench/bench_maml.py it ran 1.8x faster per outer step, after about 80 s of
    #: compiling per distinct task shape; worth it for long runs and on GPU, not for the
    #: short runs of the tests. Metric learners and baselines ignore it.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"train.steps must be >= 0, got {self.steps}")
        if self.meta_batch < 1:
            raise ConfigError(f"train.meta_batch must be >= 1, got {self.meta_batch}")
        if not self.shots or min(self.shots) < 0:
            raise ConfigError(f"train.shots must be non-empty and >= 0, got {self.shots}")
        if self.n_support_normal < 1 or self.n_query_normal < 1 or self.n_query_anomaly < 1:
            raise ConfigError(
                "train.n_support_normal, n_query_normal and n_query_anomaly must be >= 1"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shots"] = list(self.shots)
        return d


@dataclass
class History:
    """What happened during fit: one record per logged step (loss, optional val metric)."""

    records: list[dict[str, float]] = field(default_factory=list)
    #: The step whose loss was not finite, when training stopped there and kept the weights
    #: of its best validation instead (``None``: it ran to the end).
    diverged_at: int | None = None

    def log(self, step: int, **values: float) -> None:
        self.records.append({"step": float(step), **{k: float(v) for k, v in values.items()}})

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), r[key]) for r in self.records if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]


#: Called after each logged step with (step, values); the pipeline uses it for live metrics.
StepCallback = Callable[[int, dict[str, float]], None]


class Detector(ABC):
    """Base class for every detector. Subclasses set ``name`` and ``family``.

    ``family`` is ``"metric"`` or ``"maml"`` for meta-learners and ``"baseline"`` otherwise.
    Meta-learners persist as ``weights.pt`` (a plain tensor dict, loaded with
    ``torch.load(weights_only=True)``) plus ``config.json``; nothing is unpickled.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "baseline"
    #: Whether ``save``/``load`` are supported (meta-learners: yes).
    persistable: ClassVar[bool] = False

    def __init__(self, input_shape: tuple[int, ...], **hparams: Any) -> None:
        if not input_shape or min(input_shape) < 1:
            raise ConfigError(f"{self.name}: input_shape must be positive, got {input_shape}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.hparams = dict(hparams)

    # -- contract -------------------------------------------------------------------------
    @abstractmethod
    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        """Learn from the meta-train pool; never sees evaluation types."""

    @abstractmethod
    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        """Adapt to one task from its support set (K may be 0: normals only)."""

    # -- persistence ----------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``from_config`` rebuilds the detector."""
        return {"name": self.name, "input_shape": list(self.input_shape), "hparams": self.hparams}

    def save(self, directory: str | Path) -> Path:
        raise NotImplementedError(f"{self.name} is a baseline and is refitted, not saved")

    # -- helpers --------------------------------------------------------------------------
    def check_support(self, X_support: np.ndarray, y_support: np.ndarray) -> None:
        """Raise ``ValueError`` naming the problem if a support set is unusable."""
        if X_support.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: support rows have shape {X_support.shape[1:]}, "
                f"expected {self.input_shape}"
            )
        if len(X_support) != len(y_support):
            raise ValueError(
                f"{self.name}: support has {len(X_support)} rows but {len(y_support)} labels"
            )
        if not np.isin(y_support, (0, 1)).all():
            raise ValueError(f"{self.name}: support labels must be 0 or 1")
        if (y_support == 0).sum() == 0:
            raise ValueError(f"{self.name}: the support set needs at least one normal row")
        if not np.isfinite(X_support).all():
            raise ValueError(f"{self.name}: support rows contain NaN or infinite values")

    def check_query(self, X: np.ndarray) -> None:
        if X.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: rows have shape {X.shape[1:]}, expected {self.input_shape}"
            )
        if not np.isfinite(X).all():
            raise ValueError(f"{self.name}: rows to score contain NaN or infinite values")
