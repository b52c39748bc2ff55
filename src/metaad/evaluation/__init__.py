"""Evaluation: metrics per episode, intervals over episodes, reports and plots.

Every method is scored on the same frozen episodes (:func:`evaluate_detector`), summarised
per unseen type and macro-averaged over types with 95% intervals (:func:`summarise`), and
written out as JSON, markdown and DVC metrics (``report``) and PNG figures (``plots``).
Importing this package imports neither matplotlib nor torch; plots import matplotlib when
drawn.
"""

from __future__ import annotations

from metaad.evaluation.metrics import (
    auprc,
    auroc,
    episode_metrics,
    mean_ci,
    paired_bootstrap,
    precision_recall_points,
    recall_at_fpr,
)
from metaad.evaluation.plots import plot_auprc_vs_k, plot_learning_curve, plot_pr_curves
from metaad.evaluation.report import dvc_metrics, markdown_table, per_type_table, results_json
from metaad.evaluation.runner import (
    EPISODE_COLUMNS,
    MACRO,
    METRICS,
    best_by,
    evaluate_detector,
    paired_values,
    summarise,
)

__all__ = [
    "EPISODE_COLUMNS",
    "MACRO",
    "METRICS",
    "auprc",
    "auroc",
    "best_by",
    "dvc_metrics",
    "episode_metrics",
    "evaluate_detector",
    "markdown_table",
    "mean_ci",
    "paired_bootstrap",
    "paired_values",
    "per_type_table",
    "plot_auprc_vs_k",
    "plot_learning_curve",
    "plot_pr_curves",
    "precision_recall_points",
    "recall_at_fpr",
    "results_json",
    "summarise",
]
