"""Can a task's own support choose among the ensemble's members? (An experiment, not a default.)

``metric_ens`` averages its members with equal weight. Its members are right on different
unseen types, so a per-task choice could beat the average, if the support (K anomalies and
the support normals) can tell which member is right for *this* type. This script measures
that on one seed's frozen benchmark episodes: it meta-trains ``metric_ens`` exactly as the
benchmark does (params.yaml's ``benchmark`` section), and per episode scores the query with
every member (each standardised on the support normals, as the ensemble does) and with these
rules:

- ``mean``: the ensemble as packaged;
- ``pick``: the member with the best leave-one-anomaly-out AUPRC on the support (K folds, each
  holding out one support anomaly and a K-th of the support normals; the member is adapted on
  the rest and scores the held-out rows);
- ``soft_T``: members weighted by ``softmax(loo_auprc / T)``;
- ``top_half``: the mean of the members at or above the median leave-one-out AUPRC;
- ``oracle``: the best member per episode, chosen on the query labels: the ceiling of any
  per-task choice, not a method.

``--baselines`` adds baselines of the benchmark (trained on the same seed's meta-train pool as
the benchmark trains them) and, per baseline ``b``, two blends that ask whether the
meta-learners and the simple support-fitted models make different mistakes:

- ``mean+b``: the mean of the ensemble's mean and ``b``, each standardised on the support
  normals (inductive: a row's score does not depend on the other query rows);
- ``rank:mean+b``: the mean of the two scores' ranks within the query (transductive, a
  reference for how much a blend could give whatever the scales; a streaming detector
  could not use it).

The rules need two support anomalies, so K=0 and K=1 show the members and the mean only.
docs/benchmark-log.md ("Choosing ensemble members per task from the support", "Blending the
ensemble with a baseline") gives what they found and the commands.

    python bench/ensemble_member_choice.py --dataset skab --seed 0 --episodes 4
    python bench/ensemble_member_choice.py --dataset sparkov \\
        --members proto,siamese,triplet,deviation,metasgd
    python bench/ensemble_member_choice.py --dataset skab --baselines lr_sup,knn
    python bench/ensemble_member_choice.py --dataset skab --from-csv \\
        artifacts/member_choice/skab_seed0_proto-siamese-triplet-deviation_with_lr_sup-knn/per_episode.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from tqdm import tqdm

from _study import frozen_seed, paired
from metaad.benchmark import train_params
from metaad.config import load_params, set_offline_env
from metaad.evaluation.metrics import auprc
from metaad.models.base import Detector
from metaad.models.baselines import BASELINES
from metaad.stages import train_method

TEMPERATURES = (0.02, 0.05, 0.1)


def standardised(det: Detector, Xs: np.ndarray, ys: np.ndarray, X: np.ndarray) -> np.ndarray:
    """A member's scores of ``X`` after adapting to ``(Xs, ys)``, in its support-normal frame.

    The same standardising as ``metaad.models.ensemble.MetricEnsemble.adapt``.
    """
    adapted = det.adapt(Xs, ys)
    ref = np.asarray(adapted.score(Xs[ys == 0]), dtype=np.float64)
    spread = max(float(ref.std()), 1e-6 * max(1.0, abs(float(ref.mean()))))
    return (np.asarray(adapted.score(X), dtype=np.float64) - ref.mean()) / spread


def loo_auprc(members: list[Detector], Xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Each member's AUPRC on the support, one anomaly (and a K-th of the normals) held out."""
    pos, neg = np.flatnonzero(ys == 1), np.flatnonzero(ys == 0)
    folds = np.array_split(np.random.default_rng(0).permutation(neg), len(pos))
    held_y: list[np.ndarray] = []
    held_s: list[list[np.ndarray]] = [[] for _ in members]
    for p, fold in zip(pos, folds, strict=True):
        held = np.r_[p, fold]
        keep = np.setdiff1d(np.arange(len(ys)), held)
        held_y.append(ys[held])
        for m, det in enumerate(members):
            held_s[m].append(standardised(det, Xs[keep], ys[keep], Xs[held]))
    y = np.concatenate(held_y)
    return np.array([auprc(y, np.concatenate(s)) for s in held_s])


def episode_row(
    members: list[Detector],
    names: list[str],
    Xs,
    ys,
    Xq,
    yq,
    baselines: dict[str, Detector] | None = None,
) -> dict[str, float]:
    S = np.stack([standardised(det, Xs, ys, Xq) for det in members])
    row = {name: auprc(yq, s) for name, s in zip(names, S, strict=True)}
    mean = S.mean(axis=0)
    row["mean"] = auprc(yq, mean)
    for b, det in (baselines or {}).items():
        sb = standardised(det, Xs, ys, Xq)
        row[b] = auprc(yq, sb)
        row[f"mean+{b}"] = auprc(yq, (mean + sb) / 2)
        row[f"rank:mean+{b}"] = auprc(yq, rankdata(mean) + rankdata(sb))
    row["oracle"] = max(row[n] for n in names)
    if int(ys.sum()) >= 2:
        loo = loo_auprc(members, Xs, ys)
        row["pick"] = auprc(yq, S[int(np.argmax(loo))])
        for T in TEMPERATURES:
            w = np.exp((loo - loo.max()) / T)
            row[f"soft_{T}"] = auprc(yq, (w / w.sum()) @ S)
        row["top_half"] = auprc(yq, S[loo >= np.median(loo)].mean(axis=0))
        row["picked_best"] = float(row[names[int(np.argmax(loo))]] == row["oracle"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dataset", help="required unless --from-csv")
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed (episodes and training)")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per unseen type and K")
    ap.add_argument("--members", default="proto,siamese,triplet,deviation")
    ap.add_argument(
        "--baselines", default="", help="comma-separated baselines to blend with the mean"
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="artifacts/member_choice")
    ap.add_argument(
        "--from-csv",
        type=Path,
        nargs="+",
        help="reprint the tables of earlier runs' rows; several files (one per seed, the same "
        "rules and baselines) are pooled: every type's episodes of every seed",
    )
    args = ap.parse_args()
    if args.from_csv:
        per = pd.concat([pd.read_csv(f) for f in args.from_csv], ignore_index=True)
        names = ", ".join(str(f) for f in args.from_csv)
        report(per, f"{names}: macro AUPRC by K ({len(args.from_csv)} file(s) pooled):")
        return
    if not args.dataset:
        ap.error("--dataset is required (unless --from-csv reprints earlier rows)")
    set_offline_env()

    names = [m.strip() for m in args.members.split(",") if m.strip()]
    cfg = load_params(
        args.params, {"benchmark.seeds": [args.seed], "benchmark.n_episodes": args.episodes}
    ).benchmark
    hp = dict(cfg.hparams.get("metric_ens", {}))
    hp["members"] = names
    hp["member_hparams"] = {
        m: v for m, v in dict(hp.get("member_hparams", {})).items() if m in names
    }
    cfg.hparams["metric_ens"] = hp
    base_names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(base_names) - set(BASELINES))
    if unknown:
        raise SystemExit(f"--baselines: not a baseline: {unknown}; known: {sorted(BASELINES)}")
    out = Path(args.out) / f"{args.dataset}_seed{args.seed}_{'-'.join(names)}"
    if base_names:
        out = out.with_name(out.name + "_with_" + "-".join(base_names))
    out.mkdir(parents=True, exist_ok=True)

    prep, eps, digest, stage = frozen_seed(args.dataset, cfg, args.seed, args.episodes, out)
    params = train_params(cfg, prep.protocol, args.seed, "metric_ens", dataset=prep.name)
    ens, _, secs = train_method(params, stage, "metric_ens", progress=True, hparams=hp)
    members: list[Detector] = list(ens.members)  # type: ignore[attr-defined]
    baselines: dict[str, Detector] = {}
    for b in base_names:
        bp = train_params(cfg, prep.protocol, args.seed, b, dataset=prep.name)
        baselines[b], _, _ = train_method(bp, stage, b)
    pool = prep.pools["test"]
    rows = []
    for i in tqdm(range(len(eps)), desc="episodes", unit="ep"):
        ep = eps[i]
        Xs, ys = pool.X[ep.support_idx], np.asarray(ep.support_y)
        Xq, yq = pool.X[ep.query_idx], np.asarray(ep.query_y)
        row = episode_row(members, names, Xs, ys, Xq, yq, baselines)
        rows.append({"type": ep.type, "K": int(ep.shots), "rep": int(ep.seed), **row})
    per = pd.DataFrame(rows)
    per.to_csv(out / "per_episode.csv", index=False)
    report(per, f"{args.dataset}, seed {args.seed}, {args.episodes} episodes (sha256 "
                f"{digest[:12]}), meta-training {secs:.0f} s; macro AUPRC over the unseen "
                "types, by K:")  # fmt: skip
    print(f"per-episode rows: {out / 'per_episode.csv'}")


def report(per: pd.DataFrame, header: str) -> None:
    """The macro table by K and, when baselines were blended, each blend's paired gains."""
    rules = [c for c in per.columns if c not in ("type", "K", "rep")]
    macro = per.groupby(["K", "type"])[rules].mean().groupby("K").mean().T
    print(header)
    print(macro.to_markdown(floatfmt=".3f"))
    blended = [c.split("+", 1)[1] for c in rules if c.startswith("mean+")]
    pairs = [
        pair
        for b in blended
        for pair in (
            (f"mean+{b}", "mean"),
            (f"mean+{b}", b),
            ("mean", b),
            (f"rank:mean+{b}", "mean"),
        )
    ]
    if pairs:
        print("paired, a - b (95% interval over episodes, bootstrapped within type):")
        print(paired(per, pairs, ["K"]).to_markdown(index=False, floatfmt="+.3f"))


if __name__ == "__main__":
    main()
