"""Pair a benchmark run of the metric learners with ``raw_knn`` against the same learners
without it, episode by episode. (A study script, docs/benchmark-log.md, "A whole-window k-NN
term".)

The run without the term is read from ``bench/ensemble_member_choice.py``'s per-episode files
of the same seeds and episodes (its ``triplet`` and ``mean`` = ``metric_ens`` columns, and
``mean+knn``, the blend the term replaces). That the two are the same episodes is checked,
not assumed: the ``knn`` baseline is in both and must score every episode identically.

    python bench/raw_knn_pairs.py artifacts/benchmark/run22T \\
        "artifacts/member_choice_20ep/tep_seed{seed}_proto-siamese-triplet-deviation_with_knn"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from _study import paired

PAIRS = [
    ("ens_knn", "knn"),
    ("triplet_knn", "knn"),
    ("ens_knn", "mean"),
    ("triplet_knn", "triplet"),
    ("ens_knn", "mean+knn"),
]


def joined(run: Path, pattern: str) -> pd.DataFrame:
    """One row per episode: the run's methods (renamed ``*_knn``) beside the study's columns."""
    new = pd.read_csv(run / "per_episode.csv")
    frames = []
    for seed, g in new.groupby("seed"):
        # a run over several seeds numbers the repetitions on from one seed to the next
        g = g.assign(rep=g["rep"] - g["rep"].min())
        wide = g.pivot_table(index=["type", "shots", "rep"], columns="method", values="auprc")
        wide = wide.reset_index().rename(
            columns={"shots": "K", "metric_ens": "ens_knn", "triplet": "triplet_knn",
                     "knn": "knn_run"}
        )  # fmt: skip
        old = pd.read_csv(Path(pattern.format(seed=seed)) / "per_episode.csv")
        old = old[["type", "K", "rep", "triplet", "mean", "knn", "mean+knn"]]
        both = wide.merge(old, on=["type", "K", "rep"], how="inner")
        if not len(both) == len(wide) == len(old):
            n = (len(wide), len(old), len(both))
            raise SystemExit(f"seed {seed}: {n[0]} and {n[1]} episodes, {n[2]} shared")
        if (both["knn_run"] - both["knn"]).abs().max() > 1e-9:
            raise SystemExit(f"seed {seed}: knn scores differ, so these are not the same episodes")
        frames.append(both.assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="benchmark run with metric_ens/triplet and knn")
    ap.add_argument("study", help="per-seed folder of the study's files, with {seed}")
    args = ap.parse_args()
    per = joined(args.run, args.study)
    cols = ["ens_knn", "triplet_knn", "mean", "triplet", "mean+knn", "knn"]
    print(f"seeds {sorted(per['seed'].unique())}: macro AUPRC by K")
    print(per.groupby(["K", "type"])[cols].mean().groupby("K").mean().round(3).to_string())
    print("\npaired differences (episodes bootstrapped within type):")
    print(paired(per, PAIRS, ["K"]).round(3).to_string(index=False))
    print("\nK=5, per seed:")
    print(paired(per[per["K"] == 5], PAIRS[:2], ["seed"]).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
