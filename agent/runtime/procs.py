"""The runtime's process tree: one runtime per home, and no child left behind.

- `hold_home` takes `runtime/run.lock` (a second `bakehouse run` on the same home is refused).
- Children are recorded by process group in `runtime/pids.json`; `sweep` kills the groups a dead
  runtime left (a `kill -9` gives it no chance to), checking each process is one of ours first.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

log = logging.getLogger("bakehouse.runtime")
OURS = ("vllm", "serving.cpu_lora", "agent.runtime.worker", "EngineCore", "VLLM")


class RuntimeBusy(RuntimeError):
    """Another runtime holds this home."""


def _runtime_dir(home: Path) -> Path:
    d = Path(home) / "runtime"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def hold_home(home: Path):
    d = _runtime_dir(home)
    lock = FileLock(str(d / "run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            info = json.loads((d / "run.json").read_text())
            who = f" (pid {info['pid']}, since {info['started']})"
        except (OSError, ValueError, KeyError):
            who = ""
        raise RuntimeBusy(f"another `bakehouse run` is using {home}{who}; one runtime per home") from None
    try:
        (d / "run.json").write_text(json.dumps({"pid": os.getpid(), "started": time.strftime("%F %T")}))
        yield
    finally:
        with contextlib.suppress(OSError):
            (d / "run.json").unlink()
        lock.release()


def record(home: Path, role: str, pgid: int | list[int] | None) -> None:
    path = _runtime_dir(home) / "pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        pids = {}
    if pgid is None:
        pids.pop(role, None)
    else:
        pids[role] = pgid
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pids))
    os.replace(tmp, path)


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == pgid and p.pid != os.getpid():
                out.append(p)
    return out


def _ours(p: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        line = " ".join(p.cmdline()) + " " + p.name()
        return any(tag in line for tag in OURS)
    return False


def sweep(home: Path) -> list[int]:
    """Kill the process groups a previous runtime of this home left running; their pids."""
    path = _runtime_dir(home) / "pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    killed = []
    for role, groups in pids.items():
        members = [p for g in (groups if isinstance(groups, list) else [groups])
                   for p in group_members(int(g)) if _ours(p)]
        for p in members:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
        if members:
            log.warning("killed %d leftover %s process(es) of a previous runtime", len(members), role)
    path.unlink(missing_ok=True)
    return killed
