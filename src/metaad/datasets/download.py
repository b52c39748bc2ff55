"""Local copies first, downloads second, and a sha256 check on every file either way.

Why check a local copy too: a truncated download, a file edited by hand or a different release
under the same name gives plausible but different numbers, and a benchmark cannot tell. Every
file a loader reads is therefore named with its sha256 (from ``PROVENANCE.md`` of the shared
copies, which records where each file came from), and a mismatch is refused with the file, the
expected and the actual digest, never "repaired" silently.

Where files are looked for, in order: the ``path`` a caller gives (a loader's ``--path``), the
folder named by ``METAAD_DATA_DIR``, the ``../shared/datasets`` folder beside a development
checkout, and the user cache (``~/.cache/metaad/datasets``). Only the cache is ever written to,
and only by :func:`fetch` when ``download=True``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metaad.errors import DataError

log = logging.getLogger(__name__)

#: Environment variable naming a folder that holds one sub-folder per dataset.
DATA_DIR_ENV = "METAAD_DATA_DIR"
#: Seconds before a download attempt gives up.
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class ChecksumMismatch(DataError):
    """A file's sha256 differs from the one recorded for it; the file is not used."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file "
            "is not the one the loader was written for (truncated, edited, or another release); "
            "delete it and download it again, or point --path at a verified copy"
        )
        self.path = Path(path)
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type[ChecksumMismatch], tuple[Path, str, str]]:
        return (type(self), (self.path, self.expected, self.actual))


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it lives in the dataset folder, its digest, its origin.

    ``relpath`` is relative to the dataset folder (``nsl_kdd/KDDTest+.txt`` lives at
    ``<root>/nsl_kdd/KDDTest+.txt``); ``url`` is the original public copy, pinned to a commit
    so that the digest stays valid.
    """

    relpath: str
    sha256: str
    url: str
    size: int | None = None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (memory stays flat for large files)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, expected: str) -> Path:
    """Return ``path`` when its sha256 is ``expected``; raise :class:`ChecksumMismatch` if not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatch(path, expected.lower(), actual)
    return path


def cache_dir() -> Path:
    """The user cache that downloads go to (``$XDG_CACHE_HOME/metaad/datasets``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metaad" / "datasets"


def _repo_shared() -> Path:
    """``../shared/datasets`` beside the checkout this package was installed from."""
    return Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def candidate_roots(path: str | Path | None = None) -> list[Path]:
    """Folders searched for dataset sub-folders, most specific first."""
    roots: list[Path] = []
    if path is not None:
        roots.append(Path(path))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots.append(Path(env))
    roots += [_repo_shared(), cache_dir()]
    return roots


def fetch(url: str, dest: str | Path, sha256: str, *, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` and check its sha256 before it takes the final name.

    The bytes go to a temporary file next to ``dest`` first, so an interrupted download or a
    checksum failure never leaves a file that a later run would pick up. ``file://`` URLs
    work as well (mirrors on a shared drive, and the tests).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(f"could not download {url}: {exc}") from exc
        actual = sha256_file(tmp)
        if actual != sha256.lower():
            raise ChecksumMismatch(Path(url), sha256.lower(), actual)
        tmp.replace(dest)
        log.info("downloaded %s -> %s (sha256 ok)", url, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def locate(
    folder: str,
    files: Sequence[RemoteFile],
    *,
    path: str | Path | None = None,
    download: bool = False,
    check: bool = True,
) -> Path:
    """The dataset folder holding every one of ``files``, verified.

    ``path`` may name the dataset folder itself (``.../nsl_kdd``) or a folder above it
    (``.../datasets``). The first candidate that holds every file wins; each of its files is
    checked against its sha256 (``check=False`` skips that for a user's deliberately modified
    copy, and says so in the log). With ``download=True`` and no local copy, the files are
    fetched into the user cache.

    Raises:
        ChecksumMismatch: a file is present but its digest differs.
        DataError: no candidate holds the files and ``download`` is off (the message lists
            where it looked and how to fix it).
    """
    tried: list[str] = []
    for root in candidate_roots(path):
        for base in (root, root / folder):
            if all((base / f.relpath).is_file() for f in files):
                if check:
                    for f in files:
                        verify(base / f.relpath, f.sha256)
                else:
                    log.warning("checksums of %s not checked (check=False)", base)
                return base
            tried.append(str(base))
        if path is not None and root == Path(path):
            present = [f.relpath for f in files if (root / f.relpath).is_file()]
            present += [f.relpath for f in files if (root / folder / f.relpath).is_file()]
            if present:  # the user pointed at a partial copy: say which files are missing
                missing = [f.relpath for f in files if f.relpath not in present]
                raise DataError(f"{path} holds only part of dataset {folder!r}: missing {missing}")
    if not download:
        raise DataError(
            f"dataset {folder!r} not found; looked in {tried}. Pass --path to a local copy, set "
            f"{DATA_DIR_ENV}, or allow downloading (--download) from the original sources"
        )
    dest = cache_dir() / folder
    for f in files:
        target = dest / f.relpath
        if target.is_file() and sha256_file(target) == f.sha256:
            continue
        fetch(f.url, target, f.sha256)
    return dest


__all__ = [
    "DATA_DIR_ENV",
    "ChecksumMismatch",
    "RemoteFile",
    "cache_dir",
    "candidate_roots",
    "fetch",
    "locate",
    "sha256_file",
    "verify",
]
