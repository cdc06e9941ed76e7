"""Episodes: the gateway's queue of conversation turns, the runtime's reader, idle closing, and
summaries of what the user said by the tenant's model (a scripted one here: the unit under test is
the summariser; the real SmolLM2 in the vLLM test). The statement and grounding rules themselves are
tabled in test_episode_grounding.py."""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from serving_helpers import FakeEngine

from agent.cli import cli
from agent.runtime import RuntimeConfig
from agent.runtime.episodes import (
    NOTHING_SAID,
    SUMMARY_ASK,
    EpisodeReader,
    ModelError,
    ModelUnavailable,
    ServedModel,
    check_summary,
    close_idle,
    episode_rows,
    grounded,
    summarise_closed,
    user_statements,
)
from memory import MemoryStore
from serving.config import ServeConfig
from serving.episodes import CONVERSATION_HEADER, append_episode, episodes_path, read_episodes
from serving.gateway import Gateway, create_app
from serving.hot import HotPrompt
from serving.tenants import TenantStore


# -- the gateway's queue -------------------------------------------------------------------------

def fake_vllm(bodies: list) -> FastAPI:
    """Answers "echo: <last user message>", as one body or as an SSE stream of words."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        answer = "echo: " + body["messages"][-1]["content"]
        if not body.get("stream"):
            return {"object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

        def events():
            yield 'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
            for word in answer.split(" "):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': word + ' '}}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def gw(home, tiny_model_dir):
    """(client, gateway, keys, bodies the fake engine received)"""
    store = TenantStore(home)
    keys = {n: store.add(n)[1] for n in ("alice", "bob")}
    bodies: list = []
    gateway = Gateway(ServeConfig(model_dir=tiny_model_dir, poll_interval=0.05), home, engine=FakeEngine(),
                      transport=httpx.ASGITransport(app=fake_vllm(bodies)),
                      hot_source=lambda tenant, served, messages, user: HotPrompt("HOT MEMORIES", 3))
    with TestClient(create_app(gateway)) as client:
        _wait(lambda: gateway.ready)
        yield client, gateway, keys, bodies


def _wait(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _chat(client, key, messages, conv=None, **extra):
    headers = {"Authorization": f"Bearer {key}", **({CONVERSATION_HEADER: conv} if conv else {})}
    return client.post("/v1/chat/completions", json={"messages": messages, **extra}, headers=headers)


def _queued(home, n):
    _wait(lambda: len(read_episodes(home)[0]) >= n)
    return read_episodes(home)[0]


def _turns(records):
    return [(r["tenant"], r["conversation_id"], r["from"], [(m["role"], m["content"]) for m in r["messages"]])
            for r in records]


def test_each_turn_is_queued_once_without_the_hot_prompt(gw, home):
    client, gateway, keys, bodies = gw
    history = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]
    r = _chat(client, keys["alice"], history, conv="c1")
    assert r.status_code == 200
    assert bodies[-1]["messages"][0]["content"].startswith("HOT MEMORIES")  # the engine got the hot prompt
    history += [{"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "more"}]
    assert _chat(client, keys["alice"], history, conv="c1").status_code == 200  # the history resent
    first, second = _queued(home, 2)
    assert _turns([first, second]) == [
        ("alice", "c1", 0, [("system", "Be kind."), ("user", "hi"), ("assistant", "echo: hi")]),
        ("alice", "c1", 3, [("user", "more"), ("assistant", "echo: more")]),  # only what is new
    ]
    assert "HOT MEMORIES" not in episodes_path(home).read_text()
    assert second["messages"][-1]["version"] == "base" and second["version"] == "base"
    assert second["messages"][0]["at"] <= second["messages"][1]["at"]


def test_turns_are_queued_in_order_when_an_earlier_write_is_slow(gw, home, monkeypatch):
    """The runtime reads `from` in queue order: a later turn written first would hide the earlier."""
    import serving.gateway as gateway_module

    def slow_first(home_, tenant, conv, start, messages, version, user=None):
        if start == 0:
            time.sleep(0.5)
        return append_episode(home_, tenant, conv, start, messages, version, user)

    monkeypatch.setattr(gateway_module, "append_episode", slow_first)
    client, _, keys, _ = gw
    history = [{"role": "user", "content": "hi"}]
    assert _chat(client, keys["alice"], history, conv="c2").status_code == 200
    history += [{"role": "assistant", "content": "echo: hi"}, {"role": "user", "content": "more"}]
    assert _chat(client, keys["alice"], history, conv="c2").status_code == 200
    assert [r["from"] for r in _queued(home, 2)] == [0, 2]


def test_without_a_header_the_conversation_id_is_derived_from_tenant_and_first_message(gw, home):
    client, _, keys, _ = gw
    _chat(client, keys["alice"], [{"role": "user", "content": "plan my trip"}])
    _chat(client, keys["alice"], [{"role": "user", "content": "plan my trip"},
                                  {"role": "assistant", "content": "echo: plan my trip"},
                                  {"role": "user", "content": "to Lisbon"}])
    _chat(client, keys["alice"], [{"role": "user", "content": "another topic"}])
    _chat(client, keys["bob"], [{"role": "user", "content": "plan my trip"}])
    a1, a2, a3, b1 = _queued(home, 4)
    assert a1["conversation_id"] == a2["conversation_id"] and a1["conversation_id"].startswith("auto-")
    assert (a2["from"], [m["content"] for m in a2["messages"]]) == (2, ["to Lisbon", "echo: to Lisbon"])
    assert len({a1["conversation_id"], a3["conversation_id"], b1["conversation_id"]}) == 3


def test_a_stream_is_queued_with_its_assembled_answer(gw, home):
    client, _, keys, _ = gw
    with client.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "tell me"}],
                       "stream": True}, headers={"Authorization": f"Bearer {keys['alice']}",
                                                 CONVERSATION_HEADER: "s1"}) as r:
        body = b"".join(r.iter_bytes())
    assert r.status_code == 200 and b"[DONE]" in body
    (rec,) = _queued(home, 1)
    assert _turns([rec]) == [("alice", "s1", 0, [("user", "tell me"), ("assistant", "echo: tell me ")])]


def test_a_tenant_with_recording_off_is_not_queued(gw, home):
    client, gateway, keys, _ = gw
    r = CliRunner().invoke(cli, ["tenants", "set", "alice", "--no-episodes", "--home", str(home)])
    assert r.exit_code == 0 and "episodes: off" in r.output, r.output
    _wait(lambda: not gateway._tenants["alice"].record_episodes)
    assert _chat(client, keys["alice"], [{"role": "user", "content": "secret"}]).status_code == 200
    assert _chat(client, keys["bob"], [{"role": "user", "content": "hello"}]).status_code == 200
    (rec,) = _queued(home, 1)
    time.sleep(0.1)
    assert rec["tenant"] == "bob" and len(read_episodes(home)[0]) == 1
    assert "secret" not in episodes_path(home).read_text()
    r = CliRunner().invoke(cli, ["tenants", "list", "--home", str(home)])
    assert "off" in r.output.splitlines()[1] and "on" in r.output.splitlines()[2]


def test_an_unwritable_queue_never_fails_the_request_and_the_turn_is_queued_later(gw, home, caplog):
    client, gateway, keys, _ = gw
    episodes_path(home).mkdir(parents=True)  # a directory where the file should be: OSError
    with caplog.at_level(logging.WARNING, logger="bakehouse.serving.gateway"):
        r = _chat(client, keys["alice"], [{"role": "user", "content": "hi"}], conv="c1")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi"
        _wait(lambda: "not recorded" in caplog.text)
    episodes_path(home).rmdir()
    _chat(client, keys["alice"], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "echo: hi"},
                                  {"role": "user", "content": "again"}], conv="c1")
    (rec,) = _queued(home, 1)
    assert rec["from"] == 0 and len(rec["messages"]) == 4  # nothing of the failed turn is lost


# -- the runtime's reader and idle closing ---------------------------------------------------------

@pytest.fixture
def store(home):
    """alice learns from her conversations for the whole tenant (policy learn_episodes=tenant:
    what these tests grade is the summary; scoping is tested in test_trust.py)."""
    s = MemoryStore.in_home(home, actor="test")
    s.trust.set_policy("alice", learn_episodes="tenant")
    yield s
    s.close()


def _turn(home, conv, start, *texts, tenant="alice", user=None):
    roles = ["user", "assistant"] * len(texts)
    append_episode(home, tenant, conv, start, [{"role": r, "content": t} for r, t in zip(roles, texts)], "base",
                   user)


def test_the_reader_keeps_one_episode_per_conversation_without_duplicates(home, store):
    _turn(home, "c1", 0, "hi", "hello")
    _turn(home, "c1", 2, "more", "sure")
    _turn(home, "c2", 0, "other", "ok")
    reader = EpisodeReader(store, home)
    assert len(reader.poll()) == 2
    (e1, e2) = store.episodes("alice")
    assert (e1.conversation_id, [m["content"] for m in e1.messages]) == ("c1", ["hi", "hello", "more", "sure"])
    assert e2.conversation_id == "c2" and e1.status == e2.status == "open"
    assert reader.poll() == [] and EpisodeReader(store, home).poll() == []  # the offset is kept
    _turn(home, "c1", 0, "hi", "hello", "more", "sure", "last")  # a restarted gateway resends it all
    EpisodeReader(store, home).poll()
    assert [m["content"] for m in store.episode(e1.id).messages] == ["hi", "hello", "more", "sure", "last"]
    # after it closes, the same conversation goes on in a new episode, from where the old one ended
    store.close_episode(e1.id)
    _turn(home, "c1", 0, "hi", "hello", "more", "sure", "last", "back again")
    (ep,) = EpisodeReader(store, home).poll()
    assert ep.id != e1.id and ep.conversation_start == 5 and [m["content"] for m in ep.messages] == ["back again"]
    assert store.conversation_episode("alice", "c1").id == ep.id


def test_episodes_close_after_the_idle_minutes(home, store):
    _turn(home, "c1", 0, "hi", "hello")
    EpisodeReader(store, home).poll()
    assert close_idle(store, 30) == []
    later = datetime.now(timezone.utc) + timedelta(minutes=31)
    (ep,) = close_idle(store, 30, now=later)
    assert ep.status == "closed" and store.episodes("alice", status="open") == []
    with pytest.raises(ValueError, match="episode_idle"):
        RuntimeConfig(home=home, model_dir=home, episode_idle=0)


# -- summaries -----------------------------------------------------------------------------------

class Scripted:
    """A tenant model that answers from a script (an Exception instance is raised)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, tenant, messages, *, max_tokens, temperature):
        self.calls.append((tenant, messages, temperature))
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a


def _closed(home, store, conv, *texts, tenant="alice"):
    """A conversation of alternating user and assistant `texts`, recorded and closed."""
    _turn(home, conv, 0, *texts, tenant=tenant)
    EpisodeReader(store, home).poll()
    close_idle(store, 1, now=datetime.now(timezone.utc) + timedelta(minutes=2))
    return store.conversation_episode(tenant, conv)


@pytest.fixture
def closed(home, store):
    return _closed(home, store, "c1", "I'm planning a trip to Lisbon in May.", "Lisbon in May is warm and sunny.")


GOOD = "The user is planning a trip to Lisbon in May."
THEIR_WORDS = 'The user said: "I\'m planning a trip to Lisbon in May."'  # the extractive summary


def test_a_grounded_summary_is_kept_as_the_model_said_it(store, closed):
    model = Scripted(f'"{GOOD}"')
    (m,) = summarise_closed(store, model, max_tries=3)
    assert (m.kind, m.text) == ("episode_summary", GOOD)
    asked = model.calls[0][1][0]["content"]
    assert "I'm planning a trip to Lisbon in May." in asked and SUMMARY_ASK in asked
    assert "warm" not in asked  # the assistant's answer is not asked about
    assert grounded(m.text, user_statements(closed.messages)) == (True, None)


@pytest.mark.parametrize("answer, reason", [
    ("", "empty summary"),
    ("   ", "empty summary"),
    ("Lisbon trip.", "too short"),
    ("The user " + "talked about many things and " * 30, "too long"),
    ("I'm planning a trip to Lisbon in May.", "echoes the prompt"),
    ("User: I'm so glad you enjoyed the trip.", "echoes the prompt"),
    (SUMMARY_ASK, "echoes the prompt"),
    ("The trip trip trip trip trip trip trip trip trip", "repeats itself"),
    ("the user said the user said the user said the user said", "repeats itself"),
    # what only the assistant said, a name nobody said, the user's facts left out
    ("The user is planning a trip to Lisbon in May, where it is warm and sunny.", "not grounded: only 60%"),
    ("The user is planning a trip to Porto in May.", "a name the user never said: Porto"),
    ("The user mentioned that they are planning a trip.", "leaves out what the user said: Lisbon, May"),
])
def test_an_unusable_summary_is_dropped_and_the_users_own_words_are_stored(store, closed, answer, reason, caplog):
    model = Scripted(answer)
    with caplog.at_level(logging.WARNING, logger="bakehouse.runtime.episodes"):
        (m,) = summarise_closed(store, model, max_tries=3)
    assert m.text == THEIR_WORDS and store.episode(closed.id).summarised
    assert store.episode(closed.id).summary_tries == 0  # stored at once: a retry would not be better
    assert "dropped the model's summary" in caplog.text and reason in caplog.text  # what was dropped, why
    assert summarise_closed(store, model, max_tries=3) == [] and len(model.calls) == 1


def test_a_model_error_stores_nothing_and_the_episode_waits_for_a_retry(store, closed):
    model = Scripted(httpx.ConnectError("engine gone"), GOOD)
    assert summarise_closed(store, model, max_tries=3) == []
    ep = store.episode(closed.id)
    assert (ep.status, ep.summarised, ep.summary_tries) == ("closed", False, 1)
    assert "model error" in ep.summary_error and len(ep.messages) == 2  # the transcript is kept
    assert store.memories("alice", kind="episode_summary") == []
    (m,) = summarise_closed(store, model, max_tries=3)  # the next tick tries again
    assert m.text == GOOD and store.episode(closed.id).summary_error is None


@pytest.mark.parametrize("user, assistant", [
    ("What is the Silver Stag?", "The 100-year-old Silver Stag is a historic landmark in Dunmere."),
    ("Hello", "Hello! I'm sorry for the misunderstanding."),
    ("who wrote hamlet", "Hamlet was written by Shakespeare."),
    ("Tell me a joke about cats.", "Why did the cat sit on the computer? To keep an eye on the mouse."),
    ("ok thanks!", "You're welcome!"),
])
def test_a_conversation_in_which_the_user_stated_nothing_stores_no_memory_and_is_left_alone(
        home, store, user, assistant):
    ep = _closed(home, store, "c1", user, assistant)
    model = Scripted()  # an empty script: asking it would be a model error
    for _ in range(4):
        assert summarise_closed(store, model, max_tries=3) == []
    ep = store.episode(ep.id)
    assert model.calls == [] and store.memories("alice", kind="episode_summary") == []
    assert (ep.summary_error, ep.summary_tries, ep.summarised) == (NOTHING_SAID, 1, False)  # marked once
    (row,) = episode_rows(store)
    assert row["status"] == "skipped"  # not a failure


def test_episodes_without_statements_do_not_hold_back_the_others(home, store):
    for i in range(5):
        _closed(home, store, f"q{i}", f"What is {i} plus {i}?", f"{i + i}.")
    _closed(home, store, "c9", "My cat Miso is three.", "Lovely!")
    (m,) = summarise_closed(store, Scripted("The user's cat Miso is three."), max_tries=3, limit=1)
    assert m.text == "The user's cat Miso is three."


@pytest.mark.parametrize("answer, stored", [
    ("The user mentioned a user's locker code, which is a common practice in the context of a conversation.",
     'The user said: "My locker code is 7734."'),  # measured: the code itself was lost
    ("The user mentioned their locker code.", 'The user said: "My locker code is 7734."'),
    ("The user told me that they have a locker code of 7734.",  # measured with the new prompt
     "The user told me that they have a locker code of 7734."),
])
def test_the_locker_code_survives_its_summary(home, store, answer, stored):
    _closed(home, store, "c1", "My locker code is 7734. Please remember my locker code.", "Sure, I'll remember it.")
    model = Scripted(answer)
    (m,) = summarise_closed(store, model, max_tries=3)
    assert m.text == stored and "7734" in m.text
    asked = model.calls[0][1][0]["content"]
    assert "My locker code is 7734." in asked and "Please remember" not in asked and "Sure" not in asked


@pytest.mark.parametrize("answer", [
    "The user mentioned that the 100-year-old Silver Stag is a historic landmark in Dunmere.",  # measured
    "The user said the Silver Stag is a historic landmark in Dunmere.",
    "The user is going to the Silver Stag, a landmark in Dunmere, next week.",
])
def test_a_summary_asserting_what_only_the_assistant_said_is_dropped(home, store, answer, caplog):
    _closed(home, store, "c1", "I'm going to the Silver Stag next week.",
            "The 100-year-old Silver Stag is a historic landmark in Dunmere.",
            "What should I see there?", "The old bridge of Dunmere, built in 1820.")
    model = Scripted(answer)
    with caplog.at_level(logging.WARNING, logger="bakehouse.runtime.episodes"):
        (m,) = summarise_closed(store, model, max_tries=3)
    assert m.text == 'The user said: "I\'m going to the Silver Stag next week."'
    assert "Dunmere" not in m.text and "landmark" not in m.text
    assert "Dunmere" not in model.calls[0][1][0]["content"]  # it was never shown what the assistant said
    assert "not grounded" in caplog.text and "Dunmere" in caplog.text


def test_what_the_user_asked_to_be_remembered_survives_a_long_conversation(home, store):
    chat = []
    for i in range(8):
        chat += [f"My neighbour number {i} grows tomatoes, beans and pumpkins in the garden.", "Nice."]
    chat += ["My gate code is 4412, please remember it.", "Sure."]
    _closed(home, store, "c1", *chat)
    (m,) = summarise_closed(store, Scripted("The user talked about gardens."), max_tries=3)
    assert m.text.startswith('The user said: "My gate code is 4412." "My neighbour number 0 ')
    assert len(m.text) <= 400 and "number 7" not in m.text  # capped


def test_tries_are_capped_and_a_summary_is_stored_hot(store, closed, home):
    model = Scripted(*[ModelError("HTTP 500")] * 3)
    for _ in range(5):
        summarise_closed(store, model, max_tries=3)
    assert len(model.calls) == 3 and store.episode(closed.id).summary_tries == 3  # then left alone
    _closed(home, store, "c9", "My cat Miso is three.", "Lovely!")
    (m,) = summarise_closed(store, Scripted("The user's cat Miso is three."), max_tries=3)
    assert (m.kind, m.text, m.source) == ("episode_summary", "The user's cat Miso is three.",
                                          f"episode:{m.source.split(':')[1]}")
    assert m.text in store.compose("alice").text  # hot at once
    rows = {r["conversation_id"]: r for r in episode_rows(store)}
    assert rows["c9"]["status"] == "summarised" and rows["c9"]["summary"] == m.text
    assert rows["c1"]["status"] == "closed" and rows["c1"]["summary_tries"] == 3


def test_an_engine_that_is_not_ready_counts_no_try(store, closed):
    assert summarise_closed(store, Scripted(ModelUnavailable("starting")), max_tries=3) == []
    assert store.episode(closed.id).summary_tries == 0


def test_check_summary_cleans_a_good_one():
    assert check_summary(f"Summary: {GOOD}", "a prompt") == (GOOD, None)


def test_bakehouse_episodes_lists_status_and_summary_or_failure(home, store, closed):
    _closed(home, store, "c3", "Hello", "Hi! How can I help?")
    summarise_closed(store, Scripted(ModelError("HTTP 500: boom")), max_tries=3)  # c3: not asked
    _turn(home, "c2", 0, "hello there", "hi", tenant="bob")
    EpisodeReader(store, home).poll()
    r = CliRunner().invoke(cli, ["episodes", "--home", str(home)])
    assert r.exit_code == 0, r.output
    lines = {line.split()[2]: line for line in r.output.splitlines()[1:]}
    assert "alice" in lines["c1"] and "closed" in lines["c1"] and "failed 1x: model error" in lines["c1"]
    assert "skipped" in lines["c3"] and "nothing to remember" in lines["c3"] and "failed" not in lines["c3"]
    assert "bob" in lines["c2"] and "open" in lines["c2"]
    r = CliRunner().invoke(cli, ["episodes", "--tenant", "bob", "--json", "--home", str(home)])
    (row,) = json.loads(r.output)
    assert (row["tenant"], row["conversation_id"], row["status"], row["messages"]) == ("bob", "c2", "open", 2)
    r = CliRunner().invoke(cli, ["episodes", "--tenant", "nobody", "--home", str(home)])
    assert r.exit_code == 1 and "nobody" in r.output


# -- the real model --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.vllm
def test_a_conversation_through_the_gateway_is_recorded_and_summarised_by_the_real_model(served):
    url, key = served.url, served.keys["carol"]  # carol is served the base SmolLM2
    history = [{"role": "user", "content": "I'm planning a trip to Lisbon in May with my sister Ana."}]
    for follow_up in ("What should we eat there?", None):
        r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}",
                       CONVERSATION_HEADER: "trip-1"}, json={"messages": history, "max_tokens": 40, "user": "u1"},
                       timeout=120)
        assert r.status_code == 200
        history.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
        if follow_up:
            history.append({"role": "user", "content": follow_up})
    with MemoryStore.in_home(served.home, actor="test") as store:
        t0 = time.monotonic()
        while not any(ep.conversation_id == "trip-1" and len(ep.messages) == 4
                      for ep in (store.episodes("carol") if "carol" in store.tenants() else [])):
            assert time.monotonic() - t0 < 10, "the conversation was not recorded"
            EpisodeReader(store, served.home).poll()
            time.sleep(0.1)
        ep = store.conversation_episode("carol", "trip-1", "u1")
        assert [m["role"] for m in ep.messages] == ["user", "assistant", "user", "assistant"]
        assert ep.messages[0]["content"] == history[0]["content"] and ep.messages[3]["version"] == "base"
        close_idle(store, 1, now=datetime.now(timezone.utc) + timedelta(minutes=2))
        model = ServedModel(served.gateway)
        summaries = []
        for _ in range(3):  # greedy first, then sampled retries
            summaries += summarise_closed(store, model, max_tries=3)
            if summaries:
                break
        ep = store.episode(ep.id)
        assert summaries, f"no summary after {ep.summary_tries} tries: {ep.summary_error}"
        print("summary:", summaries[0].text)
        assert ep.summarised and summaries[0].kind == "episode_summary"
        assert summaries[0].end_user == "u1"  # the default policy: the summary is its end user's
        assert check_summary(summaries[0].text, "")[0] == summaries[0].text


def test_the_runtime_records_closes_and_summarises_into_the_hot_tier(home, tiny_model_dir, monkeypatch):
    from agent.runtime.runtime import Runtime
    from serving.feedback import append_feedback

    rt = Runtime(RuntimeConfig(home=home, model_dir=tiny_model_dir, episode_idle=0.001), engine=FakeEngine())
    try:
        _turn(home, "c1", 0, "I'm planning a trip to Lisbon in May.", "Lisbon in May is warm and sunny.", user="u1")
        append_feedback(home, "alice", {"comment": "That was far too long.", "rating": -1, "conversation_id": "c1",
                                        "user": "u1"})
        rt.learn_feedback()  # the engine is not up: the episode is recorded, nothing is proposed
        store = rt.learner.store
        (ep,) = store.episodes("alice")
        assert (ep.conversation_id, ep.end_user) == ("c1", "u1") and store.memories("alice", users=True) == []
        time.sleep(0.1)
        rt.summarise_episodes()  # closed after the idle minutes; the summary waits for the engine
        ep = store.episode(ep.id)
        assert (ep.status, ep.summarised, ep.summary_tries) == ("closed", False, 0)

        monkeypatch.setattr(ServedModel, "__call__", lambda self, tenant, messages, **kw: GOOD)
        rt.summarise_episodes()
        assert store.episode(ep.id).summarised
        asked = [{"role": "user", "content": "What about my trip to Lisbon?"}]
        # in u1's hot tier at once (the default policy scopes it to them), in no one else's
        assert GOOD in rt.hot.prompt("alice", "base", asked, "u1").text
        assert GOOD not in rt.hot.prompt("alice", "base", asked, "u2").text
        assert GOOD not in rt.hot.prompt("alice", "base", asked).text
    finally:
        if rt.learner is not None:
            rt.learner.stop()
            rt.learner.store.close()
