"""Every baseline of the evaluation protocol behind the :class:`Detector` contract.

Unsupervised (support ignored): ``iforest``, ``ecod``, ``knn``. Pooled supervision plus the
support: ``hgb_sup``, ``catboost``. Support only: ``lr_sup``, ``proto_raw``. Transfer learning:
``finetune``. Deviation network: ``devnet``.

Rules they all follow (DESIGN.md, "Evaluation protocol"; CALIBRATION.md, "Traps"):

- They learn from the pool given to ``fit`` (meta-train types) and the support given to
  ``adapt``, nothing else.
- Windows ``(n, T, d)`` are flattened to ``(n, T * d)`` for the non-neural baselines; the two
  torch baselines keep the window and use the encoder factory's TCN.
- K may be 0 (support = normals only): the supervised baselines fall back to their pool model
  (``lr_sup`` and ``proto_raw`` to the distance from the support normals).
- A row's score never depends on the other rows of the batch (``ecod`` scores from the
  training normals' ECDFs, not pyod's re-estimate on train + batch).
- Randomness comes from the detector's ``seed`` and ``cfg.seed`` together; the same pair gives
  the same scores.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from scipy.stats import skew
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors
from torch import nn
from tqdm.auto import tqdm

from metaad.device import resolve_device
from metaad.episodes.pool import Pool
from metaad.errors import ConfigError, DataError
from metaad.models.base import Adapted, Detector, FitConfig, History, StepCallback
from metaad.models.encoders import make_encoder

if TYPE_CHECKING:
    from catboost import CatBoostClassifier

#: Rows of a validation pool scored for the ``val_auprc`` logged during fit.
_VAL_MAX_ROWS = 5000
#: Rows per forward pass when a torch baseline scores.
_SCORE_BATCH = 8192


# -- helpers -------------------------------------------------------------------------------
def _flat(X: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows ``(n, d)`` or windows ``(n, T, d)`` as a C-contiguous ``(n, d')`` array."""
    return np.ascontiguousarray(X.reshape(len(X), -1), dtype=dtype)


def _derive_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (order matters), for sklearn, catboost, torch."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class _Scored:
    """The :class:`Adapted` every baseline returns: checks rows, then calls a picklable fn.

    ``fn`` takes the rows as given (already checked) and returns one score per row.
    """

    def __init__(self, detector: Detector, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self._name = detector.name
        self._input_shape = detector.input_shape
        self._fn = fn

    def score(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != len(self._input_shape) + 1 or X.shape[1:] != self._input_shape:
            raise ValueError(
                f"{self._name}: rows have shape {X.shape[1:]}, expected {self._input_shape}"
            )
        if not np.isfinite(X).all():
            raise ValueError(f"{self._name}: rows to score contain NaN or infinite values")
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        out = np.asarray(self._fn(X), dtype=np.float64).reshape(-1)
        if len(out) != len(X):  # pragma: no cover - a bug in a scorer, not in the input
            raise RuntimeError(f"{self._name}: scorer returned {len(out)} scores for {len(X)} rows")
        return out


def _subsample(rng: np.random.Generator, idx: np.ndarray, cap: int | None) -> np.ndarray:
    """``idx`` itself, or a sorted random subset of ``cap`` of its elements."""
    if cap is None or len(idx) <= cap:
        return idx
    return np.sort(rng.choice(idx, size=cap, replace=False))


class _Baseline(Detector):
    """Shared plumbing: hparam defaults and checks, pool checks, seeds, fit/adapt guards."""

    family: ClassVar[str] = "baseline"
    #: Hyper-parameters and their defaults; anything else passed to the constructor is refused.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Whether fit needs labelled anomalies in the pool (the supervised baselines).
    needs_pool_anomalies: ClassVar[bool] = False
    #: Whether adapt works before fit (baselines that use the support alone).
    needs_fit: ClassVar[bool] = True

    def __init__(self, input_shape: tuple[int, ...], *, seed: int = 0, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown hyper-parameter(s) {unknown}; "
                f"valid: {sorted(self.defaults)} (and seed)"
            )
        merged = {**self.defaults, **hparams}
        # Lists, not tuples, so get_config() survives a JSON round trip unchanged.
        merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
        super().__init__(input_shape, seed=int(seed), **merged)
        self.seed = int(seed)
        self.hp = merged
        self._fitted = False
        self._fit_seed = _derive_seed(self.seed, 0)
        self._validate_hparams()

    def _validate_hparams(self) -> None:
        """Subclasses raise ConfigError for out-of-range hparams."""

    def _positive_int(self, *keys: str) -> None:
        for k in keys:
            v = self.hp[k]
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{self.name}: {k} must be a positive integer, got {v!r}")

    # -- checks ---------------------------------------------------------------------------
    def _check_pool(self, pool: Pool, what: str = "pool") -> None:
        if pool.input_shape != self.input_shape:
            raise DataError(
                f"{self.name}: {what} rows have shape {pool.input_shape}, "
                f"expected {self.input_shape}"
            )
        if len(pool.normal_idx) == 0:
            raise DataError(f"{self.name}: the {what} has no normal rows")
        if self.needs_pool_anomalies and not (pool.y == 1).any():
            raise DataError(
                f"{self.name}: the {what} has no labelled anomaly; this baseline is supervised "
                "and needs the meta-train anomaly types"
            )

    def _begin_fit(self, pool: Pool, cfg: FitConfig, val: Pool | None) -> History:
        self._check_pool(pool)
        if val is not None:
            self._check_pool(val, "validation pool")
        self._fit_seed = _derive_seed(self.seed, cfg.seed)
        return History()

    def _prepare_support(self, X_support: np.ndarray, y_support: np.ndarray):
        if self.needs_fit and not self._fitted:
            raise RuntimeError(f"{self.name}: call fit(pool, cfg) before adapt")
        X_support = np.asarray(X_support)
        y_support = np.asarray(y_support)
        if X_support.ndim != len(self.input_shape) + 1:
            raise ValueError(
                f"{self.name}: support rows have shape {X_support.shape[1:]}, "
                f"expected {self.input_shape}"
            )
        if y_support.ndim != 1:
            raise ValueError(f"{self.name}: support labels must be 1-D, got {y_support.shape}")
        self.check_support(X_support, y_support)
        return X_support, y_support.astype(np.int64)

    def _finish(
        self,
        history: History,
        step: int,
        values: dict[str, float],
        callback: StepCallback | None,
    ) -> None:
        history.log(step, **values)
        if callback is not None:
            callback(step, dict(values))

    def _val_auprc(self, scorer: _Scored, val: Pool | None) -> dict[str, float]:
        """AUPRC of the pool-level detector on a validation pool (normal vs any anomaly)."""
        if val is None or val.y.min() == val.y.max():
            return {}
        rng = np.random.default_rng(_derive_seed(self._fit_seed, 7))
        idx = _subsample(rng, np.arange(len(val.y)), _VAL_MAX_ROWS)
        if val.y[idx].min() == val.y[idx].max():
            idx = np.arange(len(val.y))
        return {"val_auprc": float(average_precision_score(val.y[idx], scorer.score(val.X[idx])))}


# -- unsupervised ----------------------------------------------------------------------------
def _neg_score_samples(model: IsolationForest, X: np.ndarray) -> np.ndarray:
    return -model.score_samples(_flat(X, np.float32))


class IForestBaseline(_Baseline):
    """Isolation Forest fitted on the pool normals; the support is ignored."""

    name: ClassVar[str] = "iforest"
    defaults: ClassVar[dict[str, Any]] = {"n_estimators": 200, "max_samples": "auto"}

    def _validate_hparams(self) -> None:
        self._positive_int("n_estimators")

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        Xn = _flat(pool.X[pool.normal_idx], np.float32)
        self._model = IsolationForest(
            n_estimators=self.hp["n_estimators"],
            max_samples=self.hp["max_samples"],
            random_state=self._fit_seed,
            n_jobs=1,
        ).fit(Xn)
        self._fitted = True
        values = {"n_train_normals": float(len(Xn)), **self._val_auprc(self._scorer(), val)}
        self._finish(history, 0, values, callback)
        return history

    def _scorer(self) -> _Scored:
        return _Scored(self, functools.partial(_neg_score_samples, self._model))

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        self._prepare_support(X_support, y_support)
        return self._scorer()


class _ECDFModel:
    """Per-feature ECDFs of the training normals and the ECOD aggregation (Li et al. 2022).

    For a value ``x`` of feature ``j`` with training values ``s_1..s_n``:
    left tail ``F_l(x) = #{s <= x} / n``, right tail ``F_r(x) = #{s >= x} / n``, both floored
    at ``1 / n`` (a value beyond the training range counts as the most extreme one seen).
    ``U_l = -log F_l``, ``U_r = -log F_r``; the skewness-corrected tail ``U_auto`` takes the
    left tail for features with negative skewness and the right tail otherwise.

    ``aggregation="paper"`` (Algorithm 1 of the paper): ``max(sum U_l, sum U_r, sum U_auto)``.
    ``aggregation="pyod"``: pyod's per-feature maximum, ``sum_j max(U_l, U_r, U_skew)``, where
    pyod's ``U_skew`` is ``U_l + U_r`` for a feature with zero skewness.
    Every row is scored from the training ECDFs alone, so its score ignores the batch.
    """

    def __init__(self, X: np.ndarray, aggregation: str) -> None:
        self.n = len(X)
        self.sorted = np.ascontiguousarray(np.sort(X, axis=0).T)  # (features, n)
        self.skew_sign = np.sign(np.nan_to_num(skew(X.astype(np.float64), axis=0)))
        self.aggregation = aggregation

    def tails(self, X: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        """``U_l`` and ``U_r`` of feature ``j`` for the rows of flattened ``X``."""
        col = self.sorted[j]
        x = X[:, j]
        left = np.searchsorted(col, x, side="right")
        right = self.n - np.searchsorted(col, x, side="left")
        log_n = np.log(self.n)
        u_l = log_n - np.log(np.maximum(left, 1))
        u_r = log_n - np.log(np.maximum(right, 1))
        return u_l, u_r

    def __call__(self, X: np.ndarray) -> np.ndarray:
        Xf = _flat(X, self.sorted.dtype)
        m = len(Xf)
        if self.aggregation == "paper":
            o_l, o_r, o_a = np.zeros(m), np.zeros(m), np.zeros(m)
            for j in range(Xf.shape[1]):
                u_l, u_r = self.tails(Xf, j)
                o_l += u_l
                o_r += u_r
                o_a += u_l if self.skew_sign[j] < 0 else u_r
            return np.maximum(np.maximum(o_l, o_r), o_a)
        out = np.zeros(m)
        for j in range(Xf.shape[1]):
            u_l, u_r = self.tails(Xf, j)
            s = self.skew_sign[j]
            u_skew = u_l if s < 0 else (u_r if s > 0 else u_l + u_r)
            out += np.maximum(np.maximum(u_l, u_r), u_skew)
        return out


class ECODBaseline(_Baseline):
    """ECOD with the ECDFs of the pool normals; each row is scored on its own.

    pyod's ``ECOD.decision_function`` re-estimates the ECDFs on train + batch, so a row's
    score depends on the batch (CALIBRATION.md); this scores from the training ECDFs only.
    ``max_ref`` caps the reference normals (random subset by seed); None keeps all.
    """

    name: ClassVar[str] = "ecod"
    defaults: ClassVar[dict[str, Any]] = {"aggregation": "paper", "max_ref": None}

    def _validate_hparams(self) -> None:
        if self.hp["aggregation"] not in ("paper", "pyod"):
            raise ConfigError(
                f"ecod: aggregation must be 'paper' or 'pyod', got {self.hp['aggregation']!r}"
            )
        if self.hp["max_ref"] is not None:
            self._positive_int("max_ref")

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        rng = np.random.default_rng(self._fit_seed)
        ref = _subsample(rng, pool.normal_idx, self.hp["max_ref"])
        dtype = np.float64 if pool.X.dtype == np.float64 else np.float32
        self._model = _ECDFModel(_flat(pool.X[ref], dtype), self.hp["aggregation"])
        self._fitted = True
        values = {"n_train_normals": float(len(ref)), **self._val_auprc(self._scorer(), val)}
        self._finish(history, 0, values, callback)
        return history

    def _scorer(self) -> _Scored:
        return _Scored(self, self._model)

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        self._prepare_support(X_support, y_support)
        return self._scorer()


def _knn_mean_distance(nn_index: NearestNeighbors, k: int, X: np.ndarray) -> np.ndarray:
    dist, _ = nn_index.kneighbors(_flat(X), n_neighbors=k)
    return dist.mean(axis=1)


class KNNBaseline(_Baseline):
    """Mean distance to the ``k`` nearest pool normals (at most ``max_ref`` of them, by seed)."""

    name: ClassVar[str] = "knn"
    defaults: ClassVar[dict[str, Any]] = {"k": 5, "max_ref": 20000}

    def _validate_hparams(self) -> None:
        self._positive_int("k", "max_ref")

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        rng = np.random.default_rng(self._fit_seed)
        ref = _subsample(rng, pool.normal_idx, self.hp["max_ref"])
        self._k = min(self.hp["k"], len(ref))
        self._index = NearestNeighbors(n_neighbors=self._k, n_jobs=1).fit(_flat(pool.X[ref]))
        self._fitted = True
        values = {"n_train_normals": float(len(ref)), **self._val_auprc(self._scorer(), val)}
        self._finish(history, 0, values, callback)
        return history

    def _scorer(self) -> _Scored:
        return _Scored(self, functools.partial(_knn_mean_distance, self._index, self._k))

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        self._prepare_support(X_support, y_support)
        return self._scorer()


# -- pooled supervision plus the support -----------------------------------------------------
class _PooledClassifier(_Baseline):
    """A classifier on the pool (normal vs any anomaly), retrained with the support appended.

    The support rows (anomalies and normals) are replicated ``support_weight`` times rather
    than weighted (HistGradientBoosting with ``sample_weight`` is about 8x slower,
    CALIBRATION.md). The pool model is trained once in fit and used as it is for K = 0.
    ``max_pool_normals`` caps the pool normals (random subset by seed; default 5,000, since
    every adapt retrains on the whole pool and more normals add time, not ranking quality
    on unseen types); None keeps all.
    """

    needs_pool_anomalies: ClassVar[bool] = True

    def _make(self, seed: int) -> Any:
        raise NotImplementedError

    def _raw(self, model: Any, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        rng = np.random.default_rng(self._fit_seed)
        normals = _subsample(rng, pool.normal_idx, self.hp["max_pool_normals"])
        rows = np.sort(np.concatenate([normals, np.flatnonzero(pool.y == 1)]))
        self._X_pool = _flat(pool.X[rows], np.float32)
        self._y_pool = (pool.y[rows] == 1).astype(np.int64)
        self._pool_model = self._make(self._fit_seed).fit(self._X_pool, self._y_pool)
        self._fitted = True
        values = {
            "n_train_normals": float((self._y_pool == 0).sum()),
            "n_train_anomalies": float(self._y_pool.sum()),
            **self._val_auprc(self._scorer(self._pool_model), val),
        }
        self._finish(history, 0, values, callback)
        return history

    def _scorer(self, model: Any) -> _Scored:
        return _Scored(self, functools.partial(type(self)._raw_scores, self, model))

    def _raw_scores(self, model: Any, X: np.ndarray) -> np.ndarray:
        return self._raw(model, _flat(X, np.float32))

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        X_support, y_support = self._prepare_support(X_support, y_support)
        if (y_support == 1).sum() == 0:
            return self._scorer(self._pool_model)
        w = self.hp["support_weight"]
        Xs = np.repeat(_flat(X_support, np.float32), w, axis=0)
        ys = np.repeat(y_support, w)
        X = np.concatenate([self._X_pool, Xs])
        y = np.concatenate([self._y_pool, ys])
        model = self._make(_derive_seed(self._fit_seed, 1)).fit(X, y)
        return self._scorer(model)


class HGBSupBaseline(_PooledClassifier):
    """HistGradientBoosting on the pool plus the replicated support (``hgb_sup``)."""

    name: ClassVar[str] = "hgb_sup"
    defaults: ClassVar[dict[str, Any]] = {
        "max_iter": 100,
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
        "support_weight": 20,
        "max_pool_normals": 5000,
    }

    def _validate_hparams(self) -> None:
        self._positive_int("max_iter", "max_leaf_nodes", "support_weight")
        if self.hp["max_pool_normals"] is not None:
            self._positive_int("max_pool_normals")

    def _make(self, seed: int) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(
            max_iter=self.hp["max_iter"],
            learning_rate=self.hp["learning_rate"],
            max_leaf_nodes=self.hp["max_leaf_nodes"],
            early_stopping=False,
            random_state=seed,
        )

    def _raw(self, model: HistGradientBoostingClassifier, X: np.ndarray) -> np.ndarray:
        return model.decision_function(X)


class CatBoostBaseline(_PooledClassifier):
    """CatBoost on the pool plus the replicated support (``catboost``)."""

    name: ClassVar[str] = "catboost"
    defaults: ClassVar[dict[str, Any]] = {
        "iterations": 150,
        "depth": 6,
        "learning_rate": None,
        "thread_count": 1,
        "support_weight": 20,
        "max_pool_normals": 5000,
    }

    def _validate_hparams(self) -> None:
        self._positive_int("iterations", "depth", "thread_count", "support_weight")
        if self.hp["max_pool_normals"] is not None:
            self._positive_int("max_pool_normals")

    def _make(self, seed: int) -> CatBoostClassifier:
        # imported here: catboost is heavy to import and only this baseline needs it
        from catboost import CatBoostClassifier

        return CatBoostClassifier(
            iterations=self.hp["iterations"],
            depth=self.hp["depth"],
            learning_rate=self.hp["learning_rate"],
            thread_count=self.hp["thread_count"],
            random_seed=seed,
            verbose=False,
            allow_writing_files=False,
        )

    def _raw(self, model: CatBoostClassifier, X: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(X, prediction_type="RawFormulaVal"), dtype=np.float64)


# -- support only ----------------------------------------------------------------------------
def _support_scaling(Xn: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    mu = Xn.mean(axis=0)
    sd = np.maximum(Xn.std(axis=0), floor)
    return mu, sd


def _lr_scores(model: LogisticRegression, mu: np.ndarray, sd: np.ndarray, X: np.ndarray):
    return model.decision_function((_flat(X) - mu) / sd)


def _scaled_norm(mu: np.ndarray, sd: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.linalg.norm((_flat(X) - mu) / sd, axis=1)


def _proto_scores(c_normal: np.ndarray, c_anomaly: np.ndarray | None, X: np.ndarray):
    Xf = _flat(X)
    d_n = np.linalg.norm(Xf - c_normal, axis=1)
    if c_anomaly is None:
        return d_n
    return d_n - np.linalg.norm(Xf - c_anomaly, axis=1)


class _SupportOnly(_Baseline):
    """Baselines that use the support alone: fit only checks the pool; adapt needs no fit."""

    needs_fit: ClassVar[bool] = False

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        self._fitted = True
        self._finish(history, 0, {"n_pool_rows_used": 0.0}, callback)
        return history


class LRSupBaseline(_SupportOnly):
    """Logistic regression on the support alone (``lr_sup``), re-scaled by its normals.

    ``scale`` says which scaling the regression sees. ``support`` (``lr_sup``'s default):
    each feature re-standardised by the support normals' mean and standard deviation
    (floored at ``std_floor``), so a feature counts by how far a row sits from *this* task's
    normals. ``pool`` (the ``lr_pool`` baseline): the pipeline's own preprocessing, fitted
    on the meta-train normals like every other method's input. Neither is better everywhere.
    On the benchmark's seed-0 episodes (K=5 macro AUPRC, support vs pool): NSL-KDD 0.788 vs
    0.882, where 50 normal rows leave many one-hot and count columns constant, so their
    standard deviation is the floor and an anomaly's value there is multiplied by up to
    1,000; SKAB 0.845 vs 0.783, where measuring a window against its own task's normals is
    what makes the regression strong;
    Tennessee Eastman 0.562 vs 0.582; Sparkov 0.289 vs 0.288. So both run as baselines, and
    a set's best baseline is the better of the two.

    K = 0: the distance to the support-normal mean in that scaling.
    """

    name: ClassVar[str] = "lr_sup"
    defaults: ClassVar[dict[str, Any]] = {
        "C": 1.0,
        "scale": "support",
        "std_floor": 1e-3,
        "class_weight": None,
        "max_iter": 1000,
    }

    def _validate_hparams(self) -> None:
        if not self.hp["C"] > 0 or not self.hp["std_floor"] > 0:
            raise ConfigError(f"{self.name}: C and std_floor must be > 0")
        if self.hp["scale"] not in ("pool", "support"):
            raise ConfigError(
                f"{self.name}: scale must be 'pool' or 'support', got {self.hp['scale']!r}"
            )
        self._positive_int("max_iter")

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        X_support, y_support = self._prepare_support(X_support, y_support)
        Xs = _flat(X_support)
        if self.hp["scale"] == "support":
            mu, sd = _support_scaling(Xs[y_support == 0], self.hp["std_floor"])
        else:
            mu, sd = Xs[y_support == 0].mean(axis=0), np.ones(Xs.shape[1])
        if (y_support == 1).sum() == 0:
            return _Scored(self, functools.partial(_scaled_norm, mu, sd))
        model = LogisticRegression(
            C=self.hp["C"], class_weight=self.hp["class_weight"], max_iter=self.hp["max_iter"]
        ).fit((Xs - mu) / sd, y_support)
        return _Scored(self, functools.partial(_lr_scores, model, mu, sd))


class LRPoolBaseline(LRSupBaseline):
    """Logistic regression on the support alone, in the pipeline's scaling (``lr_pool``).

    ``lr_sup`` with ``scale="pool"``: see :class:`LRSupBaseline` for why both run.
    """

    name: ClassVar[str] = "lr_pool"
    defaults: ClassVar[dict[str, Any]] = {**LRSupBaseline.defaults, "scale": "pool"}


class ProtoRawBaseline(_SupportOnly):
    """Distance to the normal prototype minus distance to the anomaly prototype (``proto_raw``).

    Prototypes are the support means in the (already preprocessed) raw features; K = 0: the
    distance to the normal prototype.
    """

    name: ClassVar[str] = "proto_raw"
    defaults: ClassVar[dict[str, Any]] = {}

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        X_support, y_support = self._prepare_support(X_support, y_support)
        Xs = _flat(X_support)
        c_n = Xs[y_support == 0].mean(axis=0)
        c_a = Xs[y_support == 1].mean(axis=0) if (y_support == 1).any() else None
        return _Scored(self, functools.partial(_proto_scores, c_n, c_a))


# -- torch baselines -------------------------------------------------------------------------
class _ScoreNet(nn.Module):
    """Encoder (MLP for rows, TCN for windows) and a linear head to one scalar."""

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        self.encoder = make_encoder(input_shape, hidden=hidden, out_dim=out_dim)
        self.head = nn.Linear(out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


def _net_scores(net: nn.Module, device: torch.device, X: np.ndarray) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(X), _SCORE_BATCH):
            xb = torch.as_tensor(np.asarray(X[i : i + _SCORE_BATCH], dtype=np.float32))
            out.append(net(xb.to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _deviation_loss(
    scores: torch.Tensor, y: torch.Tensor, ref_mean: float, ref_std: float, margin: float
) -> torch.Tensor:
    """DevNet's loss: ``(1 - y) |dev| + y max(0, a - dev)`` with ``dev`` the z-score."""
    dev = (scores - ref_mean) / ref_std
    return ((1 - y) * dev.abs() + y * torch.clamp(margin - dev, min=0)).mean()


class _TorchBaseline(_Baseline):
    """Shared training loop: balanced mini-batches (half anomalies, half normals), Adam.

    Initialisation draws from a forked torch RNG seeded from the detector's seed and
    ``cfg.seed``, and batches from a private ``torch.Generator``, so the global RNG is left
    alone and the same seeds give the same network.
    """

    needs_pool_anomalies: ClassVar[bool] = True

    def _validate_hparams(self) -> None:
        self._positive_int("train_steps", "batch_size", "out_dim", "log_every")
        if any(int(h) < 1 for h in self.hp["hidden"]):
            raise ConfigError(f"{self.name}: hidden sizes must be positive")

    def _loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _build(self) -> _ScoreNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._fit_seed)
            return _ScoreNet(self.input_shape, tuple(self.hp["hidden"]), self.hp["out_dim"])

    def _train(
        self,
        net: nn.Module,
        anomalies: torch.Tensor,
        normals: torch.Tensor,
        *,
        steps: int,
        lr: float,
        weight_decay: float,
        generator: torch.Generator,
        history: History | None = None,
        callback: StepCallback | None = None,
        val: Pool | None = None,
        val_every: int = 0,
        progress: bool = False,
    ) -> None:
        """``steps`` Adam steps on batches of ``batch_size / 2`` anomalies and normals."""
        device = self._device
        half = max(1, self.hp["batch_size"] // 2)
        y = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        running, count = 0.0, 0
        net.train()
        with torch.enable_grad():
            for step in tqdm(range(1, steps + 1), disable=not progress, desc=self.name):
                ia = torch.randint(len(anomalies), (half,), generator=generator)
                inn = torch.randint(len(normals), (half,), generator=generator)
                xb = torch.cat([anomalies[ia], normals[inn]]).to(device)
                loss = self._loss(net(xb), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += float(loss.detach())
                count += 1
                if history is None:
                    continue
                values: dict[str, float] = {}
                if step % self.hp["log_every"] == 0 or step == steps:
                    values["loss"] = running / count
                    running, count = 0.0, 0
                if val is not None and val_every > 0 and (step % val_every == 0 or step == steps):
                    values.update(self._val_auprc(_Scored(self, self._net_fn(net)), val))
                    net.train()
                if values:
                    self._finish(history, step, values, callback)

    def _net_fn(self, net: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        return functools.partial(_net_scores, net, self._device)

    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
    ) -> History:
        history = self._begin_fit(pool, cfg, val)
        self._device = resolve_device(cfg.device)
        self._build_extra(pool)
        net = self._build().to(self._device)
        X = torch.as_tensor(np.asarray(pool.X, dtype=np.float32))
        anomalies = X[torch.as_tensor(np.flatnonzero(pool.y == 1))]
        normals = X[torch.as_tensor(pool.normal_idx)]
        gen = torch.Generator().manual_seed(_derive_seed(self._fit_seed, 2))
        self._train(
            net,
            anomalies,
            normals,
            steps=self.hp["train_steps"],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            generator=gen,
            history=history,
            callback=callback,
            val=val,
            val_every=cfg.val_every,
            progress=cfg.progress,
        )
        net.eval()
        self._net = net
        self._fitted = True
        return history

    def _build_extra(self, pool: Pool) -> None:
        """Hook for state a subclass keeps from the pool."""


class FinetuneBaseline(_TorchBaseline):
    """Transfer learning: a classifier pre-trained on the pool, fine-tuned on the support.

    fit: ``train_steps`` Adam steps (``cfg.lr``) of balanced BCE, normal vs any pool anomaly.
    adapt: a copy fine-tuned on the whole support for ``finetune_steps`` full-batch Adam steps
    (``finetune_lr``), BCE with ``pos_weight = n_normal / n_anomaly``. K = 0: the pre-trained
    network. The score is the logit.
    """

    name: ClassVar[str] = "finetune"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": (128, 64),
        "out_dim": 32,
        "train_steps": 300,
        "batch_size": 128,
        "log_every": 25,
        "finetune_steps": 30,
        "finetune_lr": 1e-3,
    }

    def _validate_hparams(self) -> None:
        super()._validate_hparams()
        if self.hp["finetune_steps"] < 0 or not self.hp["finetune_lr"] > 0:
            raise ConfigError("finetune: finetune_steps must be >= 0 and finetune_lr > 0")

    def _loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(scores, y)

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        X_support, y_support = self._prepare_support(X_support, y_support)
        n_pos = int((y_support == 1).sum())
        if n_pos == 0 or self.hp["finetune_steps"] == 0:
            return _Scored(self, self._net_fn(self._net))
        net = copy.deepcopy(self._net)
        x = torch.as_tensor(np.asarray(X_support, dtype=np.float32), device=self._device)
        y = torch.as_tensor(y_support, dtype=torch.float32, device=self._device)
        pos_weight = torch.tensor((len(y_support) - n_pos) / n_pos, device=self._device)
        opt = torch.optim.Adam(net.parameters(), lr=self.hp["finetune_lr"])
        net.train()
        with torch.enable_grad():
            for _ in range(self.hp["finetune_steps"]):
                loss = nn.functional.binary_cross_entropy_with_logits(
                    net(x), y, pos_weight=pos_weight
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        return _Scored(self, self._net_fn(net))


class DevNetBaseline(_TorchBaseline):
    """Deviation network (Pang, Shen and van den Hengel, KDD 2019).

    A scoring network trained with the deviation loss against ``n_ref`` reference scores
    drawn from N(0, 1) (margin ``margin``): labelled anomalies (pool anomalies) are pushed at
    least ``margin`` standard deviations above the reference mean, unlabelled rows (pool
    normals) towards it. adapt: a copy trained ``adapt_steps`` more steps whose batches are
    half support anomalies (oversampled) and half unlabelled rows (support normals and up to
    ``max_ref`` pool normals, kept from fit). K = 0: the pool model.
    """

    name: ClassVar[str] = "devnet"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": (128, 64),
        "out_dim": 32,
        "train_steps": 300,
        "batch_size": 128,
        "log_every": 25,
        "margin": 5.0,
        "n_ref": 5000,
        "adapt_steps": 30,
        "adapt_lr": 1e-3,
        "max_ref": 20000,
    }

    def _validate_hparams(self) -> None:
        super()._validate_hparams()
        self._positive_int("n_ref", "max_ref")
        if self.hp["adapt_steps"] < 0 or not self.hp["adapt_lr"] > 0:
            raise ConfigError("devnet: adapt_steps must be >= 0 and adapt_lr > 0")
        if not self.hp["margin"] > 0:
            raise ConfigError("devnet: margin must be > 0")

    def _build_extra(self, pool: Pool) -> None:
        gen = torch.Generator().manual_seed(_derive_seed(self._fit_seed, 3))
        ref = torch.randn(self.hp["n_ref"], generator=gen, dtype=torch.float64)
        self._ref_mean = float(ref.mean())
        self._ref_std = float(ref.std())
        rng = np.random.default_rng(_derive_seed(self._fit_seed, 4))
        keep = _subsample(rng, pool.normal_idx, self.hp["max_ref"])
        self._unlabelled = torch.as_tensor(np.asarray(pool.X[keep], dtype=np.float32))

    def _loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _deviation_loss(scores, y, self._ref_mean, self._ref_std, self.hp["margin"])

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> Adapted:
        X_support, y_support = self._prepare_support(X_support, y_support)
        if (y_support == 1).sum() == 0 or self.hp["adapt_steps"] == 0:
            return _Scored(self, self._net_fn(self._net))
        net = copy.deepcopy(self._net)
        Xs = torch.as_tensor(np.asarray(X_support, dtype=np.float32))
        anomalies = Xs[torch.as_tensor(y_support == 1)]
        unlabelled = torch.cat([Xs[torch.as_tensor(y_support == 0)], self._unlabelled])
        gen = torch.Generator().manual_seed(_derive_seed(self._fit_seed, 5))
        self._train(
            net,
            anomalies,
            unlabelled,
            steps=self.hp["adapt_steps"],
            lr=self.hp["adapt_lr"],
            weight_decay=0.0,
            generator=gen,
        )
        net.eval()
        return _Scored(self, self._net_fn(net))


#: Every baseline by registry name.
BASELINES: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        IForestBaseline,
        ECODBaseline,
        KNNBaseline,
        HGBSupBaseline,
        CatBoostBaseline,
        LRSupBaseline,
        LRPoolBaseline,
        ProtoRawBaseline,
        FinetuneBaseline,
        DevNetBaseline,
    )
}

__all__ = [
    "BASELINES",
    "CatBoostBaseline",
    "DevNetBaseline",
    "ECODBaseline",
    "FinetuneBaseline",
    "HGBSupBaseline",
    "IForestBaseline",
    "KNNBaseline",
    "LRPoolBaseline",
    "LRSupBaseline",
    "ProtoRawBaseline",
]
