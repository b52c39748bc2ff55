"""Turn a summary into what people and tools read: JSON, markdown tables, DVC metrics.

Everything here is a pure function of :func:`metaad.evaluation.runner.summarise`'s frame, so
the same numbers land in the MLflow run, the DVC metrics file and the README tables.
Key order is fixed (shots ascending, methods and types sorted), so two runs with the same
numbers write byte-identical files and ``dvc metrics diff`` shows only real changes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from metaad.evaluation.runner import MACRO, METRICS, TIMINGS

__all__ = ["dvc_metrics", "markdown_table", "per_type_table", "results_json"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _num(x: Any) -> float | None:
    """A plain float for JSON; NaN and infinities become ``None`` (JSON has no NaN)."""
    v = float(x)
    return None if not math.isfinite(v) else v


def _jsonable(obj: Any, where: str = "extra") -> Any:
    """Convert numpy scalars/arrays and tuples to JSON types; refuse anything else."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return [_jsonable(v, where) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in sorted(obj.items(), key=_key)}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise ValueError(f"{where} holds a {type(obj).__name__}, which is not JSON-serialisable")


def _key(item: tuple[Any, Any]) -> str:
    return str(item[0])


def _check_summary(summary: pd.DataFrame, metric: str | None = None) -> None:
    need = ["method", "shots", "type", "n"]
    if metric is not None:
        need += [f"{metric}_mean", f"{metric}_lo", f"{metric}_hi"]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {missing}; build it with summarise()")
    if summary.empty:
        raise ValueError("summary is empty")


def _interval(row: pd.Series, metric: str) -> dict[str, float | None]:
    return {
        "mean": _num(row[f"{metric}_mean"]),
        "lo": _num(row[f"{metric}_lo"]),
        "hi": _num(row[f"{metric}_hi"]),
    }


def _row_block(row: pd.Series, metrics: Sequence[str], timings: Sequence[str]) -> dict[str, Any]:
    block: dict[str, Any] = {"n": int(row["n"])}
    for m in metrics:
        block[m] = _interval(row, m)
    for t in timings:
        block[t] = _num(row[f"{t}_mean"])
    return block


def results_json(
    per_episode: pd.DataFrame,
    summary: pd.DataFrame,
    extra: Mapping[str, Any] | None = None,
    *,
    contamination: float | None = None,
) -> dict[str, Any]:
    """Everything the evaluation found, as one JSON-serialisable dict with a fixed key order.

    Layout::

        {"schema_version", "contamination", "n_episodes", "n_rows", "methods", "shots",
         "types", "results": {method: {"k<K>": {"macro": {...}, "per_type": {type: {...}}}}},
         "extra": {...}}

    Each block holds ``n`` (episodes for a type, repetitions for the macro) and, per metric,
    ``{"mean", "lo", "hi"}``; timings as plain means in ms. ``n_episodes`` counts distinct
    (type, K, rep) episodes, ``n_rows`` the scored (method, episode) pairs. The query
    contamination is taken from ``contamination`` or else ``extra["contamination"]``: it is
    the AUPRC of a random scorer, and a table of AUPRCs without it cannot be read.
    """
    _check_summary(summary)
    extra = dict(extra or {})
    if contamination is None and extra.get("contamination") is not None:
        contamination = float(extra["contamination"])
    if contamination is None:
        logger.warning("results_json: no contamination given; readers cannot judge AUPRC")
    metrics = [m for m in METRICS if f"{m}_mean" in summary.columns]
    timings = [t for t in TIMINGS if f"{t}_mean" in summary.columns]
    shots = sorted(int(k) for k in summary["shots"].unique())
    types = sorted(t for t in summary["type"].unique() if t != MACRO)
    results: dict[str, Any] = {}
    for method in sorted(summary["method"].unique()):
        by_k: dict[str, Any] = {}
        for k in shots:
            sub = summary[(summary["method"] == method) & (summary["shots"] == k)]
            if sub.empty:
                continue
            macro = sub[sub["type"] == MACRO]
            per_type = sub[sub["type"] != MACRO].sort_values("type")
            by_k[f"k{k}"] = {
                "macro": _row_block(macro.iloc[0], metrics, timings) if len(macro) else None,
                "per_type": {
                    str(r["type"]): _row_block(r, metrics, timings) for _, r in per_type.iterrows()
                },
            }
        results[str(method)] = by_k
    if {"type", "shots", "rep"} <= set(per_episode.columns):
        n_episodes = int(per_episode[["type", "shots", "rep"]].drop_duplicates().shape[0])
    else:
        raise ValueError("per-episode frame lacks the type, shots and rep columns")
    return {
        "schema_version": SCHEMA_VERSION,
        "contamination": None if contamination is None else float(contamination),
        "n_episodes": n_episodes,
        "n_rows": len(per_episode),
        "methods": sorted(str(m) for m in summary["method"].unique()),
        "shots": shots,
        "types": [str(t) for t in types],
        "results": results,
        "extra": _jsonable(extra),
    }


def _fmt(mean: float, lo: float, hi: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def _table(
    frame: pd.DataFrame,
    row_key: str,
    col_key: str,
    columns: Sequence[Any],
    metric: str,
    header: Sequence[str],
    rows: Sequence[str],
    first: str,
    digits: int,
) -> str:
    """Markdown with one cell per (row, column); the best mean of each column in bold.

    Bold goes to every row whose mean, rounded as shown, equals the column's best: a tie
    at the printed precision is a tie to the reader.
    """
    cell: dict[tuple[str, Any], pd.Series] = {
        (r[row_key], r[col_key]): r for _, r in frame.iterrows()
    }
    best: dict[Any, float] = {}
    for c in columns:
        vals = [
            round(float(cell[(r, c)][f"{metric}_mean"]), digits)
            for r in rows
            if (r, c) in cell and math.isfinite(float(cell[(r, c)][f"{metric}_mean"]))
        ]
        if vals:
            best[c] = max(vals)
    lines = [
        "| " + " | ".join([first, *header]) + " |",
        "|" + "---|" * (len(header) + 1),
    ]
    for r in rows:
        cells = [str(r)]
        for c in columns:
            if (r, c) not in cell:
                cells.append("–")
                continue
            row = cell[(r, c)]
            mean = float(row[f"{metric}_mean"])
            text = _fmt(mean, float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"]), digits)
            if c in best and math.isfinite(mean) and round(mean, digits) == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rank_methods(macro: pd.DataFrame, metric: str, k: int) -> list[str]:
    """Methods by macro ``metric`` at K descending (name breaks ties); absent ones last."""
    at_k = macro[macro["shots"] == k].set_index("method")[f"{metric}_mean"]
    methods = sorted(macro["method"].unique())
    return sorted(methods, key=lambda m: (-float(at_k.get(m, -math.inf)), m))


def markdown_table(
    summary: pd.DataFrame,
    metric: str = "auprc",
    shots: Sequence[int] = (0, 1, 5, 10),
    *,
    sort_k: int = 5,
    digits: int = 3,
) -> str:
    """Macro ``metric`` per method (rows) and K (columns), as ``mean ± half-width``.

    Rows are sorted by the macro ``metric`` at ``sort_k`` (K=5 by default, the gate's K),
    best first; if no method has ``sort_k``, by the largest K shown. A K that no method was
    scored at is left out rather than shown as an empty column. The best mean of each column
    is in bold.
    """
    _check_summary(summary, metric)
    macro = summary[summary["type"] == MACRO]
    present = set(int(k) for k in macro["shots"].unique())
    ks = [int(k) for k in shots if int(k) in present]
    if not ks:
        raise ValueError(f"the summary has no macro rows at any of K={list(shots)}")
    rank_k = sort_k if sort_k in present else max(ks)
    rows = _rank_methods(macro, metric, rank_k)
    return _table(
        macro, "method", "shots", ks, metric, [f"K={k}" for k in ks], rows, "method", digits
    )


def per_type_table(summary: pd.DataFrame, k: int, metric: str = "auprc", *, digits: int = 3) -> str:
    """``metric`` per method (rows) and unseen type (columns) at one K, macro last.

    Rows are sorted by the macro value at this K. The per-type view is where a method that
    wins on average but fails one type (a fault no method detects, an attack type copied
    from normals) shows itself.
    """
    _check_summary(summary, metric)
    at_k = summary[summary["shots"] == int(k)]
    if at_k.empty:
        have = sorted(summary["shots"].unique().tolist())
        raise ValueError(f"the summary has no rows at K={k} (it has K in {have})")
    types = sorted(t for t in at_k["type"].unique() if t != MACRO)
    columns = [*types, MACRO] if (at_k["type"] == MACRO).any() else types
    header = [*types, "macro"] if len(columns) > len(types) else types
    rows = _rank_methods(at_k[at_k["type"] == MACRO], metric, int(k))
    if not rows:
        rows = sorted(at_k["method"].unique())
    return _table(at_k, "method", "type", columns, metric, header, rows, "method", digits)


def dvc_metrics(summary: pd.DataFrame, *, digits: int = 6) -> dict[str, dict[str, Any]]:
    """Macro means as ``{method: {"k<K>": {metric: value}}}`` for DVC's metrics file.

    Only means, rounded to ``digits``: DVC diffs these files across commits, and interval
    bounds or float noise in the last digits would turn every diff into a wall of changes.
    """
    _check_summary(summary)
    macro = summary[summary["type"] == MACRO]
    metrics = [m for m in METRICS if f"{m}_mean" in summary.columns]
    out: dict[str, dict[str, Any]] = {}
    for method in sorted(macro["method"].unique()):
        sub = macro[macro["method"] == method].sort_values("shots")
        out[str(method)] = {
            f"k{int(r['shots'])}": {
                m: (None if (v := _num(r[f"{m}_mean"])) is None else round(v, digits))
                for m in metrics
            }
            for _, r in sub.iterrows()
        }
    return out
