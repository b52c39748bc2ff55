"""Paired comparison of two methods of a finished benchmark run (`metaad benchmark-compare`).

The headline of a benchmark report pairs only the best meta-learner with the best baseline.
Every other question a reader asks of a run ("is the ensemble better than its best member?",
"did the option help?") is also a difference between two methods scored on the same frozen
episodes, and two separate intervals that overlap do not answer it: the episodes' shared
difficulty is counted twice. This module answers it from the run's ``per_episode.csv`` alone,
episode by episode (matched on seed, type and repetition), with the same stratified paired
bootstrap as the headline (:func:`metaad.evaluation.metrics.paired_bootstrap`), so every
paired number quoted from a run can be reproduced by a command rather than a notebook.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad.errors import ConfigError, DataError

#: Per-episode metrics a comparison may be made on (columns of ``per_episode.csv``).
METRICS = ("auprc", "auroc", "recall_at_1fpr")
_KEY = ["seed", "type", "rep"]
_NEEDED = {"method", "shots", *_KEY}


def read_per_episode(run: Path) -> pd.DataFrame:
    """The per-episode rows of a benchmark run: ``RUN/per_episode.csv``, or a dataset folder's.

    Raises :class:`DataError` naming the path when there is no such file or it lacks the
    columns a paired comparison needs (a file from some other tool, or a truncated one).
    """
    run = Path(run)
    path = run / "per_episode.csv" if run.is_dir() else run
    if not path.is_file():
        raise DataError(
            f"{path}: no per_episode.csv here; give the --out folder of `metaad benchmark` "
            "or `metaad benchmark-merge` (or one of its dataset folders)"
        )
    try:
        per = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable per-episode table ({exc})") from exc
    missing = sorted(_NEEDED - set(per.columns))
    if missing:
        raise DataError(f"{path}: not a benchmark per-episode table (missing columns {missing})")
    if "dataset" not in per.columns:
        per.insert(0, "dataset", path.parent.name)
    return per


def episode_digests(run: Path, method: str) -> dict[str, dict[str, str]]:
    """sha256 of the frozen episode file ``method`` was scored on, per dataset and seed.

    Read from the run's ``results.json`` (``method_episodes_sha256``, which a merged run keeps
    per method, else the dataset's ``episodes_sha256``). Two runs' rows can be paired only
    when these are equal: the same seed, type and repetition number in two runs is the same
    episode only if it came from the same file.
    """
    run = Path(run)
    folder = run if run.is_dir() else run.parent
    path = next(
        (p for p in (folder / "results.json", folder.parent / "results.json") if p.is_file()),
        None,
    )
    if path is None:
        raise DataError(
            f"{run}: no results.json beside the per-episode table, so which episodes its rows "
            "were scored on cannot be checked; compare across runs only by their --out folders"
        )
    try:
        info = json.loads(path.read_text())["datasets"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a benchmark results.json ({exc})") from exc
    out: dict[str, dict[str, str]] = {}
    for ds, d in info.items():
        per_method = (d.get("method_episodes_sha256") or {}).get(method)
        out[ds] = dict(per_method or d.get("episodes_sha256") or {})
    return out


def compare_runs(
    run_a: Path,
    a: str,
    run_b: Path,
    b: str,
    **kwargs: Any,
) -> pd.DataFrame:
    """``b`` of ``run_b`` minus ``a`` of ``run_a``: e.g. one method with and without an option.

    The runs' frozen episode files must be the same (sha256, per dataset and seed, from each
    run's ``results.json``) for every dataset compared; then the rows pair up on seed, type and
    repetition as within one run. Otherwise the comparison is refused, naming the dataset and
    seed. Keyword arguments are :func:`compare_methods`'.
    """
    pa, pb = read_per_episode(run_a), read_per_episode(run_b)
    da, db = episode_digests(run_a, a), episode_digests(run_b, b)
    wanted = kwargs.get("datasets") or sorted(
        set(pa.loc[pa["method"] == a, "dataset"]) & set(pb.loc[pb["method"] == b, "dataset"])
    )
    for ds in wanted:
        ea, eb = da.get(ds), db.get(ds)
        if not ea or not eb:
            gone = run_a if not ea else run_b
            raise DataError(f"{ds}: {gone} records no episode files for it")
        if set(ea) != set(eb):
            raise DataError(
                f"{ds}: the runs hold different seeds ({run_a}: {sorted(ea, key=int)}, {run_b}: "
                f"{sorted(eb, key=int)}); a paired comparison needs the same frozen episodes "
                "for every seed"
            )
        for seed in sorted(ea, key=int):
            if ea[seed] != eb[seed]:
                raise DataError(
                    f"{ds} seed {seed}: the runs were scored on different frozen episodes "
                    f"({ea[seed][:12]} in {run_a}, {eb[seed][:12]} in "
                    f"{run_b}); rows with the same numbers are not the same episodes"
                )
    return compare_methods(pa, a, b, per_episode_b=pb, **kwargs)


def compare_methods(
    per_episode: pd.DataFrame,
    a: str,
    b: str,
    *,
    shots: Sequence[int] | None = None,
    metric: str = "auprc",
    datasets: Sequence[str] | None = None,
    n_boot: int = 2000,
    per_episode_b: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``b`` minus ``a`` per dataset and K, macro over types, with a paired 95% CI.

    One row per (dataset, K): both methods' macro means (the mean over types of each type's
    mean, as in the report's tables), the difference, its stratified paired bootstrap
    interval, and the number of shared episodes. The two methods must have been scored on
    exactly the same episodes at that K (the same run, or runs joined by
    ``benchmark-merge``); otherwise the comparison is refused with the counts, because an
    unpaired difference under a paired label would understate its uncertainty.

    ``datasets`` (default: every dataset holding both methods) and ``shots`` (default: every
    K both have) restrict the table; naming one that is absent is an error, not a silent
    empty row. ``per_episode_b`` takes ``b``'s rows from another table (then ``a`` and ``b``
    may be the same method); use :func:`compare_runs`, which first checks that the two runs
    share their episode files.
    """
    from metaad.evaluation.metrics import paired_bootstrap
    from metaad.evaluation.runner import paired_values

    other = per_episode if per_episode_b is None else per_episode_b
    if a == b and per_episode_b is None:
        raise ConfigError(f"compare two different methods (both are {a!r})")
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {list(METRICS)}")
    for table in (per_episode, other):
        if metric not in table.columns:
            raise DataError(f"the per-episode table has no {metric!r} column")
    present = sorted(set(per_episode["dataset"]) | set(other["dataset"]))
    for m, table in ((a, per_episode), (b, other)):
        if m not in set(table["method"]):
            have = sorted(table["method"].unique())
            raise DataError(f"method {m!r} is not in this run (it has {have})")
    if datasets:
        unknown = sorted(set(datasets) - set(present))
        if unknown:
            raise DataError(f"dataset(s) {unknown} not in this run (it has {present})")
    rows: list[dict[str, object]] = []
    for ds in datasets or present:
        da = per_episode[(per_episode["dataset"] == ds) & (per_episode["method"] == a)]
        db = other[(other["dataset"] == ds) & (other["method"] == b)]
        if da.empty or db.empty:
            if datasets:
                gone = a if da.empty else b
                raise DataError(f"{ds}: method {gone!r} was not run on it")
            continue
        ks = sorted(set(da["shots"]) & set(db["shots"]))
        if shots is not None:
            absent = sorted(set(shots) - set(ks))
            if absent:
                raise DataError(f"{ds}: K={absent} not scored for both {a!r} and {b!r}")
            ks = sorted(set(shots))
        for k in ks:
            try:
                xa, xb, types = paired_values(
                    da, db, shots=k, metric=metric, episode=_KEY, names=(repr(a), repr(b))
                )
            except ValueError as exc:
                raise DataError(
                    f"{ds}: {exc}; compare methods of one run or of runs joined by "
                    "`metaad benchmark-merge`"
                ) from exc
            mean, lo, hi = paired_bootstrap(xa, xb, n_boot=n_boot, strata=types)
            rows.append(
                {
                    "dataset": ds,
                    "shots": int(k),
                    "a_mean": _macro(xa, types),
                    "b_mean": _macro(xb, types),
                    "delta": mean,
                    "lo": lo,
                    "hi": hi,
                    "n_episodes": len(xa),
                }
            )
    if not rows:
        raise DataError(f"no dataset in this run has both {a!r} and {b!r} (datasets: {present})")
    return pd.DataFrame(rows)


def _macro(values: np.ndarray, types: np.ndarray) -> float:
    """Mean over types of each type's mean, as the report's macro columns."""
    return float(pd.Series(values).groupby(types).mean().mean())


def comparison_markdown(table: pd.DataFrame, a: str, b: str, metric: str = "auprc") -> str:
    """The comparison as a markdown table, the way the README quotes paired differences."""
    lines = [
        f"Macro {metric.upper()}: `{b}` - `{a}` over the same episodes (paired 95% CI, "
        "resampled within each type)",
        "",
        f"| dataset | K | `{a}` | `{b}` | `{b}` - `{a}` [paired 95% CI] | episodes |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        lines.append(
            f"| {r.dataset} | {r.shots} | {r.a_mean:.3f} | {r.b_mean:.3f} | "
            f"{_signed(r.delta)} [{_signed(r.lo)}, {_signed(r.hi)}] | {r.n_episodes} |"
        )
    return "\n".join(lines) + "\n"


def _signed(x: float) -> str:
    return f"{x:+.3f}" if np.isfinite(x) else "n/a"
