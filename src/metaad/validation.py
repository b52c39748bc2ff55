"""The Great Expectations gate in front of every stage that reads the canonical table.

Why a GX suite and not only :func:`metaad.data.schema.check_canonical`: the schema check
answers "can the code run on this table?"; this gate answers "is this table like the data the
pipeline was built and evaluated on?" (value ranges against a reference profile, null and
duplicate rates, enough rows per anomaly type for the configured shots) and leaves an audit
trail that a reviewer can open: ``report.json`` and GX's own rendered Data Docs.

The suite is built in code from ``params.yaml``'s ``validate`` section and, after the first
validated data version, from that version's :func:`reference_profile`; nothing lives in a GX
project folder, so the gate is versioned with the code and runs on an ephemeral context.

Two checks have no GX expectation of their own (rows per anomaly type, duplicate-row rate).
They are expressed honestly as GX expectations on derived per-row columns that are added to a
*copy* of the table just before validation (``__metaad_type_rows``, ``__metaad_is_duplicate``),
so the verdict, the counts and the Data Docs still come from GX and the caller's frame is never
touched.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metaad.config import ValidateConfig, set_offline_env
from metaad.data.schema import LABEL, NORMAL, RESERVED, SERIES, TIMESTAMP, TYPE
from metaad.errors import DataError

if TYPE_CHECKING:
    import great_expectations as gx

logger = logging.getLogger(__name__)

#: Derived column: for an anomaly row, how many anomaly rows share its type.
TYPE_ROWS = "__metaad_type_rows"
#: Derived column: True for a row that repeats an earlier row exactly.
IS_DUPLICATE = "__metaad_is_duplicate"
DERIVED: tuple[str, ...] = (TYPE_ROWS, IS_DUPLICATE)

SUITE_NAME = "metaad_canonical"
ASSET_NAME = "canonical_table"
SITE_NAME = "metaad_site"
PROFILE_VERSION = 1

#: dtype names GX accepts for a numeric feature. GX compares the pandas dtype with
#: ``np.dtype(name)``; the ``*Dtype`` names cover pandas' nullable extension types.
NUMERIC_TYPES: tuple[str, ...] = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "bool",
    "Int8Dtype",
    "Int16Dtype",
    "Int32Dtype",
    "Int64Dtype",
    "Float32Dtype",
    "Float64Dtype",
    "BooleanDtype",
)
#: dtype names for ``label``: integers only (0/1 as floats usually means a lossy import).
LABEL_TYPES: tuple[str, ...] = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "Int8Dtype",
    "Int16Dtype",
    "Int32Dtype",
    "Int64Dtype",
)
#: pandas 3 names string columns ``str``; ``ExpectColumnValuesToBeOfType`` compares the
#: dtype's scalar type, so ``"str"`` matches both the ``str`` dtype and object columns of
#: Python strings (checked value by value), while ``ExpectColumnValuesToBeInTypeList`` with
#: ``["str"]`` does not match pandas 3's ``str`` dtype at all.
STRING_TYPE = "str"

#: Largest finite float64; a between-check with these bounds is exactly "finite".
_FLOAT_MAX = float(np.finfo(np.float64).max)
_MAX_SAMPLES = 5


# --------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class ValidationReport:
    """What the gate found, in a form a person, a log and MLflow can all read.

    ``failures`` holds one JSON-safe dict per failed expectation (expectation, column, kwargs,
    observed value or unexpected count, up to five sample values and row labels, and a
    ``message`` in plain words). ``gx_result`` is GX's full validation result as JSON, kept
    for ``report.json`` but left out of comparisons and ``repr`` because it is large.
    """

    success: bool
    n_expectations: int
    failures: list[dict[str, Any]]
    statistics: dict[str, Any]
    n_rows: int = 0
    data_docs: str | None = None
    gx_result: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The report without GX's raw result (which ``report.json`` carries separately)."""
        out = asdict(self)
        out.pop("gx_result")
        out["summary"] = self.summary()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (no NaN/Infinity tokens), so any JSON reader can load it."""
        return json.dumps(_json_safe(self.to_dict()), indent=indent, allow_nan=False)

    def summary(self) -> str:
        """Multi-line text naming each failed expectation, its column and sample values."""
        if self.success:
            return (
                f"data validation passed: {self.n_expectations} expectations on {self.n_rows} rows"
            )
        lines = [
            f"data validation failed: {len(self.failures)} of {self.n_expectations} "
            f"expectations failed on {self.n_rows} rows"
        ]
        for f in self.failures:
            where = f" column {f['column']!r}" if f.get("column") else ""
            lines.append(f"- {f['expectation']}{where}: {f['message']}")
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)


class ValidationFailed(DataError):
    """The table failed the GX gate; ``report`` holds every failed expectation."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report

    def __reduce__(self) -> tuple[type[ValidationFailed], tuple[ValidationReport]]:
        # Rebuild from the report (not the message), so the error survives Prefect's result
        # storage and remote workers.
        return (type(self), (self.report,))


# --------------------------------------------------------------------------------------------
# Reference profile


def reference_profile(df: pd.DataFrame, *, categorical: Sequence[str] = ()) -> dict[str, Any]:
    """Summarise a reference table (the first validated data version) for later gates.

    Later versions are checked against these ranges, so a unit change or a broken sensor in
    a new extract is caught even when every value is a valid number. Statistics use finite
    values only: a stray inf in the reference must not widen every later range to infinity.
    The result is plain JSON (store it next to the data version, log it to MLflow).
    """
    cats = [c for c in categorical if c in df.columns]
    numeric: dict[str, dict[str, Any]] = {}
    for c in df.columns:
        if c in RESERVED or c in cats:
            continue
        col = df[c]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            numeric[c] = {"min": None, "max": None, "mean": None, "std": None, "n_finite": 0}
            continue
        numeric[c] = {
            "min": float(finite.min()),
            "max": float(finite.max()),
            "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "n_finite": int(finite.size),
        }
    types: dict[str, int] = {}
    if LABEL in df.columns and TYPE in df.columns:
        anom = df.loc[df[LABEL] == 1, TYPE].dropna().astype(str)
        types = {str(k): int(v) for k, v in anom.value_counts().sort_index().items()}
    return {
        "version": PROFILE_VERSION,
        "n_rows": len(df),
        "columns": [str(c) for c in df.columns],
        "dtypes": {str(c): str(df[c].dtype) for c in df.columns},
        "categorical": list(cats),
        "numeric": numeric,
        "anomaly_types": types,
    }


# --------------------------------------------------------------------------------------------
# Suite


def _gx() -> Any:
    """Import GX lazily and only after the offline variables are set.

    GX takes seconds to import and reads ``GX_ANALYTICS_ENABLED`` when it starts, so importing
    it at module level would slow every CLI command and could phone home once.
    """
    set_offline_env()
    import great_expectations as gx

    return gx


def _schema(source: pd.DataFrame | Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Column names and dtype names from a frame or a profile."""
    if isinstance(source, pd.DataFrame):
        return [str(c) for c in source.columns], {str(c): str(source[c].dtype) for c in source}
    if "columns" not in source:
        raise DataError("build_suite needs a DataFrame or a reference_profile() dict")
    return list(source["columns"]), dict(source.get("dtypes", {}))


def _widened(stats: Mapping[str, Any], slack: float) -> tuple[float, float] | None:
    """The reference [min, max] widened by ``slack`` times its span on each side."""
    lo, hi = stats.get("min"), stats.get("max")
    if lo is None or hi is None:
        return None
    span = float(hi) - float(lo)
    if span <= 0:  # a constant reference column: allow a little room around the constant
        span = max(abs(float(hi)), 1.0)
    return float(lo) - slack * span, float(hi) + slack * span


def build_suite(
    df_schema_or_profile: pd.DataFrame | Mapping[str, Any],
    cfg: ValidateConfig,
    *,
    categorical: Sequence[str] = (),
    min_rows_per_type: int,
    profile: Mapping[str, Any] | None = None,
    extra: Sequence[Any] = (),
) -> gx.ExpectationSuite:
    """Build the canonical-table suite in code.

    ``df_schema_or_profile`` fixes the expected column set: a reference profile (preferred,
    so a dropped or renamed column in a new version is caught) or a frame. ``profile`` gives
    the value ranges; when it is None and the first argument is a profile, that one is used.
    With no profile at all (the first data version) ranges are not checked, only finiteness.

    Each expectation carries ``meta={"check": ...}`` so the report can word its failure, and
    ``notes`` that Data Docs show, explaining why the rule exists.
    """
    gx = _gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    if min_rows_per_type < 0:
        raise DataError(f"min_rows_per_type must be >= 0, got {min_rows_per_type}")
    if profile is None and not isinstance(df_schema_or_profile, pd.DataFrame):
        profile = df_schema_or_profile
    columns, dtypes = _schema(df_schema_or_profile)
    cats = list(dict.fromkeys([*categorical, *((profile or {}).get("categorical") or ())]))
    ranges: Mapping[str, Any] = (profile or {}).get("numeric", {})
    nullable = set(cfg.nullable)
    mostly_non_null = 1.0 - float(cfg.max_null_fraction)

    expected = list(dict.fromkeys([*columns, LABEL, TYPE, *cats]))
    features = [c for c in expected if c not in RESERVED and c not in cats]
    derived = [IS_DUPLICATE] + ([TYPE_ROWS] if min_rows_per_type > 0 else [])

    exps: list[Any] = []

    def add(exp: Any, check: str, notes: str) -> None:
        exp.meta = {"check": check}
        exp.notes = notes
        exps.append(exp)

    add(
        gxe.ExpectTableColumnsToMatchSet(column_set=[*expected, *derived], exact_match=True),
        "columns",
        "The canonical contract: the reference columns plus label and anomaly_type. "
        f"{', '.join(derived)} are derived by the gate itself.",
    )
    add(
        gxe.ExpectTableRowCountToBeBetween(
            min_value=max(int(cfg.min_rows), 1), max_value=int(cfg.max_rows)
        ),
        "row_count",
        "Too few rows cannot fill episodes; an empty table always fails.",
    )
    for c in features:
        add(
            gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=list(NUMERIC_TYPES)),
            "numeric_type",
            "Numeric feature; text here usually means a bad parse or an undeclared category.",
        )
        if c not in nullable:
            add(
                gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=mostly_non_null),
                "not_null",
                "validate.max_null_fraction; list the column in validate.nullable to allow NaN.",
            )
        if dtypes.get(c) in ("bool", "boolean"):
            continue
        add(
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=-_FLOAT_MAX, max_value=_FLOAT_MAX
            ),
            "finite",
            "Infinite values break scaling and distances.",
        )
        bounds = _widened(ranges[c], cfg.range_slack) if c in ranges else None
        if bounds is not None:
            add(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c, min_value=bounds[0], max_value=bounds[1]
                ),
                "range",
                f"Reference range widened by validate.range_slack={cfg.range_slack} of its span "
                "on each side; values far outside it mean a unit change or a broken source.",
            )
    for c in cats:
        add(
            gxe.ExpectColumnValuesToBeOfType(column=c, type_=STRING_TYPE),
            "string_type",
            "Declared categorical feature, encoded by the pipeline.",
        )
        if c not in nullable:
            add(
                gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=mostly_non_null),
                "not_null",
                "validate.max_null_fraction; list the column in validate.nullable to allow nulls.",
            )
    add(
        gxe.ExpectColumnValuesToBeInTypeList(column=LABEL, type_list=list(LABEL_TYPES)),
        "label_type",
        "label is an integer 0/1.",
    )
    add(gxe.ExpectColumnValuesToNotBeNull(column=LABEL), "not_null", "Every row needs a label.")
    add(
        gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=[0, 1]),
        "label_values",
        "0 = normal, 1 = anomaly.",
    )
    add(
        gxe.ExpectColumnValuesToBeOfType(column=TYPE, type_=STRING_TYPE),
        "string_type",
        "anomaly_type names the kind of anomaly; tasks are built per type.",
    )
    add(
        gxe.ExpectColumnValuesToNotBeNull(column=TYPE),
        "not_null",
        "An anomaly without a type cannot be put in any task.",
    )
    add(
        gxe.ExpectColumnValuesToBeInSet(
            column=TYPE, value_set=[NORMAL], row_condition=Column(LABEL) == 0
        ),
        "normal_type",
        f"Normal rows (label 0) have anomaly_type {NORMAL!r}.",
    )
    add(
        gxe.ExpectColumnValuesToNotBeInSet(
            column=TYPE, value_set=[NORMAL], row_condition=Column(LABEL) == 1
        ),
        "anomaly_type_named",
        f"Anomaly rows (label 1) have a real type, not {NORMAL!r}.",
    )
    for c in (TIMESTAMP, SERIES):
        if c in expected:
            add(gxe.ExpectColumnValuesToNotBeNull(column=c), "not_null", "Orders time series.")
    if min_rows_per_type > 0:
        add(
            gxe.ExpectColumnValuesToBeBetween(
                column=TYPE_ROWS, min_value=min_rows_per_type, row_condition=Column(LABEL) == 1
            ),
            "rows_per_type",
            f"{TYPE_ROWS} = rows of this row's anomaly type; each type needs at least "
            f"{min_rows_per_type} (the largest K plus the query anomalies).",
        )
    add(
        gxe.ExpectColumnValuesToBeInSet(
            column=IS_DUPLICATE, value_set=[False], mostly=1.0 - float(cfg.max_duplicate_fraction)
        ),
        "duplicates",
        f"{IS_DUPLICATE} marks exact repeats of an earlier row; many repeats leak between "
        "support and query sets.",
    )
    # A dataset's own checks (metaad.datasets.validation) ride on the same suite and report.
    exps.extend(extra)
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=exps)


def _with_derived(df: pd.DataFrame, min_rows_per_type: int) -> pd.DataFrame:
    """A copy of ``df`` with the derived columns the suite checks; ``df`` is not modified."""
    frame = df.copy()
    frame[IS_DUPLICATE] = df.duplicated(keep="first").to_numpy() if len(df) else []
    if min_rows_per_type > 0:
        counts = pd.Series(np.nan, index=frame.index, dtype="float64")
        if LABEL in df.columns and TYPE in df.columns:
            anom = (df[LABEL] == 1).fillna(False).to_numpy(dtype=bool)
            types = df.loc[anom, TYPE]
            per_type = types.map(types.value_counts())
            counts.loc[anom] = per_type.to_numpy(dtype="float64", na_value=np.nan)
        frame[TYPE_ROWS] = counts.to_numpy()
    return frame


# --------------------------------------------------------------------------------------------
# Running


def _json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars, NaN/inf and other objects into strict-JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if value is None or isinstance(value, bool | int | str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "to_json_dict"):
        return _json_safe(value.to_json_dict())
    return str(value)


def _exception_message(info: Mapping[str, Any]) -> str | None:
    """GX reports exceptions either flat or keyed by metric id; return the first message."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():
        if isinstance(v, Mapping) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def _fmt(values: Sequence[Any]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def _message(f: dict[str, Any], frame: pd.DataFrame, min_rows_per_type: int) -> str:
    """Word one failure for a person who has to fix the data."""
    check, kw, res = f["check"], f["kwargs"], f["_result"]
    n, pct = f.get("unexpected_count"), f.get("unexpected_percent")
    samples, rows = f["sample_values"], f["sample_rows"]
    eg = f", e.g. {_fmt(samples)}" if samples else ""
    at = f" at rows {_fmt(rows)}" if rows else ""
    share = f" ({pct:.2f}%)" if isinstance(pct, float | int) else ""
    if f.get("exception"):
        column = f.get("column")
        if column is not None and column not in frame.columns:
            return "could not run: the column is missing (see the column-set failure)"
        return f"could not run ({f['exception']}); usually a consequence of a wrong dtype"
    if check == "columns":
        mism = (res.get("details") or {}).get("mismatched") or {}
        missing = [c for c in mism.get("missing", []) if c not in DERIVED]
        extra = [c for c in mism.get("unexpected", []) if c not in DERIVED]
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        return "; ".join(parts) or "column set differs from the expected one"
    if check == "row_count":
        obs = res.get("observed_value")
        if obs == 0:
            return "the table is empty (0 rows): nothing to validate or build episodes from"
        return f"the table has {obs} rows; expected {kw.get('min_value')} to {kw.get('max_value')}"
    if check in ("numeric_type", "label_type"):
        want = "an integer dtype" if check == "label_type" else "a numeric dtype"
        return (
            f"dtype is {res.get('observed_value')!r}, expected {want}{eg} "
            "(declare text features in ingest.categorical)"
            if check == "numeric_type"
            else f"dtype is {res.get('observed_value')!r}, expected {want}"
        )
    if check == "string_type":
        if "observed_value" in res:
            return f"dtype is {res['observed_value']!r}, expected text ({STRING_TYPE!r})"
        return f"{n} value(s) are not text{share}{eg}"
    if check == "not_null":
        allowed = (1.0 - float(kw.get("mostly", 1.0))) * 100
        return f"{n} null/NaN value(s){share}, allowed {allowed:.2f}%{at}"
    if check == "finite":
        return f"{n} infinite value(s){eg}{at}"
    if check == "range":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        return (
            f"{n} value(s){share} outside the reference range widened to "
            f"[{lo:.6g}, {hi:.6g}]{eg}{at}"
        )
    if check == "label_values":
        return f"{n} value(s) not in {{0, 1}}{eg}{at}"
    if check == "normal_type":
        return f"{n} normal row(s) (label 0) have {TYPE} other than {NORMAL!r}{eg}{at}"
    if check == "anomaly_type_named":
        return f"{n} anomaly row(s) (label 1) have {TYPE} {NORMAL!r}{at}"
    if check == "rows_per_type":
        # GX flagged the rows; name their types (the derived count is per row).
        few = frame.loc[frame[TYPE_ROWS] < min_rows_per_type, [TYPE, TYPE_ROWS]]
        few = few.drop_duplicates(TYPE).sort_values(TYPE)
        named = ", ".join(f"{t}={int(k)}" for t, k in zip(few[TYPE], few[TYPE_ROWS], strict=True))
        return (
            f"anomaly type(s) with fewer than {min_rows_per_type} rows (needed for the "
            f"configured shots and query): {named}"
        )
    if check == "duplicates":
        allowed = (1.0 - float(kw.get("mostly", 1.0))) * 100
        return f"{n} duplicate row(s){share}, allowed {allowed:.2f}%{at}"
    obs = res.get("observed_value")
    return f"observed {obs!r}" if obs is not None else f"{n} unexpected value(s){eg}{at}"


def _failures(
    gx_result: Mapping[str, Any],
    frame: pd.DataFrame,
    min_rows_per_type: int,
    order: Mapping[str, int],
) -> list[dict[str, Any]]:
    """One JSON-safe dict per failed expectation: root causes in suite order first, then
    checks that could not run (mostly consequences of a missing column or a wrong dtype)."""
    out: list[dict[str, Any]] = []
    for r in gx_result.get("results", []):
        if r.get("success"):
            continue
        conf = r.get("expectation_config") or {}
        kwargs = {k: v for k, v in (conf.get("kwargs") or {}).items() if k != "batch_id"}
        res = r.get("result") or {}
        f: dict[str, Any] = {
            "expectation": conf.get("type"),
            "check": (conf.get("meta") or {}).get("check"),
            "column": kwargs.get("column"),
            "kwargs": kwargs,
            "observed": res.get("observed_value"),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "sample_values": list(res.get("partial_unexpected_list") or [])[:_MAX_SAMPLES],
            "sample_rows": list(res.get("partial_unexpected_index_list") or [])[:_MAX_SAMPLES],
            "exception": _exception_message(r.get("exception_info") or {}),
            "_result": res,
        }
        if f["check"] == "numeric_type" and not f["exception"] and f["column"] in frame:
            # GX reports only the dtype; show the values that make the column non-numeric.
            col = frame[f["column"]]
            bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
            f["sample_values"] = (bad if len(bad) else col.dropna()).head(_MAX_SAMPLES).tolist()
        f["message"] = _message(f, frame, min_rows_per_type)
        del f["_result"]
        f["_order"] = order.get(conf.get("id"), len(order))
        out.append(f)
    out.sort(key=lambda f: (f["exception"] is not None, f["_order"]))
    for f in out:
        del f["_order"]
    return [_json_safe(f) for f in out]


def _site_config(base_directory: Path) -> dict[str, Any]:
    """A filesystem Data Docs site: the ephemeral context keeps its stores in memory, but
    a site's HTML goes wherever its store backend points, so GX renders straight into our
    folder."""
    return {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(base_directory.resolve()),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


def validate_table(
    df: pd.DataFrame,
    cfg: ValidateConfig,
    *,
    categorical: Sequence[str] = (),
    min_rows_per_type: int,
    profile: Mapping[str, Any] | None = None,
    report_dir: Path | None = None,
    extra: Sequence[Any] = (),
) -> ValidationReport:
    """Run the suite on ``df`` in an ephemeral GX context and return what it found.

    The expected column set comes from ``profile`` when given, else from ``df`` itself (the
    first data version is its own reference; label, anomaly_type and declared categorical
    columns are required either way). With ``report_dir``, ``report.json`` and GX's Data
    Docs (``data_docs/index.html``) are written there, replacing an earlier ``data_docs``.
    Never raises on bad data: use :func:`validate_or_raise` to stop a pipeline.
    """
    gx = _gx()
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    start = time.perf_counter()
    suite = build_suite(
        profile if profile is not None else df,
        cfg,
        categorical=categorical,
        min_rows_per_type=min_rows_per_type,
        profile=profile,
        extra=extra,
    )
    frame = _with_derived(df, min_rows_per_type)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas("metaad")
        .add_dataframe_asset(ASSET_NAME)
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = context.suites.add(suite)
    run_id = uuid.uuid4().hex[:8]
    vd = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"canonical_{run_id}", data=batch_def, suite=suite)
    )
    actions = []
    docs_dir: Path | None = None
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        docs_dir = report_dir / "data_docs"
        if docs_dir.is_dir():
            shutil.rmtree(docs_dir)  # the site must show this run, not a stale earlier one
        context.add_data_docs_site(SITE_NAME, _site_config(docs_dir))
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"metaad_gate_{run_id}",
            validation_definitions=[vd],
            actions=actions,
            result_format="SUMMARY",
        )
    )
    order = {str(e.id): i for i, e in enumerate(suite.expectations)}
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (vr,) = result.run_results.values()
    raw = _json_safe(vr.to_json_dict())
    stats = dict(raw.get("statistics") or {})
    stats["seconds"] = round(time.perf_counter() - start, 3)
    report = ValidationReport(
        success=bool(vr.success),
        n_expectations=int(stats.get("evaluated_expectations", 0)),
        failures=_failures(raw, frame, min_rows_per_type, order),
        statistics=stats,
        n_rows=len(df),
        data_docs=str(docs_dir / "index.html") if docs_dir is not None else None,
        gx_result=raw,
    )
    if report_dir is not None:
        payload = {"summary": report.summary(), "report": report.to_dict(), "gx_result": raw}
        (report_dir / "report.json").write_text(
            json.dumps(_json_safe(payload), indent=2, allow_nan=False)
        )
        if docs_dir is not None and not (docs_dir / "index.html").exists():
            raise DataError(f"GX did not render Data Docs into {docs_dir}")
    logger.info(
        "validation %s: %d/%d expectations failed on %d rows in %.2fs",
        "passed" if report.success else "failed",
        len(report.failures),
        report.n_expectations,
        len(df),
        stats["seconds"],
    )
    return report


def validate_or_raise(
    df: pd.DataFrame,
    cfg: ValidateConfig,
    *,
    categorical: Sequence[str] = (),
    min_rows_per_type: int,
    profile: Mapping[str, Any] | None = None,
    report_dir: Path | None = None,
) -> ValidationReport:
    """:func:`validate_table`, raising :class:`ValidationFailed` (a ``DataError``) on failure.

    The pipeline stops here rather than training on a table that would give misleading
    results; the exception's message is the report's summary, and reports are written first.
    """
    report = validate_table(
        df,
        cfg,
        categorical=categorical,
        min_rows_per_type=min_rows_per_type,
        profile=profile,
        report_dir=report_dir,
    )
    if not report.success:
        raise ValidationFailed(report)
    return report


__all__ = [
    "DERIVED",
    "IS_DUPLICATE",
    "TYPE_ROWS",
    "ValidationFailed",
    "ValidationReport",
    "build_suite",
    "reference_profile",
    "validate_or_raise",
    "validate_table",
]
