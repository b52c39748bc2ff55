"""A trained detector with everything needed to score raw rows: the model bundle.

A bundle is a folder: ``bundle.json`` (method, feature columns, window settings, alert
threshold, type split), ``preprocessor.json``, ``detector/`` (``config.json`` plus
``weights.pt``) and ``reference.npz`` (a sample of preprocessed training normals used as
the default normal support, and a few examples of every known type). It holds no pickled
code, so it can be loaded from an untrusted store with ``weights_only`` semantics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, SERIES, TYPE
from metaad.episodes.pool import Pool
from metaad.episodes.preprocess import Preprocessor, make_windows
from metaad.errors import DataError
from metaad.models.base import Adapted, Detector
from metaad.models.registry import load_detector

FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    detector: Detector
    preprocessor: Preprocessor
    reference_normals: np.ndarray
    library_X: np.ndarray
    library_types: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    # -- data -----------------------------------------------------------------------------
    @property
    def window(self) -> dict[str, int] | None:
        return self.meta.get("window")

    @property
    def threshold(self) -> float | None:
        t = self.meta.get("threshold")
        return None if t is None else float(t)

    def to_pool(self, df: pd.DataFrame) -> Pool:
        """Canonical rows to a pool with this bundle's preprocessing (and windows)."""
        X = self.preprocessor.transform(df)
        y = df[LABEL].to_numpy(np.int64) if LABEL in df.columns else np.zeros(len(df), np.int64)
        types = (
            df[TYPE].astype(str).to_numpy() if TYPE in df.columns else np.full(len(df), "normal")
        )
        if self.window:
            if SERIES not in df.columns:
                raise DataError(f"this model scores windows: the rows need a {SERIES!r} column")
            frame = df.assign(**{LABEL: y, TYPE: types})
            W, wy, wt, wg = make_windows(frame, X, **self.window)
            return Pool(W, wy, wt, tuple(self.preprocessor.output_names), wg)
        return Pool(X, y, types.astype(str), tuple(self.preprocessor.output_names))

    # -- scoring --------------------------------------------------------------------------
    def adapt(
        self, X_support: np.ndarray | None = None, y_support: np.ndarray | None = None
    ) -> Adapted:
        """Adapt to a support set, always including the stored reference normals."""
        Xs, ys = self.reference_normals, np.zeros(len(self.reference_normals), np.int64)
        if X_support is not None and len(X_support):
            if y_support is None:
                raise DataError("a support set needs labels")
            Xs = np.concatenate([np.asarray(X_support, np.float32), Xs])
            ys = np.concatenate([np.asarray(y_support, np.int64), ys])
        return self.detector.adapt(Xs, ys)

    def score(
        self,
        X: np.ndarray,
        X_support: np.ndarray | None = None,
        y_support: np.ndarray | None = None,
    ) -> np.ndarray:
        return self.adapt(X_support, y_support).score(X)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.detector.save(directory / "detector")
        self.preprocessor.save(directory / "preprocessor.json")
        with (directory / "reference.npz").open("wb") as fh:
            np.savez(
                fh,
                normals=self.reference_normals,
                library_X=self.library_X,
                library_types=self.library_types.astype("U"),
            )
        meta = {**self.meta, "format": FORMAT_VERSION, "method": self.detector.name}
        (directory / "bundle.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> ModelBundle:
        directory = Path(directory)
        meta_path = directory / "bundle.json"
        if not meta_path.exists():
            raise DataError(f"{directory} is not a metaad model bundle (bundle.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"bundle format {meta.get('format')} is not {FORMAT_VERSION}")
        det = load_detector(directory / "detector", device=device)
        pre = Preprocessor.load(directory / "preprocessor.json")
        with np.load(directory / "reference.npz", allow_pickle=False) as z:
            normals, lib_x, lib_t = z["normals"], z["library_X"], z["library_types"]
        return cls(det, pre, normals, lib_x, lib_t, meta)
