"""Batch scoring of CSV/Parquet files with a registered model, in chunks.

A file (or a folder of ``.parquet`` / ``.csv`` parts, in name order) is read ``chunk_rows``
rows at a time (``pyarrow.parquet.ParquetFile.iter_batches``; ``pandas.read_csv`` with
``chunksize``), each chunk is checked and scored by the same code as a served request
(:func:`metaad.pyfunc_model.parse_request`, :class:`metaad.typelib.ServedScorer`), and its
scores are appended to the output (a Parquet row group, or CSV lines) before the next chunk
is read. What stays in memory between chunks is the model, one chunk and a fixed-size score
histogram, so peak memory does not grow with the file: it is set by ``chunk_rows`` (and,
for Parquet, by the file's row-group size, which ``pyarrow`` reads a column chunk of at a
time).

Each output row carries the input's ids next to its scores: ``source_row`` (the row's
number in its file), ``source_file`` for a folder, and any ``id_columns`` copied through. A
windowed model scores windows: rows of a series that continue into the next chunk are held
back and scored with it (the input must keep each series' rows together), and an output row
is a window (``series_id``, ``window`` = its number within the series).

The summary (rows scored, alerts per nearest type, a histogram of ``anomaly_score`` on
fixed bins, whose alert line is 1.0) is written beside the output as JSON and PNG.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.bundle import ModelBundle
from metaad.data.schema import LABEL, NORMAL, SERIES, TIMESTAMP, TYPE
from metaad.errors import DataError
from metaad.pyfunc_model import (
    FLAG,
    NEAREST,
    NEAREST_SCORE,
    OUTPUT_COLUMNS,
    SCORE,
    SUPPORT,
    Limits,
    parse_request,
    required_columns,
)
from metaad.typelib import ServedScorer, TypeDetector

log = logging.getLogger(__name__)

#: Histogram bins of ``anomaly_score``; 1.0 is the alert line. Fixed, so chunks add up.
HIST_EDGES: np.ndarray = np.round(np.arange(-1.0, 5.0001, 0.1), 10)
SOURCE_ROW = "source_row"
SOURCE_FILE = "source_file"
WINDOW = "window"
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def input_files(path: str | Path) -> list[Path]:
    """The file, or the folder's ``.parquet``/``.csv`` files in name order."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in _SUFFIXES:
            raise DataError(f"{path}: expected a .parquet or .csv file")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .parquet or .csv file")
        return files
    raise DataError(f"{path} does not exist")


def _iter_file(path: Path, chunk_rows: int, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    if _SUFFIXES[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        cols = None if columns is None else [c for c in columns if c in have]
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
            yield batch.to_pandas()
    else:
        usecols = None if columns is None else (lambda c: c in set(columns))
        yield from pd.read_csv(path, chunksize=chunk_rows, usecols=usecols)


def _rows_in(path: Path) -> int | None:
    if _SUFFIXES[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


# -- the summary -----------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a batch run scored; JSON-serialisable."""

    input: str
    output: str
    model: str
    rows_read: int = 0
    rows_scored: int = 0
    alerts: int = 0
    alerts_per_type: dict[str, int] = field(default_factory=dict)
    histogram_edges: list[float] = field(default_factory=lambda: HIST_EDGES.tolist())
    histogram_counts: list[int] = field(default_factory=lambda: [0] * (len(HIST_EDGES) + 1))
    chunks: int = 0
    chunk_rows: int = 0
    seconds: float = 0.0
    support_types: list[str] = field(default_factory=list)
    summary_json: str = ""
    histogram_png: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows_scored / self.seconds if self.seconds > 0 else float("nan")

    def add(self, scores: pd.DataFrame) -> None:
        self.rows_scored += len(scores)
        flags = scores[FLAG].to_numpy(bool)
        self.alerts += int(flags.sum())
        for t, n in Counter(scores.loc[flags, NEAREST].astype(str)).items():
            self.alerts_per_type[t] = self.alerts_per_type.get(t, 0) + int(n)
        # bin 0 holds everything below the first edge, the last bin everything above the last
        idx = np.searchsorted(HIST_EDGES, scores[SCORE].to_numpy(np.float64), side="right")
        counts = np.bincount(idx, minlength=len(HIST_EDGES) + 1)
        self.histogram_counts = (np.asarray(self.histogram_counts) + counts).tolist()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_second"] = self.rows_per_second
        return d

    def markdown(self) -> str:
        lines = [
            f"# Batch scoring: {self.rows_scored} rows scored, {self.alerts} alerts",
            "",
            f"- input: `{self.input}`",
            f"- output: `{self.output}`",
            f"- model: `{self.model}`",
            f"- {self.chunks} chunks of up to {self.chunk_rows} rows, {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s)",
        ]
        if self.support_types:
            lines.append(f"- support set types: {', '.join(self.support_types)}")
        lines += ["", "| nearest type | alerts |", "|---|---|"]
        for t, n in sorted(self.alerts_per_type.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {t} | {n} |")
        if self.histogram_png:
            lines += ["", f"Score histogram: `{self.histogram_png}`"]
        return "\n".join(lines)


def plot_histogram(summary: BatchSummary, path: Path) -> Path:
    """The score histogram with the alert line, as a PNG (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = np.asarray(summary.histogram_edges)
    counts = np.asarray(summary.histogram_counts)
    width = float(edges[1] - edges[0])
    # under/overflow drawn as one bar each just outside the range
    lefts = np.concatenate([[edges[0] - width], edges])
    ax.bar(lefts, counts, width=width, align="edge", color="#4477aa")
    ax.axvline(1.0, color="#cc3311", linestyle="--", label="alert line (anomaly_score = 1)")
    ax.set_yscale("symlog")
    ax.set_xlabel("anomaly_score (first/last bar: below -1 / above 5)")
    ax.set_ylabel("rows")
    ax.set_title(f"{summary.rows_scored} rows, {summary.alerts} alerts")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    fig.clear()
    return path


# -- writers ---------------------------------------------------------------------------------
class _Writer:
    """Appends scored chunks to a Parquet file (one row group each) or a CSV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = _SUFFIXES.get(path.suffix.lower())
        if self.kind is None:
            raise DataError(f"{path}: the output must end in .parquet or .csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pq: Any = None
        self._first = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "csv":
            mode = "w" if self._first else "a"
            frame.to_csv(self.path, mode=mode, header=self._first, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.path, table.schema)
            self._pq.write_table(table.cast(self._pq.schema))
        self._first = False

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        elif self._first and self.kind == "parquet":  # nothing scored: still leave a file
            pd.DataFrame().to_parquet(self.path)


# -- scoring ---------------------------------------------------------------------------------
def support_from_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Labelled rows for a batch run's support set: ``support_label``, or label + type."""
    if SUPPORT in frame.columns:
        lab = frame[SUPPORT].astype(object)
        keep = lab.notna() & (lab.astype(str).str.strip() != "")
        labels = lab[keep].astype(str).str.strip().to_numpy()
        rows = frame.loc[keep].drop(columns=[SUPPORT])
    elif LABEL in frame.columns and TYPE in frame.columns:
        rows = frame
        labels = np.where(frame[LABEL].astype(int) == 1, frame[TYPE].astype(str), NORMAL)
    else:
        raise DataError(
            f"a support file needs a {SUPPORT!r} column (type name or 'normal' per row), or "
            f"{LABEL!r} and {TYPE!r} columns"
        )
    if not (labels != NORMAL).any():
        raise DataError("the support file has no anomalies (every row is labelled normal)")
    return rows.reset_index(drop=True), np.asarray(labels, dtype=object)


def _request_detectors(
    bundle: ModelBundle, scorer: ServedScorer, support: pd.DataFrame, labels: np.ndarray
) -> list[TypeDetector]:
    cols = required_columns(bundle) + ([TIMESTAMP] if bundle.window else [])
    rows = support[[c for c in cols if c in support.columns]]
    parse_request(bundle, rows, Limits(max(len(rows), 1), 10**6))  # same checks as a request
    sup = rows.assign(**{LABEL: (labels != NORMAL).astype(np.int64), TYPE: labels.astype(str)})
    pool = bundle.to_pool(sup)
    return scorer.request_detectors(pool.X, pool.types.astype(str))


def score_files(
    bundle: ModelBundle,
    input_path: str | Path,
    output_path: str | Path,
    *,
    chunk_rows: int,
    scorer: ServedScorer | None = None,
    id_columns: Sequence[str] = (),
    support: tuple[pd.DataFrame, np.ndarray] | None = None,
    model_label: str = "",
    progress: bool = False,
) -> BatchSummary:
    """Score ``input_path`` chunk by chunk into ``output_path``; return the summary.

    Bad rows fail the run with an error naming the file and rows (scores of a partly
    scored file would be mistaken for a complete run); the partial output is removed.
    """
    from tqdm.auto import tqdm

    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
    files = input_files(input_path)
    output_path = Path(output_path)
    if any(output_path.resolve() == f.resolve() for f in files):
        raise DataError(f"the output {output_path} would overwrite an input file")
    scorer = scorer or ServedScorer(bundle)
    request = None
    summary = BatchSummary(str(input_path), str(output_path), model_label, chunk_rows=chunk_rows)
    if support is not None:
        request = _request_detectors(bundle, scorer, *support)
        summary.support_types = [d.name for d in request]
    need = required_columns(bundle) + ([TIMESTAMP] if bundle.window else [])
    ids = [c for c in id_columns if c not in need]
    read_cols = list(dict.fromkeys(need + ids))
    folder = len(files) > 1 or Path(input_path).is_dir()
    total = sum(n for n in (_rows_in(f) for f in files) if n is not None) or None
    writer = _Writer(output_path)
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="row", desc="score", disable=not progress)
    try:
        for f in files:
            carry: pd.DataFrame | None = None
            offset = 0
            for chunk in _iter_file(f, chunk_rows, read_cols):
                missing = [c for c in read_cols if c not in chunk.columns]
                if missing:
                    raise DataError(f"{f}: missing column(s) {missing}")
                n_read = len(chunk)
                chunk = chunk.assign(**{SOURCE_ROW: np.arange(offset, offset + n_read)})
                offset += n_read
                summary.rows_read += n_read
                if bundle.window:
                    if carry is not None:
                        chunk = pd.concat([carry, chunk], ignore_index=True)
                    last = chunk[SERIES].iloc[-1]
                    tail = (chunk[SERIES] == last).to_numpy()
                    carry, chunk = chunk[tail], chunk[~tail]
                if len(chunk):
                    scores = _score_chunk(bundle, scorer, chunk, request, ids, f)
                    if folder:
                        scores.insert(0, SOURCE_FILE, f.name)
                    writer.write(scores)
                    summary.add(scores)
                    summary.chunks += 1
                bar.update(n_read)
            if carry is not None and len(carry):
                scores = _score_chunk(bundle, scorer, carry, request, ids, f)
                if folder:
                    scores.insert(0, SOURCE_FILE, f.name)
                writer.write(scores)
                summary.add(scores)
                summary.chunks += 1
    except BaseException:
        writer.close()
        output_path.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    writer.close()
    summary.seconds = time.perf_counter() - t0
    stem = output_path.with_suffix("")
    png = plot_histogram(summary, stem.with_name(stem.name + ".histogram.png"))
    summary.histogram_png = str(png)
    js = stem.with_name(stem.name + ".summary.json")
    summary.summary_json = str(js)
    js.write_text(json.dumps(summary.to_dict(), indent=1))
    log.info(
        "scored %d rows of %s in %.1fs (%d alerts) -> %s",
        summary.rows_scored,
        input_path,
        summary.seconds,
        summary.alerts,
        output_path,
    )
    return summary


def _score_chunk(
    bundle: ModelBundle,
    scorer: ServedScorer,
    chunk: pd.DataFrame,
    request: list[TypeDetector] | None,
    ids: list[str],
    path: Path,
) -> pd.DataFrame:
    need = required_columns(bundle) + (
        [TIMESTAMP] if bundle.window and TIMESTAMP in chunk.columns else []
    )
    rows = chunk[need]
    first, last = int(chunk[SOURCE_ROW].iloc[0]), int(chunk[SOURCE_ROW].iloc[-1])
    try:
        req = parse_request(bundle, rows, Limits(len(rows), 1))
        scores = _scores(bundle, scorer, req.query, request or [])
    except DataError as exc:
        raise DataError(f"{path} rows {first}-{last}: {exc}") from exc
    if bundle.window:
        scores[WINDOW] = scores.groupby(SERIES).cumcount().to_numpy()
        return scores
    front = chunk[[SOURCE_ROW, *ids]].reset_index(drop=True)
    return pd.concat([front, scores.reset_index(drop=True)], axis=1)


def _scores(
    bundle: ModelBundle, scorer: ServedScorer, query: pd.DataFrame, request: list[TypeDetector]
) -> pd.DataFrame:
    """The served answer for checked rows, with support detectors built once per run."""
    pool = bundle.to_pool(query)
    res = scorer.score(pool.X, request=request)
    out = pd.DataFrame(
        {
            SCORE: res.anomaly_score,
            FLAG: res.is_anomaly,
            NEAREST: res.nearest_type.astype(object),
            NEAREST_SCORE: res.nearest_type_score,
        },
        columns=list(OUTPUT_COLUMNS),
    )
    if bundle.window and pool.group is not None:
        out[SERIES] = pool.group
    return out


def model_uri_for(model_name: str, version: str | None = None, model: str | None = None) -> str:
    """``model`` if given, else ``models:/NAME/VERSION``, else ``models:/NAME@champion``."""
    if model:
        return model
    if version:
        return f"models:/{model_name}/{version}"
    return f"models:/{model_name}@champion"


def default_output(input_path: str | Path) -> Path:
    p = Path(input_path)
    return p.with_name(f"{p.stem if p.is_file() else p.name}.scores.parquet")


__all__ = [
    "HIST_EDGES",
    "SOURCE_FILE",
    "SOURCE_ROW",
    "BatchSummary",
    "default_output",
    "input_files",
    "model_uri_for",
    "plot_histogram",
    "score_files",
    "support_from_frame",
]
