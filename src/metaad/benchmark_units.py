"""Finished (seed, method) units of a benchmark, kept on disk so a stopped run can resume.

A benchmark of one dataset is a loop over seeds and methods; one unit (a method trained with
one seed and scored on that seed's frozen episodes) takes from seconds to an hour (the
boosted classifiers refit for every episode: ``hgb_sup`` on NSL-KDD at 20 episodes ran
8,760 s). A killed process, a machine handed back or a session that ends used to throw all
of it away. Each unit is therefore written as soon as it is scored, and ``resume=True``
takes it back instead of training again.

A unit is taken back only when it is the unit the run would compute: the same dataset, the
same frozen episode file (its sha256), the same training settings of that method and seed,
the same K and episodes per seed, the same kind of device (a GPU's bf16 scores are not a
CPU's) and the same metaad version. Anything else is refused with
the difference named, never silently mixed: numbers of two configurations in one table are
worse than a rerun. A unit whose files are incomplete (the process died while writing) is
not a unit and is computed again; the marker (``.json``) is written last, by rename.

Failed units are not stored, so a resumed run tries them again.

The code is recorded, not checked: every unit stores the sha256 of metaad's own source files
and the git commit when there is one (:func:`code_identity`), and a unit taken back from
other code is reported with a note naming both (``computed by other code: commit ...``),
beside the method in ``results.md`` and ``results.json``. Refusing it instead would be
stricter than ``benchmark-merge``, which joins runs of different commits on the same frozen
episodes; a run resumed across a commit (the catboost jobs of the README ran across two)
then says so itself. A unit written before this record existed gets a note that its code is
unknown.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from metaad import __version__
from metaad.config import TrainConfig
from metaad.errors import ConfigError, DataError


@dataclass
class Unit:
    """One method, one seed: its per-episode rows and what the run records beside them."""

    per: pd.DataFrame  # as evaluate_detector returned it (reps numbered within the seed)
    fit_s: float
    eval_s: float
    val_auprc: float | None = None
    notes: list[str] = field(default_factory=list)


def fingerprint(
    *,
    dataset: str,
    episodes_sha256: str,
    train: TrainConfig,
    shots: tuple[int, ...] | list[int],
    n_episodes: int,
) -> dict[str, Any]:
    """The settings a unit's numbers depend on, in the JSON form they are stored in."""
    from metaad.device import resolve_device

    fp = {
        "dataset": dataset,
        "episodes_sha256": episodes_sha256,
        "train": dataclasses.asdict(train),
        "shots": [int(k) for k in shots],
        "n_episodes": int(n_episodes),
        "device": resolve_device(train.device).type,
        "version": __version__,
    }
    return json.loads(json.dumps(fp))  # tuples -> lists, as they come back from disk


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str | None]:
    """The sha256 of metaad's source files (path and bytes, sorted) and the git commit of the
    checkout they sit in (``None`` for an installed wheel, or where git is missing)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    commit = None
    try:  # only a checkout that tracks these files names their commit (not a venv in a repo)
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if tracked.returncode == 0:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            )
            commit = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"source_sha256": digest.hexdigest(), "git_commit": commit}


def _code_note(seed: int, stored: dict[str, Any] | None) -> str | None:
    """A note for a unit taken back from other code, ``None`` when the code is the same."""
    now = code_identity()
    if stored is None:
        return f"seed {seed}: taken back from a unit that does not record its code"
    if stored.get("source_sha256") == now["source_sha256"]:
        return None

    def show(c: dict[str, Any]) -> str:
        commit = c.get("git_commit")
        sha = str(c.get("source_sha256", ""))[:12]
        return f"commit {commit[:9]}, source {sha}" if commit else f"source {sha}"

    return f"seed {seed}: computed by other code ({show(stored)}; this run: {show(now)})"


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in current:
                out.append(
                    f"{name}: {stored.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}"
                )
            else:
                out.extend(_differences(stored[key], current[key], name))
        return out
    return [] if stored == current else [f"{prefix}: {stored!r} -> {current!r}"]


class UnitStore:
    """``<dataset out dir>/units/seed<S>__<method>.{parquet,json}``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _paths(self, seed: int, method: str) -> tuple[Path, Path]:
        stem = self.dir / f"seed{int(seed)}__{method}"
        return stem.with_suffix(".parquet"), stem.with_suffix(".json")

    def save(self, seed: int, method: str, fp: dict[str, Any], unit: Unit) -> None:
        """Write the rows, then the marker; each by rename, so a reader sees all or nothing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rows, meta = self._paths(seed, method)
        tmp_rows = rows.with_name(rows.name + ".tmp")
        unit.per.to_parquet(tmp_rows, index=False)
        os.replace(tmp_rows, rows)
        record = {
            "method": method,
            "seed": int(seed),
            "fingerprint": fp,
            "fit_s": unit.fit_s,
            "eval_s": unit.eval_s,
            "val_auprc": unit.val_auprc,
            "notes": list(unit.notes),
            "rows": len(unit.per),
            "code": code_identity(),
        }
        tmp_meta = meta.with_name(meta.name + ".tmp")
        tmp_meta.write_text(json.dumps(record, indent=1))
        os.replace(tmp_meta, meta)

    def load(self, seed: int, method: str, fp: dict[str, Any]) -> Unit | None:
        """The stored unit, ``None`` when there is none (or only part of one).

        Raises :class:`ConfigError` when a complete unit was computed under other settings,
        naming each difference, and :class:`DataError` when its rows are not what its marker
        says they are.
        """
        rows, meta = self._paths(seed, method)
        if not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{meta}: not a readable unit marker ({exc}); delete it to rerun"
            ) from exc
        diffs = _differences(record.get("fingerprint", {}), fp)
        if diffs:
            raise ConfigError(
                f"cannot resume {method} seed {seed}: {meta} was computed with other settings "
                f"({'; '.join(diffs)}). Use another --out, or run without --resume to "
                "recompute it."
            )
        if not rows.is_file():
            raise DataError(f"{meta} has no rows file {rows.name}; delete the marker to rerun")
        per = pd.read_parquet(rows)
        if len(per) != record["rows"] or set(per["method"]) != {method}:
            raise DataError(
                f"{rows}: {len(per)} rows of {sorted(set(per['method']))}, but its marker says "
                f"{record['rows']} rows of {method}; delete both files to rerun"
            )
        notes = list(record.get("notes", []))
        code_note = _code_note(seed, record.get("code"))
        if code_note is not None:
            notes.append(code_note)
        return Unit(
            per=per,
            fit_s=float(record["fit_s"]),
            eval_s=float(record["eval_s"]),
            val_auprc=record.get("val_auprc"),
            notes=notes,
        )
