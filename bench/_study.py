"""What the study scripts of ``bench/`` share: one seed's frozen benchmark episodes.

The studies (``ensemble_member_choice.py``, ``support_finetune.py``) score variants of a
meta-learner on exactly the episodes ``metaad benchmark`` freezes for a seed, so their
``base`` rows reproduce the benchmark's numbers and their differences are paired
(:func:`paired`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metaad.benchmark import PreparedDataset, freeze_episodes, load_checked, prepare_dataset
from metaad.config import BenchmarkConfig
from metaad.episodes.sampler import EpisodeSet
from metaad.stages import Prepared


def frozen_seed(
    dataset: str, cfg: BenchmarkConfig, seed: int, n_episodes: int, out: Path
) -> tuple[PreparedDataset, EpisodeSet, str, Prepared]:
    """The dataset prepared as the benchmark prepares it, and the seed's frozen episodes.

    Returns the prepared dataset, the episodes, their file's sha256 and the stage input
    that ``metaad.stages.train_method`` takes; the episode file is written under ``out``.
    """
    ds, _ = load_checked(dataset, data_dir=cfg.data_dir, validate=False)
    prep = prepare_dataset(ds, shots=cfg.shots, split_seed=cfg.split_seed)
    eps, digest = freeze_episodes(
        prep, seed=seed, shots=cfg.shots, n_episodes=n_episodes,
        path=out / f"episodes_seed{seed}.npz",
    )  # fmt: skip
    return prep, eps, digest, Prepared(prep.split, prep.preprocessor, prep.pools, eps, prep.window)


def paired(
    per: pd.DataFrame, pairs: list[tuple[str, str]], by: list[str], draws: int = 2000
) -> pd.DataFrame:
    """``a - b`` for each ``(a, b)`` in ``pairs`` on the same episodes, per group of ``by``:
    the macro mean over types and a 95% interval.

    ``per`` has one row per episode, a ``type`` column and one AUPRC column per variant. The
    interval bootstraps the episodes within each type (types fixed), as the benchmark's
    ``delta_paired`` does.
    """
    rng = np.random.default_rng(0)
    rows = []
    for key, g in per.groupby(by):
        for a, b in pairs:
            groups = [(g.loc[g["type"] == t, a] - g.loc[g["type"] == t, b]).dropna().to_numpy()
                      for t in sorted(g["type"].unique())]  # fmt: skip
            groups = [d for d in groups if len(d)]
            if not groups:
                continue
            point = float(np.mean([d.mean() for d in groups]))
            boots = [np.mean([rng.choice(d, len(d)).mean() for d in groups]) for _ in range(draws)]
            lo, hi = np.percentile(boots, [2.5, 97.5])
            keys = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
            rows.append({**keys, "a - b": f"{a} - {b}", "mean": point,
                         "ci": f"[{lo:+.3f}, {hi:+.3f}]"})  # fmt: skip
    return pd.DataFrame(rows)
