"""ADBench's semi-supervised protocol, to put metaad beside published numbers (Han et al. 2022).

The protocol, replicated from ADBench's ``data_generator.py`` and ``run.py`` (commit
``f7fed68``), so that the split of a set and seed is the one the published methods saw:

1. sets under 1,000 rows are resampled with replacement up to 1,000 (``generate_duplicates``;
   of the sets here only WBC, whose train and test then share copies of rows), sets over
   10,000 rows are subsampled to 10,000; each step re-seeds numpy's generator with the seed;
2. a stratified 70/30 train/test split (``train_test_split`` on the same generator stream);
3. MinMax scaling fitted on the training part;
4. ``ceil(ratio * training anomalies)`` anomalies are labelled (at least one), drawn from the
   same stream; every other training row is unlabelled and treated as normal (so unlabelled
   anomalies contaminate the "normals", as in ADBench);
5. seeds 1, 2, 3; AUCROC and AUCPR (average precision) on the test part.

How metaad enters a protocol with one anomaly type and a handful of labels: the labelled
anomalies plus ``n_support_normal`` unlabelled rows are the support set (K = the number of
labels), and the training part is the pool. A meta-learner needs several anomaly types to
meta-train on, and these sets have one, so it is meta-trained on *synthetic* types made from
the unlabelled training rows (:func:`synthetic_types`: ADBench's own four kinds -- local,
global, dependency, clustered -- plus a consistent shift of a few features), then adapts to
the real labelled anomalies; one synthetic kind is held out as meta-validation. Baselines get
the plain pool (unlabelled + labelled) and the same support.

Published numbers: appendix tables D4-D11 of the paper (``adbench_published_2022.csv`` in
the package's ``reference/`` folder, copied from the parsed tables, with their citation).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metaad import __version__
from metaad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: ADBench's constants (``data_generator.py``).
TEST_SIZE = 0.3
MAX_ROWS = 10_000
MIN_ROWS = 1_000
#: The published methods put beside metaad, and their names in the paper's tables.
PUBLISHED_METHODS: dict[str, str] = {
    "CatB": "CatBoost",
    "PReNet": "PReNet",
    "DevNet": "DevNet",
    "XGBOD": "XGBOD",
    "IForest": "Isolation Forest",
}
#: The paper's table per (metric, label ratio); IForest is unsupervised (D4/D5) everywhere.
TABLES: dict[tuple[str, str], str] = {
    ("AUCROC", "unsup"): "D4",
    ("AUCPR", "unsup"): "D5",
    ("AUCROC", "1"): "D6",
    ("AUCPR", "1"): "D7",
    ("AUCROC", "5"): "D8",
    ("AUCPR", "5"): "D9",
    ("AUCROC", "10"): "D10",
    ("AUCPR", "10"): "D11",
}
CITATION = (
    "Han, S., Hu, X., Huang, H., Jiang, M., Zhao, Y. ADBench: Anomaly Detection Benchmark. "
    "NeurIPS 2022 Datasets and Benchmarks (arXiv:2206.09426), appendix tables D4-D11"
)
#: Synthetic anomaly kinds for meta-training; the last one is the meta-validation type.
SYNTHETIC_KINDS: tuple[str, ...] = ("local", "global", "cluster", "shift", "dependency")


@dataclass(frozen=True)
class SemiSupervisedSplit:
    """One (set, seed, ratio) of the protocol, in ADBench's terms."""

    X_train: np.ndarray
    y_train: np.ndarray  # 1 for labelled anomalies only; unlabelled rows are 0
    X_test: np.ndarray
    y_test: np.ndarray
    n_labelled: int
    n_train_anomalies: int  # the true count, labelled or not (for the report only)


def adbench_split(X: np.ndarray, y: np.ndarray, *, seed: int, ratio: float) -> SemiSupervisedSplit:
    """ADBench's ``DataGenerator.generator(la=ratio, at_least_one_labeled=True)``, replicated."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    if not 0 < ratio <= 1:
        raise ConfigError(f"labelled-anomaly ratio must be in (0, 1], got {ratio}")
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.int64)
    rs = np.random.RandomState(seed)
    if len(y) < MIN_ROWS:
        rs = np.random.RandomState(seed)
        idx = rs.choice(np.arange(len(y)), MIN_ROWS, replace=True)
        X, y = X[idx], y[idx]
    if len(y) > MAX_ROWS:
        rs = np.random.RandomState(seed)
        idx = rs.choice(np.arange(len(y)), MAX_ROWS, replace=False)
        X, y = X[idx], y[idx]
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=TEST_SIZE, shuffle=True, stratify=y, random_state=rs
    )
    scaler = MinMaxScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    idx_anomaly = np.where(y_tr == 1)[0]
    n_lab = math.ceil(ratio * len(idx_anomaly))
    labelled = rs.choice(idx_anomaly, n_lab, replace=False)
    y_semi = np.zeros_like(y_tr)
    y_semi[labelled] = 1
    return SemiSupervisedSplit(
        X_tr.astype(np.float32),
        y_semi,
        X_te.astype(np.float32),
        y_te,
        n_lab,
        len(idx_anomaly),
    )


def synthetic_types(
    X: np.ndarray, rng: np.random.Generator, *, n_per_type: int = 300
) -> dict[str, np.ndarray]:
    """Anomaly kinds made from (unlabelled) rows, for meta-training on a one-type set.

    ``local``: rows plus noise of twice the feature spread; ``global``: uniform in the
    feature ranges widened by 10%; ``cluster``: rows moved together by one random offset
    (a tight new cluster); ``shift``: a consistent offset on a few features only;
    ``dependency``: each feature drawn independently from its own marginal (correlations
    broken, every marginal intact). These are ADBench's four synthetic kinds (local, global,
    dependency, clustered) in simplified form, plus the shift that the meta-learner's own
    task augmentation uses.
    """
    n, d = X.shape
    if n < 2:
        raise DataError("need at least two rows to make synthetic anomalies from")
    lo, hi = X.min(0), X.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    sd = np.where(X.std(0) > 0, X.std(0), 0.1 * span)
    base = X[rng.integers(0, n, n_per_type)]
    out: dict[str, np.ndarray] = {}
    out["local"] = base + rng.normal(0.0, 2.0 * sd, size=base.shape)
    out["global"] = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, size=(n_per_type, d))
    offset = rng.choice([-1.0, 1.0], d) * rng.uniform(0.3, 0.6, d) * span
    out["cluster"] = (
        X[rng.integers(0, n, n_per_type)] + offset + rng.normal(0, 0.2 * sd, (n_per_type, d))
    )
    m = max(1, d // 5)
    feats = rng.choice(d, m, replace=False)
    shift = np.zeros(d)
    shift[feats] = rng.choice([-1.0, 1.0], m) * rng.uniform(2.0, 4.0, m) * sd[feats]
    out["shift"] = X[rng.integers(0, n, n_per_type)] + shift
    out["dependency"] = np.stack([X[rng.integers(0, n, n_per_type), j] for j in range(d)], axis=1)
    return {k: v.astype(np.float32) for k, v in out.items()}


def _pools(split: SemiSupervisedSplit, method_family: str, seed: int) -> tuple[Any, Any | None]:
    """The training pool (and val pool) a method fits on; see the module docstring."""
    from metaad.episodes.pool import Pool

    X, y = split.X_train, split.y_train
    types = np.where(y == 1, "labelled", "normal")
    if method_family == "baseline":
        return Pool(X, y.copy(), types.astype(str)), None
    rng = np.random.default_rng([seed, 17])
    unl = X[y == 0]
    syn = synthetic_types(unl, rng)
    val_kind = SYNTHETIC_KINDS[-1]
    order = rng.permutation(len(unl))
    # the learner's fixed validation tasks need n_support_normal + 200 normals
    n_val = min(max(260, len(unl) // 7), len(unl) // 2)
    val_normals, train_normals = unl[order[:n_val]], unl[order[n_val:]]
    parts_X = [train_normals, X[y == 1]] + [syn[k] for k in SYNTHETIC_KINDS[:-1]]
    parts_t = [np.full(len(train_normals), "normal"), np.full(int(y.sum()), "labelled")]
    parts_t += [np.full(len(syn[k]), f"synthetic_{k}") for k in SYNTHETIC_KINDS[:-1]]
    Xp = np.concatenate(parts_X).astype(np.float32)
    tp = np.concatenate(parts_t).astype(str)
    pool = Pool(Xp, (tp != "normal").astype(np.int64), tp)
    Xv = np.concatenate([val_normals, syn[val_kind]]).astype(np.float32)
    tv = np.concatenate(
        [np.full(len(val_normals), "normal"), np.full(len(syn[val_kind]), val_kind)]
    )
    val = Pool(Xv, (tv != "normal").astype(np.int64), tv.astype(str))
    return pool, val


def run_one(
    split: SemiSupervisedSplit,
    method: str,
    *,
    seed: int,
    steps: int,
    n_support_normal: int = 50,
    hparams: Mapping[str, Any] | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """Fit ``method`` under the protocol and score the test part: AUCROC, AUCPR, seconds."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from metaad.config import FitConfig
    from metaad.device import seed_everything
    from metaad.models.registry import create, family_of

    fam = family_of(method)
    pool, val = _pools(split, fam, seed)
    seed_everything(seed)
    hp = {"seed": seed, **dict(hparams or {})}
    det = create(method, pool.input_shape, **hp)
    cfg = FitConfig(
        steps=steps,
        meta_batch=8,
        shots=(1, 5, 10),
        n_support_normal=n_support_normal,
        seed=seed,
        device=device,
        val_every=max(1, steps // 5),
    )
    t0 = time.perf_counter()
    det.fit(pool, cfg, val=val)
    rng = np.random.default_rng([seed, 23])
    unl = np.flatnonzero(split.y_train == 0)
    lab = np.flatnonzero(split.y_train == 1)
    sup_n = rng.choice(unl, size=min(n_support_normal, len(unl)), replace=False)
    sup = np.concatenate([lab, sup_n])
    adapted = det.adapt(split.X_train[sup], split.y_train[sup])
    scores = np.asarray(adapted.score(split.X_test), np.float64)
    secs = time.perf_counter() - t0
    return {
        "aucroc": float(roc_auc_score(split.y_test, scores)),
        "aucpr": float(average_precision_score(split.y_test, scores)),
        "seconds": round(secs, 2),
    }


# -- published numbers --------------------------------------------------------------------
def default_published_path() -> Path:
    """``metaad/reference/adbench_published_2022.csv``, shipped inside the package (so an
    installed wheel has it too, not only a checkout)."""
    return Path(__file__).resolve().parent / "reference" / "adbench_published_2022.csv"


def read_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published values as ``table, metric, label_ratio_pct, dataset, method, value``.

    ``value`` is a fraction (the paper prints percentages). Lines starting with ``#`` are the
    citation and provenance.
    """
    p = Path(path) if path is not None else default_published_path()
    if not p.is_file():
        raise DataError(f"published ADBench results not found at {p}")
    with p.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    df = pd.DataFrame(rows)
    need = {"table", "metric", "label_ratio_pct", "dataset", "method", "value_pct"}
    if not need <= set(df.columns):
        raise DataError(f"{p} lacks column(s) {sorted(need - set(df.columns))}")
    df["value"] = df["value_pct"].astype(float) / 100.0
    return df


def published_for(pub: pd.DataFrame, dataset: str, ratio: float, metric: str) -> dict[str, float]:
    """Published value per method for one set, ratio and metric (IForest from the unsup table)."""
    pct = str(round(ratio * 100))
    out: dict[str, float] = {}
    for m in PUBLISHED_METHODS:
        key = (metric, "unsup") if m == "IForest" else (metric, pct)
        tab = TABLES.get(key)
        sub = pub[(pub["table"] == tab) & (pub["dataset"] == dataset) & (pub["method"] == m)]
        if len(sub):
            out[m] = float(sub["value"].iloc[0])
    return out


# -- the check ---------------------------------------------------------------------------
def _read_journal(path: Path) -> dict[tuple[str, float, int, str], dict[str, Any]]:
    """The runs a stopped check finished: (set, ratio, seed, method) -> its record.

    A last line cut short by the stop is dropped (its run is done again); a damaged line
    before the last is an error, since what follows it cannot be trusted either.
    """
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    out: dict[tuple[str, float, int, str], dict[str, Any]] = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            run = rec["run"]
            key = (run["dataset"], float(run["ratio"]), int(run["seed"]), run["method"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if i == len(lines) - 1:
                log.warning("adbench: %s ends in a half-written line; that run is redone", path)
                break
            raise DataError(f"{path}: line {i + 1} is not a run record ({exc})") from exc
        out[key] = rec
    return out


def run_adbench(
    sets: Sequence[str],
    *,
    ratios: Sequence[float] = (0.01,),
    seeds: Sequence[int] = (1, 2, 3),
    methods: Sequence[str] = ("proto", "catboost", "devnet", "iforest"),
    steps: int = 300,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    data_dir: str | Path | None = None,
    published: str | Path | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Every (set, ratio, seed, method); mean over seeds; published numbers beside them.

    With ``out_dir`` every finished run is appended to ``adbench_runs.jsonl`` as it ends,
    so a stopped check keeps what it did; ``resume`` takes those runs back instead of
    running them again, when they were run with the same steps, hparams and metaad version
    (else :class:`ConfigError`, naming the difference). Without ``resume`` the file starts
    anew.
    """
    from metaad.datasets.adbench import arrays

    pub = read_published(published)
    if resume and out_dir is None:
        raise ConfigError("adbench: resume needs the out_dir of the run to continue")
    journal = None if out_dir is None else Path(out_dir) / "adbench_runs.jsonl"
    done = _read_journal(journal) if resume and journal is not None else {}
    if journal is not None:  # rewritten from what was kept: no cut-short line stays inside
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.write_text("".join(json.dumps(rec) + "\n" for rec in done.values()))
    runs: list[dict[str, Any]] = []
    for name in sets:
        X, y = arrays(name, data_dir)
        for ratio in ratios:
            for seed in seeds:
                sp = adbench_split(X, y, seed=seed, ratio=ratio)
                for m in methods:
                    hp = dict((hparams or {}).get(m) or {})
                    fp = {"steps": steps, "hparams": hp, "version": __version__}
                    fp = json.loads(json.dumps(fp))  # as it reads back from the journal
                    key = (name, float(ratio), int(seed), m)
                    if key in done:
                        rec = done[key]
                        if rec["fingerprint"] != fp:
                            raise ConfigError(
                                f"adbench: cannot resume {name} ratio {ratio} seed {seed} {m}: "
                                f"{journal} has it with {rec['fingerprint']}, this run asks "
                                f"for {fp}; use another --out or run without --resume"
                            )
                        runs.append(rec["run"])
                        continue
                    r = run_one(sp, m, seed=seed, steps=steps, hparams=hp, device=device)
                    row = {"dataset": name, "ratio": ratio, "seed": seed, "method": m,
                           "n_labelled": sp.n_labelled, "n_train_anomalies": sp.n_train_anomalies,
                           "n_test": len(sp.y_test), **r}  # fmt: skip
                    runs.append(row)
                    if journal is not None:
                        with journal.open("a") as fh:
                            fh.write(json.dumps({"fingerprint": fp, "run": row}) + "\n")
                    log.info(
                        "adbench %s ratio %.2f seed %d %s: AUCROC %.3f AUCPR %.3f (%d labelled)",
                        name, ratio, seed, m, row["aucroc"], row["aucpr"], sp.n_labelled,
                    )  # fmt: skip
    frame = pd.DataFrame(runs)
    result = summarise_adbench(frame, pub, methods=methods, ratios=ratios)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "adbench_runs.csv", index=False)
        (out / "adbench.json").write_text(json.dumps(result, indent=1))
        (out / "adbench.md").write_text(adbench_markdown(result) + "\n")
    return result


def summarise_adbench(
    frame: pd.DataFrame,
    pub: pd.DataFrame,
    *,
    methods: Sequence[str],
    ratios: Sequence[float],
) -> dict[str, Any]:
    """Per ratio: one row per set (ours mean over seeds, published per method), and means."""
    out: dict[str, Any] = {"citation": CITATION, "methods": list(methods), "ratios": {}}
    for ratio in ratios:
        sub = frame[np.isclose(frame["ratio"], ratio)]
        rows = []
        for name in sorted(sub["dataset"].unique(), key=list(frame["dataset"].unique()).index):
            s = sub[sub["dataset"] == name]
            row: dict[str, Any] = {
                "dataset": name,
                "n_labelled": sorted(set(s["n_labelled"].astype(int).tolist())),
                "seeds": sorted(set(s["seed"].astype(int).tolist())),
            }
            for metric, col in (("AUCROC", "aucroc"), ("AUCPR", "aucpr")):
                ours = {m: float(s.loc[s["method"] == m, col].mean()) for m in methods}
                pubv = published_for(pub, name, ratio, metric)
                row[metric] = {
                    "metaad": ours,
                    "published": pubv,
                    "published_best": max(pubv.items(), key=lambda kv: kv[1]) if pubv else None,
                }
            rows.append(row)
        means: dict[str, Any] = {}
        for metric in ("AUCROC", "AUCPR"):
            means[metric] = {
                "metaad": {
                    m: float(np.mean([r[metric]["metaad"][m] for r in rows])) for m in methods
                },
                "published": {
                    m: float(np.mean([r[metric]["published"][m] for r in rows]))
                    for m in PUBLISHED_METHODS
                    if all(m in r[metric]["published"] for r in rows)
                },
                "published_best_per_set_mean": _mean_or_none(
                    [r[metric]["published_best"][1] for r in rows if r[metric]["published_best"]]
                ),
            }
        out["ratios"][str(ratio)] = {"rows": rows, "means": means}
    return out


def _mean_or_none(values: list[float]) -> float | None:
    """None, not NaN and a warning, when no set has a published number."""
    return float(np.mean(values)) if values else None


def adbench_markdown(result: Mapping[str, Any]) -> str:
    """Per ratio: per-set table (ours and published) and the means over sets."""
    methods = list(result["methods"])
    pubs = list(PUBLISHED_METHODS)
    parts = [f"Published numbers: {result['citation']}. IForest's are from the unsupervised "
             "tables (D4/D5): it uses no labels."]  # fmt: skip
    for ratio, block in result["ratios"].items():
        pct = f"{float(ratio):.0%}"
        for metric in ("AUCROC", "AUCPR"):
            head = ["set", "labelled", *[f"metaad {m}" for m in methods], *pubs, "published best"]
            lines = [
                f"#### {metric} at {pct} labelled anomalies (ours: mean over seeds "
                f"{block['rows'][0]['seeds'] if block['rows'] else []})",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head),
            ]
            for r in block["rows"]:
                v = r[metric]
                best = v["published_best"]
                cells = [r["dataset"], "/".join(map(str, r["n_labelled"]))]
                cells += [f"{v['metaad'][m]:.3f}" for m in methods]
                cells += [f"{v['published'][p]:.3f}" if p in v["published"] else "–" for p in pubs]
                cells.append(f"{best[1]:.3f} ({best[0]})" if best else "–")
                lines.append("| " + " | ".join(cells) + " |")
            mm = block["means"][metric]
            cells = ["**mean**", ""]
            cells += [f"**{mm['metaad'][m]:.3f}**" for m in methods]
            cells += [f"{mm['published'][p]:.3f}" if p in mm["published"] else "–" for p in pubs]
            best_mean = mm["published_best_per_set_mean"]
            cells.append("–" if best_mean is None else f"{best_mean:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_published_subset(source: str | Path, dest: str | Path, sets: Sequence[str]) -> Path:
    """Copy the rows of the cited methods and sets from the full parsed table, with citation."""
    src = Path(source)
    with src.open() as fh:
        rows = list(csv.DictReader(fh))
    tabs = set(TABLES.values())
    keep = [
        r for r in rows
        if r["table"] in tabs and r["dataset"] in sets and r["method"] in PUBLISHED_METHODS
        and (r["method"] == "IForest") == (r["label_ratio_pct"] == "unsup")
    ]  # fmt: skip
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", newline="") as fh:
        fh.write(f"# {CITATION}.\n")
        fh.write(
            "# Copied from the parsed appendix tables (../shared/datasets/adbench/"
            "published_results_adbench_2022.csv;\n# paper PDF in github:Minqi824/ADBench "
            "at f7fed68). value_pct is the paper's percentage (mean over seeds 1-3).\n"
            "# UNVERIFIED here: these rows were not re-checked against the PDF in the session "
            "that copied them.\n"
        )
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(keep)
    return dest


__all__ = [
    "CITATION",
    "PUBLISHED_METHODS",
    "SemiSupervisedSplit",
    "adbench_markdown",
    "adbench_split",
    "published_for",
    "read_published",
    "run_adbench",
    "run_one",
    "summarise_adbench",
    "synthetic_types",
    "write_published_subset",
]
