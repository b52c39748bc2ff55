"""Ranking metrics for one episode, and intervals over episodes.

The three ranking metrics share one sort of the scores (:func:`episode_metrics`), because the
evaluation loop computes all of them for thousands of episodes and sorting dominates. They
agree with scikit-learn's ``average_precision_score`` and ``roc_auc_score`` (ties are grouped
into one threshold, as there), which the tests check.

Every function refuses input it cannot score honestly (lengths that disagree, a query with a
single class, NaN scores) with a ``ValueError`` that names the problem: a silently ``nan``
AUPRC averaged into a macro-mean would hide a broken detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "auprc",
    "auroc",
    "episode_metrics",
    "mean_ci",
    "paired_bootstrap",
    "precision_recall_points",
    "recall_at_fpr",
    "t_half_width",
]

#: Above this many resampled values, the bootstrap draws its resamples in chunks, so memory
#: stays bounded (about 64 MB of int64 indices) however many episodes are compared.
_BOOT_CHUNK_ELEMENTS = 8_000_000


# -- input checks -------------------------------------------------------------------------------
def _check_scores(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores; return them as 1-D ``int64`` / ``float64`` arrays."""
    y_arr = np.asarray(y)
    s_arr = np.asarray(s, dtype=np.float64)
    if y_arr.ndim != 1 or s_arr.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {y_arr.shape} and {s_arr.shape}"
        )
    if len(y_arr) != len(s_arr):
        raise ValueError(f"length mismatch: {len(y_arr)} labels but {len(s_arr)} scores")
    if len(y_arr) == 0:
        raise ValueError("no rows to score: labels and scores are empty")
    if not np.isin(y_arr, (0, 1)).all():
        bad = np.unique(y_arr[~np.isin(y_arr, (0, 1))])[:5]
        raise ValueError(f"labels must be 0 (normal) or 1 (anomaly), found {bad.tolist()}")
    y_int = y_arr.astype(np.int64)
    n_pos = int(y_int.sum())
    if n_pos == 0 or n_pos == len(y_int):
        only = "anomalies" if n_pos else "normals"
        raise ValueError(
            f"labels hold a single class (only {only}, {len(y_int)} rows): ranking metrics "
            "need at least one normal and one anomaly"
        )
    n_nan = int(np.isnan(s_arr).sum())
    if n_nan:
        raise ValueError(f"scores contain {n_nan} NaN value(s) out of {len(s_arr)}")
    return y_int, s_arr


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Cumulative true and false positives at each distinct score, highest score first.

    A threshold ``t`` flags every row with ``s >= t``; tied rows share one threshold, so they
    are flagged together or not at all (no arbitrary order inside a tie decides a metric).
    Returns ``(tps, fps, thresholds, n_pos, n_neg)``.
    """
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # Compare neighbours directly rather than via np.diff: inf - inf is NaN, not 0.
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[ends]
    fps = (ends + 1) - tps
    n_pos = int(tps[-1])
    return tps, fps, s_sorted[ends], n_pos, len(y) - n_pos


def _ap(tps: np.ndarray, fps: np.ndarray, n_pos: int) -> float:
    precision = tps / (tps + fps)
    d_recall = np.diff(np.r_[0, tps]) / n_pos
    return float(np.sum(d_recall * precision))


def _auc(tps: np.ndarray, fps: np.ndarray, n_pos: int, n_neg: int) -> float:
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def _recall_at(tps: np.ndarray, fps: np.ndarray, n_pos: int, n_neg: int, fpr: float) -> float:
    # fps is non-decreasing, so the admissible thresholds are a prefix; the last one flags the
    # most rows. The epsilon keeps e.g. 0.29 * 100 = 28.999... from losing a false positive.
    allowed_fp = fpr * n_neg + 1e-9
    last = int(np.searchsorted(fps, allowed_fp, side="right")) - 1
    return 0.0 if last < 0 else float(tps[last] / n_pos)


def _check_fpr(fpr: float) -> None:
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")


# -- per-episode metrics ------------------------------------------------------------------------
def auprc(y: Any, s: Any) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds.

    This is the step-wise area (scikit-learn's ``average_precision_score``), not the
    trapezoidal one, which interpolates linearly between PR points and overstates precision.
    A random scorer's expected value is the anomaly fraction of the query.
    """
    y_int, s_arr = _check_scores(y, s)
    tps, fps, _, n_pos, _ = _curve(y_int, s_arr)
    return _ap(tps, fps, n_pos)


def auroc(y: Any, s: Any) -> float:
    """Area under the ROC curve; a tie between a normal and an anomaly counts one half."""
    y_int, s_arr = _check_scores(y, s)
    tps, fps, _, n_pos, n_neg = _curve(y_int, s_arr)
    return _auc(tps, fps, n_pos, n_neg)


def recall_at_fpr(y: Any, s: Any, fpr: float = 0.01) -> float:
    """Recall at the most permissive threshold whose false-positive rate is ``<= fpr``.

    This is the operating point a team would deploy with an alert budget of ``fpr``: among
    thresholds ``t`` (flag ``s >= t``) whose FPR on the normals stays within the budget,
    take the lowest, which has the highest recall.

    Ties are handled conservatively: thresholds are the distinct score values, so rows with
    equal scores are flagged together or not at all. If flagging a tied group would push the
    FPR over the budget, the whole group stays unflagged, anomalies in it included. A
    detector that gives many rows the same score therefore cannot claim recall by an
    arbitrary order inside the tie (for example anomalies sorted ahead of equal normals).
    With ``n_neg`` normals the budget is ``floor(fpr * n_neg)`` false positives, so at 1% and
    fewer than 100 normals no normal may score at or above a flagged anomaly.
    """
    _check_fpr(fpr)
    y_int, s_arr = _check_scores(y, s)
    tps, fps, _, n_pos, n_neg = _curve(y_int, s_arr)
    return _recall_at(tps, fps, n_pos, n_neg, fpr)


def episode_metrics(y: Any, s: Any, fpr: float = 0.01) -> dict[str, float]:
    """AUPRC, AUROC and recall at ``fpr`` from one validation and one sort.

    Keys: ``auprc``, ``auroc``, ``recall_at_fpr``.
    """
    _check_fpr(fpr)
    y_int, s_arr = _check_scores(y, s)
    tps, fps, _, n_pos, n_neg = _curve(y_int, s_arr)
    return {
        "auprc": _ap(tps, fps, n_pos),
        "auroc": _auc(tps, fps, n_pos, n_neg),
        "recall_at_fpr": _recall_at(tps, fps, n_pos, n_neg, fpr),
    }


def precision_recall_points(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(recall, precision)`` at each threshold where recall rises, starting at recall 0.

    Thresholds that only add normals lower precision without moving recall; they do not
    change :func:`auprc` and are left out, so a ``where="pre"`` step plot of these points
    draws a clean staircase enclosing exactly the area that :func:`auprc` reports. The first
    point is ``(0, precision at the first threshold that catches an anomaly)``.
    """
    y_int, s_arr = _check_scores(y, s)
    tps, fps, _, n_pos, _ = _curve(y_int, s_arr)
    rises = np.diff(np.r_[0, tps]) > 0
    precision = (tps / (tps + fps))[rises]
    recall = (tps / n_pos)[rises]
    return np.r_[0.0, recall], np.r_[precision[0], precision]


# -- intervals over episodes --------------------------------------------------------------------
@lru_cache(maxsize=256)
def _t_quantile(q: float, dof: int) -> float:
    from scipy import stats  # scipy.stats is slow to import; only pay for it when needed

    return float(stats.t.ppf(q, dof))


def t_half_width(std: float, n: int, alpha: float = 0.05) -> float:
    """Half-width of the two-sided ``1 - alpha`` t-interval for a mean of ``n`` values.

    ``std`` is the sample standard deviation (``ddof=1``). ``n = 1`` gives 0: one value says
    nothing about spread, and a zero-width interval is easier to spot in a table than a NaN.
    """
    if n <= 1:
        return 0.0
    return _t_quantile(1.0 - alpha / 2.0, n - 1) * float(std) / float(np.sqrt(n))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def mean_ci(
    values: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean and two-sided ``1 - alpha`` t-interval over episodes: ``(mean, lo, hi)``.

    The t-distribution rather than the normal one, because 10 to 20 episodes per type is
    where the two differ (t at 19 dof is 2.09, not 1.96). ``n = 1`` gives ``lo = hi = mean``.
    """
    _check_alpha(alpha)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value, got none")
    if np.isnan(v).any():
        raise ValueError(f"values contain {int(np.isnan(v).sum())} NaN(s) out of {v.size}")
    mean = float(v.mean())
    hw = t_half_width(float(v.std(ddof=1)) if v.size > 1 else 0.0, v.size, alpha)
    return mean, mean - hw, mean + hw


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired episodes and its percentile bootstrap CI.

    ``a`` is the champion's per-episode metric and ``b`` the challenger's, on the same
    episodes in the same order; pairing removes the episode-to-episode difficulty that both
    share, which an unpaired comparison of two intervals would count twice.

    With ``strata`` (e.g. each episode's anomaly type) episodes are resampled within their
    stratum, so every resample keeps each type's episode count, and the statistic is the
    macro-mean over strata of the within-stratum mean difference. Without it, episodes are
    resampled freely and the statistic is the plain mean; the two agree when every stratum
    holds the same number of episodes. A stratum of one episode is safe: it is resampled to
    itself. Resamples are drawn from ``numpy.random.default_rng(seed)``, strata in sorted
    order, so the same inputs and seed give the same interval. Returns ``(mean_diff, lo, hi)``.
    """
    _check_alpha(alpha)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    a_arr = np.asarray(a, dtype=np.float64).ravel()
    b_arr = np.asarray(b, dtype=np.float64).ravel()
    if len(a_arr) != len(b_arr):
        raise ValueError(
            f"length mismatch: {len(a_arr)} champion values but {len(b_arr)} challenger values; "
            "a paired comparison needs the same episodes"
        )
    if len(a_arr) == 0:
        raise ValueError("paired_bootstrap needs at least one episode, got none")
    if np.isnan(a_arr).any() or np.isnan(b_arr).any():
        raise ValueError("paired values contain NaN")
    diff = b_arr - a_arr
    rng = np.random.default_rng(seed)

    if strata is None:
        groups = [diff]
    else:
        st = np.asarray(strata)
        if len(st) != len(diff):
            raise ValueError(f"length mismatch: {len(diff)} episodes but {len(st)} strata labels")
        labels, inverse = np.unique(st, return_inverse=True)
        groups = [diff[inverse == i] for i in range(len(labels))]

    point = float(np.mean([g.mean() for g in groups]))
    boot = np.zeros(n_boot, dtype=np.float64)
    for g in groups:
        boot += _resampled_means(rng, g, n_boot)
    boot /= len(groups)
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(lo), float(hi)


def _resampled_means(rng: np.random.Generator, values: np.ndarray, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``, drawn in chunks."""
    n = len(values)
    out = np.empty(n_boot, dtype=np.float64)
    step = max(1, _BOOT_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out
