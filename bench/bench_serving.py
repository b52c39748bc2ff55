"""Served latency and batch-scoring throughput of a registered model.

1. Starts a real ``mlflow models serve -m models:/metaad-detector@champion --env-manager
   local`` process on 127.0.0.1 and times requests of 1 and of 1,000 rows, each without
   and with a support set (5 labelled anomalies of an unseen type in the same request),
   client side (JSON encoding and HTTP included): median and p99 per setting.
2. Batch scoring: ``metaad.scoring.score_files`` on a Parquet file of ``--rows`` rows (read,
   checked, preprocessed, scored by the served scorer, written), and the scorer alone on the
   preprocessed rows, against ``IsolationForest.score_samples`` (100 trees, fitted on
   training normals) on the same preprocessed rows, in the same process, one thread each,
   interleaved rounds; ratios printed.

    python bench/bench_serving.py --tiny              # builds a tiny registered model first
    python bench/bench_serving.py --root . --rows 200000

With ``--tiny`` the model is trained for a few steps on 20,000 rows: latency and throughput
depend on the architecture, the type library and the stored normals, not on how long it was
trained, and those are the defaults' (proto, 4 library types, 200 reference normals,
32-row memory bank).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "metaad-detector"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_tiny(root: Path) -> str:
    """A tiny project registered through the pipeline's own functions; returns its store."""
    import shutil

    from metaad import governance, stages
    from metaad.config import load_params

    repo = Path(__file__).resolve().parents[1]
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "params.yaml", root / "params.yaml")
    over = {
        "ingest.n_rows": 20000,
        "episodes.shots": [0, 5],
        "episodes.n_episodes": 3,
        "episodes.n_query_normal": 250,
        "train.steps": 40,
        "train.meta_batch": 8,
        "evaluate.methods": ["proto"],
        "promote.n_bootstrap": 300,
    }
    p = load_params(root / "params.yaml", over)
    stages.ingest(p, root)
    stages.build_episodes(p, root)
    stages.train(p, root)
    stages.evaluate(p, root)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    governance.register_and_gate(p, root, validation_passed=True, tracking_uri=uri)
    return uri


def post(url: str, body: bytes) -> float:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def body_of(frame: pd.DataFrame) -> bytes:
    return json.dumps(
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    ).encode()


def latency(url: str, frames: dict[str, pd.DataFrame], repeats: dict[str, int]) -> None:
    print("\nserved latency (client side, ms)")
    print(f"{'request':44s} {'n':>5s} {'median':>9s} {'p99':>9s}")
    for name, frame in frames.items():
        body = body_of(frame)
        for _ in range(3):
            post(url, body)  # warm-up
        times = [post(url, body) * 1000 for _ in range(repeats[name])]
        p99 = float(np.percentile(times, 99))
        print(f"{name:44s} {len(times):5d} {statistics.median(times):9.1f} {p99:9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="project with a champion")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--tiny", action="store_true", help="build a tiny registered model first")
    ap.add_argument("--rows", type=int, default=200_000, help="rows for batch scoring")
    ap.add_argument("--repeats-1", type=int, default=300)
    ap.add_argument("--repeats-1000", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from metaad.config import OFFLINE_ENV, set_offline_env

    set_offline_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    if args.tiny:
        args.root = tmp / "project"
        uri = build_tiny(args.root)
    else:
        from metaad.tracking import default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri(args.root)
    from metaad.typelib import load_registered_bundle

    bundle, py = load_registered_bundle(f"models:/{MODEL}@champion", uri)
    feats = list(bundle.meta["feature_columns"])
    rows = pd.read_parquet(args.root / "artifacts" / "episodes" / "test_rows.parquet")
    unseen = bundle.meta["split"]["test"][0]
    support = rows[rows["anomaly_type"] == unseen].head(5)[feats].assign(support_label=unseen)
    q1 = rows[feats].sample(1, random_state=0)
    q1000 = rows[feats].sample(1000, random_state=0, replace=len(rows) < 1000)

    def with_support(q: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([q.assign(support_label=None), support], ignore_index=True)

    frames = {
        "1 row, no support": q1,
        "1 row + support (5 anomalies of one type)": with_support(q1),
        "1000 rows, no support": q1000,
        "1000 rows + support (5 anomalies of one type)": with_support(q1000),
    }
    repeats = {k: (args.repeats_1 if k.startswith("1 row") else args.repeats_1000) for k in frames}

    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "MLFLOW_TRACKING_URI": uri}
    log = (tmp / "serve.log").open("wb")
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
           f"models:/{MODEL}@champion", "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        t0 = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit((tmp / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        print(f"model: {MODEL}@champion ({bundle.meta.get('method')}, "
              f"{len(bundle.type_names())} library types), server up in "
              f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
        latency(f"http://127.0.0.1:{port}/invocations", frames, repeats)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()

    # -- batch scoring ---------------------------------------------------------------------
    import torch
    from sklearn.ensemble import IsolationForest

    from metaad.data.synthetic import write
    from metaad.scoring import score_files

    torch.set_num_threads(1)
    src = tmp / "batch.parquet"
    write(bundle.meta.get("domain", "card"), args.rows, 2024, src)
    frame = pd.read_parquet(src)
    X = bundle.to_pool(frame[feats]).X
    pool_train = np.load(args.root / "artifacts" / "episodes" / "pool_train.npz")
    normals = pool_train["X"][pool_train["y"] == 0][:20000]
    iforest = IsolationForest(n_estimators=100, random_state=0, n_jobs=1).fit(normals)
    scorer = py.scorer
    e2e, alone, ref = [], [], []
    for r in range(args.rounds):  # interleaved, so all three see the same machine load
        t0 = time.perf_counter()
        s = score_files(bundle, src, tmp / f"out{r}.parquet", chunk_rows=50_000, scorer=scorer)
        e2e.append(s.rows_scored / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        scorer.score(X)
        alone.append(len(X) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        iforest.score_samples(X)
        ref.append(len(X) / (time.perf_counter() - t0))
    med = statistics.median
    print(f"\nbatch scoring, {args.rows:,} rows x {X.shape[1]} features, 1 thread, "
          f"{args.rounds} rounds (median)")  # fmt: skip
    print(
        f"  score_files (read+check+preprocess+score+write, 50k-row chunks): "
        f"{med(e2e):10,.0f} rows/s   ratio to IsolationForest {med(e2e) / med(ref):.2f}x"
    )
    print(
        f"  served scorer alone ({1 + len(bundle.type_names())} detectors):"
        f"{'':18s}{med(alone):10,.0f} rows/s   ratio to IsolationForest "
        f"{med(alone) / med(ref):.2f}x"
    )
    print(f"  IsolationForest.score_samples (100 trees):{'':21s}{med(ref):10,.0f} rows/s")


if __name__ == "__main__":
    main()
