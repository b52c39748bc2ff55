"""Obtain ``data/`` on a fresh clone without a cloud remote.

``dvc pull`` is tried first when a remote is configured; when none answers and the data is
the built-in synthetic default, it is regenerated from ``params.yaml``. The generator is
byte-identical for the same parameters, so the regenerated file matches the md5 recorded
in ``data.dvc`` and ``dvc status`` stays clean; a mismatch is reported, not hidden.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from metaad.config import OFFLINE_ENV, Params
from metaad.errors import DataError

log = logging.getLogger(__name__)


def _dvc_env() -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV}


def recorded_md5(root: Path) -> str | None:
    """The md5 of ``data/`` recorded in ``data.dvc`` (a directory hash ending in ``.dir``)."""
    f = root / "data.dvc"
    if not f.exists():
        return None
    outs = (yaml.safe_load(f.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records for ``path``, computed without touching the DVC cache.

    A file hashes to the md5 of its bytes; a directory to the md5 of the JSON list of its
    files' ``{"md5", "relpath"}`` sorted by path, plus ``.dir`` (``dvc_data``'s
    ``Tree.as_bytes``). ``dvc status`` cannot answer this on a fresh clone: with the
    recorded object absent from the cache it says "not in cache" whatever the content.
    """
    path = Path(path)

    def file_md5(f: Path) -> str:
        h = hashlib.md5()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    if path.is_file():
        return file_md5(path)
    files = sorted(
        (f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).parts
    )
    entries = [{"md5": file_md5(f), "relpath": f.relative_to(path).as_posix()} for f in files]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _dvc(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("dvc")
    if exe is None:
        raise DataError("the dvc command is not installed in this environment")
    return subprocess.run(
        [exe, *args], cwd=root, env=_dvc_env(), capture_output=True, text=True, timeout=timeout
    )


def pull_or_regenerate(params: Params, root: Path, remote: str | None = None) -> str:
    """Return a sentence saying how ``data/`` was obtained."""
    root = Path(root)
    table = root / params.ingest.output
    has_remote = (root / ".dvc").exists() and bool(_dvc(root, "remote", "list").stdout.strip())
    if has_remote:
        args = ["pull", "data.dvc"] + (["-r", remote] if remote else [])
        res = _dvc(root, *args)
        if res.returncode == 0 and table.exists():
            return f"pulled data/ from the DVC remote ({remote or 'default'})"
        log.warning("dvc pull failed (%s); trying to regenerate", res.stderr.strip()[-300:])
    if params.ingest.source != "synthetic":
        raise DataError(
            "data/ could not be pulled and the source is not the synthetic default; configure "
            "a reachable DVC remote (see README, 'Data') or run `metaad ingest`"
        )
    from metaad.data.synthetic import write

    ing = params.ingest
    table.parent.mkdir(parents=True, exist_ok=True)
    write(ing.domain, ing.n_rows, ing.seed, table, anomaly_rate=ing.anomaly_rate)
    digest = hashlib.md5(table.read_bytes()).hexdigest()
    recorded = recorded_md5(root) if (root / ".dvc").exists() else None
    if recorded:
        dvc_file = root / "data.dvc"
        tracked = root / (yaml.safe_load(dvc_file.read_text())["outs"][0]["path"])
        now = dvc_md5(tracked)
        if now != recorded:
            raise DataError(
                f"regenerated {table} (md5 {digest}) does not match data.dvc: {tracked} hashes "
                f"to {now}, data.dvc records {recorded}; the params in ingest differ from the "
                "ones that produced the tracked data"
            )
        # Same content as recorded, but a fresh clone's cache lacks it, so `dvc status`
        # would say "not in cache": store it, which leaves data.dvc unchanged.
        res = _dvc(root, "commit", "--force", "data.dvc")
        st = _dvc(root, "status", "--json", "data.dvc")
        if res.returncode != 0 or st.returncode != 0 or json.loads(st.stdout or "{}"):
            raise DataError(
                f"regenerated {table} matches data.dvc, but `dvc commit`/`dvc status` did "
                f"not come back clean:\n{res.stderr}{st.stdout}{st.stderr}"
            )
        return f"regenerated {table} from params.yaml (md5 {digest}); dvc status is clean"
    return f"regenerated {table} from params.yaml (md5 {digest})"
