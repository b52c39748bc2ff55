"""Time series end to end: the sensor domain becomes windows, and a TCN learner adapts."""

from __future__ import annotations

from pathlib import Path

from metaad import stages
from metaad.bundle import ModelBundle
from metaad.config import load_params
from metaad.evaluation.runner import evaluate_detector

ROOT = Path(__file__).resolve().parents[1]


def test_sensor_windows_train_and_evaluate(tmp_path) -> None:
    params = load_params(
        ROOT / "params.yaml",
        {
            "ingest.domain": "sensor",
            "ingest.n_rows": 120000,
            "episodes.shots": [0, 5],
            "episodes.n_episodes": 2,
            "episodes.n_query_normal": 200,
            "train.steps": 40,
            "train.meta_batch": 4,
            "train.val_every": 20,
        },
    )
    stages.ingest(params, tmp_path)
    prep = stages.build_episodes(params, tmp_path)
    test = prep.pools["test"]
    assert test.is_windowed and test.input_shape[0] == params.episodes.window
    # windows never straddle series, and every window's rows come from one split
    assert prep.window == {"window": 16, "stride": 8}
    trained = stages.train(params, tmp_path)
    per = evaluate_detector(trained.bundle.detector, test, prep.episodes, method="proto")
    assert per[per.shots == 5].auprc.mean() > 0.1  # chance is 0.05
    # the saved bundle turns raw rows into the same windows and scores them
    bundle = ModelBundle.load(stages.Layout(tmp_path).model)
    import pandas as pd

    rows = pd.read_parquet(stages.Layout(tmp_path).episodes / "test_rows.parquet")
    pool = bundle.to_pool(rows)
    assert pool.X.shape == test.X.shape
    assert bundle.score(pool.X[:50]).shape == (50,)
