"""Obtain ``data/`` on a fresh clone without a cloud remote.

``dvc pull`` is tried first when a remote is configured; when none answers and the data is
the built-in synthetic default, it is regenerated from ``params.yaml``. The generator is
byte-identical for the same parameters, so the regenerated file matches the md5 recorded
in ``data.dvc`` and ``dvc status`` stays clean; a mismatch is reported, not hidden.
"""

from __future__ import annotations

import hashlib
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
    has_remote = bool(_dvc(root, "remote", "list").stdout.strip()) if (root / ".dvc").exists() else False
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
    if (root / ".dvc").exists() and recorded_md5(root):
        st = _dvc(root, "status", "data.dvc")
        clean = "changed" not in st.stdout and st.returncode == 0
        if not clean:
            raise DataError(
                f"regenerated {table} (md5 {digest}) does not match data.dvc: the params in "
                "ingest differ from the ones that produced the tracked data\n" + st.stdout
            )
        return f"regenerated {table} from params.yaml (md5 {digest}); dvc status is clean"
    return f"regenerated {table} from params.yaml (md5 {digest})"
