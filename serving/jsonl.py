"""Append-only JSON-lines queues from the gateway to the runtime (feedback, episodes).

serving/ does not know the memory store: the gateway appends one JSON object per line (one
`write` of a whole line in append mode, so concurrent writers never interleave) and the runtime
reads what is new from a byte offset it keeps.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def append_line(path: Path, record: dict) -> None:
    """Append `record` as one JSON line (the directory is created on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Whole records from byte `offset` on, and the offset after the last whole line (a line
    being written is left for the next read; an unreadable one is skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out, offset + end
