"""compose(): sections, order, budget, determinism, tenant isolation."""
from __future__ import annotations

import pytest

from memory import InvalidInput, MemoryStore, UnknownTenant, approx_tokens
from memory.compose import Item, render


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "bakehouse.db", actor="test")
    yield s
    s.close()


def fill(store, tenant, headlines):
    for h in headlines:
        store.add(tenant, "headline", h["headline"], published_at=h["date"], source="test")


def test_sections_in_fixed_order_newest_first(store):
    store.add("alice", "headline", "Old news.", published_at="2026-11-01")
    store.add("alice", "episode_summary", "We talked about tea.")
    store.add("alice", "instruction", "Answer in French.")
    store.add("alice", "headline", "New news.", published_at="2026-11-05")
    store.add("alice", "persona", "You are Ada,\nthe ship's cook.")
    store.add("alice", "fact", "Alice's cat is called Tofu.")
    p = store.compose("alice")
    day = store.memories("alice", kind="episode_summary")[0].valid_from[:10]
    assert p.text == (
        "Persona:\n- You are Ada,\n  the ship's cook.\n\n"
        "Instructions from the user:\n- Answer in French.\n\n"
        "Facts:\n- Alice's cat is called Tofu.\n\n"
        'Quoted from news feeds:\n- 2026-11-05: "New news."\n- 2026-11-01: "Old news."\n\n'
        f"What happened in past conversations:\n- {day}: We talked about tea."
    )
    assert p.tokens == approx_tokens(p.text) and p.left_out == ()
    assert len(p.memory_ids) == 6 and len(p.hash) == 64


def test_what_does_not_fit_is_reported_never_dropped(store, headlines):
    store.add("alice", "instruction", "Always begin every answer with the word 'Ahoy'.")
    fill(store, "alice", headlines)
    everything = {m.id for m in store.memories("alice")}
    p = store.compose("alice", budget_tokens=120)
    assert 0 < p.tokens <= 120
    assert p.left_out and set(p.memory_ids) | set(p.left_out) == everything
    assert not set(p.memory_ids) & set(p.left_out)
    assert "Ahoy" in p.text  # instructions are spent before news
    # The news that made it are the newest ones, and the left-out ones are all older.
    kept = [m for m in store.memories("alice", kind="headline") if m.id in p.memory_ids]
    dropped = [m for m in store.memories("alice", kind="headline") if m.id in p.left_out]
    assert min(m.valid_from for m in kept) >= max(m.valid_from for m in dropped)


def test_budget_holds_for_a_tokenizer_that_does_not_add_up(store, headlines):
    fill(store, "alice", headlines)

    def lumpy(text):  # pieces cost less than the whole (each line break costs 3 in context)
        return len(text.split()) + 3 * text.count("\n")

    for budget in (0, 7, 50, 133, 400):
        p = store.compose("alice", budget_tokens=budget, count_tokens=lumpy)
        assert p.tokens == lumpy(p.text) <= budget
        assert len(p.memory_ids) + len(p.left_out) == len(headlines)


def test_zero_budget_gives_an_empty_prompt_and_a_negative_one_is_refused(store):
    m = store.add("alice", "fact", "x")
    p = store.compose("alice", budget_tokens=0)
    assert (p.text, p.memory_ids, p.left_out, p.tokens) == ("", (), (m.id,), 0)
    with pytest.raises(InvalidInput):
        store.compose("alice", budget_tokens=-1)


def test_same_memories_same_text_and_hash(tmp_path, headlines):
    prompts = []
    for name in ("a.db", "b.db"):
        with MemoryStore(tmp_path / name) as s:
            fill(s, "alice", headlines)
            prompts.append(s.compose("alice", budget_tokens=300))
            assert s.compose("alice", budget_tokens=300) == prompts[-1]
    assert prompts[0].text == prompts[1].text and prompts[0].hash == prompts[1].hash


def test_kinds_filter_and_pending_only(store):
    a = store.add("alice", "fact", "baked fact")
    b = store.add("alice", "fact", "new fact")
    store.add("alice", "headline", "news", published_at="2026-11-02")
    store.record_bake("alice", "v1", memory_ids=[a.id], prompt_hash="h")
    assert store.compose("alice", kinds=["fact"]).memory_ids == (b.id, a.id)
    assert store.compose("alice", kinds=["fact"], pending_only=True).memory_ids == (b.id,)
    with pytest.raises(InvalidInput, match="invalid kind"):
        store.compose("alice", kinds=["gossip"])


def test_forgotten_and_superseded_never_appear(store):
    a = store.add("alice", "fact", "Alice's PIN is 1234.")
    b = store.add("alice", "fact", "Alice lives in Lyon.")
    store.forget(a.id)
    c = store.supersede(b.id, "Alice lives in Nantes.")
    p = store.compose("alice")
    assert p.memory_ids == (c.id,) and "1234" not in p.text and "Lyon" not in p.text
    assert p.left_out == ()


def test_one_tenants_compose_never_contains_anothers_memory(store, headlines):
    fill(store, "alice", headlines[:10])
    fill(store, "bob", headlines[10:])
    store.add("bob", "persona", "You are Bob's private assistant.")
    shared = store.add("alice", "fact", "The sky is blue."), store.add("bob", "fact", "The sky is blue.")
    bob_ids = {m.id for m in store.memories("bob")}
    p = store.compose("alice", budget_tokens=100_000)
    assert not set(p.memory_ids) & bob_ids and not set(p.left_out) & bob_ids
    assert "Bob" not in p.text
    for h in headlines[10:]:
        assert h["headline"] not in p.text
    assert shared[0].id in p.memory_ids and shared[1].id not in p.memory_ids
    with pytest.raises(UnknownTenant):
        store.compose("carol")


def test_render_is_pure():
    items = [Item(2, "headline", "B", "2026-11-02T00:00:00.000Z"),
             Item(1, "headline", "A", "2026-11-01T00:00:00.000Z"),
             Item(3, "fact", "F", "2026-11-03T00:00:00.000Z")]
    p = render(items, kinds=["headline"], budget_tokens=100)
    assert p.text == 'Quoted from news feeds:\n- 2026-11-02: "B"\n- 2026-11-01: "A"'
    assert p.memory_ids == (2, 1) and p.left_out == ()
