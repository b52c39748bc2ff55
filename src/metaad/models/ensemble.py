"""An ensemble of meta-learners: ``metric_ens``.

Why: on the real-data benchmark the metric learners are close in macro AUPRC but not in
*which* unseen types they get right (NSL-KDD at K=5: ``deviation`` 0.94 on mscan where
``triplet`` has 0.86, ``triplet`` 0.92 on snmpguess where ``deviation`` has 0.84). Averaging
detectors whose errors differ is the oldest way to gain on all of them at once.

How the scores meet. Each member's score is on its own scale (a prototype distance, a
deviation logit), so raw averages would let one member dominate. Per task, each member's
score is standardised by that member's scores on the task's *support normals*: the
ensemble score of a row is the mean over members of ``(s_m(x) - mean_m) / std_m``. The
support normals are the one reference every task has (K may be 0) and they belong to the
task's own normal distribution, unlike the meta-train pool (NSL-KDD's train and test normals
differ); a row's score never depends on the other rows scored with it, so the ensemble
serves one row at a time like any detector.

Each member is built and meta-trained exactly as it would be alone (same name, hyperparameters
and seed, the global generators re-seeded before each), so the ensemble of a benchmark seed is
made of the very models that the benchmark's per-learner rows score (``tests/test_models.py``
checks that a one-member ensemble ranks rows as its member does). Training costs the sum of
the members'; scoring the sum of their scoring.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from metaad.device import seed_everything
from metaad.episodes.pool import Pool
from metaad.errors import ConfigError
from metaad.models.base import Adapted, Detector, FitConfig, History, StepCallback

#: The default members: the whole metric family, chosen as a family rather than by looking at
#: which learners did well on the benchmark's unseen types.
DEFAULT_MEMBERS: tuple[str, ...] = ("proto", "siamese", "triplet", "deviation")
#: Floor on a member's spread over the support normals, relative to its scale, so a member
#: whose normal scores are all equal cannot blow up the sum.
STD_FLOOR = 1e-6
#: Every meta-learner's tensor file name (``metaad.models.metric``, ``metaad.models.maml``).
WEIGHTS = "weights.pt"


class EnsembleAdapted:
    """The members adapted to one task, each with its support-normal mean and spread."""

    def __init__(self, parts: list[tuple[Adapted, float, float]]) -> None:
        self.parts = parts

    def score(self, X: np.ndarray) -> np.ndarray:
        total = np.zeros(len(X), dtype=np.float64)
        for adapted, mean, std in self.parts:
            total += (np.asarray(adapted.score(X), dtype=np.float64) - mean) / std
        return total / len(self.parts)


class MetricEnsemble(Detector):
    """Several meta-learners trained alike; scores averaged after per-task standardising.

    ``members`` names meta-learners of the registry (metric or MAML family, each at most
    once); ``member_hparams`` gives a member's own hyperparameters (``{"proto": {"memory":
    512}}``); ``seed`` is every member's seed. Counted with the meta-learners (family
    ``metric``, the family of its default members).
    """

    name: ClassVar[str] = "metric_ens"
    family: ClassVar[str] = "metric"
    persistable: ClassVar[bool] = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        *,
        members: Sequence[str] = DEFAULT_MEMBERS,
        member_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        from metaad.models.registry import create, family_of

        if isinstance(members, str):
            raise ConfigError(
                f"metric_ens: members must be a list of meta-learner names, got the string "
                f"{members!r} (write [{members}])"
            )
        members = [str(m) for m in members]
        bad = {k: v for k, v in (member_hparams or {}).items() if not isinstance(v, Mapping)}
        if bad:
            raise ConfigError(f"metric_ens: member_hparams values must be mappings, got {bad}")
        member_hparams = {str(k): dict(v) for k, v in (member_hparams or {}).items()}
        if not members:
            raise ConfigError("metric_ens: members must name at least one meta-learner")
        dup = sorted({m for m in members if members.count(m) > 1})
        if dup:
            raise ConfigError(f"metric_ens: members named more than once: {dup}")
        for m in members:
            fam = family_of(m)  # an unknown name raises, listing the valid ones
            if m == self.name or fam not in ("metric", "maml"):
                what = "the ensemble itself" if m == self.name else f"a {fam}"
                raise ConfigError(
                    f"metric_ens: member {m!r} is {what}; members must be meta-learners "
                    "(metric or MAML family)"
                )
        stray = sorted(set(member_hparams) - set(members))
        if stray:
            raise ConfigError(
                f"metric_ens: member_hparams for {stray}, which are not among the members {members}"
            )
        for m, hp in member_hparams.items():
            if "seed" in hp:
                raise ConfigError(
                    f"metric_ens: member_hparams.{m}.seed is not allowed; every member takes "
                    "the ensemble's seed"
                )
        super().__init__(
            input_shape, members=members, member_hparams=member_hparams, seed=int(seed)
        )
        self.members: list[Detector] = []
        for m in members:
            seed_everything(int(seed))
            try:
                det = create(
                    m, self.input_shape, **{**member_hparams.get(m, {}), "seed": int(seed)}
                )
            except ConfigError as exc:
                raise ConfigError(f"metric_ens: member {m!r}: {exc}") from exc
            self.members.append(det)

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        pool: Pool,
        cfg: FitConfig,
        *,
        val: Pool | None = None,
        callback: StepCallback | None = None,
        hooks: Any = None,
    ) -> History:
        """Meta-train each member in turn, as it would be trained alone.

        The history holds, per logged step, every member's values prefixed by its name
        (``proto.loss``) and their mean under the plain key (``loss``, ``val_auprc``) where
        every member logged it, which is what learning-curve plots read; the first member
        to diverge is the ensemble's ``diverged_at``.
        """
        if hooks is not None:
            raise ConfigError(
                "metric_ens trains its members one after another and does not take "
                "distributed-training hooks; train a single meta-learner with torchrun"
            )
        names = list(self.hparams["members"])
        by_step: dict[int, dict[str, float]] = {}
        hist = History()
        for name, det in zip(names, self.members, strict=True):
            seed_everything(cfg.seed)

            def relay(step: int, values: dict[str, float], _name: str = name) -> None:
                if callback is not None:
                    callback(step, {f"{_name}.{k}": v for k, v in values.items()})

            h = det.fit(pool, cfg, val=val, callback=relay)
            for rec in h.records:
                row = by_step.setdefault(int(rec["step"]), {})
                row.update({f"{name}.{k}": v for k, v in rec.items() if k != "step"})
            if hist.diverged_at is None and h.diverged_at is not None:
                hist.diverged_at = h.diverged_at
        for step in sorted(by_step):
            row = by_step[step]
            keys = {k.split(".", 1)[1] for k in row}
            mean = {
                k: float(np.mean([row[f"{n}.{k}"] for n in names]))
                for k in sorted(keys)
                if all(f"{n}.{k}" in row for n in names)
            }
            hist.log(step, **row, **mean)
        return hist

    # -- contract -------------------------------------------------------------------------
    def adapt(self, X_support: np.ndarray, y_support: np.ndarray) -> EnsembleAdapted:
        self.check_support(X_support, y_support)
        normals = np.asarray(X_support)[np.asarray(y_support) == 0]
        parts: list[tuple[Adapted, float, float]] = []
        for det in self.members:
            adapted = det.adapt(X_support, y_support)
            ref = np.asarray(adapted.score(normals), dtype=np.float64)
            mean = float(ref.mean())
            std = float(ref.std()) if len(ref) > 1 else 0.0
            std = max(std, STD_FLOOR * max(1.0, abs(mean)))
            parts.append((adapted, mean, std))
        return EnsembleAdapted(parts)

    def to(self, device: str | torch.device) -> MetricEnsemble:
        for det in self.members:
            det.to(device)  # type: ignore[attr-defined]
        return self

    # -- persistence ----------------------------------------------------------------------
    def _prefixes(self) -> list[str]:
        return [f"{i}.{name}/" for i, name in enumerate(self.hparams["members"])]

    def save(self, directory: str | Path) -> Path:
        """``config.json`` and one ``weights.pt``: every member's tensors, keys prefixed.

        One flat tensor file, like every other meta-learner's, so that loading reads tensors
        only (``weights_only=True``) and the bundle's weights digest covers all members.
        Each member writes its tensors through its own ``save``, so nothing about a member's
        format is repeated here.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.get_config(), indent=1))
        state: dict[str, torch.Tensor] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for prefix, det in zip(self._prefixes(), self.members, strict=True):
                sub = Path(tmp) / prefix.rstrip("/").replace(".", "_")
                det.save(sub)
                member = torch.load(sub / WEIGHTS, weights_only=True, map_location="cpu")
                state.update({prefix + k: v for k, v in member.items()})
        torch.save(state, directory / WEIGHTS)
        return directory

    def load_weights(self, directory: str | Path) -> None:
        directory = Path(directory)
        state = torch.load(directory / WEIGHTS, weights_only=True, map_location="cpu")
        held = sorted({k.split("/", 1)[0] for k in state})
        with tempfile.TemporaryDirectory() as tmp:
            for i, (prefix, det) in enumerate(zip(self._prefixes(), self.members, strict=True)):
                member = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if not member:
                    raise ConfigError(
                        f"{directory}: member {i} ({self.hparams['members'][i]!r}) has no "
                        f"weights in {WEIGHTS}, which holds members {held}"
                    )
                sub = Path(tmp) / str(i)
                sub.mkdir()
                torch.save(member, sub / WEIGHTS)
                det.load_weights(sub)  # type: ignore[attr-defined]


ENSEMBLES: dict[str, type[Detector]] = {MetricEnsemble.name: MetricEnsemble}
