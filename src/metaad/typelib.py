"""The type library and the served scorer: what a registered model knows, and how it answers.

A registered bundle carries a few preprocessed examples of every anomaly type it knows (the
meta-train types, plus any added with ``metaad types add``) and two sets of normals: the
reference normals that join every support set (the *normal profile*) and held-out
calibration normals that never do. :class:`ServedScorer` adapts the meta-learner once per
known type when the model loads (the shared ``Detector.adapt``: prototypes and fitted heads
for the metric family, a few gradient steps for the MAML family), and once per type named
in a request's support set. Nothing is trained, so adding a type is a new model version
whose meta-learner weights are byte-identical to its parent's.

Why scores are calibrated per detector: every adapted detector has its own score scale, and
the served answer combines them (the normal profile alone catches anomalies unlike any
known type; each type detector catches its type). Each detector's score is mapped so that
the median calibration normal reads 0 and its own (1 - target_fpr) quantile reads 1; the
row's ``anomaly_score`` is the largest of these, divided by the (1 - target_fpr) quantile of
the same maximum on the calibration normals. So ``anomaly_score >= 1`` is the alert line,
and held-out normals cross it at the target false-positive rate whatever detectors a
request brings. ``nearest_type`` is the type whose detector scores the row highest, and
``nearest_type_score`` that detector's score on the same scale.

This module holds the pure scoring and the type-addition gate; :func:`add_type` is the one
function that talks to the MLflow registry, and it imports MLflow lazily.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import types as pytypes
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metaad.bundle import ModelBundle
from metaad.config import Params, PromoteConfig, ServeConfig, set_offline_env
from metaad.data.schema import LABEL, NORMAL, TYPE
from metaad.errors import DataError
from metaad.models.base import Adapted
from metaad.models.metric import MetricAdapted, score_many

if TYPE_CHECKING:
    from metaad.episodes.sampler import EpisodeSet
    from metaad.promotion import Decision, PerEpisode

log = logging.getLogger(__name__)

#: The name of the zero-shot detector (reference normals only) among the served detectors.
NORMAL_PROFILE = NORMAL
#: Request-time limits stored in ``bundle.json`` ("serve") at registration.
SERVE_LIMIT_KEYS: tuple[str, ...] = ("max_rows", "max_support_types")

_EPS = 1e-9


# -- calibration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Where one detector's calibration normals sit: their median and alert quantile."""

    center: float
    line: float

    @classmethod
    def fit(cls, scores: np.ndarray, target_fpr: float) -> Calibration:
        s = np.asarray(scores, dtype=np.float64)
        center = float(np.median(s))
        line = float(np.quantile(s, 1.0 - target_fpr))
        if not line - center > _EPS:  # a flat score (or NaN weights): keep the map defined
            spread = float(np.std(s))
            line = center + (spread if spread > _EPS else 1.0)
        return cls(center, line)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.center) / (self.line - self.center)


@dataclass
class TypeDetector:
    """One adapted detector with its calibration (``name`` is a type or the normal profile)."""

    name: str
    adapted: Adapted
    calibration: Calibration
    calibration_scores: np.ndarray  # normalised scores of the calibration normals
    n_examples: int

    def normalised(self, X: np.ndarray) -> np.ndarray:
        return self.calibration.normalise(self.adapted.score(X))


@dataclass(frozen=True)
class Scores:
    """The served answer for a batch of rows (one entry per row or window)."""

    anomaly_score: np.ndarray  # float64; >= 1 raises an alert
    is_anomaly: np.ndarray  # bool
    nearest_type: np.ndarray  # str
    nearest_type_score: np.ndarray  # float64, on the anomaly_score scale

    def __len__(self) -> int:
        return len(self.anomaly_score)


def _score_all(adapted: Sequence[Adapted], X: np.ndarray) -> np.ndarray:
    """Raw scores of ``X`` under every adapted detector, ``(len(adapted), len(X))``.

    States of one metric learner share the rows' embedding and, when their normal support
    is the same (the profile and every library type), the k-NN distance: one pass instead of
    one per type (:func:`metaad.models.metric.score_many`). Other detectors score in turn.
    """
    if adapted and all(isinstance(a, MetricAdapted) for a in adapted):
        metric = [a for a in adapted if isinstance(a, MetricAdapted)]
        if len({id(a.core) for a in metric}) == 1:
            return score_many(metric, X)
    return np.stack([np.asarray(a.score(X), dtype=np.float64) for a in adapted])


# -- the scorer ------------------------------------------------------------------------------
class ServedScorer:
    """The normal profile and every library type, adapted once; request types on demand.

    Built once per loaded model (``load_context``); scoring only reads it, so one scorer
    serves concurrent requests.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.target_fpr = bundle.target_fpr
        ref = np.asarray(bundle.reference_normals, dtype=np.float32)
        cal = bundle.calibration_normals
        if cal is None or len(cal) == 0:
            # A bundle straight from `metaad train`: hold out half the reference normals, so
            # no calibration normal is also a support normal (a k-NN score of a row against
            # itself is 0, which would put the alert line far too low).
            log.warning(
                "the bundle has no calibration normals (registration adds them); calibrating "
                "alerts on half of its %d reference normals",
                len(ref),
            )
            self.support_normals, self.calibration = ref[0::2], ref[1::2]
        else:
            self.support_normals, self.calibration = ref, np.asarray(cal, dtype=np.float32)
        self.profile = self._build(NORMAL_PROFILE, None)
        self.library: list[TypeDetector] = []
        if not np.isfinite(self.profile.calibration_scores).all():
            # Diverged weights: every answer will be non-finite, which the registration
            # gate (promotion.check_loads) refuses with that reason. Adapting the library
            # would only fail sooner with a less telling error (a linear solve on NaN).
            log.error("the detector gives non-finite scores on the calibration normals")
            return
        self.library = [self._build(t, bundle.type_examples(t)) for t in bundle.type_names()]
        if not all(np.isfinite(d.calibration_scores).all() for d in self.library):
            log.warning("a library type's detector gives non-finite calibration scores")

    # -- building detectors ----------------------------------------------------------------
    def _adapt(self, X_anomalies: np.ndarray | None, extra_normals: np.ndarray | None) -> Adapted:
        normals = self.support_normals
        if extra_normals is not None and len(extra_normals):
            normals = np.concatenate([np.asarray(extra_normals, np.float32), normals])
        if X_anomalies is None or len(X_anomalies) == 0:
            return self.bundle.detector.adapt(normals, np.zeros(len(normals), np.int64))
        Xs = np.concatenate([np.asarray(X_anomalies, np.float32), normals])
        ys = np.concatenate([np.ones(len(X_anomalies), np.int64), np.zeros(len(normals), np.int64)])
        return self.bundle.detector.adapt(Xs, ys)

    def _build(
        self, name: str, X_anomalies: np.ndarray | None, extra_normals: np.ndarray | None = None
    ) -> TypeDetector:
        adapted = self._adapt(X_anomalies, extra_normals)
        raw = np.asarray(adapted.score(self.calibration), dtype=np.float64)
        cal = Calibration.fit(raw, self.target_fpr)
        n = 0 if X_anomalies is None else len(X_anomalies)
        return TypeDetector(name, adapted, cal, cal.normalise(raw), n)

    def detectors(self) -> list[TypeDetector]:
        return [self.profile, *self.library]

    def request_detectors(self, X_support: np.ndarray, labels: Sequence[str]) -> list[TypeDetector]:
        """One detector per anomaly type named in a support set.

        Rows labelled ``normal`` join every request type's normal support (with the
        reference normals); each other label is an anomaly type. A support set without
        anomalies is an error: it would change nothing the normal profile does not do.
        """
        X_support = np.asarray(X_support, dtype=np.float32)
        lab = np.asarray(labels).astype(str)
        if len(lab) != len(X_support):
            raise DataError(f"support set: {len(X_support)} rows but {len(lab)} labels")
        normal = lab == NORMAL
        names = list(dict.fromkeys(lab[~normal].tolist()))
        if not names:
            raise DataError(
                "the support set has no anomalies: label at least one support row with its "
                f"anomaly type (rows labelled {NORMAL!r} only add normals)"
            )
        extra = X_support[normal] if normal.any() else None
        return [self._build(t, X_support[lab == t], extra) for t in names]

    # -- scoring -----------------------------------------------------------------------------
    def score(
        self,
        X: np.ndarray,
        X_support: np.ndarray | None = None,
        support_labels: Sequence[str] | None = None,
        *,
        request: Sequence[TypeDetector] | None = None,
    ) -> Scores:
        """Score rows with the profile, the library and any request types (see module doc).

        A request type with the name of a library type replaces it for this request: the
        analyst's examples are newer than the stored ones. ``request`` passes detectors built
        once by :meth:`request_detectors` (batch scoring reuses them for every chunk).
        """
        if request is None and X_support is not None and len(X_support):
            if support_labels is None:
                raise DataError("a support set needs labels")
            request = self.request_detectors(X_support, support_labels)
        req = list(request or [])
        replaced = {d.name for d in req}
        types = [d for d in self.library if d.name not in replaced] + req
        dets = [self.profile, *types]
        n = len(X)
        raw = _score_all([d.adapted for d in dets], X)
        norm = np.stack([d.calibration.normalise(r) for d, r in zip(dets, raw, strict=True)])
        cal_max = np.max(np.stack([d.calibration_scores for d in dets]), axis=0)
        line = float(np.quantile(cal_max, 1.0 - self.target_fpr))
        if not line > _EPS:
            line = 1.0
        anomaly = norm.max(axis=0) / line
        if types:
            t_norm = norm[1:]
            best = np.argmax(t_norm, axis=0)
            names = np.array([d.name for d in types], dtype=object)
            nearest = names[best].astype(str)
            nearest_score = t_norm[best, np.arange(n)] / line
        else:
            nearest = np.full(n, "", dtype=object).astype(str)
            nearest_score = np.zeros(n, dtype=np.float64)
        return Scores(anomaly, anomaly >= 1.0, nearest, nearest_score)


# -- the type library for people -------------------------------------------------------------
def library_table(bundle: ModelBundle) -> pd.DataFrame:
    """One row per known type: examples stored, where it came from, when it was added."""
    rows = []
    for name, info in bundle.type_info().items():
        rows.append(
            {
                "type": name,
                "n_examples": info.get("n_examples", 0),
                "source": info.get("source", "meta-train"),
                "added_at": info.get("added_at", ""),
                "added_to_version": info.get("added_to_version", ""),
            }
        )
    return pd.DataFrame(
        rows, columns=["type", "n_examples", "source", "added_at", "added_to_version"]
    )


def examples_for_type(bundle: ModelBundle, frame: pd.DataFrame, name: str) -> np.ndarray:
    """Preprocessed examples of ``name`` from raw rows (windows, for a windowed model).

    Rows carrying ``label`` keep only ``label == 1``; rows carrying ``anomaly_type`` keep
    only that type (so a slice of a canonical table can be passed as it is). What remains
    must hold the model's feature columns, finite.
    """
    rows = frame
    if LABEL in rows.columns:
        rows = rows[rows[LABEL].astype(int) == 1]
    if TYPE in rows.columns:
        typed = rows[rows[TYPE].astype(str) == name]
        if len(typed) == 0 and len(rows):
            found = sorted(rows[TYPE].astype(str).unique().tolist())[:10]
            raise DataError(f"the examples carry {TYPE!r} but none is {name!r}; found {found}")
        rows = typed
    if len(rows) == 0:
        raise DataError(f"no examples of {name!r} (rows with label 1) in the file")
    cols = list(bundle.meta.get("feature_columns") or bundle.preprocessor.input_columns)
    missing = [c for c in cols if c not in rows.columns]
    if missing:
        raise DataError(f"the examples lack the model's feature column(s) {missing}")
    rows = rows.assign(**{LABEL: 1, TYPE: name})
    return bundle.to_pool(rows).X


# -- the served model on the frozen episodes --------------------------------------------------
class _EpisodeRequest:
    """An episode's support set sent as a request's support (what a client would send)."""

    def __init__(self, scorer: ServedScorer, X_support: np.ndarray, y_support: np.ndarray) -> None:
        self.scorer = scorer
        y = np.asarray(y_support)
        if (y == 1).any():
            labels = np.where(y == 1, "episode_type", NORMAL)
            self.request: list[TypeDetector] = scorer.request_detectors(X_support, labels)
        else:  # K = 0: no anomalies to send; the served model answers from its library
            self.request = []

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.scorer.score(X, request=self.request).anomaly_score


class _ServedAsDetector:
    def __init__(self, scorer: ServedScorer) -> None:
        self.scorer = scorer

    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> _EpisodeRequest:
        return _EpisodeRequest(self.scorer, X_support, y_support)


def served_per_episode(
    bundle: ModelBundle,
    test_rows: pd.DataFrame,
    episodes: EpisodeSet,
    k: int,
    *,
    method: str = "served",
    scorer: ServedScorer | None = None,
) -> pd.DataFrame:
    """Per-episode AUPRC/AUROC of the *served* answer on the frozen episodes at K=``k``.

    Each episode's support goes in as a request's support set and its query rows are scored
    by ``anomaly_score``, library and normal profile included: the number a type addition
    can change. The episode/row alignment checks are those of the champion re-scoring.
    """
    from metaad.promotion import score_champion_on_episodes

    scorer = scorer or ServedScorer(bundle)
    shim = pytypes.SimpleNamespace(to_pool=bundle.to_pool, detector=_ServedAsDetector(scorer))
    return score_champion_on_episodes(shim, test_rows, episodes, k, method=method)  # type: ignore[arg-type]


def leave_one_out_recall(scorer: ServedScorer, X: np.ndarray, name: str) -> tuple[float, float]:
    """(recall with the type, recall without it) of ``is_anomaly`` on a type's examples.

    With K >= 2 each example is scored by a model adapted to the other K - 1 (so the number
    says whether the type generalises past the rows it was given); with K = 1 the one
    example is scored in-sample. ``scorer`` is the model *before* the addition.
    """
    X = np.asarray(X, dtype=np.float32)
    without = float(scorer.score(X).is_anomaly.mean())
    if len(X) == 1:
        return float(scorer.score(X, X, [name]).is_anomaly.mean()), without
    hits = []
    for i in range(len(X)):
        others = np.delete(X, i, axis=0)
        res = scorer.score(X[i : i + 1], others, [name] * len(others))
        hits.append(bool(res.is_anomaly[0]))
    return float(np.mean(hits)), without


def decide_type_addition(
    *,
    type_name: str,
    n_examples: int,
    challenger: PerEpisode,
    incumbent: PerEpisode | None,
    recall: float,
    recall_without: float,
    weights_unchanged: bool,
    loads_ok: bool,
    load_error: str | None,
    serve: ServeConfig,
    promote: PromoteConfig,
) -> Decision:
    """The gate for a type addition; pure, every rule evaluated, one PASS/FAIL line each.

    A type addition retrains nothing, so "better than the champion" (the retraining gate's
    rule) cannot be asked of it: a tie on unseen types is the expected outcome. Instead it
    must load and predict through MLflow; keep the meta-learner's weights byte-identical;
    have at least ``serve.min_type_examples`` examples; flag its own examples (leave-one-out
    recall at least ``serve.min_type_recall``); keep the served macro AUPRC/AUROC at
    ``promote.k`` on the frozen episodes above the floors; and lose at most
    ``serve.max_type_regression`` served macro AUPRC against the champion on the same
    episodes (a new type's detector also fires on some normals, and that is the cost
    this rule bounds).
    """
    from metaad.promotion import Decision, _alignment_problem, _paired_bootstrap, floor_rules

    reasons: list[str] = []
    ok: list[bool] = []

    def rule(passed: bool, text: str) -> None:
        ok.append(bool(passed))
        reasons.append(f"{'PASS' if passed else 'FAIL'} {text}")

    metrics: dict[str, Any] = {
        "kind": "type-addition",
        "type": type_name,
        "n_examples": int(n_examples),
        "k": int(promote.k),
        "loo_recall": recall,
        "recall_without_type": recall_without,
        "n_episodes": len(challenger),
    }
    rule(
        loads_ok,
        "new version loads and predicts"
        if loads_ok
        else f"new version does not load or predict: {load_error or 'unknown error'}",
    )
    rule(
        weights_unchanged,
        "meta-learner weights unchanged (nothing retrained)"
        if weights_unchanged
        else "meta-learner weights differ from the base version's",
    )
    rule(
        n_examples >= serve.min_type_examples,
        f"{n_examples} example(s) of {type_name!r} "
        f"{'>=' if n_examples >= serve.min_type_examples else '<'} "
        f"min_type_examples {serve.min_type_examples}",
    )
    how = "leave-one-out" if n_examples >= 2 else "in-sample (one example)"
    rule(
        recall >= serve.min_type_recall,
        f"{how} recall on the {type_name!r} examples {recall:.3f} "
        f"{'>=' if recall >= serve.min_type_recall else '<'} min_type_recall "
        f"{serve.min_type_recall:.3f} (without the type: {recall_without:.3f})",
    )
    floor_rules(rule, challenger, promote, metrics, what="served ")
    if incumbent is None:
        metrics["champion"] = False
        rule(True, "no champion to compare with: the regression rule does not apply")
    else:
        metrics["champion"] = True
        metrics["champion_macro_auprc"] = incumbent.macro_auprc
        problem = _alignment_problem(challenger, incumbent)
        if problem is not None:
            rule(False, f"episodes do not align, no paired comparison possible: {problem}")
        else:
            diff = challenger.auprc - incumbent.auprc
            mean, lo, hi = _paired_bootstrap(
                diff, challenger.types, promote.n_bootstrap, promote.bootstrap_alpha, promote.seed
            )
            metrics.update({"delta_auprc": mean, "delta_ci_lo": lo, "delta_ci_hi": hi})
            floor = -serve.max_type_regression
            rule(
                mean >= floor,
                f"served macro AUPRC change vs the champion {mean:+.4f} "
                f"{'>=' if mean >= floor else '<'} -max_type_regression {floor:+.4f} "
                f"(paired {100 * (1 - promote.bootstrap_alpha):g}% CI [{lo:+.4f}, {hi:+.4f}])",
            )
    return Decision(promote=all(ok), reasons=reasons, metrics=metrics)


# -- registration ---------------------------------------------------------------------------
def serving_bundle(
    bundle: ModelBundle, calibration: np.ndarray | None, serve: ServeConfig
) -> ModelBundle:
    """The bundle as it is registered: calibration normals, serving limits, type records."""
    import dataclasses

    meta = json.loads(json.dumps(bundle.meta))
    meta["serve"] = {k: getattr(serve, k) for k in SERVE_LIMIT_KEYS}
    types = meta.setdefault("types", {})
    for t in bundle.type_names():
        types.setdefault(t, {"source": "meta-train"})
    cal = bundle.calibration_normals if calibration is None else calibration
    return dataclasses.replace(bundle, meta=meta, calibration_normals=cal)


def calibration_normals(root: Path, n: int, seed: int = 0) -> np.ndarray | None:
    """Up to ``n`` normals of the meta-validation pool (``artifacts/episodes/pool_val.npz``).

    The training threshold is calibrated on the same pool; its rows are neither support
    normals of the served model nor rows of the frozen evaluation episodes.
    """
    path = Path(root) / "artifacts" / "episodes" / "pool_val.npz"
    if not path.is_file():
        log.warning("no %s: the registered model calibrates on its reference normals", path)
        return None
    with np.load(path, allow_pickle=False) as z:
        X, y = z["X"], z["y"]
    idx = np.flatnonzero(y == 0)
    if len(idx) == 0:
        return None
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    return np.asarray(X[idx], dtype=np.float32)


def write_serving_bundle(bundle_dir: Path, params: Params, root: Path, out_dir: Path) -> Path:
    """Save the registered form of the bundle at ``bundle_dir`` into ``out_dir``.

    A copy, not an edit: ``artifacts/model`` is a DVC output of the train stage.
    """
    bundle = ModelBundle.load(bundle_dir)
    cal = calibration_normals(root, params.serve.n_calibration, seed=params.train.seed)
    return serving_bundle(bundle, cal, params.serve).save(out_dir)


def load_registered_bundle(model_uri: str, tracking_uri: str) -> tuple[ModelBundle, Any]:
    """(bundle, the loaded pyfunc's python model) of a registered version."""
    import mlflow.pyfunc

    from metaad.tracking import using_tracking_uri

    with using_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model(model_uri)
    py = model.unwrap_python_model()
    return py.bundle, py


@dataclass(frozen=True)
class TypeAddition:
    """What :func:`add_type` did."""

    type_name: str
    n_examples: int
    base_version: str
    version: str
    promoted: bool
    champion: str | None
    reasons: list[str]
    decision_path: str
    run_id: str
    tracking_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "type"


def add_type(
    params: Params,
    root: Path,
    name: str,
    examples: pd.DataFrame,
    *,
    version: str | None = None,
    tracking_uri: str | None = None,
    replace: bool = False,
    source: str = "",
) -> TypeAddition:
    """Add type ``name`` from labelled rows to a registered model; register and gate it.

    The base is ``version`` (default: the champion). The new version is the base plus the
    examples in its type library, registered as ``challenger`` in a run of its own, then
    judged by :func:`decide_type_addition` on the project's frozen episodes; ``champion``
    moves to it only on a pass, with the decision recorded (file, version tags, run tag)
    either way, as for a retrained model.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from metaad.promotion import champion_version, check_loads, per_episode_at, promote
    from metaad.stages import Layout, load_prepared
    from metaad.tracking import (
        default_tracking_uri,
        ensure_experiment,
        input_example,
        lineage_tags,
        log_and_register_model,
    )

    set_offline_env()
    root = Path(root)
    uri = tracking_uri or default_tracking_uri(root)
    client = MlflowClient(tracking_uri=uri)
    model_name = params.register.model_name
    if version is None:
        mv = champion_version(client, model_name)
        if mv is None:
            raise DataError(f"{model_name} has no @champion in {uri}; pass a version to add to")
    else:
        try:
            mv = client.get_model_version(model_name, str(version))
        except MlflowException as exc:
            raise DataError(f"{model_name} has no version {version} in {uri}") from exc
    base_version = str(mv.version)
    base, base_py = load_registered_bundle(f"models:/{model_name}/{base_version}", uri)
    base_scorer: ServedScorer = base_py.scorer
    X = examples_for_type(base, examples, name)
    info = {
        "source": "added",
        "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "added_to_version": base_version,
        "examples_file": source,
    }
    new = base.with_type(name, X, info=info, replace=replace)

    lay = Layout(root)
    prep = load_prepared(params, root)
    test_rows = pd.read_parquet(lay.episodes / "test_rows.parquet")
    tags = {
        **lineage_tags(root, params, None),
        "metaad.action": "types-add",
        "metaad.type": name,
        "metaad.base_version": base_version,
    }
    exp = ensure_experiment(params.register.experiment, root, tracking_uri=uri)
    run_id = client.create_run(exp, run_name=f"types-add-{_slug(name)}", tags=tags).info.run_id
    client.log_param(run_id, "type", name)
    client.log_param(run_id, "n_examples", len(X))
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = new.save(Path(tmp) / "bundle")
        sample = input_example(bundle_dir, test_rows, n=50)
        mv_new = log_and_register_model(
            bundle_dir,
            params,
            test_rows,
            run_id=run_id,
            root=root,
            tracking_uri=uri,
            lineage={**tags, "metaad.type_examples": str(len(X))},
        )
    new_version = str(mv_new.version)
    loads_ok, load_error = check_loads(
        f"models:/{model_name}/{new_version}", sample, tracking_uri=uri
    )
    k = params.promote.k
    challenger = per_episode_at(
        served_per_episode(new, test_rows, prep.episodes, k, method="challenger"),
        "challenger",
        k,
    )
    champ = champion_version(client, model_name)
    incumbent_pe = None
    if champ is not None:
        champ_v = str(champ.version)
        if champ_v == base_version:
            inc_bundle, inc_scorer = base, base_scorer
        else:
            inc_bundle, inc_py = load_registered_bundle(f"models:/{model_name}/{champ_v}", uri)
            inc_scorer = inc_py.scorer
        incumbent_pe = per_episode_at(
            served_per_episode(
                inc_bundle, test_rows, prep.episodes, k, method="champion", scorer=inc_scorer
            ),
            "champion",
            k,
        )
    recall, recall_without = leave_one_out_recall(base_scorer, X, name)
    decision = decide_type_addition(
        type_name=name,
        n_examples=len(X),
        challenger=challenger,
        incumbent=incumbent_pe,
        recall=recall,
        recall_without=recall_without,
        weights_unchanged=new.weights_digest() == base.weights_digest(),
        loads_ok=loads_ok,
        load_error=load_error,
        serve=params.serve,
        promote=params.promote,
    )
    decision_path = lay.artifacts / "promotion" / f"types_add_{_slug(name)}_v{new_version}.json"
    outcome = promote(client, model_name, new_version, decision, decision_path=decision_path)
    client.log_artifact(run_id, str(decision_path), "promotion")
    client.set_tag(run_id, "promotion.decision", decision.label)
    after = new_version if outcome.promoted else outcome.previous_champion
    return TypeAddition(
        name,
        len(X),
        base_version,
        new_version,
        outcome.promoted,
        after,
        list(decision.reasons),
        str(decision_path),
        run_id,
        uri,
    )


__all__ = [
    "NORMAL_PROFILE",
    "Calibration",
    "Scores",
    "ServedScorer",
    "TypeAddition",
    "TypeDetector",
    "add_type",
    "calibration_normals",
    "decide_type_addition",
    "examples_for_type",
    "leave_one_out_recall",
    "library_table",
    "load_registered_bundle",
    "served_per_episode",
    "serving_bundle",
    "write_serving_bundle",
]
