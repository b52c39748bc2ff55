"""Does fine-tuning a metric learner on the task's own support help? (An experiment, not a default.)

A metric learner adapts to a new type in one forward pass: its encoder, metric and term
weights stay as meta-training left them, and only the support's statistics (normals,
anomaly prototype, the two closed-form heads) change. CALIBRATION.md's reading of the
simple baselines suggests the other lever, "adapting the encoder as well as the
prototypes": a few gradient steps on the support before scoring, as fine-tuning baselines
and Proto-MAML do. This script measures it on one seed's frozen benchmark episodes.

It meta-trains one metric learner exactly as the benchmark does (params.yaml's
``benchmark`` section), then per episode scores the query

- ``base``: as the benchmark does (no fine-tuning);
- ``ft_S_LR``: after ``S`` AdamW steps at learning rate ``LR`` on a copy of the network, on
  pseudo-tasks cut from the support alone, with the learner's own meta-training loss.
  With K >= 2 each step is a batch of K leave-one-anomaly-out tasks (pseudo-support: the
  other K-1 anomalies and four fifths of the support normals; pseudo-query: the held-out
  anomaly and the other fifth, redrawn every step). With K = 1 the one task holds the
  anomaly out, so the step teaches the zero-shot terms to rank it above the held-out
  normals. K = 0 has nothing to fine-tune on and is not scored.

The same is done on the seed's meta-validation episodes (the val types, K=5), the signal a
user could choose the setting by without looking at the unseen types. The query labels are
used only for the AUPRC.

    python bench/support_finetune.py --dataset tep --method triplet --seed 0 --episodes 4
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from _study import frozen_seed, paired
from metaad.benchmark import train_params, val_episodes
from metaad.config import load_params, set_offline_env
from metaad.evaluation.metrics import auprc
from metaad.models.metric import MetricLearner
from metaad.stages import train_method

#: The learners this applies to: the metric family, one forward pass per task.
METRIC_LEARNERS = ("proto", "siamese", "triplet", "deviation")


def pseudo_tasks(
    ys: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays ``(B, s)`` / ``(B, q)`` and labels of one step's tasks cut from a support.

    Every task of the batch has the same layout (anomalies first), as the core requires.
    """
    pos, neg = np.flatnonzero(ys == 1), np.flatnonzero(ys == 0)
    n_q = max(len(neg) // 5, 1)
    s_idx, q_idx = [], []
    for held in pos:
        perm = rng.permutation(neg)
        s_idx.append(np.r_[pos[pos != held], perm[n_q:]])
        q_idx.append(np.r_[held, perm[:n_q]])
    k_s = len(pos) - 1
    s_y = np.r_[np.ones(k_s), np.zeros(len(neg) - n_q)].astype(np.int64)
    q_y = np.r_[1, np.zeros(n_q)].astype(np.int64)
    B = len(pos)
    return np.stack(s_idx), np.stack(q_idx), np.tile(s_y, (B, 1)), np.tile(q_y, (B, 1))


def finetuned(
    det: MetricLearner, Xs: np.ndarray, ys: np.ndarray, steps: int, lr: float, seed: int
) -> MetricLearner:
    """A copy of ``det`` after ``steps`` AdamW steps on pseudo-tasks from ``(Xs, ys)``."""
    ft = copy.deepcopy(det)
    ft._mem_cache = None
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.asarray(Xs, dtype=np.float32), device=ft.device)
    opt = torch.optim.AdamW(ft.net.parameters(), lr=lr, weight_decay=0.0)
    ft.net.train()
    for _ in range(steps):
        si, qi, sy, qy = pseudo_tasks(ys, rng)
        loss = ft._loss(
            x[torch.as_tensor(si)],
            torch.as_tensor(sy, device=ft.device),
            x[torch.as_tensor(qi)],
            torch.as_tensor(qy, device=ft.device),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(ft.net.parameters(), 5.0)
        opt.step()
    ft.net.eval()
    ft._mem_cache = None
    return ft


def episode_row(
    det: MetricLearner, variants: list[tuple[int, float]], Xs, ys, Xq, yq, seed: int
) -> dict[str, float]:
    row = {"base": auprc(yq, det.adapt(Xs, ys).score(Xq))}
    for steps, lr in variants:
        ft = finetuned(det, Xs, ys, steps, lr, seed)
        row[f"ft_{steps}_{lr:g}"] = auprc(yq, ft.adapt(Xs, ys).score(Xq))
    return row


def report(per: pd.DataFrame, header: str) -> None:
    cols = [c for c in per.columns if c not in ("split", "type", "K")]
    macro = per.groupby(["split", "K", "type"])[cols].mean().groupby(["split", "K"]).mean().T
    print(header)
    print(macro.to_markdown(floatfmt=".3f"))
    print("paired, variant - base (95% interval over episodes, bootstrapped within type):")
    pairs = [(c, "base") for c in per.columns if c.startswith("ft_")]
    print(paired(per, pairs, ["split", "K"]).to_markdown(index=False, floatfmt="+.3f"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dataset", help="required unless --from-csv")
    ap.add_argument("--method", default="proto", help="a metric learner")
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed (episodes and training)")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per unseen type and K")
    ap.add_argument("--shots", default="1,5,10", help="the K to score on the unseen types")
    ap.add_argument("--steps", default="10,30", help="fine-tuning steps to try")
    ap.add_argument("--lrs", default="1e-4,1e-3", help="fine-tuning learning rates to try")
    ap.add_argument("--set", action="append", default=[], help="params override KEY=VALUE")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="artifacts/support_finetune")
    ap.add_argument("--from-csv", help="only print the tables of an earlier per_episode.csv")
    args = ap.parse_args()
    if args.from_csv:
        report(pd.read_csv(args.from_csv), f"{args.from_csv}: macro AUPRC by split and K")
        return
    if not args.dataset:
        ap.error("--dataset is required (or --from-csv)")
    if args.method not in METRIC_LEARNERS:
        ap.error(f"--method must be a metric learner, one of {list(METRIC_LEARNERS)}")
    if any("=" not in kv for kv in args.set):
        ap.error("--set takes KEY=VALUE, e.g. --set benchmark.steps=300")
    set_offline_env()

    overrides: dict[str, object] = {
        "benchmark.seeds": [args.seed],
        "benchmark.n_episodes": args.episodes,
    }
    for kv in args.set:
        key, _, value = kv.partition("=")
        overrides[key] = yaml_value(value)
    cfg = load_params(args.params, overrides).benchmark
    shots = {int(k) for k in args.shots.split(",")}
    variants = [(int(s), float(lr)) for s in args.steps.split(",") for lr in args.lrs.split(",")]
    out = Path(args.out) / f"{args.dataset}_{args.method}_seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)

    prep, eps, digest, stage = frozen_seed(args.dataset, cfg, args.seed, args.episodes, out)
    params = train_params(cfg, prep.protocol, args.seed, args.method, dataset=prep.name)
    det, _, secs = train_method(params, stage, args.method, progress=True)
    assert isinstance(det, MetricLearner)
    rows = []
    sets = [("test", eps)]
    veps = val_episodes(prep, seed=args.seed)
    if veps is not None:
        sets.append(("val", veps))
    t0 = time.perf_counter()
    for split, es in sets:
        pool = prep.pools[split]
        for i in tqdm(range(len(es)), desc=f"{split} episodes", unit="ep"):
            ep = es[i]
            ys = np.asarray(ep.support_y)
            if ys.sum() == 0 or (split == "test" and int(ep.shots) not in shots):
                continue
            Xs, Xq, yq = pool.X[ep.support_idx], pool.X[ep.query_idx], np.asarray(ep.query_y)
            row = episode_row(det, variants, Xs, ys, Xq, yq, seed=i)
            rows.append({"split": split, "type": ep.type, "K": int(ep.shots), **row})
            pd.DataFrame(rows).to_csv(out / "per_episode.csv", index=False)  # progress
    per = pd.DataFrame(rows)
    per.to_csv(out / "per_episode.csv", index=False)
    report(
        per,
        f"{args.dataset} {args.method}, seed {args.seed}, {args.episodes} episodes "
        f"(sha256 {digest[:12]}), meta-training {secs:.0f} s, scoring "
        f"{time.perf_counter() - t0:.0f} s; macro AUPRC (test: unseen types, val: meta-val):",
    )
    print(f"per-episode rows: {out / 'per_episode.csv'}")


def yaml_value(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    main()
