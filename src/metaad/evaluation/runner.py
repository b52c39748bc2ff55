"""Score detectors on frozen episodes, and summarise the scores with intervals.

Every method, meta-learner or baseline, goes through :func:`evaluate_detector` with the same
:class:`~metaad.episodes.sampler.EpisodeSet`, so the rows of two methods' frames pair up by
``(type, shots, rep)``; the summaries, the report and the promotion gate all rely on that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metaad.errors import DataError
from metaad.evaluation.metrics import episode_metrics, t_half_width

if TYPE_CHECKING:  # type-only: importing the models package may pull in torch
    from metaad.episodes.pool import Pool
    from metaad.episodes.sampler import EpisodeSet
    from metaad.models.base import Detector

__all__ = [
    "EPISODE_COLUMNS",
    "MACRO",
    "METRICS",
    "TIMINGS",
    "best_by",
    "evaluate_detector",
    "paired_values",
    "summarise",
]

logger = logging.getLogger(__name__)

#: Quality metrics, all "higher is better".
METRICS: tuple[str, ...] = ("auprc", "auroc", "recall_at_1fpr")
#: Wall-clock costs per episode, in milliseconds.
TIMINGS: tuple[str, ...] = ("adapt_ms", "score_ms")
#: Columns of :func:`evaluate_detector`'s frame, in order.
EPISODE_COLUMNS: tuple[str, ...] = ("method", "type", "shots", "rep", *METRICS, *TIMINGS)
#: The ``type`` of summary rows that macro-average over anomaly types.
MACRO = "__macro__"
#: Families that count as meta-learners in :func:`best_by` (everything else is a baseline).
META_FAMILIES: frozenset[str] = frozenset({"metric", "maml"})

_KEYS = ("method", "type", "shots", "rep")


def evaluate_detector(
    detector: Detector,
    pool: Pool,
    episodes: EpisodeSet,
    *,
    method: str,
    shots: Sequence[int] | None = None,
    progress: bool = False,
    check_pool: bool = True,
) -> pd.DataFrame:
    """Adapt ``detector`` to each episode's support set and score its query set.

    Returns one row per episode with :data:`EPISODE_COLUMNS`; ``rep`` is the episode's
    repetition number within its (type, K), which is what pairs episodes across methods and
    across types (see :func:`summarise`). Only episodes whose K is in ``shots`` are scored
    when it is given; asking for a K that the episode set lacks is an error rather than an
    empty result, because it means the configuration and the frozen episodes disagree.

    ``check_pool`` refuses a pool whose fingerprint differs from the one the episodes were
    drawn from (hashing the pool costs a fraction of a second; indices into the wrong pool
    would give plausible but meaningless numbers).

    Timings are wall-clock per episode; ``adapt_ms`` includes whatever the detector does in
    ``adapt`` (a fit, for support-only baselines), ``score_ms`` the scoring of the query.
    """
    if not method:
        raise ValueError("method must be a non-empty name")
    if check_pool and pool.fingerprint() != episodes.pool_fingerprint:
        raise DataError(
            f"the episodes were drawn from another pool (fingerprint "
            f"{episodes.pool_fingerprint}, this pool {pool.fingerprint()}); rebuild them"
        )
    selected = np.arange(len(episodes))
    if shots is not None:
        wanted = sorted({int(k) for k in shots})
        have = sorted({int(k) for k in np.unique(episodes.shots)})
        missing = [k for k in wanted if k not in have]
        if missing:
            raise ValueError(
                f"shots {missing} are not in the episode set (it has K in {have}); rebuild the "
                "episodes or change the configured shots"
            )
        selected = np.flatnonzero(np.isin(episodes.shots, wanted))

    iterator: Any = selected
    if progress:
        from tqdm import tqdm

        iterator = tqdm(selected, desc=f"evaluate {method}", unit="ep", leave=False)

    rows: list[dict[str, Any]] = []
    for i in iterator:
        ep = episodes[int(i)]
        where = f"{method}, type {ep.type!r}, K={ep.shots}, rep {ep.seed}"
        t0 = time.perf_counter()
        adapted = detector.adapt(pool.X[ep.support_idx], ep.support_y)
        t1 = time.perf_counter()
        scores = np.asarray(adapted.score(pool.X[ep.query_idx]))
        t2 = time.perf_counter()
        if scores.shape != (len(ep.query_idx),):
            raise ValueError(
                f"{where}: score() returned shape {scores.shape} for {len(ep.query_idx)} rows; "
                "expected one score per row"
            )
        try:
            m = episode_metrics(ep.query_y, scores, fpr=0.01)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        rows.append(
            {
                "method": method,
                "type": ep.type,
                "shots": ep.shots,
                "rep": ep.seed,
                "auprc": m["auprc"],
                "auroc": m["auroc"],
                "recall_at_1fpr": m["recall_at_fpr"],
                "adapt_ms": (t1 - t0) * 1e3,
                "score_ms": (t2 - t1) * 1e3,
            }
        )
    frame = pd.DataFrame(rows, columns=list(EPISODE_COLUMNS))
    frame = frame.astype(
        {"method": str, "type": str, "shots": np.int64, "rep": np.int64}
        | dict.fromkeys((*METRICS, *TIMINGS), np.float64)
    )
    if len(frame):
        logger.info(
            "%s: %d episodes, mean AUPRC %.3f, %.1f ms adapt + %.1f ms score per episode",
            method,
            len(frame),
            frame["auprc"].mean(),
            frame["adapt_ms"].mean(),
            frame["score_ms"].mean(),
        )
    return frame


def _check_frame(per_episode: pd.DataFrame, keys: Sequence[str] = _KEYS) -> None:
    keys = list(keys)
    missing = [c for c in (*keys, *METRICS) if c not in per_episode.columns]
    if missing:
        raise ValueError(f"per-episode frame lacks column(s) {missing}")
    if per_episode.empty:
        raise ValueError("per-episode frame is empty: nothing to summarise")
    dup = per_episode.duplicated(keys)
    if dup.any():
        first = per_episode.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(
            f"{int(dup.sum())} duplicated episode row(s) (same {', '.join(keys)}), "
            f"e.g. {first}; was a frame concatenated twice?"
        )
    nan = per_episode[list(METRICS)].isna().to_numpy().sum()
    if nan:
        raise ValueError(f"per-episode frame has {int(nan)} NaN metric value(s)")


def _ci_table(
    frame: pd.DataFrame, by: list[str], columns: Sequence[str], alpha: float
) -> pd.DataFrame:
    """Mean and t-interval of each column per group, as ``<col>_mean/_lo/_hi`` and ``n``."""
    g = frame.groupby(by, sort=True, observed=True)
    stats = g[list(columns)].agg(["mean", "std", "count"])
    out = pd.DataFrame(index=stats.index)
    n = g.size()
    out["n"] = n.astype(np.int64)
    for c in columns:
        mean = stats[(c, "mean")]
        std = stats[(c, "std")].fillna(0.0)
        hw = np.array(
            [t_half_width(s, int(k), alpha) for s, k in zip(std, stats[(c, "count")], strict=True)]
        )
        out[f"{c}_mean"] = mean
        out[f"{c}_lo"] = mean - hw
        out[f"{c}_hi"] = mean + hw
    return out.reset_index()


def summarise(per_episode: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Mean and ``1 - alpha`` t-interval per (method, shots, type), plus macro rows.

    Per-type rows: the t-interval over that type's episodes.

    Macro rows (``type == "__macro__"``) average over anomaly types, each type weighing the
    same however many rows it has. Their interval is computed over repetitions, not over
    types: for each repetition index ``r`` the metric is averaged over the types' episodes
    with that ``rep``, and the t-interval is taken over those per-``r`` averages. Why: the
    uncertainty to report is that of the episode draws with the types held fixed (the types
    are the evaluation set, not a sample of future types), and an interval over the per-type
    means would instead measure how different the types are from each other, which does not
    shrink with more episodes. Since episodes of different types are drawn independently,
    the per-``r`` averages are independent too, and their spread gives the variance of the
    macro-mean with ``n_reps - 1`` degrees of freedom.

    The macro mean is the mean of the per-type means. If some type lacks a repetition that
    others have, only the repetitions common to every type enter the interval's width (a
    warning is logged), and the interval is centred on the macro mean.

    Columns: ``method, shots, type, n, n_types`` and ``<metric>_mean/_lo/_hi`` for every
    metric and timing present. ``n`` counts episodes on per-type rows and repetitions on
    macro rows.
    """
    _check_frame(per_episode)
    cols = [c for c in (*METRICS, *TIMINGS) if c in per_episode.columns]
    by_type = _ci_table(per_episode, ["method", "shots", "type"], cols, alpha)
    by_type["n_types"] = 1

    macro_rows: list[dict[str, Any]] = []
    for (method, k), grp in per_episode.groupby(["method", "shots"], sort=True):
        types = sorted(grp["type"].unique())
        reps_per_type = [set(grp.loc[grp["type"] == t, "rep"]) for t in types]
        common = set.intersection(*reps_per_type)
        if any(r != common for r in reps_per_type):
            logger.warning(
                "%s, K=%s: types hold different repetitions; the macro interval uses the %d "
                "common to all",
                method,
                k,
                len(common),
            )
        type_means = grp.groupby("type")[cols].mean()
        per_rep = grp[grp["rep"].isin(common)].groupby("rep")[cols].mean()
        row: dict[str, Any] = {
            "method": method,
            "shots": int(k),
            "type": MACRO,
            "n": len(per_rep),
            "n_types": len(types),
        }
        for c in cols:
            mean = float(type_means[c].mean())
            if len(per_rep) == 0:
                hw = float("nan")
            else:
                std = float(per_rep[c].std(ddof=1)) if len(per_rep) > 1 else 0.0
                hw = t_half_width(std, len(per_rep), alpha)
            row[f"{c}_mean"], row[f"{c}_lo"], row[f"{c}_hi"] = mean, mean - hw, mean + hw
        macro_rows.append(row)

    for k, grp in by_type.groupby("shots"):
        type_sets = {m: frozenset(g["type"]) for m, g in grp.groupby("method")}
        if len(set(type_sets.values())) > 1:
            logger.warning(
                "K=%s: methods were scored on different types; their macro-means do not compare",
                k,
            )

    out = pd.concat([by_type, pd.DataFrame(macro_rows)], ignore_index=True)
    out["_macro_last"] = out["type"] == MACRO
    out = out.sort_values(["method", "shots", "_macro_last", "type"], kind="stable")
    ordered = ["method", "shots", "type", "n", "n_types"] + [
        f"{c}_{s}" for c in cols for s in ("mean", "lo", "hi")
    ]
    out = out[ordered].reset_index(drop=True)
    return out.astype({"shots": np.int64, "n": np.int64, "n_types": np.int64})


def _summary_row(summary: pd.DataFrame, method: str, k: int, metric: str) -> dict[str, Any]:
    row = summary[
        (summary["method"] == method) & (summary["shots"] == k) & (summary["type"] == MACRO)
    ].iloc[0]
    return {
        "method": method,
        "mean": float(row[f"{metric}_mean"]),
        "lo": float(row[f"{metric}_lo"]),
        "hi": float(row[f"{metric}_hi"]),
    }


def best_by(
    summary: pd.DataFrame,
    k: int,
    metric: str = "auprc",
    *,
    family_of: Mapping[str, str],
) -> dict[str, Any]:
    """The best meta-learner and the best baseline at K by macro ``metric``, side by side.

    ``family_of`` maps a method name to its detector family (``Detector.family``): ``metric``
    and ``maml`` count as meta-learners, anything else as a baseline. A method missing from
    it is an error, since guessing its family could flip the headline comparison.

    Returns ``{"k", "metric", "meta", "baseline", "delta", "overlap"}`` where ``meta`` and
    ``baseline`` are ``{"method", "mean", "lo", "hi"}`` (``None`` when the family has no
    method at K), ``delta`` is meta minus baseline, and ``overlap`` says whether the two
    intervals overlap. Overlapping intervals do not prove a tie; the paired bootstrap over
    the same episodes (:func:`metaad.evaluation.metrics.paired_bootstrap`) is the sharper test.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    macro = summary[(summary["type"] == MACRO) & (summary["shots"] == int(k))]
    if macro.empty:
        have = sorted(summary["shots"].unique().tolist())
        raise ValueError(f"the summary has no macro rows at K={k} (it has K in {have})")
    unknown = sorted(set(macro["method"]) - set(family_of))
    if unknown:
        raise ValueError(f"family_of has no family for method(s) {unknown}")
    ranked = macro.sort_values([f"{metric}_mean", "method"], ascending=[False, True])
    best: dict[str, dict[str, Any] | None] = {"meta": None, "baseline": None}
    for method in ranked["method"]:
        side = "meta" if family_of[method] in META_FAMILIES else "baseline"
        if best[side] is None:
            best[side] = _summary_row(summary, method, int(k), metric)
    meta, base = best["meta"], best["baseline"]
    delta = overlap = None
    if meta is not None and base is not None:
        delta = meta["mean"] - base["mean"]
        overlap = bool(meta["lo"] <= base["hi"] and base["lo"] <= meta["hi"])
    return {
        "k": int(k),
        "metric": metric,
        "meta": meta,
        "baseline": base,
        "delta": delta,
        "overlap": overlap,
    }


def paired_values(
    champion: pd.DataFrame,
    challenger: pd.DataFrame,
    *,
    shots: int,
    metric: str = "auprc",
    episode: Sequence[str] = ("type", "rep"),
    names: tuple[str, str] = ("champion", "challenger"),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align two methods' per-episode metric at K episode by episode, for the paired bootstrap.

    Each frame holds one method (the champion's and the challenger's
    :func:`evaluate_detector` output, possibly from separate runs). Returns
    ``(champion_values, challenger_values, types)`` in the same episode order, ready for
    ``paired_bootstrap(a, b, strata=types)``. Episode sets that differ are refused: a
    comparison on different episodes is not paired, whatever its numbers say.

    ``episode`` names the columns that identify an episode (a benchmark's rows add the
    seed); ``names`` are the two sides as the error messages call them.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    episode = list(episode)
    if "type" not in episode:
        raise ValueError(f"the episode key must include 'type' (the strata), got {episode}")
    parts = []
    for name, frame in zip(names, (champion, challenger), strict=True):
        _check_frame(frame, ("method", "shots", *episode))
        sub = frame[frame["shots"] == int(shots)]
        if sub.empty:
            raise ValueError(f"the {name} frame has no episodes at K={shots}")
        if sub["method"].nunique() != 1:
            raise ValueError(
                f"the {name} frame holds several methods {sorted(sub['method'].unique())}; "
                "pass one method's episodes"
            )
        parts.append(sub.set_index(episode)[metric].sort_index())
    a, b = parts
    if not a.index.equals(b.index):
        only_a = len(a.index.difference(b.index))
        only_b = len(b.index.difference(a.index))
        raise ValueError(
            f"{names[0]} and {names[1]} were scored on different episodes at K={shots} "
            f"({len(a)} and {len(b)} episodes; {only_a} only in {names[0]}, {only_b} only in "
            f"{names[1]})"
        )
    types = a.index.get_level_values("type").to_numpy()
    return a.to_numpy(np.float64), b.to_numpy(np.float64), types
