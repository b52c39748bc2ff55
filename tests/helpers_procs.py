"""Real servers and workers for tests: started on 127.0.0.1, stopped by process group.

Import: ``from helpers_procs import ...``. Every process is started in its own session
(``start_new_session=True``), so its process-group id is its pid and :func:`stop` ends it
and every child it forked (uvicorn workers, flow-run subprocesses, torchrun ranks) by that
id alone, never by name.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def import_flow(name: str) -> Any:
    """``flows/<name>.py`` as a module (the repo root is not a package path).

    The root is *appended* to ``sys.path``: the repo's ``mlflow/`` store folder must not
    shadow the installed ``mlflow`` package.
    """
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    return importlib.import_module(f"flows.{name}")


def healthy(url: str) -> bool:
    """Whether ``url/health`` answers 200 (MLflow's tracking and scoring servers both do)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group, stdout and stderr to ``log``."""
    fh = log.open("wb")
    try:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            env=dict(env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        fh.close()  # the child holds its own copy of the descriptor


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children first in breadth order.

    Needed because some launchers start their children in new sessions (torchrun's
    workers), where killing the launcher's process group does not reach them.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s process group and every descendant, by process id (a crash)."""
    below = descendants(proc.pid)
    _reap_group(proc.pid)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop(proc: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group (pgid == pid), then SIGKILL if it lingers; then
    SIGKILL whatever descendant escaped the group (a child in its own session)."""
    below = descendants(proc.pid)
    try:
        _stop_group(proc, grace_s)
    finally:
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is not None:
        _reap_group(proc.pid)
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """Children of a finished leader may outlive it (flow-run subprocesses): end them too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout_s: float = 120.0,
    ok: Callable[[int, str], bool] = lambda status, _body: status == 200,
) -> None:
    """Poll ``url`` until ``ok(status, body)``; fail with the log's tail if the process
    exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status, r.read().decode(errors="replace")):
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout_s}s:\n{tail(log)}")
        time.sleep(0.5)


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def copy_working_tree(dst: Path, run_cmd: Callable[..., str]) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, as they are now.

    What a deployment would run: no ``.venv``, no ``data/`` or ``artifacts/``, no
    ``mlflow/`` store; deleted files stay deleted.
    """
    listed = run_cmd(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    deleted = set(run_cmd(["git", "ls-files", "-z", "--deleted"], REPO).split("\0"))
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if rel in deleted or not src.is_file():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return dst
