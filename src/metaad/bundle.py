"""A trained detector with everything needed to score raw rows: the model bundle.

A bundle is a folder: ``bundle.json`` (method, feature columns, window settings, alert
threshold, type split, the type library's bookkeeping and the serving limits),
``preprocessor.json``, ``detector/`` (``config.json`` plus ``weights.pt``) and
``reference.npz``: a sample of preprocessed training normals used as the default normal
support, the type library (a few preprocessed examples of every known anomaly type, adapted
to when the model is loaded: see :mod:`metaad.typelib`) and, in a registered model,
held-out normals on which served alerts are calibrated. It holds no pickled code, so it can
be loaded from an untrusted store with ``weights_only`` semantics.

The calibration normals are optional so that bundles written by ``metaad train`` (which has
no reason to carry them) and older registered bundles still load; registration adds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, SERIES, TYPE
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
    #: Held-out normals (never in any support set) on which alerts are calibrated.
    calibration_normals: np.ndarray | None = None

    # -- data -----------------------------------------------------------------------------
    @property
    def window(self) -> dict[str, int] | None:
        return self.meta.get("window")

    @property
    def threshold(self) -> float | None:
        t = self.meta.get("threshold")
        return None if t is None else float(t)

    @property
    def target_fpr(self) -> float:
        return float(self.meta.get("target_fpr", 0.01))

    def type_names(self) -> list[str]:
        """The type library's anomaly types, in the order they were added."""
        seen: dict[str, None] = {}
        for t in self.library_types.astype(str).tolist():
            seen.setdefault(t, None)
        return list(seen)

    def type_examples(self, name: str) -> np.ndarray:
        return self.library_X[self.library_types.astype(str) == name]

    def type_info(self) -> dict[str, dict[str, Any]]:
        """Per known type: how many stored examples, and where it came from.

        Bundles from ``metaad train`` record nothing; their library holds the meta-train
        types, so that is what an unrecorded type is reported as.
        """
        recorded = self.meta.get("types") or {}
        out: dict[str, dict[str, Any]] = {}
        for t in self.type_names():
            info = dict(recorded.get(t) or {"source": "meta-train"})
            info["n_examples"] = len(self.type_examples(t))
            out[t] = info
        return out

    def weights_digest(self) -> str:
        """sha256 over the detector's saved tensors: the meta-learner's identity.

        Computed from what ``save`` writes (every persisted tensor, Meta-SGD step sizes
        included), by name and bytes, so it does not depend on how a zip file was written.
        A type addition must leave it unchanged (no retraining), which its gate checks.
        """
        import tempfile

        import torch

        h = hashlib.sha256()
        with tempfile.TemporaryDirectory() as tmp:
            self.detector.save(Path(tmp) / "d")
            state = torch.load(Path(tmp) / "d" / "weights.pt", weights_only=True)
        for k in sorted(state):
            v = state[k]
            h.update(k.encode())
            if isinstance(v, torch.Tensor):
                h.update(str(v.dtype).encode())
                h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            else:
                h.update(repr(v).encode())
        return h.hexdigest()

    def with_type(
        self, name: str, X: np.ndarray, info: dict[str, Any] | None = None, replace: bool = False
    ) -> ModelBundle:
        """A copy with ``name`` in the type library, from preprocessed examples ``X``.

        Nothing is trained: the stored examples are what the model adapts to when it loads.
        """
        name = str(name).strip()
        if not name or name == NORMAL:
            raise DataError(f"a type needs a name other than {NORMAL!r} and the empty string")
        X = np.asarray(X, dtype=np.float32)
        if len(X) == 0:
            raise DataError(f"type {name!r}: no examples")
        if X.shape[1:] != self.library_X.shape[1:] and len(self.library_X):
            raise DataError(
                f"type {name!r}: examples have shape {X.shape[1:]}, the model's rows "
                f"{self.library_X.shape[1:]}"
            )
        if not np.isfinite(X).all():
            raise DataError(f"type {name!r}: examples hold NaN or infinite values")
        known = self.library_types.astype(str)
        if name in set(known.tolist()):
            if not replace:
                raise DataError(
                    f"type {name!r} is already in the type library "
                    f"({int((known == name).sum())} examples); replace it with replace=True "
                    "(`metaad types add --replace`)"
                )
            keep = known != name
            lib_x, lib_t = self.library_X[keep], known[keep]
        else:
            lib_x, lib_t = self.library_X, known
        meta = json.loads(json.dumps(self.meta))
        types = meta.setdefault("types", {})
        types[name] = {**(info or {}), "n_examples": len(X)}
        return dataclasses.replace(
            self,
            library_X=np.concatenate([lib_x, X]) if len(lib_x) else X,
            library_types=np.concatenate([lib_t, np.full(len(X), name)]).astype("U"),
            meta=meta,
        )

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
        arrays = {
            "normals": self.reference_normals,
            "library_X": self.library_X,
            "library_types": self.library_types.astype("U"),
        }
        if self.calibration_normals is not None:
            arrays["calibration"] = np.asarray(self.calibration_normals, dtype=np.float32)
        with (directory / "reference.npz").open("wb") as fh:
            np.savez(fh, **arrays)
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
            calibration = z["calibration"] if "calibration" in z.files else None
        return cls(det, pre, normals, lib_x, lib_t, meta, calibration)
