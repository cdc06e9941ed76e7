"""Named, append-only schema migrations, each in its own transaction, tracked in `_migrations`.

Never edit a migration that has shipped: add `m00N_...` at the end instead.
"""
from __future__ import annotations

import sqlite3
from typing import Callable

from sqlite_utils import Database

from .db import transaction, utcnow
from .errors import MigrationError

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def applied(db: Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("SELECT name FROM _migrations ORDER BY id")]


def migrate(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the migrations this DB lacks, in order; returns the names applied now.

    Safe when several processes open a blank DB at once: each migration re-checks, under the
    write lock, whether another process applied it meanwhile.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    known = {m.__name__ for m in migrations}
    unknown = [name for name in applied(db) if name not in known]
    if unknown:
        raise MigrationError(
            f"the memory DB has migrations this bakehouse does not know ({', '.join(unknown)}): "
            "it was written by a newer version"
        )
    done_now = []
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
    )
    for m in migrations:
        with transaction(db):
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [m.__name__]).fetchone():
                continue
            try:
                m(db)
            except sqlite3.Error as e:
                raise MigrationError(f"migration {m.__name__} failed: {e}") from e
            db["_migrations"].insert({"name": m.__name__, "applied_at": utcnow()})
        done_now.append(m.__name__)
    return done_now


def _run(db: Database, sql: str) -> None:
    # One statement at a time: executescript() would COMMIT the migration's transaction.
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


@migration
def m001_memories(db: Database) -> None:
    """Tenants, memories (validity window, content hash, status) and the audit log."""
    _run(db, """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    ) STRICT;
    CREATE TABLE memories (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        kind TEXT NOT NULL
            CHECK (kind IN ('headline', 'instruction', 'episode_summary', 'persona', 'fact')),
        text TEXT NOT NULL CHECK (length(trim(text)) > 0),
        source TEXT,
        created_at TEXT NOT NULL,
        published_at TEXT,
        valid_from TEXT NOT NULL,       -- when it became true: published_at, else created_at
        valid_to TEXT,                  -- set when superseded; NULL while valid
        superseded_by INTEGER REFERENCES memories(id),
        content_hash TEXT NOT NULL,     -- sha256 of the normalised text
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'baked', 'forgotten')),
        meta TEXT                       -- JSON: title, link, guid of a headline, ...
    ) STRICT;
    -- De-duplication per tenant among live memories: a forgotten or superseded text may return.
    CREATE UNIQUE INDEX memories_dedup ON memories(tenant, content_hash)
        WHERE status != 'forgotten' AND valid_to IS NULL;
    CREATE INDEX memories_by_tenant ON memories(tenant, status, kind, valid_from);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        tenant TEXT,
        memory_id INTEGER,
        adapter_version TEXT,
        detail TEXT                     -- JSON
    ) STRICT;
    CREATE INDEX audit_by_memory ON audit(memory_id) WHERE memory_id IS NOT NULL;
    CREATE INDEX audit_by_tenant ON audit(tenant, id)
    """)


@migration
def m002_episodes(db: Database) -> None:
    """Raw conversation transcripts per tenant; summarised = a summary memory exists."""
    _run(db, """
    CREATE TABLE episodes (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        source TEXT,
        messages TEXT NOT NULL DEFAULT '[]',   -- JSON list of {"role", "content"}
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
        summary_memory_id INTEGER REFERENCES memories(id),
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        closed_at TEXT
    ) STRICT;
    CREATE INDEX episodes_by_tenant ON episodes(tenant, status)
    """)


@migration
def m003_bake_ledger(db: Database) -> None:
    """Adapter versions per tenant and the memories each one holds."""
    _run(db, """
    CREATE TABLE adapters (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        version TEXT NOT NULL,
        parent TEXT,                    -- version this layer was baked on top of
        layer INTEGER NOT NULL CHECK (layer >= 0),
        prompt_hash TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL CHECK (status IN ('published', 'rejected', 'rolled_back')),
        created_at TEXT NOT NULL,
        UNIQUE (tenant, version)
    ) STRICT;
    CREATE TABLE adapter_memories (
        adapter_id INTEGER NOT NULL REFERENCES adapters(id),
        memory_id INTEGER NOT NULL REFERENCES memories(id),
        PRIMARY KEY (adapter_id, memory_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX adapter_memories_by_memory ON adapter_memories(memory_id)
    """)


@migration
def m004_feeds(db: Database) -> None:
    """RSS/Atom sources per tenant, their conditional-GET state, and the entries already seen."""
    _run(db, """
    CREATE TABLE feeds (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        source TEXT NOT NULL,           -- http(s) URL or absolute file path
        title TEXT,
        etag TEXT,
        modified TEXT,
        added_at TEXT NOT NULL,
        last_polled_at TEXT,
        last_ok_at TEXT,
        last_error TEXT,
        UNIQUE (tenant, source)
    ) STRICT;
    CREATE TABLE feed_items (
        feed_id INTEGER NOT NULL REFERENCES feeds(id),
        key TEXT NOT NULL,              -- 'guid:...', 'link:...' or 'hash:...'
        memory_id INTEGER NOT NULL REFERENCES memories(id),
        PRIMARY KEY (feed_id, key)
    ) STRICT, WITHOUT ROWID
    """)


@migration
def m005_runtime_jobs(db: Database) -> None:
    """The runtime's bake jobs (a small state machine per row) and per-memory verification checks."""
    _run(db, """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        kind TEXT NOT NULL CHECK (kind IN ('bake', 'consolidate')),
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'running', 'paused', 'done', 'rejected', 'failed')),
        memory_ids TEXT NOT NULL DEFAULT '[]',   -- JSON: the memories this bake takes
        parent_version TEXT,                     -- the served version it is baked on (NULL: base)
        version TEXT,                            -- the version it published, if any
        reason TEXT,                             -- why it failed / was rejected / was requeued
        result TEXT,                             -- JSON: timings, gate figures, graduated ids
        pid INTEGER,                             -- the worker's process (group) while it runs
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        updated_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_state ON jobs(state, tenant);
    CREATE TABLE memory_checks (
        id INTEGER PRIMARY KEY,
        memory_id INTEGER NOT NULL REFERENCES memories(id),
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        purpose TEXT NOT NULL CHECK (purpose IN ('graduate', 'recheck', 'forgotten')),
        passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
        detail TEXT,                             -- JSON: questions, expected spans, answers
        at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX memory_checks_by_memory ON memory_checks(memory_id, id)
    """)


@migration
def m006_feed_interval(db: Database) -> None:
    """A feed's own polling interval (NULL: the runtime's --feed-minutes)."""
    _run(db, "ALTER TABLE feeds ADD COLUMN every_minutes REAL CHECK (every_minutes IS NULL OR every_minutes > 0)")


@migration
def m007_episode_conversations(db: Database) -> None:
    """Which client conversation an episode records (and from which of its messages on), and the
    runtime's failed attempts at summarising it."""
    _run(db, """
    ALTER TABLE episodes ADD COLUMN conversation_id TEXT;
    ALTER TABLE episodes ADD COLUMN conversation_start INTEGER NOT NULL DEFAULT 0;  -- index of its first message
    ALTER TABLE episodes ADD COLUMN summary_tries INTEGER NOT NULL DEFAULT 0;       -- failed summaries
    ALTER TABLE episodes ADD COLUMN summary_error TEXT;                             -- why the last one failed
    CREATE INDEX episodes_by_conversation ON episodes(tenant, conversation_id, id)
    """)


@migration
def m008_memories_fts(db: Database) -> None:
    """A full-text index of the memories' text (FTS5, Porter stemming), kept in step by triggers.

    The same layout as sqlite-utils' `enable_fts(["text"], create_triggers=True)` (so its
    `Table.search` works on it), written out here because `enable_fts` runs `executescript`, which
    would commit this migration's transaction half-way. A memory's text never changes after it is
    stored, so the update trigger fires on the text only (status and validity live in `memories`
    and are filtered there)."""
    _run(db, """
    CREATE VIRTUAL TABLE [memories_fts] USING FTS5 (
        [text],
        tokenize='porter unicode61 remove_diacritics 2',
        content=[memories]
    );
    INSERT INTO [memories_fts] (rowid, [text]) SELECT rowid, [text] FROM [memories];
    CREATE TRIGGER [memories_ai] AFTER INSERT ON [memories] BEGIN
      INSERT INTO [memories_fts] (rowid, [text]) VALUES (new.rowid, new.[text]);
    END;
    CREATE TRIGGER [memories_ad] AFTER DELETE ON [memories] BEGIN
      INSERT INTO [memories_fts] ([memories_fts], rowid, [text]) VALUES('delete', old.rowid, old.[text]);
    END;
    CREATE TRIGGER [memories_au] AFTER UPDATE OF [text] ON [memories] BEGIN
      INSERT INTO [memories_fts] ([memories_fts], rowid, [text]) VALUES('delete', old.rowid, old.[text]);
      INSERT INTO [memories_fts] (rowid, [text]) VALUES (new.rowid, new.[text]);
    END
    """)


@migration
def m009_hot_scores(db: Database) -> None:
    """Per memory, how well the served model answered its verification probes with the hot tier
    (graduation rule "hot": the weights must do at least as well), measured once, when it was
    first baked, by the served version named here."""
    _run(db, """
    CREATE TABLE hot_scores (
        memory_id INTEGER PRIMARY KEY REFERENCES memories(id),
        hits INTEGER NOT NULL CHECK (hits >= 0),
        asked INTEGER NOT NULL CHECK (asked >= hits),
        served TEXT,                             -- the version asked (NULL: the base)
        detail TEXT,                             -- JSON: questions, answers
        at TEXT NOT NULL
    ) STRICT
    """)


@migration
def m010_trust(db: Database) -> None:
    """Who a memory belongs to and whether it may reach prompts and weights.

    `end_user`: the end user a memory is scoped to (their episodes, summaries and feedback), NULL for
    the whole tenant. `admission`: admitted (prompts and bakes), proposed (a rule from feedback the
    operator has not approved), quarantined (reads as an order to the model), rejected (refused by
    the operator); `admission_reason` says why. A tenant's learning policy lives in `policies`."""
    _run(db, """
    ALTER TABLE memories ADD COLUMN end_user TEXT;
    ALTER TABLE memories ADD COLUMN admission TEXT NOT NULL DEFAULT 'admitted'
        CHECK (admission IN ('admitted', 'proposed', 'quarantined', 'rejected'));
    ALTER TABLE memories ADD COLUMN admission_reason TEXT;
    CREATE INDEX memories_by_user ON memories(tenant, end_user) WHERE end_user IS NOT NULL;
    ALTER TABLE episodes ADD COLUMN end_user TEXT;
    CREATE TABLE policies (
        tenant TEXT PRIMARY KEY REFERENCES tenants(name),
        learn_instructions TEXT NOT NULL CHECK (learn_instructions IN ('review', 'auto', 'off')),
        learn_episodes TEXT NOT NULL CHECK (learn_episodes IN ('user', 'tenant', 'off')),
        updated_at TEXT NOT NULL
    ) STRICT
    """)
