"""Tiny canonical tables and pools for unit tests (import: ``from helpers_data import ...``).

Why blobs: unit tests of samplers, detectors and metrics need a table where every anomaly
type is easy and different, so a failing assertion means broken code, not a hard dataset.
Each type is a tight Gaussian blob shifted from the normal cloud in its own direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from metaad.data.schema import LABEL, NORMAL, TYPE, feature_columns
from metaad.episodes.pool import Pool


def make_blobs_table(
    n_normal: int = 2000,
    types: Sequence[str] = ("a", "b", "c", "d"),
    n_per_type: int = 120,
    d: int = 8,
    seed: int = 0,
    shift: float = 4.0,
) -> pd.DataFrame:
    """A canonical table: standard-normal normals, one shifted blob per type (rows shuffled).

    Type ``i`` is centred at ``shift`` times its own unit direction (orthogonal directions
    while ``len(types) <= d``), with std 0.5, so every type is easy to detect and the types
    differ from each other. Columns ``f0..f{d-1}``, ``label``, ``anomaly_type``.
    """
    rng = np.random.default_rng(seed)
    k = len(types)
    dirs = np.linalg.qr(rng.standard_normal((d, max(d, k))))[0].T[:k] if k <= d else None
    if dirs is None:
        dirs = rng.standard_normal((k, d))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    parts = [rng.standard_normal((n_normal, d))]
    names = [np.full(n_normal, NORMAL, dtype=object)]
    for i, t in enumerate(types):
        parts.append(shift * dirs[i] + 0.5 * rng.standard_normal((n_per_type, d)))
        names.append(np.full(n_per_type, t, dtype=object))
    X = np.concatenate(parts)
    typ = np.concatenate(names)
    order = rng.permutation(len(X))
    df = pd.DataFrame(X[order], columns=[f"f{j}" for j in range(d)])
    df[LABEL] = (typ[order] != NORMAL).astype(np.int64)
    df[TYPE] = pd.Series(typ[order], dtype="str")
    return df


def make_pool(
    n_normal: int = 2000,
    types: Sequence[str] = ("a", "b", "c", "d"),
    n_per_type: int = 120,
    d: int = 8,
    seed: int = 0,
    shift: float = 4.0,
) -> Pool:
    """The blobs table as a :class:`Pool`: float32 features standardised on the normals."""
    df = make_blobs_table(n_normal, types, n_per_type, d, seed, shift)
    cols = feature_columns(df)
    X = df[cols].to_numpy(np.float64)
    normal = df[LABEL].to_numpy() == 0
    mu, sd = X[normal].mean(0), X[normal].std(0)
    X = ((X - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
    return Pool(
        X=X,
        y=df[LABEL].to_numpy(np.int64),
        types=df[TYPE].to_numpy(dtype=str),
        feature_names=tuple(cols),
    )


def split_held_out(pool: Pool, held_out: Sequence[str]) -> tuple[Pool, Pool]:
    """(meta-train pool without the held-out types, test pool of normals + held-out types).

    The normals are in both, as in the episode protocol's few-shot tests on one pool.
    """
    train = pool.subset(np.flatnonzero(~np.isin(pool.types, list(held_out))))
    test = pool.subset(np.flatnonzero(np.isin(pool.types, [NORMAL, *held_out])))
    return train, test
