"""The promotion gate: move the ``champion`` alias only when every rule passes.

The decision (:func:`decide`) is a pure function of per-episode metrics and two flags, so
every rule is unit-tested without MLflow and a decision can be recomputed from the saved
inputs. The side effects (:func:`promote`) only record the decision on the model version,
write it to a file, and move the alias when the decision says so: a refusal is a normal
outcome with its reasons recorded, not an exception.

The challenger and the champion are compared on the same frozen episodes, pair by pair
(:func:`score_champion_on_episodes` scores the champion on them with its own preprocessing),
because the episode-to-episode spread of AUPRC is far larger than the differences a gate has
to detect; pairing removes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metaad.config import PromoteConfig, set_offline_env

if TYPE_CHECKING:  # type-only: keep the pure gate importable without torch or mlflow
    from mlflow import MlflowClient

    from metaad.bundle import ModelBundle
    from metaad.episodes.sampler import EpisodeSet

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG_DECISION = "promotion.decision"
TAG_REASONS = "promotion.reasons"
TAG_METRICS = "promotion.metrics"

_TIE_ATOL = 1e-12
_MAX_ERROR = 1000


# -- per-episode metrics -------------------------------------------------------------------
@dataclass(frozen=True)
class PerEpisode:
    """One method's AUPRC and AUROC at one K, one entry per episode, sorted by (type, rep).

    The sort makes two ``PerEpisode`` of the same frozen episodes line up index by index;
    :func:`decide` still checks the keys, since a paired test on misaligned pairs would be
    silently wrong.
    """

    method: str
    k: int
    types: np.ndarray  # (E,) str
    reps: np.ndarray  # (E,) int64
    auprc: np.ndarray  # (E,) float64
    auroc: np.ndarray  # (E,) float64

    def __post_init__(self) -> None:
        n = len(self.types)
        if not (len(self.reps) == len(self.auprc) == len(self.auroc) == n):
            raise ValueError("PerEpisode arrays disagree in length")

    def __len__(self) -> int:
        return len(self.types)

    @property
    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.types.tolist(), self.reps.tolist(), strict=True))

    def macro(self, values: np.ndarray) -> float:
        """Mean over types of the per-type means, as the evaluation report computes it."""
        if len(values) == 0:
            return float("nan")
        names = np.unique(self.types)
        return float(np.mean([values[self.types == t].mean() for t in names]))

    @property
    def macro_auprc(self) -> float:
        return self.macro(self.auprc)

    @property
    def macro_auroc(self) -> float:
        return self.macro(self.auroc)


def per_episode_at(df: pd.DataFrame, method: str, k: int) -> PerEpisode:
    """Select one method at one K from a per-episode frame (``per_episode.csv`` columns)."""
    need = ["method", "type", "shots", "rep", "auprc", "auroc"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"per-episode frame lacks column(s) {missing}")
    sel = df[(df["method"].astype(str) == method) & (df["shots"].astype(int) == int(k))]
    if sel.empty:
        have = sorted({(str(m), int(s)) for m, s in zip(df["method"], df["shots"], strict=True)})
        raise ValueError(
            f"no episodes for method {method!r} at K={k}; the frame has (method, K) {have}"
        )
    dup = sel.duplicated(["type", "rep"])
    if dup.any():
        first = sel.loc[dup, ["type", "rep"]].iloc[0].to_dict()
        raise ValueError(f"method {method!r} K={k} has duplicated episodes, e.g. {first}")
    sel = sel.sort_values(["type", "rep"], kind="stable")
    return PerEpisode(
        method=method,
        k=int(k),
        types=sel["type"].astype(str).to_numpy(),
        reps=sel["rep"].to_numpy(np.int64),
        auprc=sel["auprc"].to_numpy(np.float64),
        auroc=sel["auroc"].to_numpy(np.float64),
    )


# -- the decision --------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """The gate's verdict, one PASS/FAIL line per rule, and the numbers behind it."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "promoted" if self.promote else "refused"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        d = json.loads(text)
        return cls(bool(d["promote"]), list(d["reasons"]), dict(d["metrics"]))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _paired_bootstrap(
    diff: np.ndarray, strata: np.ndarray, n_boot: int, alpha: float, seed: int
) -> tuple[float, float, float]:
    """Macro mean of paired differences and its percentile interval, stratified by type.

    Episodes are resampled within each type and the per-type means averaged, so the
    interval holds the types fixed (they are the evaluation set, as in
    ``metaad.evaluation.runner.summarise``) and measures only the episode draws.
    """
    if n_boot < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    names = np.unique(strata)
    boots = np.zeros(n_boot)
    point = 0.0
    for t in names:
        d = diff[strata == t]
        point += d.mean()
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        boots += d[idx].mean(axis=1)
    point /= len(names)
    boots /= len(names)
    lo, hi = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(point), float(lo), float(hi)


def _alignment_problem(a: PerEpisode, b: PerEpisode) -> str | None:
    """Why two per-episode sets cannot be paired, or None if they can."""
    if a.k != b.k:
        return f"challenger is at K={a.k}, champion at K={b.k}"
    ka, kb = a.keys, b.keys
    if ka == kb:
        return None
    only_a = sorted(set(ka) - set(kb))
    only_b = sorted(set(kb) - set(ka))
    return (
        f"challenger has {len(ka)} episodes, champion {len(kb)}; {len(only_a)} only in the "
        f"challenger (e.g. {only_a[:3]}), {len(only_b)} only in the champion "
        f"(e.g. {only_b[:3]})"
    )


def floor_rules(
    rule: Callable[[bool, str], None],
    challenger: PerEpisode,
    cfg: PromoteConfig,
    metrics: dict[str, Any],
    what: str = "",
) -> None:
    """The AUPRC and AUROC floors at ``cfg.k``, shared by the retraining gate and the
    type-addition gate (``what`` prefixes the metric, e.g. ``"served "``)."""
    auprc, auroc = challenger.macro_auprc, challenger.macro_auroc
    metrics["challenger_macro_auprc"] = auprc
    metrics["challenger_macro_auroc"] = auroc
    for name, value, floor in (
        ("AUPRC", auprc, cfg.min_auprc),
        ("AUROC", auroc, cfg.min_auroc),
    ):
        rule(
            value >= floor,
            f"{what}macro {name}@K={cfg.k} {value:.4f} {'>=' if value >= floor else '<'} "
            f"min_{name.lower()} {floor:.4f}",
        )


def decide(
    challenger: PerEpisode,
    champion: PerEpisode | None,
    cfg: PromoteConfig,
    *,
    validation_passed: bool,
    loads_ok: bool,
    load_error: str | None = None,
) -> Decision:
    """Apply every gate rule and return the decision; no side effects.

    Rules, all evaluated so the record lists every failure at once:
    the data validation passed; the registered challenger loads and predicts; its macro
    AUPRC and AUROC at ``cfg.k`` reach the floors; and, if a champion exists, on the same
    episodes the mean paired AUPRC difference is at least ``cfg.min_delta`` and the lower
    bound of its paired bootstrap interval is above zero. Identical scores are a tie, and a
    tie keeps the champion.
    """
    reasons: list[str] = []
    ok: list[bool] = []

    def rule(passed: bool, text: str) -> None:
        ok.append(bool(passed))
        reasons.append(f"{'PASS' if passed else 'FAIL'} {text}")

    metrics: dict[str, Any] = {
        "k": int(cfg.k),
        "challenger_method": challenger.method,
        "n_episodes": len(challenger),
    }
    rule(validation_passed, f"data validation {'passed' if validation_passed else 'failed'}")
    rule(
        loads_ok,
        "challenger loads and predicts"
        if loads_ok
        else f"challenger does not load or predict: {load_error or 'unknown error'}",
    )
    if challenger.k != cfg.k:
        rule(False, f"challenger metrics are at K={challenger.k}, the gate is at K={cfg.k}")
    if len(challenger) == 0:
        rule(False, f"challenger has no episodes at K={cfg.k}")

    floor_rules(rule, challenger, cfg, metrics)

    if champion is None:
        metrics["champion"] = False
        rule(True, "no champion yet: the comparison rules do not apply")
    else:
        metrics["champion"] = True
        metrics["champion_method"] = champion.method
        metrics["champion_macro_auprc"] = champion.macro_auprc
        metrics["champion_macro_auroc"] = champion.macro_auroc
        problem = _alignment_problem(challenger, champion)
        if problem is not None:
            rule(False, f"episodes do not align, no paired comparison possible: {problem}")
        elif len(challenger) == 0:
            rule(False, "no episodes to compare with the champion")
        else:
            diff = challenger.auprc - champion.auprc
            mean, lo, hi = _paired_bootstrap(
                diff, challenger.types, cfg.n_bootstrap, cfg.bootstrap_alpha, cfg.seed
            )
            level = 100.0 * (1.0 - cfg.bootstrap_alpha)
            metrics.update(
                {
                    "delta_auprc": mean,
                    "delta_ci_lo": lo,
                    "delta_ci_hi": hi,
                    "ci_level": level,
                    "n_bootstrap": int(cfg.n_bootstrap),
                }
            )
            tie = bool(np.allclose(diff, 0.0, rtol=0.0, atol=_TIE_ATOL))
            metrics["tie"] = tie
            if tie:
                rule(False, "tie: identical per-episode AUPRC to the champion keeps the champion")
            rule(
                mean >= cfg.min_delta,
                f"mean paired AUPRC difference {mean:+.4f} "
                f"{'>=' if mean >= cfg.min_delta else '<'} min_delta {cfg.min_delta:.4f}",
            )
            rule(
                lo > 0.0,
                f"{level:g}% paired bootstrap CI of the difference [{lo:+.4f}, {hi:+.4f}] "
                f"{'excludes' if lo > 0.0 else 'includes'} zero from below "
                f"({cfg.n_bootstrap} resamples, seed {cfg.seed})",
            )

    return Decision(promote=all(ok), reasons=reasons, metrics=metrics)


# -- the champion on the frozen episodes ---------------------------------------------------
def score_champion_on_episodes(
    bundle: ModelBundle,
    test_rows: pd.DataFrame,
    episodes: EpisodeSet,
    k: int,
    *,
    method: str = CHAMPION,
) -> pd.DataFrame:
    """The champion's per-episode AUPRC/AUROC on the current frozen episodes at K=``k``.

    The champion was trained and preprocessed its own way; its preprocessing is applied to
    the raw unseen-type rows (``test_rows.parquet``), and the episodes' indices, which refer
    to rows of that table (windows, for windowed data), select its support and query. The
    labels and types at those indices are checked against the episodes, so a champion whose
    windowing differs fails loudly instead of being scored on the wrong rows. Adaptation
    uses the support set alone, as ``metaad.evaluation.runner.evaluate_detector`` does for
    the challenger, so both are judged the same way.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    pool = bundle.to_pool(test_rows)
    selected = np.flatnonzero(np.asarray(episodes.shots) == int(k))
    if len(selected) == 0:
        raise ValueError(
            f"the frozen episodes have no K={k} "
            f"(they have K in {sorted({int(s) for s in episodes.shots})})"
        )
    top = max(int(episodes.support_idx.max(initial=-1)), int(episodes.query_idx.max(initial=-1)))
    if top >= len(pool.y):
        raise ValueError(
            f"the episodes index row {top}, but the champion's pool of these rows has "
            f"{len(pool.y)}; the episodes were drawn from other rows or another windowing"
        )
    rows: list[dict[str, Any]] = []
    for i in selected:
        ep = episodes[int(i)]
        for what, idx, y in (
            ("support", ep.support_idx, ep.support_y),
            ("query", ep.query_idx, ep.query_y),
        ):
            if not np.array_equal(pool.y[idx], y):
                raise ValueError(
                    f"episode {ep.type!r} K={ep.shots} rep {ep.seed}: {what} labels differ in "
                    "the champion's pool; the episodes do not index these rows"
                )
        if not np.all(pool.types[ep.query_idx[ep.query_y == 1]] == ep.type):
            raise ValueError(
                f"episode {ep.type!r} K={ep.shots} rep {ep.seed}: query anomalies are of "
                "another type in the champion's pool; the episodes do not index these rows"
            )
        adapted = bundle.detector.adapt(pool.X[ep.support_idx], ep.support_y)
        scores = np.asarray(adapted.score(pool.X[ep.query_idx]), dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(
                f"the champion gave non-finite scores on episode {ep.type!r} rep {ep.seed}"
            )
        rows.append(
            {
                "method": method,
                "type": ep.type,
                "shots": ep.shots,
                "rep": ep.seed,
                "auprc": float(average_precision_score(ep.query_y, scores)),
                "auroc": float(roc_auc_score(ep.query_y, scores)),
            }
        )
    return pd.DataFrame(rows, columns=["method", "type", "shots", "rep", "auprc", "auroc"])


# -- registry side effects -----------------------------------------------------------------
def check_loads(
    model_uri: str, sample_df: pd.DataFrame, *, tracking_uri: str | None = None
) -> tuple[bool, str | None]:
    """Load a registered model as MLflow serving would and predict on a sample.

    Any failure (missing or corrupted artifact, import error, bad output) becomes the error
    string, because a challenger that cannot be served is a refusal, not a crash of the gate.
    """
    import mlflow.pyfunc

    from metaad.pyfunc_model import OUTPUT_COLUMNS, SCORE
    from metaad.tracking import using_tracking_uri

    set_offline_env()
    try:
        with using_tracking_uri(tracking_uri or mlflow.get_tracking_uri()):
            model = mlflow.pyfunc.load_model(model_uri)
        out = model.predict(sample_df)
        if not isinstance(out, pd.DataFrame):
            raise TypeError(f"predict returned {type(out).__name__}, not a DataFrame")
        missing = [c for c in OUTPUT_COLUMNS if c not in out.columns]
        if missing:
            raise ValueError(f"predict output lacks column(s) {missing}")
        if len(out) == 0 or not np.isfinite(out[SCORE].to_numpy(np.float64)).all():
            raise ValueError("predict returned no scores or non-finite scores")
    except Exception as exc:  # every failure is a reason to refuse
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > _MAX_ERROR:  # MLflow's schema errors embed the whole input frame
            text = text[: _MAX_ERROR - 3] + "..."
        log.warning("model %s does not load or predict: %s", model_uri, text)
        log.debug("load failure of %s", model_uri, exc_info=True)
        return False, text
    return True, None


def champion_version(client: MlflowClient, model_name: str, alias: str = CHAMPION) -> Any | None:
    """The version holding ``alias``, or None when there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class PromotionOutcome:
    """What :func:`promote` did, for the flow's log and return value."""

    model_name: str
    version: str
    promoted: bool
    previous_champion: str | None
    decision_path: str | None


def promote(
    client: MlflowClient,
    model_name: str,
    challenger_version: str | int,
    decision: Decision,
    *,
    decision_path: Path | None = None,
    alias: str = CHAMPION,
) -> PromotionOutcome:
    """Record ``decision`` on the version and move ``alias`` to it only if it promotes.

    The tags and the decision file are written either way, so a refusal is as auditable as
    a promotion; a refusal leaves the alias where it was.
    """
    version = str(challenger_version)
    before = champion_version(client, model_name, alias)
    previous = None if before is None else str(before.version)
    client.set_model_version_tag(model_name, version, TAG_DECISION, decision.label)
    client.set_model_version_tag(model_name, version, TAG_REASONS, json.dumps(decision.reasons))
    client.set_model_version_tag(
        model_name, version, TAG_METRICS, json.dumps(decision.metrics, default=_json_default)
    )
    written: str | None = None
    if decision_path is not None:
        path = Path(decision_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **decision.to_dict(),
            "model_name": model_name,
            "challenger_version": version,
            "previous_champion": previous,
            "champion_after": version if decision.promote else previous,
        }
        path.write_text(json.dumps(record, indent=1, sort_keys=True, default=_json_default))
        written = str(path)
    if decision.promote:
        client.set_registered_model_alias(model_name, alias, version)
        log.info("promoted %s version %s to @%s (was %s)", model_name, version, alias, previous)
    else:
        log.info(
            "refused %s version %s; @%s stays on %s: %s",
            model_name,
            version,
            alias,
            previous,
            "; ".join(failed_rules(decision)),
        )
    return PromotionOutcome(model_name, version, decision.promote, previous, written)


def failed_rules(decision: Decision) -> Sequence[str]:
    """The FAIL lines of a decision, for messages and exit codes."""
    return [r for r in decision.reasons if r.startswith("FAIL")]


__all__ = [
    "CHAMPION",
    "TAG_DECISION",
    "TAG_METRICS",
    "TAG_REASONS",
    "Decision",
    "PerEpisode",
    "PromotionOutcome",
    "champion_version",
    "check_loads",
    "decide",
    "failed_rules",
    "per_episode_at",
    "promote",
    "score_champion_on_episodes",
]
