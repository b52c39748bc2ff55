"""Paths, the typed view of ``params.yaml``, and the offline environment.

``params.yaml`` is parsed once into frozen dataclasses, so a typo or a wrong type fails at
start-up with the offending key named, not an hour into training. Overrides use dotted keys
(``train.method=maml``), the same syntax as ``dvc exp run -S``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from metaad.errors import ConfigError
from metaad.models.base import FitConfig

#: Environment that keeps every component off the network (DESIGN.md, "Offline").
OFFLINE_ENV: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


#: Prefect waits 20 s for the temporary API server a local flow run starts. On a loaded
#: machine that is too short: on 2026-12-01 the main job, started beside a test run and a
#: benchmark on two cores, failed before its first task with "Timed out while attempting to
#: connect to ephemeral Prefect API server". Two minutes costs nothing when the server is
#: quick, and the user's own setting wins.
STARTUP_ENV: dict[str, str] = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def set_offline_env() -> None:
    """Set the offline variables, and the temporary Prefect server's start-up wait
    (:data:`STARTUP_ENV`), unless the user set them already.

    The flows call it before Prefect is imported, so the server process inherits both."""
    for k, v in {**OFFLINE_ENV, **STARTUP_ENV}.items():
        os.environ.setdefault(k, v)


@dataclass(frozen=True)
class IngestConfig:
    source: str = "synthetic"
    domain: str = "card"
    n_rows: int = 60000
    seed: int = 7
    anomaly_rate: float = 0.05
    path: str | None = None
    label_col: str = "label"
    type_col: str | None = "anomaly_type"
    normal_value: str | int | None = None
    categorical: tuple[str, ...] = ()
    output: str = "data/table.parquet"

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "csv"):
            raise ConfigError(f"ingest.source must be 'synthetic' or 'csv', got {self.source!r}")
        if self.source == "csv" and not self.path:
            raise ConfigError("ingest.source is 'csv' but ingest.path is not set")


@dataclass(frozen=True)
class ValidateConfig:
    max_null_fraction: float = 0.0
    nullable: tuple[str, ...] = ()
    max_duplicate_fraction: float = 0.05
    min_rows: int = 1000
    max_rows: int = 100_000_000
    range_slack: float = 0.5


@dataclass(frozen=True)
class EpisodesConfig:
    seed: int = 11
    train_types: tuple[str, ...] = ()
    val_types: tuple[str, ...] = ()
    test_types: tuple[str, ...] = ()
    n_val_types: int = 1
    n_test_types: int = 3
    shots: tuple[int, ...] = (0, 1, 5, 10)
    n_episodes: int = 20
    n_support_normal: int = 50
    n_query_normal: int = 950
    contamination: float = 0.05
    window: int = 16
    stride: int = 8
    #: Where evaluation normals come from: ``auto`` follows the table's ``source_split``
    #: column when it has one (a loader's train/test files, e.g. NSL-KDD's, whose normals
    #: differ), else deals normals at random; ``source`` requires the column; ``random``
    #: ignores it.
    normals: str = "auto"

    def __post_init__(self) -> None:
        if self.normals not in ("auto", "source", "random"):
            raise ConfigError(
                f"episodes.normals must be 'auto', 'source' or 'random', got {self.normals!r}"
            )
        if not self.shots or min(self.shots) < 0:
            raise ConfigError(f"episodes.shots must be non-negative integers, got {self.shots}")
        if not 0 < self.contamination < 1:
            raise ConfigError(f"episodes.contamination must be in (0, 1), got {self.contamination}")
        if self.window < 1 or self.stride < 1:
            raise ConfigError("episodes.window and episodes.stride must be >= 1")
        if self.n_test_types < 1 and not self.test_types:
            raise ConfigError("episodes.n_test_types must be >= 1 (or list episodes.test_types)")


@dataclass(frozen=True)
class TrainConfig(FitConfig):
    """The ``train`` section: the shared meta-training settings plus the method to train.

    It extends :class:`FitConfig` rather than repeating its fields, so the two cannot drift
    apart and the range checks run when ``params.yaml`` is parsed.
    """

    method: str = "proto"
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def fit_config(self, progress: bool = False) -> FitConfig:
        shared = {f.name: getattr(self, f.name) for f in fields(FitConfig)}
        return FitConfig(**{**shared, "shots": tuple(self.shots), "progress": progress})


@dataclass(frozen=True)
class EvaluateConfig:
    methods: tuple[str, ...] = ("proto", "iforest", "lr_sup", "proto_raw")
    gate_k: int = 5
    n_bootstrap: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "metaad-detector"
    experiment: str = "metaad"
    target_fpr: float = 0.01


@dataclass(frozen=True)
class PromoteConfig:
    k: int = 5
    min_auprc: float = 0.30
    min_auroc: float = 0.70
    min_delta: float = 0.005
    bootstrap_alpha: float = 0.05
    n_bootstrap: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve`` section: request limits, batch chunks and the type-addition gate.

    The limits travel inside the registered bundle (``bundle.json``), so a served model
    enforces the values it was registered with, not whatever params.yaml says later.
    """

    max_rows: int = 10000  # rows per request, support rows included
    max_support_types: int = 20  # distinct anomaly types in one request's support set
    chunk_rows: int = 50000  # batch scoring reads, scores and writes this many rows at a time
    n_calibration: int = 2000  # held-out normals stored with the model to calibrate alerts
    min_type_examples: int = 1  # rows `metaad types add` needs
    min_type_recall: float = 0.5  # leave-one-out recall the added type's examples must reach
    max_type_regression: float = 0.01  # served macro AUPRC a type addition may lose

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_support_types", "chunk_rows", "n_calibration"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_type_examples < 1:
            raise ConfigError(f"serve.min_type_examples must be >= 1, got {self.min_type_examples}")
        if not 0.0 <= self.min_type_recall <= 1.0:
            raise ConfigError(
                f"serve.min_type_recall must be in [0, 1], got {self.min_type_recall}"
            )
        if self.max_type_regression < 0:
            raise ConfigError(
                f"serve.max_type_regression must be >= 0, got {self.max_type_regression}"
            )


TASK_RUNNERS = ("sequential", "dask")
DDP_BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class ScaleConfig:
    """The ``scale`` section: how evaluation fans out and how distributed training runs.

    None of it changes a result: the Dask fan-out scores the same episodes with the same
    seeds as the sequential run, and these keys are outside every DVC stage's params.
    """

    task_runner: str = "sequential"  # sequential | dask (evaluation units as mapped tasks)
    dask_address: str | None = None  # an existing cluster's scheduler; None: a LocalCluster
    n_workers: int = 2  # LocalCluster worker processes
    threads_per_worker: int = 1
    checkpoint_every: int = 100  # DDP training: steps between checkpoints (0: none)
    ddp_backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU

    def __post_init__(self) -> None:
        if self.task_runner not in TASK_RUNNERS:
            raise ConfigError(
                f"scale.task_runner must be one of {list(TASK_RUNNERS)}, got {self.task_runner!r}"
            )
        if self.n_workers < 1 or self.threads_per_worker < 1:
            raise ConfigError("scale.n_workers and scale.threads_per_worker must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(f"scale.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.ddp_backend not in DDP_BACKENDS:
            raise ConfigError(
                f"scale.ddp_backend must be one of {list(DDP_BACKENDS)}, got {self.ddp_backend!r}"
            )


#: Every meta-learner and every baseline of DESIGN.md, and ``metric_ens`` (the four metric
#: learners averaged): what the benchmark runs by default.
BENCHMARK_METHODS: tuple[str, ...] = (
    "proto", "siamese", "triplet", "deviation", "maml", "fomaml", "anil", "metasgd", "msl",
    "metric_ens", "iforest", "ecod", "knn", "hgb_sup", "catboost", "lr_sup", "lr_pool",
    "proto_raw", "finetune", "devnet",
)  # fmt: skip
ADBENCH_SETS: tuple[str, ...] = (
    "annthyroid", "campaign", "cardio", "donors", "mammography", "pendigits", "satellite",
    "shuttle", "thyroid", "WBC", "backdoor",
)  # fmt: skip


@dataclass(frozen=True)
class BenchmarkConfig:
    """The ``benchmark`` section: the unseen-type benchmark and the ADBench check (issue 4).

    Each dataset's own protocol (which types are unseen, which normals an episode uses,
    windows) comes from its loader (``metaad.datasets``); these keys say how much to run.
    """

    datasets: tuple[str, ...] = ("nsl_kdd", "tep", "skab", "sparkov")
    methods: tuple[str, ...] = BENCHMARK_METHODS
    shots: tuple[int, ...] = (0, 1, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # episode draws and training seeds
    n_episodes: int = 20  # per unseen type, K and seed
    split_seed: int = 0  # the type split (where a loader does not list it) and normal deal
    steps: int = 300  # meta-training steps per meta-learner and seed (params.yaml says why)
    #: {dataset: {meta-learner: steps}}: where one length does not fit every set (params.yaml)
    steps_for: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    meta_batch: int = 16
    device: str = "auto"
    hparams: Mapping[str, Any] = field(default_factory=dict)  # {method: {hparam: value}}
    #: {dataset: {method: {hparam: value}}}: merged over ``hparams`` on that dataset only
    #: (nested mappings key by key), where a setting helps one set and costs others
    hparams_for: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    data_dir: str | None = None  # where the datasets are; None: METAAD_DATA_DIR etc.
    output: str = "artifacts/benchmark"
    experiment: str = "metaad-benchmark"
    adbench_sets: tuple[str, ...] = ADBENCH_SETS
    adbench_ratios: tuple[float, ...] = (0.01, 0.05, 0.10)
    adbench_seeds: tuple[int, ...] = (1, 2, 3)
    adbench_methods: tuple[str, ...] = ("proto", "catboost", "devnet", "iforest")
    adbench_steps: int = 300

    def __post_init__(self) -> None:
        if not self.datasets or not self.methods or not self.seeds:
            raise ConfigError("benchmark.datasets, methods and seeds must not be empty")
        if not self.shots or min(self.shots) < 0:
            raise ConfigError(f"benchmark.shots must be non-negative, got {self.shots}")
        if self.n_episodes < 1 or self.steps < 0 or self.meta_batch < 1:
            raise ConfigError("benchmark.n_episodes and meta_batch must be >= 1, steps >= 0")
        if any(not 0 < r <= 1 for r in self.adbench_ratios):
            raise ConfigError(
                f"benchmark.adbench_ratios must be in (0, 1], got {self.adbench_ratios}"
            )
        for m, hp in self.hparams.items():
            if not isinstance(hp, Mapping):
                raise ConfigError(f"benchmark.hparams.{m} must be a mapping, got {hp!r}")
        for ds, by_method in self.hparams_for.items():
            if not isinstance(by_method, Mapping):
                raise ConfigError(
                    f"benchmark.hparams_for.{ds} must map methods to hparams, got {by_method!r}"
                )
            for m, hp in by_method.items():
                if not isinstance(hp, Mapping):
                    raise ConfigError(
                        f"benchmark.hparams_for.{ds}.{m} must be a mapping, got {hp!r}"
                    )
        for ds, by_method in self.steps_for.items():
            if not isinstance(by_method, Mapping):
                raise ConfigError(
                    f"benchmark.steps_for.{ds} must map meta-learners to steps, got {by_method!r}"
                )
            for m, n in by_method.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ConfigError(
                        f"benchmark.steps_for.{ds}.{m} must be a whole number >= 0, got {n!r}"
                    )

    def steps_of(self, dataset: str, method: str) -> int:
        """Meta-training steps of ``method`` on ``dataset``: ``steps_for`` where it says, else
        ``steps``. One length does not fit every set: on Sparkov the MAML family keeps gaining
        to 3,000 steps, on SKAB the metric learners overfit past 300 (README)."""
        return int(self.steps_for.get(dataset, {}).get(method, self.steps))

    def hparams_of(self, dataset: str, method: str) -> dict[str, Any]:
        """Hyperparameters of ``method`` on ``dataset``: ``hparams``, with ``hparams_for``'s
        entry for that dataset merged over it key by key (so ``{metric_ens: {member_hparams:
        {proto: {raw_knn: true}}}}`` keeps the members' other settings)."""
        return _deep_merge(
            dict(self.hparams.get(method, {})), self.hparams_for.get(dataset, {}).get(method, {})
        )


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; where both hold a mapping, recursively."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``, typed."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(dataclasses.asdict(getattr(self, f.name))) for f in fields(self)}

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (lists as JSON), for MLflow params."""
        out: dict[str, Any] = {}
        for sec, vals in self.to_dict().items():
            for k, v in vals.items():
                out[f"{sec}.{k}"] = json.dumps(v) if isinstance(v, list | dict) else v
        return out

    def digest(self) -> str:
        """A stable hash of the resolved configuration (a lineage tag)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _bool_hint(value: Any) -> str:
    """Why a string field got a boolean: YAML 1.1 reads unquoted yes/no/on/off as booleans,
    so ``normal_value: no`` arrives as ``False``; the fix is quoting, which the message says."""
    if isinstance(value, bool):
        return (
            " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value, "
            'e.g. normal_value: "no" or -S \'ingest.normal_value="no"\')'
        )
    return ""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, naming ``key`` when it cannot."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} does not fit {annotation}{_bool_hint(value)}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if origin in (Mapping, dict) or annotation is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}{_bool_hint(value)}")
        return value
    return value


def _build(cls: type, section: str, raw: Mapping[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params section {section!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {section}: {unknown}; known: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``5`` -> int, ``[1,5]`` -> list)."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides applied (``train.hparams.loss``)."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {dotted!r} must be section.key, e.g. train.method")
        node = out.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value) if isinstance(value, str) else value
    return out


def load_params(
    path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None
) -> Params:
    """Read ``params.yaml`` (missing sections take their defaults) and apply overrides."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
        raw = loaded
    elif overrides is None:
        raise ConfigError(f"parameter file {path} not found")
    raw = apply_overrides(raw, overrides or {})
    sections = {f.name: f.type for f in fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {unknown}; known: {sorted(sections)}")
    hints = typing.get_type_hints(Params)
    return Params(**{name: _build(hints[name], name, raw.get(name) or {}) for name in sections})
