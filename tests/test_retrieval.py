"""Retrieval per request (memory.retrieval): FTS5 bm25 over a real SQLite file."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from memory import MemoryStore
from memory.compose import Item, select
from memory.migrations import MIGRATIONS, migrate
from memory.retrieval import FTS5Ranker, Hit, by_date_among_best, request_queries, retrieve, terms

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "headlines.jsonl"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def store(tmp_path):
    with MemoryStore(tmp_path / "m.db") as s:
        yield s


@pytest.fixture
def news(store):
    rows = [json.loads(line) for line in HEADLINES.read_text().splitlines()]
    ids = {r["id"]: store.add("alice", "headline", r["headline"], published_at=r["date"]).id for r in rows}
    return rows, ids


def test_each_shared_question_retrieves_its_own_headline_first(store, news):
    rows, ids = news
    firsts = [retrieve(store, "alice", ask(q["q"]), top_k=3).memory_ids[0] for r in rows for q in r["questions"]]
    assert firsts == [ids[r["id"]] for r in rows for _ in r["questions"]]


def test_the_prompt_stays_short_however_many_memories_there_are(store, news):
    rows, _ = news
    whole = store.compose("alice", budget_tokens=10_000)
    p = retrieve(store, "alice", ask(rows[0]["questions"][0]["q"]), top_k=3)
    assert 1 <= len(p.memory_ids) <= 3 and p.tokens < whole.tokens / 4
    assert p.text.startswith('Quoted from news feeds:\n- 2026-')


def test_persona_and_instructions_come_first_then_what_the_request_is_about(store, news):
    rows, ids = news
    persona = store.add("alice", "persona", "You are Ada, the harbour pilot.").id
    rule = store.add("alice", "instruction", "Answer in one sentence.").id
    p = retrieve(store, "alice", ask("What is the name of the seaweed battery?"), top_k=2)
    assert p.memory_ids[:2] == (persona, rule) and p.memory_ids[2] == ids["h02"]
    assert p.text.index("Persona:") < p.text.index("Instructions from the user:") < p.text.index("Kelpcell")
    # nothing about the request: only the pinned part
    assert retrieve(store, "alice", ask("Hello!"), top_k=2).memory_ids == (persona, rule)


def test_held_superseded_and_forgotten_memories_are_never_retrieved(store):
    old = store.add("alice", "fact", "The ferry to Orla Island is named the Marigold.")
    new = store.supersede(old.id, "The ferry to Orla Island is renamed the Wild Marigold.")
    gone = store.add("alice", "fact", "The Orla Island ferry leaves at nine.")
    store.forget(gone.id)
    held = store.add("alice", "fact", "The Orla Island ferry has a red hull.")
    p = retrieve(store, "alice", ask("What is the Orla Island ferry called?"), exclude=[held.id])
    assert p.memory_ids == (new.id,)


def test_the_latest_about_a_subject_is_the_newest_memory_about_it(store):
    first = store.add("alice", "headline", "Brannock Dam opens its first turbine hall.", published_at="2026-11-01")
    second = store.add("alice", "headline", "Brannock Dam opens its second turbine hall, the largest in Ostra.",
                       published_at="2026-11-20")
    latest = retrieve(store, "alice", ask("What is the latest news about the Brannock Dam turbine hall?"), top_k=1)
    assert latest.memory_ids == (second.id,)
    hits = FTS5Ranker().rank(store, "alice", "Brannock Dam first turbine hall")
    assert hits[0].id == first.id  # without "latest", relevance alone decides


def test_by_date_among_best_keeps_weak_matches_after_strong_ones():
    hits = [Hit(1, "headline", "a", "2026-01-01", 10.0), Hit(2, "headline", "b", "2026-03-01", 6.0),
            Hit(3, "headline", "c", "2026-05-01", 1.0)]
    assert [h.id for h in by_date_among_best(hits)] == [2, 1, 3]


def test_a_follow_up_uses_the_previous_short_user_message(store, news):
    _, ids = news
    msgs = [{"role": "user", "content": "Tell me about the Dunmarrow rail strike."},
            {"role": "assistant", "content": "It ended."},
            {"role": "user", "content": "How long did it last?"}]
    assert request_queries(msgs) == ["How long did it last?", "Tell me about the Dunmarrow rail strike."]
    assert ids["h03"] in retrieve(store, "alice", msgs, top_k=3).memory_ids


@pytest.mark.parametrize("hostile", ['"', 'NEAR(a b)', "*", "a AND OR NOT", "x:y", "'; DROP TABLE memories; --",
                                     "", "   ", "💥" * 50, "word " * 5000])
def test_any_request_text_is_searched_as_words_never_as_query_syntax(store, news, hostile):
    p = retrieve(store, "alice", ask(hostile))
    assert p.tokens >= 0 and store.db["memories"].count == 20


def test_content_parts_and_non_text_messages(store, news):
    _, ids = news
    parts = [{"role": "user", "content": [{"type": "text", "text": "Which battery is made from seaweed?"}]}]
    assert retrieve(store, "alice", parts).memory_ids[0] == ids["h02"]
    assert retrieve(store, "alice", [{"role": "user", "content": None}, "junk"]).memory_ids == ()
    assert terms("The THE the Kelpcell kelpcell 7") == ["kelpcell", "7"]


def test_tenants_never_see_each_others_memories(store):
    store.add("bob", "fact", "Bob's locker code is 7734.")
    assert retrieve(store, "alice", ask("What is the locker code 7734?")).memory_ids == ()


def test_pinned_memories_past_their_share_of_the_budget_are_retrieved_like_the_rest(store):
    rules = [store.add("alice", "instruction", f"Rule {n}: always mention the {w} when asked about {w}.").id
             for n, w in enumerate(["lighthouse", "glacier", "orchard", "quarry", "vineyard", "tramway"])]
    p = retrieve(store, "alice", ask("hi"), budget_tokens=60)
    assert p.left_out and set(p.memory_ids) | set(p.left_out) == set(rules)
    for rule in p.left_out:
        word = store.get(rule).text.split()[-1].rstrip(".")
        assert rule in retrieve(store, "alice", ask(f"Tell me about the {word}"), budget_tokens=60).memory_ids


def test_select_counts_top_k_over_ranked_items_only_and_skips_what_does_not_fit():
    pinned = [Item(1, "persona", "You are Ada.", "2026-01-01")]
    ranked = [Item(2, "fact", "x " * 400, "2026-01-01"), Item(3, "fact", "Short fact.", "2026-01-01"),
              Item(1, "persona", "You are Ada.", "2026-01-01"), Item(4, "fact", "Another.", "2026-01-01"),
              Item(5, "fact", "Third.", "2026-01-01")]
    p = select(pinned, ranked, top_k=2, budget_tokens=40)
    assert p.memory_ids == (1, 3, 4) and p.left_out == (2,)
    assert select([], [], top_k=3, budget_tokens=0).text == ""
    with pytest.raises(Exception, match="top-k"):
        select([], [], top_k=-1, budget_tokens=10)


def test_an_existing_db_gets_an_index_of_the_memories_it_already_holds(tmp_path):
    path = tmp_path / "old.db"
    with MemoryStore(path) as s:  # at every migration; then back to before the index
        m = s.add("alice", "fact", "The Velmora harbour has a new crane called Big Ines.")
    conn = sqlite3.connect(path)
    for stmt in ("DROP TABLE memories_fts", "DROP TRIGGER memories_ai", "DROP TRIGGER memories_ad",
                 "DROP TRIGGER memories_au", "DELETE FROM _migrations WHERE name = 'm008_memories_fts'"):
        conn.execute(stmt)
    conn.commit()
    conn.close()
    with MemoryStore(path) as s:
        assert "m008_memories_fts" in [r["name"] for r in s.db.query("SELECT name FROM _migrations")]
        assert retrieve(s, "alice", ask("What is the crane in Velmora called?")).memory_ids == (m.id,)
        assert migrate(s.db, MIGRATIONS) == []
