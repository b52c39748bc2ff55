"""The model bundle as an MLflow pyfunc, so ``mlflow models serve`` can score raw rows.

The pickled object is an empty shell: everything the model knows lives in the bundle folder
that MLflow stores next to it (``artifacts={"bundle": ...}``) and that ``load_context`` reads
back with :meth:`ModelBundle.load` (weights only, nothing unpickled). The ``metaad`` package
travels with the model as ``code_paths``, so a served model imports this module by name.

**The request.** Rows with the model's feature columns (plus ``series_id``, and optionally
``timestamp``, for a windowed model). A request may also carry a support set in the same
frame: the optional column ``support_label`` names, for each support row, its anomaly type
(or ``normal``); rows where it is null or empty are the rows to score. With a support set the
model adapts to each named type inside the request; without one it answers from its stored
type library. See :mod:`metaad.typelib` for what the answer means.

**Why the model checks its input itself.** MLflow 3.17 enforces a column signature by
*dropping* columns it does not know (with a log warning) and casting JSON values to the
declared types before the model sees them (``mlflow.models.utils._enforce_schema``,
``mlflow.utils.proto_json_utils.cast_df_types_according_to_schema``), so an extra or
misspelt column would vanish silently and its row be scored without it. The logged
signature therefore declares the output only; :func:`parse_request` checks the input
(missing and extra columns, dtypes, NaN and infinity, empty requests, the size limit, a
support set without anomalies) and every problem becomes an ``MlflowException`` with
``INVALID_PARAMETER_VALUE``, which the scoring server answers with HTTP 400 and the message,
and keeps serving. The input contract is recorded in the MLmodel metadata
(:func:`input_contract`) and shown by the logged input example.

This module must stay importable in a bare serving environment: it imports neither Prefect
nor Typer, and nothing heavier than the bundle itself needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from metaad.bundle import ModelBundle
from metaad.config import ServeConfig
from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE
from metaad.errors import DataError
from metaad.typelib import ServedScorer

log = logging.getLogger(__name__)

#: Output columns of :func:`predict_frame`, in order.
SCORE = "anomaly_score"
FLAG = "is_anomaly"
NEAREST = "nearest_type"
NEAREST_SCORE = "nearest_type_score"
OUTPUT_COLUMNS: tuple[str, ...] = (SCORE, FLAG, NEAREST, NEAREST_SCORE)

#: The optional request column that marks support rows and names their type.
SUPPORT = "support_label"

#: The key under which the bundle folder is stored in the MLflow model's artifacts.
BUNDLE_ARTIFACT = "bundle"

_SAMPLES = 5


class RequestError(DataError):
    """A request the model refuses; the scoring server answers 400 with this message."""


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_support_types: int

    @classmethod
    def of(cls, bundle: ModelBundle) -> Limits:
        """The limits registered with the bundle; params defaults for older bundles."""
        d = ServeConfig()
        got = bundle.meta.get("serve") or {}
        return cls(
            int(got.get("max_rows", d.max_rows)),
            int(got.get("max_support_types", d.max_support_types)),
        )


def required_columns(bundle: ModelBundle) -> list[str]:
    """Columns a request must carry: the features, plus the series key for windowed models."""
    cols = list(bundle.meta.get("feature_columns") or bundle.preprocessor.input_columns)
    if bundle.window:
        cols.append(SERIES)
    return cols


def optional_columns(bundle: ModelBundle) -> list[str]:
    return [SUPPORT, TIMESTAMP] if bundle.window else [SUPPORT]


def input_contract(bundle: ModelBundle) -> list[dict[str, Any]]:
    """The request columns with their type and whether they are required (MLmodel metadata)."""
    cats = set(bundle.preprocessor.categorical)
    out: list[dict[str, Any]] = []
    for c in required_columns(bundle):
        kind = "string" if c in cats else ("any" if c == SERIES else "double")
        out.append({"name": c, "type": kind, "required": True})
    for c in optional_columns(bundle):
        kind = "string" if c == SUPPORT else "any"
        out.append({"name": c, "type": kind, "required": False})
    return out


# -- request checks -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A checked request: the rows to score and the support rows with their labels."""

    query: pd.DataFrame
    support: pd.DataFrame | None
    support_labels: np.ndarray | None


def _samples(values: pd.Series | np.ndarray) -> list[Any]:
    arr = np.asarray(values, dtype=object)[:_SAMPLES]
    return [v.item() if hasattr(v, "item") else v for v in arr]


def _rows(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask)[:_SAMPLES].tolist()


def _numeric_problems(name: str, col: pd.Series) -> list[str]:
    """A numeric feature column: numbers only (no booleans, no strings), all finite."""
    if pd.api.types.is_bool_dtype(col):
        return [f"column {name!r} must hold numbers, got booleans"]
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        as_obj = col.astype(object)
        is_bool = as_obj.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(bool)
        coerced = pd.to_numeric(as_obj.where(~is_bool, None), errors="coerce")
        bad = (coerced.isna().to_numpy() & as_obj.notna().to_numpy()) | is_bool
        if bad.any():
            return [
                f"column {name!r} must hold numbers; {int(bad.sum())} value(s) are not, "
                f"e.g. {_samples(as_obj[bad])} at rows {_rows(bad)}"
            ]
        values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    problems = []
    nan = np.isnan(values)
    if nan.any():
        problems.append(
            f"column {name!r} has {int(nan.sum())} NaN/missing value(s), at rows {_rows(nan)}"
        )
    inf = np.isinf(values)
    if inf.any():
        problems.append(
            f"column {name!r} has {int(inf.sum())} infinite value(s), at rows {_rows(inf)}"
        )
    return problems


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _string_problems(name: str, col: pd.Series, *, allow_missing: bool) -> list[str]:
    values = col.astype(object).to_numpy()
    missing = np.array([_is_missing(v) for v in values], dtype=bool)
    wrong = np.array(
        [not m and not isinstance(v, str) for v, m in zip(values, missing, strict=True)], bool
    )
    problems = []
    if wrong.any():
        problems.append(
            f"column {name!r} must hold strings; {int(wrong.sum())} value(s) are not, e.g. "
            f"{_samples(values[wrong])} at rows {_rows(wrong)}"
        )
    if missing.any() and not allow_missing:
        problems.append(
            f"column {name!r} has {int(missing.sum())} missing value(s), at rows {_rows(missing)}"
        )
    return problems


def parse_request(bundle: ModelBundle, frame: Any, limits: Limits | None = None) -> Request:
    """Check a request and split it into rows to score and a support set.

    Raises :class:`RequestError` listing every problem found (a caller fixing a request
    wants them all at once); the size checks come first, so an oversized request is
    refused before anything else is computed on it.
    """
    limits = limits or Limits.of(bundle)
    if not isinstance(frame, pd.DataFrame):
        raise RequestError(
            f"model input must be a table (a pandas DataFrame; JSON 'dataframe_split' or "
            f"'dataframe_records'), got {type(frame).__name__}"
        )
    if len(frame) == 0:
        raise RequestError("the request has no rows")
    if len(frame) > limits.max_rows:
        raise RequestError(
            f"the request has {len(frame)} rows; this model takes at most {limits.max_rows} "
            "per request (serve.max_rows): split it, or score files with `metaad score`"
        )
    required = required_columns(bundle)
    allowed = set(required) | set(optional_columns(bundle))
    columns = [str(c) for c in frame.columns]
    problems: list[str] = []
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise RequestError(f"the request repeats column(s) {dup}")
    missing = [c for c in required if c not in columns]
    if missing:
        problems.append(f"missing required column(s) {missing}")
    extra = [c for c in columns if c not in allowed]
    if extra:
        hint = ""
        if LABEL in extra or TYPE in extra:
            hint = f" (send labelled support rows with {SUPPORT!r} instead)"
        problems.append(f"unexpected column(s) {extra}{hint}")
    if missing or extra:
        problems.append(
            f"expected {required}, optionally {sorted(allowed - set(required))}; got {columns}"
        )
        raise RequestError("bad request columns: " + "; ".join(problems))

    for c in bundle.preprocessor.numeric:
        problems += _numeric_problems(c, frame[c])
    for c in bundle.preprocessor.categorical:
        problems += _string_problems(c, frame[c], allow_missing=False)
    if bundle.window and frame[SERIES].isna().any():
        gaps = frame[SERIES].isna().to_numpy()
        problems.append(f"column {SERIES!r} has missing values at rows {_rows(gaps)}")
    if SUPPORT in columns:
        problems += _string_problems(SUPPORT, frame[SUPPORT], allow_missing=True)
    if problems:
        raise RequestError("bad request: " + "; ".join(problems))

    if SUPPORT not in columns:
        return Request(frame, None, None)
    raw = frame[SUPPORT].astype(object).to_numpy()
    labels = np.array(["" if _is_missing(v) else str(v).strip() for v in raw], dtype=object)
    is_support = labels != ""
    if not is_support.any():
        return Request(frame.drop(columns=[SUPPORT]), None, None)
    if is_support.all():
        raise RequestError(
            f"every row is a support row ({SUPPORT!r} set): nothing to score; leave "
            f"{SUPPORT!r} empty (null) on the rows to score"
        )
    sup_labels = labels[is_support].astype(str)
    types = sorted(set(sup_labels.tolist()) - {NORMAL})
    if not types:
        raise RequestError(
            f"the support set has no anomalies: its {int(is_support.sum())} row(s) are all "
            f"labelled {NORMAL!r}; label at least one support row with its anomaly type"
        )
    if len(types) > limits.max_support_types:
        raise RequestError(
            f"the support set names {len(types)} anomaly types; this model takes at most "
            f"{limits.max_support_types} per request (serve.max_support_types)"
        )
    query = frame.loc[~is_support].drop(columns=[SUPPORT])
    support = frame.loc[is_support].drop(columns=[SUPPORT])
    return Request(query, support, sup_labels)


# -- scoring --------------------------------------------------------------------------------
def _empty_output() -> pd.DataFrame:
    return pd.DataFrame(
        {
            SCORE: np.empty(0, np.float64),
            FLAG: np.empty(0, bool),
            NEAREST: np.empty(0, dtype=object),
            NEAREST_SCORE: np.empty(0, np.float64),
        },
        columns=list(OUTPUT_COLUMNS),
    )


def score_request(
    bundle: ModelBundle, request: Request, scorer: ServedScorer | None = None
) -> pd.DataFrame:
    """Score a checked request: one output row per row to score (per window when windowed)."""
    scorer = scorer or ServedScorer(bundle)
    try:
        pool = bundle.to_pool(request.query)
        X_sup = labels = None
        if request.support is not None and request.support_labels is not None:
            lab = request.support_labels
            sup = request.support.assign(
                **{LABEL: (lab != NORMAL).astype(np.int64), TYPE: lab.astype(str)}
            )
            spool = bundle.to_pool(sup)
            X_sup, labels = spool.X, spool.types.astype(str)
        res = scorer.score(pool.X, X_sup, labels)
    except DataError as exc:
        raise RequestError(str(exc)) from exc
    out = pd.DataFrame(
        {
            SCORE: res.anomaly_score.astype(np.float64),
            FLAG: res.is_anomaly.astype(bool),
            NEAREST: res.nearest_type.astype(object),
            NEAREST_SCORE: res.nearest_type_score.astype(np.float64),
        },
        columns=list(OUTPUT_COLUMNS),
    )
    if bundle.window and pool.group is not None:
        out[SERIES] = pool.group
    return out


def predict_frame(
    bundle: ModelBundle, frame: pd.DataFrame, scorer: ServedScorer | None = None
) -> pd.DataFrame:
    """Check and score one request frame (the served model's predict, without MLflow)."""
    return score_request(bundle, parse_request(bundle, frame), scorer)


def output_example() -> pd.DataFrame:
    """A one-row answer, for the logged output signature."""
    return pd.DataFrame(
        {SCORE: [0.5], FLAG: [False], NEAREST: ["some_type"], NEAREST_SCORE: [0.2]},
        columns=list(OUTPUT_COLUMNS),
    )


def serving_signature() -> Any:
    """Outputs only: the input is checked by :func:`parse_request` (see the module doc)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=None,
        outputs=Schema(
            [
                ColSpec("double", SCORE),
                ColSpec("boolean", FLAG),
                ColSpec("string", NEAREST),
                ColSpec("double", NEAREST_SCORE),
            ]
        ),
    )


class MetaADPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around a :class:`ModelBundle`; holds no state until ``load_context``."""

    def __init__(self) -> None:
        self._bundle: ModelBundle | None = None
        self._scorer: ServedScorer | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle a loaded bundle (torch modules) into the model: the artifact folder is
        # the single source of truth, read back without unpickling.
        state = self.__dict__.copy()
        state["_bundle"] = None
        state["_scorer"] = None
        return state

    @property
    def bundle(self) -> ModelBundle:
        if self._bundle is None:
            raise RuntimeError("the model is not loaded: MLflow calls load_context first")
        return self._bundle

    @property
    def scorer(self) -> ServedScorer:
        if self._scorer is None:
            self._scorer = ServedScorer(self.bundle)
        return self._scorer

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        path = context.artifacts.get(BUNDLE_ARTIFACT)
        if path is None:
            raise ValueError(f"the MLflow model has no {BUNDLE_ARTIFACT!r} artifact")
        bundle = ModelBundle.load(path)
        self._bundle = bundle
        # Adapt to the library once, before the first request arrives.
        self._scorer = ServedScorer(bundle)
        log.info(
            "loaded %s bundle (%d feature columns, %d known types: %s)",
            bundle.meta.get("method", "?"),
            len(required_columns(bundle)),
            len(bundle.type_names()),
            ", ".join(bundle.type_names()),
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        try:
            return predict_frame(self.bundle, model_input, self.scorer)
        except RequestError as exc:
            # INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message.
            raise MlflowException.invalid_parameter_value(str(exc)) from exc


__all__ = [
    "BUNDLE_ARTIFACT",
    "FLAG",
    "NEAREST",
    "NEAREST_SCORE",
    "OUTPUT_COLUMNS",
    "SCORE",
    "SUPPORT",
    "Limits",
    "MetaADPyfunc",
    "Request",
    "RequestError",
    "input_contract",
    "output_example",
    "parse_request",
    "predict_frame",
    "required_columns",
    "score_request",
    "serving_signature",
]
