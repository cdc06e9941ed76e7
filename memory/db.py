"""Opening the one SQLite file safely for several writers (server, scheduler, CLI) at once."""
from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

from .errors import InvalidInput, StoreUnavailable

BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another's transaction before giving up


def connect(path: str | Path, busy_timeout: float = BUSY_TIMEOUT_S) -> Database:
    """A sqlite-utils Database in WAL mode, with a busy timeout and foreign keys on.

    The connection is in driver autocommit mode (isolation_level=None): every write goes
    through `transaction()`, which takes the write lock up front (BEGIN IMMEDIATE). A deferred
    BEGIN that later upgrades to a write lock can fail with SQLITE_BUSY at once, busy timeout
    or not, which is how concurrent writers lose rows.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode; a crash loses no commit
        db = Database(conn)
        _enable_wal(db, busy_timeout)
    except (sqlite3.Error, OSError) as e:
        raise StoreUnavailable(f"cannot open the memory DB {path}: {e}") from e
    return db


def _enable_wal(db: Database, busy_timeout: float) -> None:
    """Switch the file to WAL (persistent, so once per file). The switch needs an exclusive lock
    and SQLite reports a race for it as "database is locked" at once, ignoring the busy timeout:
    two processes opening a new DB together hit that, so retry until the timeout."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            if db.journal_mode != "wal":
                db.enable_wal()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One write transaction holding the write lock from its first statement; nests as a savepoint."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise StoreUnavailable(f"the memory DB stayed locked: {e}") from e
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    else:
        try:
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise


def utcnow() -> str:
    return iso(datetime.now(timezone.utc))


def iso(value: datetime | str) -> str:
    """One timestamp format everywhere (UTC, milliseconds, 'Z'), so text order is time order."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise InvalidInput(f"not an ISO 8601 date/time: {value!r}") from e
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
