"""Tasks as index arrays: a vectorised sampler for training and frozen episode sets.

Training draws a whole batch of same-shaped tasks at once (so the batch can be vmapped and
sampling is not the bottleneck); evaluation draws its episodes once per seed, stores them
as flat index arrays, and every method is scored on exactly those rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaad.data.schema import NORMAL
from metaad.episodes.pool import Pool
from metaad.errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskBatch:
    """A batch of ``B`` tasks of one shot count, as index arrays into a pool.

    Support rows are the K anomalies first, then the normals; query rows are the normals
    first, then the anomalies (callers must not rely on order to infer labels: use ``*_y``).
    """

    support_idx: np.ndarray  # (B, K + n_support_normal) int64
    support_y: np.ndarray  # (B, K + n_support_normal) int64
    query_idx: np.ndarray  # (B, n_query_normal + n_query_anomaly) int64
    query_y: np.ndarray  # (B, n_query_normal + n_query_anomaly) int64
    types: np.ndarray  # (B,) str
    shots: int


def _draw_without_replacement(
    rng: np.random.Generator, population: np.ndarray, batch: int, n: int
) -> np.ndarray:
    """``batch`` independent draws of ``n`` distinct elements of ``population``, exactly.

    When the population is large next to ``n``, positions are drawn with replacement and
    only the rows that came out with a repeat are drawn again (a few rounds at most); small
    populations use an argpartition of random keys. Both are vectorised over the batch.
    """
    size = len(population)
    if n == 0:
        return np.empty((batch, 0), dtype=np.int64)
    if n > size:
        raise DataError(f"cannot draw {n} distinct rows from a group of {size}")
    if size >= 4 * n:
        pos = rng.integers(0, size, size=(batch, n))
        todo = np.arange(batch)
        for _ in range(32):
            srt = np.sort(pos[todo], axis=1)
            todo = todo[(srt[:, 1:] == srt[:, :-1]).any(axis=1)]
            if len(todo) == 0:
                return population[pos]
            pos[todo] = rng.integers(0, size, size=(len(todo), n))
        keys = rng.random((len(todo), size))  # vanishingly rare: finish the stragglers exactly
        pos[todo] = np.argpartition(keys, n - 1, axis=1)[:, :n]
        return population[pos]
    keys = rng.random((batch, size))
    pick = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < size else np.argsort(keys, 1)
    return population[pick]


def sample_task_batch(
    pool: Pool,
    rng: np.random.Generator,
    *,
    batch_size: int,
    shots: int,
    n_support_normal: int,
    n_query_normal: int,
    n_query_anomaly: int,
    types: Sequence[str] | None = None,
) -> TaskBatch:
    """Draw ``batch_size`` training tasks, each from one anomaly type chosen uniformly.

    Support and query rows of a task are disjoint. Types with too few rows for
    ``shots + n_query_anomaly`` are skipped (an error if none is left).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    index = pool.type_index
    normals = pool.normal_idx
    need_a = shots + n_query_anomaly
    if len(normals) < n_support_normal + n_query_normal:
        raise DataError(
            f"the pool has {len(normals)} normal rows; a task needs "
            f"{n_support_normal + n_query_normal}"
        )
    candidates = [t for t in (types or pool.anomaly_types) if len(index.get(t, ())) >= need_a]
    if not candidates:
        raise DataError(
            f"no anomaly type has the {need_a} rows a task needs (K={shots} support + "
            f"{n_query_anomaly} query)"
        )
    chosen = rng.integers(0, len(candidates), size=batch_size)
    anom = np.empty((batch_size, need_a), dtype=np.int64)
    for ti in np.unique(chosen):
        rows = np.flatnonzero(chosen == ti)
        anom[rows] = _draw_without_replacement(rng, index[candidates[ti]], len(rows), need_a)
    norm = _draw_without_replacement(rng, normals, batch_size, n_support_normal + n_query_normal)
    support_idx = np.concatenate([anom[:, :shots], norm[:, :n_support_normal]], axis=1)
    query_idx = np.concatenate([norm[:, n_support_normal:], anom[:, shots:]], axis=1)
    support_y = np.concatenate(
        [
            np.ones((batch_size, shots), np.int64),
            np.zeros((batch_size, n_support_normal), np.int64),
        ],
        axis=1,
    )
    query_y = np.concatenate(
        [
            np.zeros((batch_size, n_query_normal), np.int64),
            np.ones((batch_size, n_query_anomaly), np.int64),
        ],
        axis=1,
    )
    names = np.asarray(candidates, dtype=str)[chosen]
    return TaskBatch(support_idx, support_y, query_idx, query_y, names, shots)


@dataclass(frozen=True)
class Episode:
    """One evaluation task: a view into an :class:`EpisodeSet`."""

    type: str
    shots: int
    seed: int
    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray


@dataclass(frozen=True)
class EpisodeSet:
    """Frozen evaluation episodes, stored flat with offsets (CSR-style).

    ``pool_fingerprint`` ties the indices to the pool they were drawn from; loading them
    against another pool is refused.
    """

    types: np.ndarray  # (E,) str
    shots: np.ndarray  # (E,) int64
    seeds: np.ndarray  # (E,) int64: the repetition number within (type, shots)
    support_ptr: np.ndarray  # (E + 1,)
    support_idx: np.ndarray
    support_y: np.ndarray
    query_ptr: np.ndarray  # (E + 1,)
    query_idx: np.ndarray
    query_y: np.ndarray
    pool_fingerprint: str
    contamination: float

    def __len__(self) -> int:
        return len(self.types)

    def __getitem__(self, i: int) -> Episode:
        s0, s1 = self.support_ptr[i], self.support_ptr[i + 1]
        q0, q1 = self.query_ptr[i], self.query_ptr[i + 1]
        return Episode(
            type=str(self.types[i]),
            shots=int(self.shots[i]),
            seed=int(self.seeds[i]),
            support_idx=self.support_idx[s0:s1],
            support_y=self.support_y[s0:s1],
            query_idx=self.query_idx[q0:q1],
            query_y=self.query_y[q0:q1],
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz`` (byte-identical for the same content)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez(
                fh,
                types=self.types.astype("U"),
                shots=self.shots,
                seeds=self.seeds,
                support_ptr=self.support_ptr,
                support_idx=self.support_idx,
                support_y=self.support_y,
                query_ptr=self.query_ptr,
                query_idx=self.query_idx,
                query_y=self.query_y,
                meta=np.asarray(
                    json.dumps(
                        {
                            "pool_fingerprint": self.pool_fingerprint,
                            "contamination": self.contamination,
                        }
                    )
                ),
            )
        return path

    @classmethod
    def load(cls, path: str | Path, pool: Pool | None = None) -> EpisodeSet:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            eps = cls(
                types=z["types"],
                shots=z["shots"],
                seeds=z["seeds"],
                support_ptr=z["support_ptr"],
                support_idx=z["support_idx"],
                support_y=z["support_y"],
                query_ptr=z["query_ptr"],
                query_idx=z["query_idx"],
                query_y=z["query_y"],
                pool_fingerprint=meta["pool_fingerprint"],
                contamination=float(meta["contamination"]),
            )
        if pool is not None and pool.fingerprint() != eps.pool_fingerprint:
            raise DataError(
                f"episodes in {path} were drawn from another pool (fingerprint "
                f"{eps.pool_fingerprint}, this pool {pool.fingerprint()}); rebuild them"
            )
        return eps

    def manifest(self) -> dict[str, object]:
        """A small JSON summary: counts per (type, K) and sizes, for logs and MLflow."""
        counts: dict[str, dict[str, int]] = {}
        for t, k in zip(self.types.tolist(), self.shots.tolist(), strict=True):
            counts.setdefault(t, {}).setdefault(str(k), 0)
            counts[t][str(k)] += 1
        return {
            "n_episodes": len(self),
            "pool_fingerprint": self.pool_fingerprint,
            "contamination": self.contamination,
            "episodes_per_type_and_k": counts,
        }


def build_eval_episodes(
    pool: Pool,
    *,
    shots: Sequence[int],
    n_episodes: int,
    n_support_normal: int,
    n_query_normal: int,
    contamination: float,
    seed: int,
    types: Sequence[str] | None = None,
) -> EpisodeSet:
    """Draw the frozen evaluation episodes for every (type, K, repetition).

    The query holds ``n_query_normal`` normals and ``round(n_query_normal * c / (1 - c))``
    anomalies (at least one), so the stated contamination holds exactly. Support and query
    are disjoint. Each (type, K, repetition) has its own generator derived from ``seed``,
    so adding a type or a K leaves the other episodes unchanged.
    """
    if not 0.0 < contamination < 1.0:
        raise ConfigError(f"contamination must be in (0, 1), got {contamination}")
    if n_episodes < 1:
        raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
    n_query_anom = max(1, round(n_query_normal * contamination / (1.0 - contamination)))
    index = pool.type_index
    normals = pool.normal_idx
    if len(normals) < n_support_normal + n_query_normal:
        raise DataError(
            f"evaluation pool has {len(normals)} normal rows; an episode needs "
            f"{n_support_normal + n_query_normal}"
        )
    types = list(types) if types is not None else pool.anomaly_types
    if not types:
        raise DataError("the evaluation pool has no anomaly types")
    k_max = max(shots)
    for t in types:
        have = len(index.get(t, ()))
        if have < k_max + n_query_anom:
            raise DataError(
                f"anomaly type {t!r} has {have} rows in the evaluation pool; K={k_max} support "
                f"plus {n_query_anom} query anomalies need {k_max + n_query_anom}"
            )
    rec: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "sy", "q", "qy")}
    meta_t, meta_k, meta_r = [], [], []
    for ti, t in enumerate(types):
        for k in shots:
            for r in range(n_episodes):
                rng = np.random.default_rng([seed, ti, int(k), r])
                a = rng.choice(index[t], size=int(k) + n_query_anom, replace=False)
                nrm = rng.choice(normals, size=n_support_normal + n_query_normal, replace=False)
                rec["s"].append(np.concatenate([a[:k], nrm[:n_support_normal]]))
                rec["sy"].append(np.r_[np.ones(k, np.int64), np.zeros(n_support_normal, np.int64)])
                rec["q"].append(np.concatenate([nrm[n_support_normal:], a[k:]]))
                rec["qy"].append(
                    np.r_[np.zeros(n_query_normal, np.int64), np.ones(n_query_anom, np.int64)]
                )
                meta_t.append(t)
                meta_k.append(int(k))
                meta_r.append(r)

    def ptr(parts: list[np.ndarray]) -> np.ndarray:
        return np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)

    return EpisodeSet(
        types=np.asarray(meta_t, dtype=str),
        shots=np.asarray(meta_k, dtype=np.int64),
        seeds=np.asarray(meta_r, dtype=np.int64),
        support_ptr=ptr(rec["s"]),
        support_idx=np.concatenate(rec["s"]).astype(np.int64),
        support_y=np.concatenate(rec["sy"]).astype(np.int64),
        query_ptr=ptr(rec["q"]),
        query_idx=np.concatenate(rec["q"]).astype(np.int64),
        query_y=np.concatenate(rec["qy"]).astype(np.int64),
        pool_fingerprint=pool.fingerprint(),
        contamination=float(contamination),
    )


__all__ = [
    "NORMAL",
    "Episode",
    "EpisodeSet",
    "TaskBatch",
    "build_eval_episodes",
    "sample_task_batch",
]
