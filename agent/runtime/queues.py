"""Where the runtime stopped reading one of the gateway's queues (serving/jsonl.py): a byte offset
kept in a small file, read once and then kept in memory."""
from __future__ import annotations

import os
from pathlib import Path


class OffsetFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset: int | None = None

    def get(self) -> int:
        if self._offset is None:
            try:
                self._offset = int(self.path.read_text())
            except (FileNotFoundError, ValueError):
                self._offset = 0
        return self._offset

    def set(self, offset: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.path)
        self._offset = offset
