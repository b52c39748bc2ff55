"""Figures as PNG files, for MLflow artifacts and DVC plots alike.

Each function draws on its own ``matplotlib.figure.Figure`` attached to an Agg canvas, set up
inside the function. That renders without a display, never touches pyplot's global backend
or figure registry (so importing metaad changes nothing for a notebook user, and plots from
Prefect tasks in threads do not share state), and the figure is freed when the function
returns. matplotlib itself is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metaad.evaluation.metrics import auprc, precision_recall_points
from metaad.evaluation.runner import MACRO, META_FAMILIES

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["plot_auprc_vs_k", "plot_learning_curve", "plot_paired_differences", "plot_pr_curves"]

DPI = 120


def _figure(size: tuple[float, float] = (7.0, 4.5)) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        fig.clear()  # not registered with pyplot: clearing drops the artists now
    return path


def plot_auprc_vs_k(
    summary: pd.DataFrame,
    path: str | Path,
    *,
    family_of: Mapping[str, str] | None = None,
    contamination: float | None = None,
    metric: str = "auprc",
    title: str | None = None,
) -> Path:
    """Macro ``metric`` against K, one line per method with its interval as error bars.

    Meta-learners (family ``metric`` or ``maml`` in ``family_of``) are solid lines and
    baselines dashed, so the one comparison that matters reads at a glance; without
    ``family_of`` every line is solid. ``contamination`` draws the random scorer's AUPRC as
    a dotted line, the floor every method must clear. Methods are nudged apart on the x-axis
    so that error bars at the same K do not hide each other.
    """
    for c in ("method", "shots", "type", f"{metric}_mean", f"{metric}_lo", f"{metric}_hi"):
        if c not in summary.columns:
            raise ValueError(f"summary lacks column {c!r}; build it with summarise()")
    macro = summary[summary["type"] == MACRO].sort_values(["method", "shots"])
    if macro.empty:
        raise ValueError("the summary has no macro rows to plot")
    methods = sorted(macro["method"].unique())
    ks = sorted(int(k) for k in macro["shots"].unique())
    span = (max(ks) - min(ks)) or 1
    width = 0.02 * span

    fig = _figure()
    ax = fig.add_subplot()
    cmap = _colours(len(methods))
    for i, method in enumerate(methods):
        sub = macro[macro["method"] == method]
        x = sub["shots"].to_numpy(float) + (i - (len(methods) - 1) / 2) * width
        mean = sub[f"{metric}_mean"].to_numpy(float)
        lo = sub[f"{metric}_lo"].to_numpy(float)
        hi = sub[f"{metric}_hi"].to_numpy(float)
        err = np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)
        meta = family_of is None or family_of.get(method) in META_FAMILIES
        ax.errorbar(
            x,
            mean,
            yerr=err,
            label=method,
            color=cmap[i],
            linestyle="-" if meta else "--",
            marker="o" if meta else "s",
            markersize=4,
            capsize=3,
            linewidth=1.6 if meta else 1.2,
        )
    if contamination is not None:
        ax.axhline(
            contamination,
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label=f"random ({contamination:.3g})",
        )
    ax.set_xticks(ks)
    ax.set_xlabel("shots K (labelled anomalies of the new type)")
    ax.set_ylabel(f"macro {metric.upper() if metric != 'recall_at_1fpr' else 'recall @ 1% FPR'}")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{metric} vs K on unseen anomaly types (95% CI)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path)


def plot_paired_differences(
    table: pd.DataFrame,
    path: str | Path,
    *,
    a: str,
    b: str,
    metric: str = "auprc",
    target: float | None = None,
) -> Path:
    """``b - a`` per dataset and K with its paired 95% interval (a forest plot).

    ``table`` is :func:`metaad.benchmark_compare.compare_methods`'s: one row per (dataset,
    K) with ``delta``, ``lo`` and ``hi``. Zero is drawn solid, so an interval that crosses
    it reads as "no difference shown"; ``target`` (the margin a claim needs, +0.05 for
    issue 4's K=5 claim) is drawn dashed, so a reader sees at once which rows clear it.
    Rows go top to bottom in the table's order, each labelled "dataset K=k".
    """
    for c in ("dataset", "shots", "delta", "lo", "hi"):
        if c not in table.columns:
            raise ValueError(f"table lacks column {c!r}; build it with compare_methods()")
    if table.empty:
        raise ValueError("the comparison table has no rows to plot")
    n = len(table)
    y = np.arange(n)[::-1]
    delta = table["delta"].to_numpy(float)
    lo = table["lo"].to_numpy(float)
    hi = table["hi"].to_numpy(float)
    fig = _figure((7.0, 1.2 + 0.32 * n))
    ax = fig.add_subplot()
    datasets = list(dict.fromkeys(table["dataset"]))
    cmap = _colours(len(datasets))
    colour = [cmap[datasets.index(d)] for d in table["dataset"]]
    err = np.nan_to_num(np.vstack([delta - lo, hi - delta]), nan=0.0)
    for i in range(n):
        ax.errorbar(
            delta[i], y[i], xerr=err[:, i : i + 1], fmt="o", color=colour[i],
            markersize=5, capsize=3, linewidth=1.4,
        )  # fmt: skip
    ax.axvline(0.0, color="black", linewidth=1.0)
    if target is not None:
        ax.axvline(target, color="grey", linestyle="--", linewidth=1.0, label=f"target {target:+g}")
        ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.set_yticks(y)
    labels = [f"{d}  K={k}" for d, k in zip(table["dataset"], table["shots"], strict=True)]
    ax.set_yticklabels(labels)
    ax.set_xlabel(f"macro {metric.upper()}: {b} - {a} (paired 95% CI)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{b} against {a} on the same episodes")
    return _save(fig, path)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_pr_curves(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    title: str = "Precision-recall on pooled queries",
) -> Path:
    """Precision-recall curves of several methods on one pooled set of query rows.

    ``curves`` maps a method name to ``(y, s)``: labels and that method's scores. Pooling
    queries across episodes mixes score scales of separately adapted detectors, so this is
    a picture of where each method trades precision for recall, not a substitute for the
    per-episode AUPRC in the tables; the legend gives each pooled curve's AP. The positive
    fraction is drawn as the random scorer's level.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig = _figure((6.0, 5.0))
    ax = fig.add_subplot()
    colours = _colours(len(curves))
    prevalence: float | None = None
    for i, (name, (y, s)) in enumerate(curves.items()):
        recall, precision = precision_recall_points(y, s)
        ax.step(
            recall,
            precision,
            where="pre",
            color=colours[i],
            linewidth=1.4,
            label=f"{name} (AP {auprc(y, s):.3f})",
        )
        prevalence = float(np.mean(np.asarray(y)))
    if prevalence is not None:
        ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1.0, label="random")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_learning_curve(
    steps: Sequence[float],
    losses: Sequence[float],
    path: str | Path,
    val_steps: Sequence[float] | None = None,
    val_values: Sequence[float] | None = None,
    *,
    val_label: str = "val AUPRC",
    title: str = "Meta-training",
) -> Path:
    """Training loss against outer step, and a validation metric on a second y-axis.

    The two are on separate axes because they have different units (a loss and an AUPRC);
    sharing one axis would flatten whichever has the smaller range. A noisy per-step loss is
    drawn faintly with a moving average over it, so the trend is readable.
    """
    x = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"steps and losses must be 1-D of equal length, got {x.shape}, {y.shape}")
    if (val_steps is None) != (val_values is None):
        raise ValueError("give both val_steps and val_values, or neither")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    window = max(1, len(y) // 20)
    if window > 1:
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1 :], smooth, color="tab:blue", linewidth=1.6, label="loss (smoothed)")
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta-training loss", color="tab:blue")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if val_steps is not None and val_values is not None:
        vx = np.asarray(val_steps, dtype=float)
        vy = np.asarray(val_values, dtype=float)
        if vx.shape != vy.shape or vx.ndim != 1:
            raise ValueError(
                f"val_steps and val_values must be 1-D of equal length, got {vx.shape}, {vy.shape}"
            )
        ax2 = ax.twinx()
        ax2.plot(vx, vy, color="tab:orange", marker="o", markersize=3, label=val_label)
        ax2.set_ylabel(val_label, color="tab:orange")
        finite = vy[np.isfinite(vy)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            ax2.set_ylim(0.0, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title(title)
    if x.size and math.isfinite(float(x.min())) and x.min() != x.max():
        ax.set_xlim(float(x.min()), float(x.max()))
    return _save(fig, path)
