"""The model bundle as an MLflow pyfunc, so ``mlflow models serve`` can score raw rows.

The pickled object is an empty shell: everything the model knows lives in the bundle folder
that MLflow stores next to it (``artifacts={"bundle": ...}``) and that ``load_context`` reads
back with :meth:`ModelBundle.load` (weights only, nothing unpickled). The ``metaad`` package
travels with the model as ``code_paths``, so a served model imports this module by name.

This module must stay importable in a bare serving environment: it imports neither Prefect
nor Typer, and nothing heavier than the bundle itself needs.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from metaad.bundle import ModelBundle
from metaad.data.schema import SERIES

log = logging.getLogger(__name__)

#: Output columns of :func:`predict_frame`, in order.
SCORE = "anomaly_score"
FLAG = "is_anomaly"
OUTPUT_COLUMNS: tuple[str, ...] = (SCORE, FLAG)

#: The key under which the bundle folder is stored in the MLflow model's artifacts.
BUNDLE_ARTIFACT = "bundle"


def required_columns(bundle: ModelBundle) -> list[str]:
    """Columns a request must carry: the features, plus the series key for windowed models."""
    cols = list(bundle.meta.get("feature_columns") or bundle.preprocessor.input_columns)
    if bundle.window:
        cols.append(SERIES)
    return cols


def check_request(bundle: ModelBundle, frame: pd.DataFrame) -> None:
    """Raise ``ValueError`` naming every missing column.

    Checked up front because the preprocessor would otherwise fail on the first missing
    column only, and a caller fixing a request wants the whole list at once.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"model input must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required_columns(bundle) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"model input lacks required column(s) {missing}; expected "
            f"{required_columns(bundle)}, got {list(frame.columns)}"
        )


def predict_frame(bundle: ModelBundle, frame: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot scores (the bundle's reference normals as support) and alert flags.

    One output row per input row; a windowed model returns one row per window instead, with
    the window's ``series_id``. ``is_anomaly`` is ``score >= bundle.threshold``, the
    threshold calibrated at training time for the target false-positive rate.
    """
    check_request(bundle, frame)
    threshold = bundle.threshold
    if threshold is None:
        raise ValueError("the model bundle has no alert threshold (bundle.json 'threshold')")
    if len(frame) == 0:
        return pd.DataFrame(
            {SCORE: np.empty(0, np.float64), FLAG: np.empty(0, bool)}, columns=list(OUTPUT_COLUMNS)
        )
    pool = bundle.to_pool(frame)
    scores = np.asarray(bundle.score(pool.X), dtype=np.float64)
    out = pd.DataFrame({SCORE: scores, FLAG: scores >= threshold})
    if bundle.window and pool.group is not None:
        out[SERIES] = pool.group
    return out


class MetaADPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around a :class:`ModelBundle`; holds no state until ``load_context``."""

    def __init__(self) -> None:
        self._bundle: ModelBundle | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle a loaded bundle (torch modules) into the model: the artifact folder is
        # the single source of truth, read back without unpickling.
        state = self.__dict__.copy()
        state["_bundle"] = None
        return state

    @property
    def bundle(self) -> ModelBundle:
        if self._bundle is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context first")
        return self._bundle

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        path = context.artifacts.get(BUNDLE_ARTIFACT)
        if path is None:
            raise ValueError(f"the MLflow model has no {BUNDLE_ARTIFACT!r} artifact")
        bundle = ModelBundle.load(path)
        if bundle.threshold is None:
            raise ValueError(f"the model bundle at {path} has no alert threshold")
        self._bundle = bundle
        log.info(
            "loaded %s bundle (%d feature columns, threshold %.4g)",
            bundle.meta.get("method", "?"),
            len(required_columns(bundle)),
            bundle.threshold,
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return predict_frame(self.bundle, model_input)


__all__ = [
    "BUNDLE_ARTIFACT",
    "FLAG",
    "OUTPUT_COLUMNS",
    "SCORE",
    "MetaADPyfunc",
    "check_request",
    "predict_frame",
    "required_columns",
]
