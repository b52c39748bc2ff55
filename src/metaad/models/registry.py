"""Detectors by name: one registry for meta-learners and baselines.

The error for an unknown name lists every valid one, so a typo in params.yaml or on the
command line is fixed in one try.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metaad.device import resolve_device
from metaad.errors import ConfigError, UnknownMethodError
from metaad.models.base import Detector


def _all() -> dict[str, type[Detector]]:
    from metaad.models.baselines import BASELINES
    from metaad.models.ensemble import ENSEMBLES
    from metaad.models.maml import MAML_MODELS
    from metaad.models.metric import METRIC_MODELS

    return {**METRIC_MODELS, **MAML_MODELS, **ENSEMBLES, **BASELINES}


def list_methods() -> dict[str, str]:
    """Method name to family (``metric``, ``maml`` or ``baseline``)."""
    return {name: cls.family for name, cls in sorted(_all().items())}


def family_of(name: str) -> str:
    return get_class(name).family


def get_class(name: str) -> type[Detector]:
    models = _all()
    if name not in models:
        raise UnknownMethodError(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(models))}"
        )
    return models[name]


def create(name: str, input_shape: tuple[int, ...], **hparams: Any) -> Detector:
    """Build a detector; a wrong hyperparameter name is a ConfigError naming it."""
    cls = get_class(name)
    try:
        return cls(tuple(input_shape), **hparams)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad hyperparameters for {name!r} {sorted(hparams)}: {exc}") from exc


def load_detector(directory: str | Path, device: str = "cpu") -> Detector:
    """Rebuild a saved meta-learner from ``config.json`` and ``weights.pt`` on ``device``.

    Only tensors are read (``torch.load(weights_only=True)``); no code is unpickled. The
    weights are read onto the CPU and then moved, so a model trained on a GPU loads on a
    machine without one; ``device`` is ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
    """
    target = resolve_device(device)
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"{directory} holds no saved detector (config.json missing)")
    cfg = json.loads(cfg_path.read_text())
    det = create(cfg["name"], tuple(cfg["input_shape"]), **cfg["hparams"])
    if not det.persistable:
        raise ConfigError(f"{cfg['name']} cannot be loaded from disk")
    det.load_weights(directory)  # type: ignore[attr-defined]
    det.to(target)  # type: ignore[attr-defined]
    return det
