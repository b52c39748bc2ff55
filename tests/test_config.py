"""params.yaml parses into typed config; mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaad.config import load_params
from metaad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_parse_and_override() -> None:
    p = load_params(ROOT / "params.yaml", {"train.method": "maml", "train.hparams.loss": "triplet"})
    assert p.train.method == "maml"
    assert p.train.hparams == {"loss": "triplet"}
    assert p.episodes.shots == (0, 1, 5, 10)
    assert p.digest() != load_params(ROOT / "params.yaml").digest()
    assert p.flat()["episodes.shots"] == "[0, 1, 5, 10]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train.steps": "many"}, "train.steps must be an integer"),
        ({"train.steps": -1}, "train.steps must be >= 0"),
        ({"train.bogus": 1}, r"unknown key\(s\) in train: \['bogus'\]"),
        ({"episodes.contamination": 2.0}, "contamination must be in"),
        ({"nosuch.key": 1}, "unknown section"),
        ({"ingest.source": "csv"}, "ingest.path is not set"),
        ({"episodes.shots": 5}, "episodes.shots must be a list"),
    ],
)
def test_bad_params_name_the_key(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", override)


def test_missing_file_is_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_yaml_boolean_in_a_string_field_says_to_quote_it(tmp_path) -> None:
    # `-S ingest.normal_value=no` arrives as the text "no", which YAML reads as False
    with pytest.raises(ConfigError, match=r"ingest.normal_value.*quote the value"):
        load_params(tmp_path / "absent.yaml", overrides={"ingest.normal_value": "no"})
    ok = load_params(tmp_path / "absent.yaml", overrides={"ingest.normal_value": '"no"'})
    assert ok.ingest.normal_value == "no"


def test_flows_give_prefects_temporary_server_time_to_start(monkeypatch) -> None:
    """The flows' environment waits two minutes for Prefect's temporary server (its default
    20 s failed the main job on a loaded machine), and a user's own setting is kept.

    Settings are read fresh from the environment, as in a flow process, which sets the
    variables before it imports Prefect."""
    from prefect.settings import Settings

    from metaad.config import set_offline_env

    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.delenv(key, raising=False)
    set_offline_env()
    assert Settings().server.ephemeral.startup_timeout_seconds == 120
    monkeypatch.setenv(key, "300")
    set_offline_env()
    assert Settings().server.ephemeral.startup_timeout_seconds == 300
