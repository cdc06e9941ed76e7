"""MemoryStore: tenants, memories, episodes, the bake ledger and the audit log in one SQLite file.

Nothing is ever deleted. A newer memory supersedes an older one (the old one stays, with its
validity window closed); `forget` marks a memory forgotten, keeps the audit trail, and the
adapter versions that hold it show up as needing a rebake.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import compose as _compose
from .db import connect, iso, transaction, utcnow
from .errors import (
    InvalidInput,
    StateError,
    StoreUnavailable,
    UnknownAdapter,
    UnknownEpisode,
    UnknownMemory,
    UnknownTenant,
)
from .jobs import JobStore
from .migrations import migrate
from .trust import TrustStore

DB_FILENAME = "bakehouse.db"
DEFAULT_TENANT = "default"
KINDS = ("headline", "instruction", "episode_summary", "persona", "fact")
STATUSES = ("pending", "baked", "forgotten")
ADMISSIONS = ("admitted", "proposed", "quarantined", "rejected")
MAX_USER_CHARS = 200
ADAPTER_STATUSES = ("published", "rejected", "rolled_back")
MAX_TEXT_CHARS = 100_000

# The same rule as serving.registry's (tests/test_serving_registry.py checks they agree): a tenant
# the store accepts can always be served.
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def content_hash(text: str) -> str:
    """sha256 of the text normalised for de-duplication: NFKC, case-folded, whitespace collapsed,
    trailing full stops dropped ("Paris  is nice." == "paris is nice")."""
    norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(".")
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidInput(
            f"invalid tenant name {tenant!r}: use 1-63 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant


def check_user(user: str | None) -> str | None:
    """An end user's name (the OpenAI `user` field): any non-blank string up to 200 characters."""
    if user is not None and (not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_CHARS):
        raise InvalidInput(f"invalid end user {user!r}: a non-blank string of at most {MAX_USER_CHARS} characters")
    return user


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput(f"invalid kind {kind!r}: choose one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class Memory:
    id: int
    tenant: str
    kind: str
    text: str
    source: str | None
    created_at: str
    published_at: str | None
    valid_from: str
    valid_to: str | None  # set when superseded
    superseded_by: int | None
    content_hash: str
    status: str  # pending | baked | forgotten
    meta: dict = field(default_factory=dict)
    adapter_versions: tuple[str, ...] = ()  # every ledger version that holds it
    created: bool = field(default=True, compare=False)  # False: add() found it already stored
    end_user: str | None = None  # the end user it belongs to (their hot tier only, never baked); None: the tenant
    admission: str = "admitted"  # admitted | proposed | quarantined | rejected (memory.trust)
    admission_reason: str | None = None

    @property
    def admitted(self) -> bool:
        """May reach prompts (and, unless scoped to one user, the weights)."""
        return self.admission == "admitted"

    @property
    def valid(self) -> bool:
        """Still true and not forgotten: what prompts are made of."""
        return self.valid_to is None and self.status != "forgotten"


@dataclass(frozen=True)
class Episode:
    id: int
    tenant: str
    source: str | None
    messages: list[dict]
    status: str  # open | closed
    summary_memory_id: int | None
    started_at: str
    updated_at: str
    closed_at: str | None
    conversation_id: str | None = None  # the client's conversation it records
    conversation_start: int = 0  # index in that conversation of the episode's first message
    summary_tries: int = 0  # failed attempts at summarising it
    summary_error: str | None = None  # why the last one failed
    end_user: str | None = None  # whose conversation it is (None: not named)

    @property
    def summarised(self) -> bool:
        return self.summary_memory_id is not None


@dataclass(frozen=True)
class Adapter:
    id: int
    tenant: str
    version: str
    parent: str | None
    layer: int
    prompt_hash: str
    metrics: dict
    status: str  # published | rejected | rolled_back
    created_at: str
    memory_ids: tuple[int, ...]
    stale_memory_ids: tuple[int, ...]  # held but since forgotten or superseded

    @property
    def needs_rebake(self) -> bool:
        return self.status == "published" and bool(self.stale_memory_ids)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    tenant: str | None
    memory_id: int | None
    adapter_version: str | None
    detail: dict


_MEMORY_SELECT = """
SELECT m.*, (
    SELECT json_group_array(a.version) FROM adapter_memories am
    JOIN adapters a ON a.id = am.adapter_id WHERE am.memory_id = m.id
) AS adapter_versions
FROM memories m
"""

_ADAPTER_SELECT = """
SELECT a.*,
    (SELECT json_group_array(memory_id) FROM adapter_memories WHERE adapter_id = a.id)
        AS memory_ids,
    (SELECT json_group_array(am.memory_id) FROM adapter_memories am
        JOIN memories m ON m.id = am.memory_id
        WHERE am.adapter_id = a.id AND (m.status = 'forgotten' OR m.valid_to IS NOT NULL))
        AS stale_memory_ids
FROM adapters a
"""


class MemoryStore:
    """The memory DB. `actor` names who makes the changes in the audit log ("cli", "agent", ...).

    Several MemoryStore instances, in several processes, may write to one file at once.

    Example:
        store = MemoryStore(home / "bakehouse.db", actor="agent")
        m = store.add("alice", "fact", "Alice's cat is called Miso.", source="chat")
        store.forget(m.id, reason="user asked")
    """

    def __init__(self, path: str | Path, *, actor: str = "api", busy_timeout: float = 30.0):
        self.path = Path(path)
        self.actor = actor
        self.db = connect(self.path, busy_timeout=busy_timeout)
        try:
            migrate(self.db)
        except sqlite3.DatabaseError as e:  # e.g. "file is not a database"
            self.db.close()
            raise StoreUnavailable(f"cannot use the memory DB {self.path}: {e}") from e
        except BaseException:
            self.db.close()
            raise
        self.jobs = JobStore(self)
        self.trust = TrustStore(self)

    @classmethod
    def in_home(cls, home: str | Path, **kwargs) -> MemoryStore:
        """The store of a data home: `home / "bakehouse.db"`."""
        return cls(Path(home) / DB_FILENAME, **kwargs)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transaction(self):
        """A write transaction (write lock taken at once); nested calls become savepoints."""
        return transaction(self.db)

    # -- tenants -------------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM tenants ORDER BY name")]

    def require_tenant(self, tenant: str) -> str:
        check_tenant(tenant)
        if not self.db.execute("SELECT 1 FROM tenants WHERE name = ?", [tenant]).fetchone():
            raise UnknownTenant(tenant)
        return tenant

    def _ensure_tenant(self, tenant: str, now: str) -> None:
        check_tenant(tenant)
        cur = self.db.execute(
            "INSERT INTO tenants (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [tenant, now],
        )
        if cur.rowcount:
            self._audit("tenant.add", tenant=tenant, at=now)

    # -- memories ------------------------------------------------------------------------------

    def add(
        self,
        tenant: str,
        kind: str,
        text: str,
        *,
        source: str | None = None,
        published_at: datetime | str | None = None,
        meta: dict | None = None,
        end_user: str | None = None,
        admission: str = "admitted",
        admission_reason: str | None = None,
    ) -> Memory:
        """Store a memory (the tenant is created on first use). If an identical live memory
        (same normalised text) already exists for this tenant, return it with `created=False`.
        `end_user`: scoped to that end user; `admission`: see memory.trust."""
        return self.add_many(
            tenant, [dict(kind=kind, text=text, source=source, published_at=published_at, meta=meta,
                          end_user=end_user, admission=admission, admission_reason=admission_reason)]
        )[0]

    def add_many(self, tenant: str, items: Iterable[dict]) -> list[Memory]:
        """Several `add`s in one transaction: all are stored, or none (e.g. one invalid item)."""
        now = utcnow()
        rows = [self._memory_row(tenant, now, **item) for item in items]
        with self.transaction():
            self._ensure_tenant(tenant, now)
            inserted = [self._insert(row) for row in rows]
        return self._get_many([i for i, _ in inserted], created=[c for _, c in inserted])

    def _memory_row(
        self,
        tenant: str,
        now: str,
        *,
        kind: str,
        text: str,
        source: str | None = None,
        published_at: datetime | str | None = None,
        meta: dict | None = None,
        end_user: str | None = None,
        admission: str = "admitted",
        admission_reason: str | None = None,
    ) -> dict:
        check_tenant(tenant)
        check_kind(kind)
        check_user(end_user)
        if admission not in ADMISSIONS:
            raise InvalidInput(f"invalid admission {admission!r}: choose one of {', '.join(ADMISSIONS)}")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("a memory needs a non-empty text")
        text = text.strip()
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"memory text too long: {len(text)} characters > {MAX_TEXT_CHARS}")
        published = iso(published_at) if published_at is not None else None
        return {
            "tenant": tenant,
            "kind": kind,
            "text": text,
            "source": source,
            "created_at": now,
            "published_at": published,
            "valid_from": published or now,
            "content_hash": content_hash(text),
            "status": "pending",
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else None,
            "end_user": end_user,
            "admission": admission,
            "admission_reason": admission_reason[:500] if admission_reason else None,
        }

    def _insert(self, row: dict) -> tuple[int, bool]:
        """Insert one memory row (in the caller's transaction); (id, created)."""
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        hit = self.db.execute(
            f"INSERT INTO memories ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING id",
            list(row.values()),
        ).fetchone()
        if hit is None:  # the live duplicate (memories_dedup) wins
            (existing,) = self.db.execute(
                "SELECT id FROM memories WHERE tenant = ? AND content_hash = ? "
                "AND status != 'forgotten' AND valid_to IS NULL",
                [row["tenant"], row["content_hash"]],
            ).fetchone()
            return existing, False
        self._audit(
            "memory.add",
            tenant=row["tenant"],
            memory_id=hit[0],
            at=row["created_at"],
            kind=row["kind"],
            source=row["source"],
            end_user=row["end_user"],
            admission=None if row["admission"] == "admitted" else row["admission"],
            reason=row["admission_reason"],
        )
        return hit[0], True

    def get(self, memory_id: int) -> Memory:
        return self._get_many([memory_id])[0]

    def _get_many(self, wanted: Sequence[int], created: Sequence[bool] = ()) -> list[Memory]:
        rows = {
            r["id"]: r
            for r in self.db.query(
                _MEMORY_SELECT + " WHERE m.id IN (SELECT value FROM json_each(?))",
                [json.dumps(wanted)],
            )
        }
        out = []
        for n, memory_id in enumerate(wanted):
            if memory_id not in rows:
                raise UnknownMemory(memory_id)
            m = _memory(rows[memory_id])
            out.append(dataclasses.replace(m, created=created[n]) if created else m)
        return out

    def memories(
        self,
        tenant: str,
        *,
        status: str | Sequence[str] | None = None,
        kind: str | Sequence[str] | None = None,
        valid_only: bool = False,
        limit: int | None = None,
        admission: str | Sequence[str] | None = "admitted",
        users: str | bool = False,
    ) -> list[Memory]:
        """A tenant's memories, newest first. status None = pending and baked (not forgotten);
        `admission` None = any; `users`: False = the tenant's own (no end user's), a name = the
        tenant's and that end user's, True = everyone's."""
        self.require_tenant(tenant)
        statuses = _as_list(status, STATUSES, "status") or ["pending", "baked"]
        kinds = _as_list(kind, KINDS, "kind") or list(KINDS)
        admissions = _as_list(admission, ADMISSIONS, "admission") or list(ADMISSIONS)
        scope, scope_args = _scope_sql(users, "m.")
        sql = (
            _MEMORY_SELECT
            + " WHERE m.tenant = ? AND m.status IN (SELECT value FROM json_each(?))"
            " AND m.kind IN (SELECT value FROM json_each(?))"
            " AND m.admission IN (SELECT value FROM json_each(?))" + scope
            + (" AND m.valid_to IS NULL" if valid_only else "")
            + " ORDER BY m.valid_from DESC, m.id DESC"
            + (" LIMIT ?" if limit is not None else "")
        )
        params: list[Any] = [tenant, json.dumps(statuses), json.dumps(kinds), json.dumps(admissions), *scope_args]
        if limit is not None:
            params.append(limit)
        return [_memory(r) for r in self.db.query(sql, params)]

    def pending(self, tenant: str, kinds: Sequence[str] | None = None) -> list[Memory]:
        """What the next bake should take: valid memories not yet in a published adapter."""
        return self.memories(tenant, status="pending", kind=kinds, valid_only=True)

    def supersede(
        self,
        old_id: int,
        text: str,
        *,
        kind: str | None = None,
        source: str | None = None,
        published_at: datetime | str | None = None,
        meta: dict | None = None,
    ) -> Memory:
        """Store a newer memory that replaces `old_id` (same tenant; same kind unless given).
        The old one stays, marked no longer valid from now on; adapters holding it need a rebake."""
        now = utcnow()
        with self.transaction():
            old = self.get(old_id)
            if old.status == "forgotten":
                raise StateError(f"memory {old_id} is forgotten; remember the new text instead")
            if old.valid_to is not None:
                raise StateError(
                    f"memory {old_id} was already superseded by {old.superseded_by}; "
                    f"supersede {old.superseded_by} instead"
                )
            row = self._memory_row(
                old.tenant, now, kind=kind or old.kind, text=text, source=source,
                published_at=published_at, meta=meta, end_user=old.end_user,
            )
            if row["content_hash"] == old.content_hash:
                raise StateError(f"memory {old_id} already says that")
            # Close the old window first so the new text can't collide with it in memories_dedup.
            self.db.execute(
                "UPDATE memories SET valid_to = ? WHERE id = ?", [now, old_id]
            )
            new_id, created = self._insert(row)
            self.db.execute("UPDATE memories SET superseded_by = ? WHERE id = ?", [new_id, old_id])
            self._audit(
                "memory.supersede", tenant=old.tenant, memory_id=old_id, at=now,
                superseded_by=new_id,
            )
        return self._get_many([new_id], created=[created])[0]

    def forget(self, memory_id: int, reason: str | None = None) -> list[str]:
        """Mark a memory forgotten: no later prompt contains it; the audit row stays.
        Returns the published adapter versions that hold it and so need a rebake."""
        now = utcnow()
        with self.transaction():
            m = self.get(memory_id)
            if m.status == "forgotten":
                raise StateError(f"memory {memory_id} is already forgotten")
            self.db.execute("UPDATE memories SET status = 'forgotten' WHERE id = ?", [memory_id])
            rebake = [
                r["version"]
                for r in self.db.query(
                    "SELECT a.version FROM adapter_memories am JOIN adapters a ON a.id = am.adapter_id"
                    " WHERE am.memory_id = ? AND a.status = 'published' ORDER BY a.id",
                    [memory_id],
                )
            ]
            self._audit(
                "memory.forget", tenant=m.tenant, memory_id=memory_id, at=now,
                reason=reason, previous_status=m.status, needs_rebake=rebake,
            )
        return rebake

    # -- audit ---------------------------------------------------------------------------------

    def _audit(
        self,
        action: str,
        *,
        tenant: str | None = None,
        memory_id: int | None = None,
        adapter_version: str | None = None,
        at: str | None = None,
        **detail: Any,
    ) -> None:
        detail = {k: v for k, v in detail.items() if v is not None}
        self.db.execute(
            "INSERT INTO audit (at, actor, action, tenant, memory_id, adapter_version, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                at or utcnow(), self.actor, action, tenant, memory_id, adapter_version,
                json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
            ],
        )

    def history(self, memory_id: int) -> list[AuditEntry]:
        """Every change to one memory, oldest first (including what superseded it)."""
        self.get(memory_id)
        return [
            _audit_entry(r)
            for r in self.db.query("SELECT * FROM audit WHERE memory_id = ? ORDER BY id", [memory_id])
        ]

    def audit(self, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The latest audit entries, newest first."""
        where, params = ("WHERE tenant = ?", [tenant]) if tenant else ("", [])
        return [
            _audit_entry(r)
            for r in self.db.query(
                f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*params, limit]
            )
        ]

    # -- episodes ------------------------------------------------------------------------------

    def record_episode(
        self,
        tenant: str,
        messages: Sequence[dict],
        *,
        episode_id: int | None = None,
        source: str | None = None,
        close: bool = False,
        conversation_id: str | None = None,
        conversation_start: int = 0,
        end_user: str | None = None,
    ) -> Episode:
        """Append messages ({"role", "content"}, other keys kept) to an open episode, or start one
        (of the client conversation `conversation_id`, from its message `conversation_start` on,
        with the end user `end_user`)."""
        messages = _check_messages(messages)
        check_user(end_user)
        now = utcnow()
        with self.transaction():
            if episode_id is None:
                self._ensure_tenant(tenant, now)
                episode_id = self.db["episodes"].insert({
                    "tenant": tenant, "source": source, "status": "open",
                    "messages": json.dumps(messages, ensure_ascii=False),
                    "started_at": now, "updated_at": now,
                    "conversation_id": conversation_id, "conversation_start": conversation_start,
                    "end_user": end_user,
                }).last_pk
            else:
                ep = self.episode(episode_id)
                if ep.tenant != tenant:  # don't reveal another tenant's episode
                    raise UnknownEpisode(episode_id)
                if ep.status != "open":
                    raise StateError(f"episode {episode_id} is closed")
                self.db.execute(
                    "UPDATE episodes SET messages = ?, updated_at = ? WHERE id = ?",
                    [json.dumps(ep.messages + messages, ensure_ascii=False), now, episode_id],
                )
            self._audit("episode.record", tenant=tenant, at=now, episode=episode_id,
                        messages=len(messages))
            if close:
                self._close_episode(episode_id, now)
        return self.episode(episode_id)

    def episode(self, episode_id: int) -> Episode:
        row = next(self.db.query("SELECT * FROM episodes WHERE id = ?", [episode_id]), None)
        if row is None:
            raise UnknownEpisode(episode_id)
        return _episode(row)

    def conversation_episode(self, tenant: str, conversation_id: str, end_user: str | None = None) -> Episode | None:
        """The newest episode of a client conversation (open or closed) of `end_user`, or None."""
        row = next(self.db.query(
            "SELECT * FROM episodes WHERE tenant = ? AND conversation_id = ? AND end_user IS ?"
            " ORDER BY id DESC LIMIT 1", [tenant, conversation_id, end_user]), None)
        return _episode(row) if row is not None else None

    def close_episode(self, episode_id: int) -> Episode:
        with self.transaction():
            ep = self.episode(episode_id)
            if ep.status == "closed":
                raise StateError(f"episode {episode_id} is already closed")
            self._close_episode(episode_id, utcnow())
        return self.episode(episode_id)

    def _close_episode(self, episode_id: int, now: str) -> None:
        self.db.execute(
            "UPDATE episodes SET status = 'closed', closed_at = ?, updated_at = ? WHERE id = ?",
            [now, now, episode_id],
        )

    def episodes(
        self, tenant: str, *, status: str | None = None, summarised: bool | None = None
    ) -> list[Episode]:
        self.require_tenant(tenant)
        _as_list(status, ("open", "closed"), "episode status")
        sql = "SELECT * FROM episodes WHERE tenant = ?"
        params: list[Any] = [tenant]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if summarised is not None:
            sql += " AND summary_memory_id IS " + ("NOT NULL" if summarised else "NULL")
        return [_episode(r) for r in self.db.query(sql + " ORDER BY id", params)]

    def summarise_episode(self, episode_id: int, text: str, *, scoped: bool = True) -> Memory:
        """Store an `episode_summary` memory for the episode; a new summary supersedes the old.
        `scoped`: the summary belongs to the episode's end user (if it has one), not the tenant."""
        with self.transaction():
            ep = self.episode(episode_id)
            old = self.get(ep.summary_memory_id) if ep.summary_memory_id else None
            if old is not None and old.valid:
                m = self.supersede(old.id, text, source=f"episode:{episode_id}")
            else:
                m = self.add(ep.tenant, "episode_summary", text, source=f"episode:{episode_id}",
                             end_user=ep.end_user if scoped else None)
            self.db.execute(
                "UPDATE episodes SET summary_memory_id = ?, summary_error = NULL WHERE id = ?",
                [m.id, episode_id],
            )
        return m

    def fail_summary(self, episode_id: int, reason: str) -> Episode:
        """Record a failed attempt at summarising the episode (nothing else changes)."""
        with self.transaction():
            ep = self.episode(episode_id)
            self.db.execute(
                "UPDATE episodes SET summary_tries = summary_tries + 1, summary_error = ? WHERE id = ?",
                [reason[:500], episode_id],
            )
            self._audit("episode.summary_failed", tenant=ep.tenant, episode=episode_id, reason=reason[:500])
        return self.episode(episode_id)

    # -- bake ledger ---------------------------------------------------------------------------

    def record_bake(
        self,
        tenant: str,
        version: str,
        *,
        memory_ids: Sequence[int],
        prompt_hash: str,
        parent: str | None = None,
        layer: int | None = None,
        metrics: dict | None = None,
        status: str = "published",
    ) -> Adapter:
        """Write a bake's result to the ledger. A published version marks its memories baked.
        `layer` defaults to the parent's layer + 1 (0 without a parent)."""
        _as_list(status, ADAPTER_STATUSES, "adapter status")
        if not version or not isinstance(version, str):
            raise InvalidInput("an adapter version needs a non-empty name")
        now = utcnow()
        with self.transaction():
            self.require_tenant(tenant)
            parent_layer = self.adapter(tenant, parent).layer if parent is not None else -1
            layer = parent_layer + 1 if layer is None else layer
            if layer < 0:
                raise InvalidInput(f"invalid layer index {layer}")
            try:
                self.db["adapters"].insert({
                    "tenant": tenant, "version": version, "parent": parent, "layer": layer,
                    "prompt_hash": prompt_hash, "metrics": json.dumps(metrics or {}, sort_keys=True),
                    "status": status, "created_at": now,
                })
            except sqlite3.IntegrityError as e:
                raise StateError(
                    f"adapter version {version!r} of tenant {tenant!r} is already recorded"
                ) from e
            self._audit("adapter.record", tenant=tenant, adapter_version=version, at=now,
                        status=status, parent=parent, layer=layer)
            self.mark_baked(memory_ids, version, tenant=tenant)
        return self.adapter(tenant, version)

    def mark_baked(self, ids: Sequence[int], version: str, *, tenant: str | None = None) -> None:
        """Record that adapter `version` holds these memories (all of one tenant). While that
        version is published they count as baked; a memory forgotten meanwhile stays forgotten,
        and the version then needs a rebake."""
        ids = list(dict.fromkeys(ids))
        with self.transaction():
            mems = self._get_many(ids)
            tenants = {m.tenant for m in mems} | ({tenant} if tenant else set())
            if len(tenants) > 1:
                raise InvalidInput(
                    f"memories of several tenants in one adapter: {', '.join(sorted(tenants))}"
                )
            if not tenants:
                return
            (tenant,) = tenants
            adapter = self.adapter(tenant, version)
            now = utcnow()
            new = [
                i for i in ids
                if self.db.execute(
                    "INSERT INTO adapter_memories (adapter_id, memory_id) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING", [adapter.id, i],
                ).rowcount
            ]
            for i in new:
                self._audit("memory.bake", tenant=tenant, memory_id=i, adapter_version=version, at=now)
            self._refresh_baked(adapter.id)

    def set_adapter_status(
        self, tenant: str, version: str, status: str, reason: str | None = None
    ) -> Adapter:
        """published / rejected / rolled_back. Memories that no published version holds any more
        go back to pending."""
        _as_list(status, ADAPTER_STATUSES, "adapter status")
        with self.transaction():
            adapter = self.adapter(tenant, version)
            self.db.execute("UPDATE adapters SET status = ? WHERE id = ?", [status, adapter.id])
            self._audit("adapter.status", tenant=tenant, adapter_version=version,
                        previous=adapter.status, status=status, reason=reason)
            self._refresh_baked(adapter.id)
        return self.adapter(tenant, version)

    def _refresh_baked(self, adapter_id: int) -> None:
        # The one rule for a memory's status: baked iff some published adapter holds it.
        self.db.execute(
            """
            UPDATE memories SET status = CASE WHEN EXISTS (
                SELECT 1 FROM adapter_memories am JOIN adapters a ON a.id = am.adapter_id
                WHERE am.memory_id = memories.id AND a.status = 'published'
            ) THEN 'baked' ELSE 'pending' END
            WHERE status != 'forgotten'
              AND id IN (SELECT memory_id FROM adapter_memories WHERE adapter_id = ?)
            """,
            [adapter_id],
        )

    def adapter(self, tenant: str, version: str) -> Adapter:
        sql = _ADAPTER_SELECT + " WHERE a.tenant = ? AND a.version = ?"
        row = next(self.db.query(sql, [tenant, version]), None)
        if row is None:
            raise UnknownAdapter(tenant, version)
        return _adapter(row)

    def adapters(self, tenant: str, *, status: str | None = None) -> list[Adapter]:
        """A tenant's adapter versions, oldest first."""
        self.require_tenant(tenant)
        sql, params = _ADAPTER_SELECT + " WHERE a.tenant = ?", [tenant]
        if status is not None:
            sql, params = sql + " AND a.status = ?", [tenant, status]
        return [_adapter(r) for r in self.db.query(sql + " ORDER BY a.id", params)]

    def needs_rebake(self, tenant: str) -> list[Adapter]:
        """Published versions holding a memory since forgotten or superseded."""
        return [a for a in self.adapters(tenant, status="published") if a.needs_rebake]

    # -- prompts -------------------------------------------------------------------------------

    def compose(
        self,
        tenant: str,
        kinds: Sequence[str] | None = None,
        budget_tokens: int = 2000,
        count_tokens: Callable[[str], int] | None = None,
        *,
        pending_only: bool = False,
        exclude: Sequence[int] = (),
    ) -> _compose.Prompt:
        """The tenant's valid memories as one prompt within the token budget (see compose.py).
        Only this tenant's memories are read; forgotten and superseded ones never appear, nor
        the ids in `exclude` (e.g. what an adapter version already holds)."""
        self.require_tenant(tenant)
        kinds = _as_list(kinds, KINDS, "kind") or list(KINDS)
        statuses = ["pending"] if pending_only else ["pending", "baked"]
        rows = self.db.execute(
            "SELECT id, kind, text, valid_from FROM memories"
            " WHERE tenant = ? AND status IN (SELECT value FROM json_each(?))"
            " AND kind IN (SELECT value FROM json_each(?)) AND valid_to IS NULL"
            " AND admission = 'admitted' AND end_user IS NULL"
            " ORDER BY valid_from DESC, id DESC",
            [tenant, json.dumps(statuses), json.dumps(kinds)],
        ).fetchall()
        skip = set(exclude)
        return _compose.render(
            [_compose.Item(*r) for r in rows if r[0] not in skip], kinds=kinds, budget_tokens=budget_tokens,
            count_tokens=count_tokens,
        )


def _scope_sql(users: str | bool, prefix: str = "") -> tuple[str, list]:
    """The SQL (and its arguments) that keeps the memories `users` may see (see `memories`)."""
    if users is True:
        return "", []
    if users is False or users is None:
        return f" AND {prefix}end_user IS NULL", []
    return f" AND ({prefix}end_user IS NULL OR {prefix}end_user = ?)", [check_user(users)]


def _as_list(value: str | Sequence[str] | None, allowed: Sequence[str], what: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value or [])
    for v in values:
        if v not in allowed:
            raise InvalidInput(f"invalid {what} {v!r}: choose one of {', '.join(allowed)}")
    return values


def _check_messages(messages: Sequence[dict]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidInput("messages must be a list of {'role': ..., 'content': ...}")
    out = []
    for n, msg in enumerate(messages):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)
                and isinstance(msg.get("content"), str)):
            raise InvalidInput(f"message {n} must be a dict with string 'role' and 'content'")
        out.append(dict(msg))
    return out


def _memory(r: dict) -> Memory:
    return Memory(
        id=r["id"], tenant=r["tenant"], kind=r["kind"], text=r["text"], source=r["source"],
        created_at=r["created_at"], published_at=r["published_at"], valid_from=r["valid_from"],
        valid_to=r["valid_to"], superseded_by=r["superseded_by"], content_hash=r["content_hash"],
        status=r["status"], meta=json.loads(r["meta"]) if r["meta"] else {},
        adapter_versions=tuple(json.loads(r["adapter_versions"] or "[]")),
        end_user=r["end_user"], admission=r["admission"], admission_reason=r["admission_reason"],
    )


def _episode(r: dict) -> Episode:
    return Episode(
        id=r["id"], tenant=r["tenant"], source=r["source"], messages=json.loads(r["messages"]),
        status=r["status"], summary_memory_id=r["summary_memory_id"], started_at=r["started_at"],
        updated_at=r["updated_at"], closed_at=r["closed_at"], conversation_id=r["conversation_id"],
        conversation_start=r["conversation_start"], summary_tries=r["summary_tries"],
        summary_error=r["summary_error"], end_user=r["end_user"],
    )


def _adapter(r: dict) -> Adapter:
    return Adapter(
        id=r["id"], tenant=r["tenant"], version=r["version"], parent=r["parent"], layer=r["layer"],
        prompt_hash=r["prompt_hash"], metrics=json.loads(r["metrics"]), status=r["status"],
        created_at=r["created_at"], memory_ids=tuple(sorted(json.loads(r["memory_ids"]))),
        stale_memory_ids=tuple(sorted(json.loads(r["stale_memory_ids"]))),
    )


def _audit_entry(r: dict) -> AuditEntry:
    return AuditEntry(
        id=r["id"], at=r["at"], actor=r["actor"], action=r["action"], tenant=r["tenant"],
        memory_id=r["memory_id"], adapter_version=r["adapter_version"],
        detail=json.loads(r["detail"]) if r["detail"] else {},
    )
