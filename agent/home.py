"""The data home: one directory holding the model cache, the DB and the adapters."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "BAKEHOUSE_HOME"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home wins, then $BAKEHOUSE_HOME, then the user's data dir; created if missing."""
    raw = home or os.environ.get(ENV_HOME) or platformdirs.user_data_dir("bakehouse")
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
