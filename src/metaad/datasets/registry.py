"""Datasets by name: one place that knows every loader, its files and what it is for.

As with methods (``metaad.models.registry``), an unknown name is an error that lists the valid
ones, so a typo in ``params.yaml`` or on the command line is fixed in one try.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaad.datasets import adbench, fraud, nsl_kdd, skab, tep
from metaad.datasets.base import LoadedDataset
from metaad.datasets.download import RemoteFile
from metaad.errors import ConfigError

Loader = Callable[..., LoadedDataset]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    loader: Loader
    description: str
    #: Whether the set has anomaly types (so the unseen-type benchmark applies).
    typed: bool = True


def _npz_loader(short: str) -> Loader:
    def load(path: str | Path | None = None, **kw: Any) -> LoadedDataset:
        return adbench.load_npz(short, path, **kw)

    return load


_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "nsl_kdd", nsl_kdd.FOLDER, nsl_kdd.FILES, nsl_kdd.load,
        "NSL-KDD network intrusions; unseen = the 18 attack types only in KDDTest+",
    ),
    DatasetSpec(
        "tep", tep.FOLDER, tep.FILES, tep.load,
        "Tennessee Eastman process, 21 faults; windows, time-matched normals",
    ),
    DatasetSpec(
        "skab", skab.FOLDER, skab.FILES, skab.load,
        "SKAB water-pump testbed, 16 fault scenarios; windows",
    ),
    DatasetSpec(
        "sparkov", fraud.FOLDER, (fraud.SPARKOV_FILE,), fraud.load_sparkov,
        "Sparkov card-fraud subset, fraud type = merchant category (dates not features)",
    ),
    DatasetSpec(
        "paysim", fraud.FOLDER, (fraud.PAYSIM_FILE,), fraud.load_paysim,
        "PaySim mobile-money sample, fraud types TRANSFER and CASH_OUT",
    ),
    DatasetSpec(
        "ulb", fraud.FOLDER, (fraud.ULB_FILE,), fraud.load_ulb,
        "ULB credit-card fraud (undersampled 492 + 492), no types", typed=False,
    ),
    DatasetSpec(
        "backdoor", adbench.BACKDOOR_FOLDER, (adbench.BACKDOOR_FILE,), adbench.load_backdoor,
        "UNSW-NB15 Backdoor vs normal (DevNet / ADBench 'backdoor'), binary", typed=False,
    ),
    *(
        DatasetSpec(
            f"adbench_{short}", adbench.FOLDER, (f,), _npz_loader(short),
            f"ADBench Classical {f.relpath}, binary", typed=False,
        )
        for short, f in adbench.ADBENCH_SETS.items()
    ),
)  # fmt: skip
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
#: The four sets of the unseen-type benchmark's headline (issue 4).
MAIN: tuple[str, ...] = ("nsl_kdd", "tep", "skab", "sparkov")


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def list_datasets() -> dict[str, str]:
    """Name to one-line description, in registry order."""
    return {s.name: s.description for s in _SPECS}


def load_dataset(
    name: str, path: str | Path | None = None, *, download: bool = False, check: bool = True
) -> LoadedDataset:
    """Load a dataset by name from ``path`` (or the usual places; see ``download.locate``)."""
    return get_spec(name).loader(path, download=download, check=check)


__all__ = ["DATASETS", "MAIN", "DatasetSpec", "get_spec", "list_datasets", "load_dataset"]
