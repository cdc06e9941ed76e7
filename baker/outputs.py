"""Safe replacement of output directories: a command replaces only an output bakehouse wrote.

Every directory a writer (bake, stack, scale, pursue, the default model) puts at its output path
carries a marker, `.bakehouse-output.json`, naming its kind and the top-level entries it wrote.
Before any work and again right before the final rename, `check_output` decides:

- nothing there, or an empty directory: write;
- a bakehouse output (the marker, and nothing at the top level it does not list; or an output
  written before markers existed: `bake.json` or `pursuit.json` beside known adapter files only)
  of the same kind: replace it; of another kind: only with `force`;
- anything else (a file, a symlink, a folder holding anything bakehouse did not write): refuse,
  whatever `force` says.

Writers build their output in a temporary sibling `.NAME.tmp-PID-*` and rename it into place; the
previous output is moved aside to `.NAME.old-PID` first and removed last. `sweep_leftovers`
removes such siblings (and Prompt Pursuit's `.NAME.pursuit-PID`) left by a process that is gone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import BakeError, OutputError

MARKER = ".bakehouse-output.json"
# What bakehouse wrote into an output before markers existed (PEFT's save_pretrained adds README.md).
LEGACY_FILES = frozenset({"adapter_model.safetensors", "adapter_config.json", "bake.json",
                          "trajectories.jsonl", "checkpoints", "layers", "pursuit.json", "README.md"})
_LEFTOVER_KINDS = ("tmp", "old", "pursuit")


def _names(names) -> str:
    shown = [n if n.isprintable() else repr(n) for n in sorted(names)[:5]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def output_kind(dst: str | os.PathLike) -> str | None:
    """The kind of the bakehouse output at `dst`, or None if it is missing or an empty directory.
    Raises OutputError if something else is there."""
    dst = Path(dst)
    if dst.is_symlink():
        raise OutputError(f"refusing to replace {dst}: it is a symbolic link, not a bakehouse output")
    if not dst.exists():
        return None
    if not dst.is_dir():
        raise OutputError(f"output path {dst} exists and is not a directory")
    try:
        entries = set(os.listdir(dst))
    except OSError as e:
        raise OutputError(f"cannot read output directory {dst}: {e}") from e
    if not entries:
        return None
    if MARKER in entries:
        try:
            marker = json.loads((dst / MARKER).read_text())
            kind, files = str(marker["kind"]), set(marker["files"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OutputError(f"refusing to replace {dst}: its {MARKER} is unreadable ({e})") from e
        foreign = entries - files - {MARKER}
    elif entries & {"bake.json", "pursuit.json"}:  # written before markers existed
        kind, foreign = _legacy_kind(dst, entries), entries - LEGACY_FILES
    else:
        kind, foreign = None, entries
    if foreign:
        raise OutputError(f"refusing to replace {dst}: it is not a bakehouse output "
                          f"(it holds {_names(foreign)})")
    return kind


def _legacy_kind(dst: Path, entries: set[str]) -> str:
    if "pursuit.json" in entries:
        return "prompt-pursuit"
    try:
        return str(json.loads((dst / "bake.json").read_text()).get("kind", "bake"))
    except (OSError, ValueError, AttributeError):
        return "bake"


def check_output(dst: str | os.PathLike, kind: str, force: bool = False) -> None:
    """Raise OutputError unless a `kind` output may be written at `dst` (see the module doc)."""
    found = output_kind(dst)
    if found is not None and found != kind and not force:
        raise OutputError(f"{dst} is a bakehouse {found} output; pass --force to replace it")


def prepare_output(dst: str | os.PathLike, kind: str, force: bool = False) -> Path:
    """The start of every writer, before any expensive work: create the parent, check it is
    writable and that `dst` may be replaced, and sweep leftovers of dead writers beside it."""
    dst = Path(dst)
    parent = dst.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BakeError(f"cannot create output directory {parent}: {e}") from e
    if not os.access(parent, os.W_OK):
        raise BakeError(f"output directory {parent} is not writable")
    check_output(dst, kind, force)
    sweep_leftovers(dst)
    return dst


def temp_dir(dst: str | os.PathLike) -> Path:
    """A fresh temporary sibling of `dst` to build the output in (`.NAME.tmp-PID-*`)."""
    dst = Path(dst)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{os.getpid()}-", dir=dst.parent))


def write_marker(src: str | os.PathLike, kind: str) -> None:
    src = Path(src)
    files = sorted(n for n in os.listdir(src) if n != MARKER)
    record = {"kind": kind, "files": files, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (src / MARKER).write_text(json.dumps(record, indent=2))


def replace_output(src_tmp: str | os.PathLike, dst: str | os.PathLike, kind: str, force: bool = False) -> Path:
    """Mark the finished `src_tmp` as a `kind` output, check `dst` again, then move `src_tmp` into
    place; a previous output is moved aside first and removed only after the rename."""
    src, dst = Path(src_tmp), Path(dst)
    write_marker(src, kind)
    check_output(dst, kind, force)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # ours, from an earlier call in this process
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)  # put the previous output back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def sweep_leftovers(dst: str | os.PathLike) -> list[Path]:
    """Remove the siblings `.NAME.tmp-PID-*`, `.NAME.old-PID`, `.NAME.pursuit-PID` of `dst` whose
    process is gone (and `.NAME.tmp-XXXXXXXX` from before the pid was part of the name).
    Returns what was removed."""
    dst = Path(dst)
    kinds = "|".join(_LEFTOVER_KINDS)
    pattern = re.compile(rf"^\.{re.escape(dst.name)}\.({kinds})-(?:(\d+)(?:-[a-z0-9_]{{8}})?|[a-z0-9_]{{8}})$")
    removed = []
    try:
        siblings = list(dst.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pattern.match(p.name)
        if m is None:
            continue
        kind, pid = m.group(1), m.group(2)
        if (pid is None and kind != "tmp") or (pid is not None and _alive(int(pid))):
            continue  # only tmp dirs were ever named without the pid; a live writer's are its own
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
