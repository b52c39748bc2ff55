"""What the study scripts of ``bench/`` share: one seed's frozen benchmark episodes.

The studies (``ensemble_member_choice.py``, ``support_finetune.py``) score variants of a
meta-learner on exactly the episodes ``metaad benchmark`` freezes for a seed, so their
``base`` rows reproduce the benchmark's numbers and their differences are paired.
"""

from __future__ import annotations

from pathlib import Path

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
