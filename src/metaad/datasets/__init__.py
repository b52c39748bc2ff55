"""Real datasets: loaders with sha256-checked files, their protocols and their GX suites.

``load_dataset(name, path=None, download=False)`` returns a :class:`LoadedDataset` (canonical
table, categorical columns, the benchmark protocol, a report). The data are never copied into
the project: loaders read a local copy (``--path``, ``METAAD_DATA_DIR``, ``../shared/datasets``)
or download the originals into the user cache, checking every file's digest.
"""

from __future__ import annotations

from metaad.datasets.base import NORMALS_RANDOM, NORMALS_SOURCE, LoadedDataset, Protocol
from metaad.datasets.download import ChecksumMismatch, RemoteFile, fetch, locate, verify
from metaad.datasets.registry import DATASETS, MAIN, get_spec, list_datasets, load_dataset

__all__ = [
    "DATASETS",
    "MAIN",
    "NORMALS_RANDOM",
    "NORMALS_SOURCE",
    "ChecksumMismatch",
    "LoadedDataset",
    "Protocol",
    "RemoteFile",
    "fetch",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "locate",
    "verify",
]
