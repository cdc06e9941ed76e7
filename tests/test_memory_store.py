"""MemoryStore: migrations, dedup, supersession, forget + audit, ledger, episodes, concurrency."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memory import (
    InvalidInput,
    MemoryStore,
    MigrationError,
    StateError,
    StoreUnavailable,
    UnknownAdapter,
    UnknownEpisode,
    UnknownMemory,
    UnknownTenant,
    content_hash,
)
from memory.db import connect
from memory.migrations import MIGRATIONS, applied, migrate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "bakehouse.db", actor="test")
    yield s
    s.close()


# -- migrations ---------------------------------------------------------------------------------

def test_blank_db_gets_every_migration_and_wal(tmp_path):
    s = MemoryStore(tmp_path / "m.db")
    assert applied(s.db) == [m.__name__ for m in MIGRATIONS]
    assert s.db.journal_mode == "wal"
    assert {"tenants", "memories", "audit", "episodes", "adapters", "adapter_memories", "feeds",
            "feed_items"} <= set(s.db.table_names())
    s.close()
    # Re-opening applies nothing and keeps one row per migration.
    s = MemoryStore(tmp_path / "m.db")
    assert migrate(s.db) == []
    assert s.db["_migrations"].count == len(MIGRATIONS)
    s.close()


@pytest.mark.parametrize("upto", range(1, len(MIGRATIONS)))
def test_upgrade_from_previous_schema_keeps_rows(tmp_path, upto):
    path = tmp_path / "old.db"
    db = connect(path)
    assert migrate(db, MIGRATIONS[:upto]) == [m.__name__ for m in MIGRATIONS[:upto]]
    # Rows as that schema's code would have written them.
    db.execute("INSERT INTO tenants (name, created_at) VALUES ('alice', '2026-11-01T00:00:00.000Z')")
    db.execute(
        "INSERT INTO memories (tenant, kind, text, created_at, valid_from, content_hash) VALUES "
        "('alice', 'fact', 'Alice likes tea.', '2026-11-01T00:00:00.000Z', "
        "'2026-11-01T00:00:00.000Z', ?)", [content_hash("Alice likes tea.")],
    )
    db.close()

    s = MemoryStore(path)
    assert applied(s.db) == [m.__name__ for m in MIGRATIONS]
    (m,) = s.memories("alice")
    assert m.text == "Alice likes tea." and m.status == "pending"
    assert not s.add("alice", "fact", "alice likes tea").created  # dedup sees the old row
    s.record_bake("alice", "v1", memory_ids=[m.id], prompt_hash="h")  # later tables work
    assert s.get(m.id).status == "baked"
    s.close()


def test_failed_migration_rolls_back_and_is_not_recorded(tmp_path):
    def m999_broken(db):
        db.execute("CREATE TABLE half_done (x INTEGER)")
        db.execute("THIS IS NOT SQL")

    db = connect(tmp_path / "m.db")
    with pytest.raises(MigrationError, match="m999_broken failed"):
        migrate(db, MIGRATIONS + [m999_broken])
    assert applied(db) == [m.__name__ for m in MIGRATIONS]  # the good ones committed
    assert "half_done" not in db.table_names()  # the bad one left nothing behind
    db.close()


def test_db_from_a_newer_version_is_refused(tmp_path):
    MemoryStore(tmp_path / "m.db").close()
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(MigrationError, match="m999_future"):
        MemoryStore(tmp_path / "m.db")


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "m.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        MemoryStore(path)
    assert path.read_bytes() == b"not sqlite at all" * 100


# -- adding and de-duplication ------------------------------------------------------------------

def test_add_and_get(store):
    m = store.add("alice", "fact", "  Alice's cat is called Miso.  ", source="chat",
                  meta={"note": "é"})
    assert m.created and m.id > 0
    assert m.text == "Alice's cat is called Miso."
    assert (m.tenant, m.kind, m.source, m.status, m.meta) == ("alice", "fact", "chat", "pending", {"note": "é"})
    assert m.valid and m.valid_from == m.created_at and m.valid_to is None
    assert store.get(m.id) == m
    assert store.tenants() == ["alice"]


def test_published_date_is_the_start_of_validity(store):
    m = store.add("alice", "headline", "Rail strike ends.", published_at="2026-11-04")
    assert m.published_at == m.valid_from == "2026-11-04T00:00:00.000Z"


def test_duplicates_are_stored_once_per_tenant(store):
    a = store.add("alice", "fact", "Paris is the capital of France.")
    b = store.add("alice", "fact", "paris  is the CAPITAL of France")
    c = store.add("bob", "fact", "Paris is the capital of France.")
    assert b.id == a.id and not b.created
    assert c.id != a.id and c.created  # dedup is per tenant
    assert len(store.memories("alice")) == 1
    adds = [e for e in store.history(a.id) if e.action == "memory.add"]
    assert len(adds) == 1  # a duplicate is not a change


def test_add_many_is_all_or_nothing(store):
    store.add("alice", "fact", "kept")
    with pytest.raises(InvalidInput, match="kind"):
        store.add_many("alice", [dict(kind="fact", text="one"), dict(kind="gossip", text="two")])
    assert [m.text for m in store.memories("alice")] == ["kept"]


@pytest.mark.parametrize(
    "tenant, kind, text, match",
    [
        ("alice", "gossip", "x", "invalid kind"),
        ("alice", "fact", "   ", "non-empty"),
        ("", "fact", "x", "invalid tenant"),
        ("a/b", "fact", "x", "invalid tenant"),
        ("alice", "fact", "x" * 100_001, "too long"),
    ],
)
def test_invalid_input_is_refused(store, tenant, kind, text, match):
    with pytest.raises(InvalidInput, match=match):
        store.add(tenant, kind, text)


def test_reading_an_unknown_tenant_is_an_error(store):
    with pytest.raises(UnknownTenant, match="No tenant named 'nobody'"):
        store.memories("nobody")
    with pytest.raises(UnknownMemory):
        store.get(12345)


# -- supersession -------------------------------------------------------------------------------

def test_supersede_keeps_the_old_memory_marked_no_longer_valid(store):
    old = store.add("alice", "fact", "Alice's cat is called Miso.")
    new = store.supersede(old.id, "Alice's cat is called Tofu.", source="chat")
    old = store.get(old.id)
    assert (new.tenant, new.kind, new.valid) == ("alice", "fact", True)
    assert not old.valid and old.valid_to == new.valid_from and old.superseded_by == new.id
    assert [m.id for m in store.pending("alice")] == [new.id]
    assert "Miso" not in store.compose("alice").text
    assert [e.action for e in store.history(old.id)] == ["memory.add", "memory.supersede"]
    with pytest.raises(StateError, match=f"already superseded by {new.id}"):
        store.supersede(old.id, "Alice's cat is called Pixel.")


def test_a_failed_supersede_loses_nothing(store):
    old = store.add("alice", "fact", "Alice lives in Lyon.")
    with pytest.raises(InvalidInput):
        store.supersede(old.id, "")  # e.g. an empty reflection from a background job
    with pytest.raises(StateError, match="already says that"):
        store.supersede(old.id, "alice lives in lyon")
    assert store.get(old.id).valid
    assert [m.text for m in store.memories("alice")] == ["Alice lives in Lyon."]


def test_a_superseded_text_may_be_remembered_again(store):
    a = store.add("alice", "fact", "The office is open.")
    store.supersede(a.id, "The office is closed.")
    again = store.add("alice", "fact", "The office is open.")
    assert again.created and again.id != a.id


# -- forget and audit ---------------------------------------------------------------------------

def test_forget_marks_audits_and_flags_adapters(store):
    keep = store.add("alice", "fact", "Alice likes tea.")
    secret = store.add("alice", "fact", "Alice's PIN is 1234.")
    store.record_bake("alice", "v1", memory_ids=[keep.id, secret.id], prompt_hash="h1")
    store.record_bake("alice", "v2", memory_ids=[], prompt_hash="h2", parent="v1")
    assert store.needs_rebake("alice") == []

    assert store.forget(secret.id, reason="user asked") == ["v1"]
    m = store.get(secret.id)
    assert m.status == "forgotten" and not m.valid
    assert m.adapter_versions == ("v1",)
    forget_row = store.history(secret.id)[-1]
    assert (forget_row.action, forget_row.actor) == ("memory.forget", "test")
    assert forget_row.detail == {"reason": "user asked", "previous_status": "baked",
                                 "needs_rebake": ["v1"]}
    assert "1234" not in store.compose("alice").text
    assert "1234" not in "".join(x.text for x in store.memories("alice"))
    (flagged,) = store.needs_rebake("alice")
    assert flagged.version == "v1" and flagged.stale_memory_ids == (secret.id,)
    with pytest.raises(StateError, match="already forgotten"):
        store.forget(secret.id)
    with pytest.raises(UnknownMemory):
        store.forget(999)


def test_forgotten_text_may_be_remembered_again(store):
    a = store.add("alice", "fact", "Alice's PIN is 1234.")
    store.forget(a.id)
    b = store.add("alice", "fact", "Alice's PIN is 1234.")
    assert b.created and b.id != a.id


def test_audit_lists_every_change_newest_first(store):
    m = store.add("alice", "fact", "x")
    store.forget(m.id)
    actions = [e.action for e in store.audit("alice")]
    assert actions == ["memory.forget", "memory.add", "tenant.add"]


# -- bake ledger --------------------------------------------------------------------------------

def test_record_bake_marks_baked_and_stacks_layers(store):
    ids = [store.add("alice", "headline", f"News {i}").id for i in range(3)]
    v1 = store.record_bake("alice", "v1", memory_ids=ids[:2], prompt_hash="h1",
                           metrics={"kl": 0.1})
    assert (v1.layer, v1.status, v1.memory_ids, v1.metrics) == (0, "published", tuple(ids[:2]), {"kl": 0.1})
    v2 = store.record_bake("alice", "v2", memory_ids=ids[2:], prompt_hash="h2", parent="v1")
    assert (v2.layer, v2.parent) == (1, "v1")
    assert [m.id for m in store.pending("alice")] == []
    assert store.get(ids[0]).adapter_versions == ("v1",)
    assert [a.version for a in store.adapters("alice")] == ["v1", "v2"]
    with pytest.raises(StateError, match="already recorded"):
        store.record_bake("alice", "v2", memory_ids=[], prompt_hash="h")
    with pytest.raises(UnknownAdapter):
        store.record_bake("alice", "v3", memory_ids=[], prompt_hash="h", parent="nope")


def test_rejected_and_rolled_back_versions_leave_memories_pending(store):
    a = store.add("alice", "fact", "a")
    b = store.add("alice", "fact", "b")
    store.record_bake("alice", "v1", memory_ids=[a.id], prompt_hash="h", status="rejected")
    assert store.get(a.id).status == "pending"
    store.record_bake("alice", "v2", memory_ids=[a.id, b.id], prompt_hash="h")
    store.record_bake("alice", "v3", memory_ids=[b.id], prompt_hash="h", parent="v2")
    store.set_adapter_status("alice", "v2", "rolled_back", reason="bad eval")
    assert store.get(a.id).status == "pending"  # no published version holds it any more
    assert store.get(b.id).status == "baked"  # v3 still does


def test_a_memory_forgotten_during_a_bake_stays_forgotten(store):
    m = store.add("alice", "fact", "secret")
    store.forget(m.id)  # while the baker was still running with the old prompt
    v1 = store.record_bake("alice", "v1", memory_ids=[m.id], prompt_hash="h")
    assert store.get(m.id).status == "forgotten"
    assert v1.needs_rebake and v1.stale_memory_ids == (m.id,)


def test_one_adapter_never_mixes_tenants(store):
    a = store.add("alice", "fact", "a")
    b = store.add("bob", "fact", "b")
    with pytest.raises(InvalidInput, match="several tenants"):
        store.record_bake("alice", "v1", memory_ids=[a.id, b.id], prompt_hash="h")
    with pytest.raises(UnknownAdapter):
        store.adapter("alice", "v1")  # nothing half-recorded


# -- episodes -----------------------------------------------------------------------------------

def test_episodes_record_close_and_summarise(store):
    ep = store.record_episode("alice", [{"role": "user", "content": "Hi, I'm Alice."}], source="chat")
    ep = store.record_episode("alice", [{"role": "assistant", "content": "Hello!"}], episode_id=ep.id)
    assert [m["role"] for m in ep.messages] == ["user", "assistant"] and ep.status == "open"
    with pytest.raises(UnknownEpisode):  # another tenant's episode does not exist for bob
        store.record_episode("bob", [{"role": "user", "content": "x"}], episode_id=ep.id)
    ep = store.close_episode(ep.id)
    assert ep.status == "closed" and ep.closed_at
    with pytest.raises(StateError, match="closed"):
        store.record_episode("alice", [{"role": "user", "content": "more"}], episode_id=ep.id)
    assert [e.id for e in store.episodes("alice", summarised=False)] == [ep.id]

    s1 = store.summarise_episode(ep.id, "Alice introduced herself.")
    assert (s1.kind, s1.source) == ("episode_summary", f"episode:{ep.id}")
    s2 = store.summarise_episode(ep.id, "Alice introduced herself and said hello.")
    assert store.get(s1.id).superseded_by == s2.id
    assert store.episode(ep.id).summary_memory_id == s2.id
    assert store.episodes("alice", summarised=False) == []


@pytest.mark.parametrize("messages", ["hello", [{"role": "user"}], [{"role": 1, "content": "x"}]])
def test_bad_messages_are_refused(store, messages):
    with pytest.raises(InvalidInput):
        store.record_episode("alice", messages)


# -- concurrency --------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from memory import MemoryStore
    path, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.005)
    store = MemoryStore(path, actor=name)     # both open (and migrate) a blank DB at once
    for i in range(n):
        store.add("alice", "fact", f"{name} fact {i}")
        store.add("alice", "fact", f"shared fact {i}")   # both write it: stored once
        if i % 10 == 0:
            store.add_many("bob", [dict(kind="headline", text=f"{name} batch {i} item {j}")
                                   for j in range(5)])
    store.close()
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    n = 150
    db, go = tmp_path / "shared.db", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(n), str(go)],
                         cwd=REPO, stderr=subprocess.PIPE, text=True)
        for name in ("p1", "p2")
    ]
    time.sleep(0.3)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    s = MemoryStore(db)
    texts = [m.text for m in s.memories("alice")]
    assert len(texts) == len(set(texts)) == 3 * n  # n + n own facts, n shared ones once
    assert len(s.memories("bob")) == 2 * 5 * len(range(0, n, 10))
    adds = s.db.execute("SELECT count(*) FROM audit WHERE action = 'memory.add'").fetchone()[0]
    assert adds == 3 * n + 2 * 5 * len(range(0, n, 10))
    s.close()
