"""Multi-tenant isolation on one base: three tenants, each with its own persona and memories in the
hot tier (alice's persona baked into an adapter), served side by side through one gateway.

No tenant's persona, memories, episodes or feedback reach another through any endpoint: the
forwarded chat and completion requests (what reaches the engine, the served-version and hot-token
headers), /v1/models, /v1/feedback, the episode queue and the runtime's reader, /metrics, the
operator's /status, `bakehouse episodes --tenant`. A wrong key or another tenant's model name gets
the OpenAI-shaped error and reaches nothing.

All but the last test run the real runtime (`Runtime`: hot tier, feedback and episode readers,
metrics collector, status page) against a fake vLLM that records every body it receives; the last
asks a real vLLM through the `served` gateway and checks the prompt tokens it counted.
"""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from serving_helpers import FakeEngine, make_adapter

from agent.cli import cli
from agent.runtime import RuntimeConfig
from agent.runtime.episodes import ServedModel, close_idle
from memory import MemoryStore
from serving.episodes import CONVERSATION_HEADER, read_episodes
from serving.feedback import read_feedback
from serving.gateway import create_app
from serving.registry import Registry
from serving.tenants import TenantStore

ADMIN = "bh-admin-isolation-test"
# each tenant's persona and one fact; SECRETS are the words that must never cross a tenant line
PERSONAS = {
    "alice": ("You are Ada, the ship's cook aboard the Marigold.", "The user's cat is called Miso."),
    "bob": ("You are Captain Brann, and you end every answer with 'Arr, Kestrel!'.",
            "The user sails a sloop named Tamsin."),
    "carol": ("You are Professor Quill of Lindenhall College.", "The user's sister Ines lives in Porto."),
}
SECRETS = {
    "alice": ["Ada", "Marigold", "Miso"],
    "bob": ["Brann", "Kestrel", "Tamsin"],
    "carol": ["Quill", "Lindenhall", "Ines", "Porto"],
}
TENANTS = tuple(PERSONAS)


def leaked(text: str, tenant: str) -> list[str]:
    """Other tenants' secret words found in `text` (whole words)."""
    return [w for other in TENANTS if other != tenant for w in SECRETS[other] if re.search(rf"\b{w}\b", text)]


def fake_vllm(bodies: list) -> FastAPI:
    """Records each body; answers "[<model>] <the last user message or the prompt's tail>"."""
    app = FastAPI()

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict):
        return "ok"

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict):
        return "ok"

    async def generate(request: Request):
        body = await request.json()
        bodies.append(body)
        said = body["messages"][-1]["content"] if "messages" in body else body["prompt"].rsplit("\n\n", 1)[-1]
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        if "messages" in body:
            return {"object": "chat.completion", "model": body["model"], "usage": usage,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": f"[{body['model']}] {said}"}}]}
        return {"object": "text_completion", "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "text": f"[{body['model']}] {said}"}]}

    app.add_api_route("/v1/chat/completions", generate, methods=["POST"])
    app.add_api_route("/v1/completions", generate, methods=["POST"])
    return app


@pytest.fixture(scope="module")
def alice_adapter(tmp_path_factory, tiny_model_dir):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("iso-adapter") / "a", seed=5)


@pytest.fixture
def rt(home, tiny_model_dir, alice_adapter):
    """SimpleNamespace-like dict: the runtime, its gateway's client, the keys, the fake engine's
    bodies, each tenant's memories. alice is served alice@v1, which holds her persona."""
    from agent.runtime.page import ensure_admin_key, router
    from agent.runtime.runtime import Runtime

    tenants = TenantStore(home)
    keys = {t: tenants.add(t)[1] for t in TENANTS}
    ensure_admin_key(home, ADMIN)
    memories = {}
    with MemoryStore.in_home(home, actor="test") as store:
        for t, (persona, fact) in PERSONAS.items():
            memories[t] = (store.add(t, "persona", persona).id, store.add(t, "fact", fact).id)
            store.trust.set_policy(t, "assistant")  # rules and summaries learned at once, tenant-wide
        v = Registry(home).publish("alice", alice_adapter, tiny_model_dir, 32)
        store.record_bake("alice", v.name, memory_ids=[memories["alice"][0]], prompt_hash="", layer=0)
    bodies: list = []
    runtime = Runtime(RuntimeConfig(home=home, model_dir=tiny_model_dir, idle_seconds=1e9),
                      engine=FakeEngine(), transport=httpx.ASGITransport(app=fake_vllm(bodies)))
    runtime.tick()  # the hot tier and the metrics snapshot (no bake: never idle long enough)
    try:
        with TestClient(create_app(runtime.gateway, routers=(router(home),))) as client:
            _wait(lambda: runtime.gateway.ready and runtime.gateway.routes.get("alice") == "alice@v1")
            yield {"rt": runtime, "client": client, "keys": keys, "bodies": bodies, "memories": memories}
    finally:
        if runtime.learner is not None:
            runtime.learner.stop()
            runtime.learner.store.close()


def _wait(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _auth(key, conv=None):
    return {"Authorization": f"Bearer {key}", **({CONVERSATION_HEADER: conv} if conv else {})}


def _chat(client, key, text="Who are you?", conv=None, **body):
    return client.post("/v1/chat/completions", headers=_auth(key, conv),
                       json={"messages": [{"role": "user", "content": text}], **body})


ABOUT_ALL = "Who are you? Tell me about my cat, my sloop and my sister."  # each tenant's fact is about one


def test_each_tenant_is_sent_its_own_hot_prompt_and_nothing_of_anyone_elses(rt):
    client, keys, bodies, hot = rt["client"], rt["keys"], rt["bodies"], rt["rt"].hot
    expect_version = {"alice": "alice@v1", "bob": "base", "carol": "base"}
    for t in TENANTS:
        r = _chat(client, keys[t], ABOUT_ALL)
        assert r.status_code == 200, r.text
        sent = json.dumps(bodies[-1])
        assert bodies[-1]["model"] == expect_version[t] and bodies[-1]["cache_salt"] == t
        assert r.headers["x-bakehouse-version"] == expect_version[t] == r.json()["model"]
        ids = [int(i) for i in r.headers["x-bakehouse-hot-memories"].split(",")]
        assert set(ids) == set(rt["memories"][t]) - ({rt["memories"]["alice"][0]} if t == "alice" else set())
        assert int(r.headers["x-bakehouse-hot-tokens"]) == hot.prompt(t, expect_version[t], [
            {"role": "user", "content": ABOUT_ALL}]).tokens > 0
        assert not leaked(sent, t) and not leaked(r.text, t), (t, sent)
        own = [w for w in SECRETS[t] if re.search(rf"\b{w}\b", sent)]
        # alice's persona is in her adapter (alice@v1 holds it): only her fact is in her prompt
        assert own == (["Miso"] if t == "alice" else SECRETS[t]), (t, sent)
        r = client.post("/v1/completions", headers=_auth(keys[t]), json={"prompt": f"Q: {ABOUT_ALL}\nA:"})
        assert r.status_code == 200 and r.json()["model"] == expect_version[t]
        text = hot.prompt(t, expect_version[t], [{"role": "user", "content": f"Q: {ABOUT_ALL}\nA:"}]).text
        assert text and bodies[-1]["prompt"].startswith(text)
        assert not leaked(json.dumps(bodies[-1]), t) and not leaked(r.text, t)


@pytest.mark.parametrize("caller, model", [("bob", "alice"), ("bob", "alice@v1"), ("alice", "bob"),
                                           ("carol", "base"), ("alice", "carol@v1")])
def test_another_tenants_model_name_is_a_404_that_reaches_nothing(rt, caller, model):
    client, keys, bodies = rt["client"], rt["keys"], rt["bodies"]
    for path, body in [("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})]:
        r = client.post(path, headers=_auth(keys[caller]), json={**body, "model": model})
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["type"] and err["message"]
        assert not leaked(r.text, caller) and "x-bakehouse-version" not in r.headers
        assert model == "alice@v1" or "alice@v1" not in r.text  # no other tenant's version names
    assert bodies == []  # nothing reached the engine


def test_a_wrong_key_is_a_401_and_models_lists_only_the_callers_own(rt):
    client, keys, bodies = rt["client"], rt["keys"], rt["bodies"]
    for headers in ({}, {"Authorization": "Bearer bh-000000000000-wrong"}, {"Authorization": f"Bearer {ADMIN}"}):
        r = client.post("/v1/chat/completions", headers=headers, json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client.post("/v1/feedback", headers=headers, json={"rating": 1}).status_code == 401
        assert client.get("/v1/models", headers=headers).status_code == 401
    assert bodies == []
    for t in TENANTS:
        r = client.get("/v1/models", headers=_auth(keys[t]))
        assert [m["id"] for m in r.json()["data"]] == [t]
        assert r.json()["data"][0]["version"] == ("alice@v1" if t == "alice" else "base")
        for other in TENANTS:
            status = client.get(f"/v1/models/{other}", headers=_auth(keys[t])).status_code
            assert status == (200 if other == t else 404)


def test_feedback_is_queued_and_learned_under_the_callers_tenant_only(rt, monkeypatch):
    client, keys, runtime = rt["client"], rt["keys"], rt["rt"]
    asked = []

    def propose(self, tenant, messages, **kw):
        asked.append((tenant, messages[-1]["content"]))
        return "Keep answers short."

    monkeypatch.setattr(ServedModel, "__call__", propose)
    assert _chat(client, keys["alice"], "Tell me about my cat Miso.", conv="c-alice").status_code == 200
    _wait(lambda: len(read_episodes(runtime.cfg.home)[0]) == 1)
    # bob names alice's conversation: a rule he states is his; a comment without one finds no
    # episode of his under that id, so his model is not asked and alice's episode is not touched
    for comment in ("From now on call me Captain.", "That was far too long."):
        r = client.post("/v1/feedback", headers=_auth(keys["bob"]),
                        json={"comment": comment, "rating": -1, "conversation_id": "c-alice"})
        assert r.status_code == 200
    r = client.post("/v1/feedback", headers=_auth(keys["alice"]), json={"comment": "x", "tenant": "bob"})
    assert r.status_code == 400  # a tenant cannot name another
    runtime.learn_feedback()
    assert [r["tenant"] for r in read_feedback(runtime.cfg.home)[0]] == ["bob", "bob"]
    store = runtime.learner.store
    assert [m.text for m in store.memories("bob", kind="instruction")] == ["Call me Captain."]
    assert store.memories("alice", kind="instruction") == [] and asked == []
    def hot(t, v):
        return runtime.hot.prompt(t, v, [{"role": "user", "content": "Call me what?"}]).text

    assert "Call me Captain." in hot("bob", "base")
    assert all("Call me Captain." not in hot(t, v) for t, v in [("alice", "alice@v1"), ("carol", "base")])

    # the same comment from alice, on her own conversation: her model proposes from her transcript
    assert client.post("/v1/feedback", headers=_auth(keys["alice"]),
                       json={"comment": "That was far too long.", "conversation_id": "c-alice"}).status_code == 200
    runtime.learn_feedback()
    ((tenant, prompt),) = asked
    assert tenant == "alice" and "Miso" in prompt and not leaked(prompt, "alice")
    assert [m.text for m in store.memories("alice", kind="instruction")] == ["Keep answers short."]
    assert [m.text for m in store.memories("bob", kind="instruction")] == ["Call me Captain."]


def test_episodes_are_recorded_under_the_caller_only(rt, monkeypatch, home):
    client, keys, runtime = rt["client"], rt["keys"], rt["rt"]
    said = {"alice": "My cat Miso sleeps all day.", "bob": "I sail the Tamsin on Sundays.",
            "carol": "Ines moved to Porto."}
    for t in TENANTS:  # the same client conversation id for all three
        assert _chat(client, keys[t], said[t], conv="c-shared").status_code == 200
    assert _chat(client, keys["bob"], said["alice"]).status_code == 200  # no header: a derived id
    _wait(lambda: len(read_episodes(home)[0]) == 4)
    for record in read_episodes(home)[0]:
        text = json.dumps(record["messages"])
        assert not leaked(text, record["tenant"]) or record["tenant"] == "bob" and "Miso" in text
        assert "You are" not in text  # the hot prompt is never recorded
    runtime.learn_feedback()  # reads the episode queue first
    store = runtime.learner.store
    for t in TENANTS:
        ep = store.conversation_episode(t, "c-shared")
        assert [m["content"] for m in ep.messages][0] == said[t] and len(ep.messages) == 2
        assert ep.messages[1]["version"] == ("alice@v1" if t == "alice" else "base")
    assert len(store.episodes("bob")) == 2 and len(store.episodes("alice")) == len(store.episodes("carol")) == 1

    r = CliRunner().invoke(cli, ["episodes", "--tenant", "carol", "--json", "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert [(row["tenant"], row["conversation_id"]) for row in json.loads(r.output)] == [("carol", "c-shared")]
    r = CliRunner().invoke(cli, ["episodes", "--tenant", "alice", "--home", str(home)])
    assert r.exit_code == 0 and "alice" in r.output and "bob" not in r.output and "carol" not in r.output

    # summaries: each episode goes to its own tenant's model with its own transcript only
    asked = []

    def summarise(self, tenant, messages, **kw):
        asked.append((tenant, messages[-1]["content"]))
        return f"The user of {tenant} talked about their week at some length."

    monkeypatch.setattr(ServedModel, "__call__", summarise)
    from datetime import datetime, timedelta, timezone

    close_idle(store, 1, now=datetime.now(timezone.utc) + timedelta(minutes=2))
    runtime.summarise_episodes()
    runtime.summarise_episodes()
    assert sorted(t for t, _ in asked) == ["alice", "bob", "bob", "carol"]
    for tenant, transcript in asked:
        assert not leaked(transcript, tenant) or tenant == "bob" and "Miso" in transcript
    for t in TENANTS:  # the model's summary is grounded in nothing said: each keeps its own user's words
        own = {said[t]} | ({said["alice"]} if t == "bob" else set())
        assert {m.text for m in store.memories(t, kind="episode_summary")} == {f'The user said: "{s}"' for s in own}


def test_metrics_and_the_status_page_name_tenants_but_show_no_content(rt):
    client, keys, runtime = rt["client"], rt["keys"], rt["rt"]
    for t in TENANTS:
        assert _chat(client, keys[t], f"secret question of {t}: {SECRETS[t][-1]}").status_code == 200
    runtime.tick()  # a fresh snapshot for the runtime's metrics
    text = client.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    labels = {s.labels.get("tenant") for f in text_string_to_metric_families(text) for s in f.samples}
    assert labels - {None} <= {"", *TENANTS} and set(TENANTS) <= labels
    hot = {s.labels["tenant"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "bakehouse_hot_memories"}
    assert hot == {"alice": 1, "bob": 2, "carol": 2}  # alice's persona is in her weights
    for t in TENANTS:
        assert all(w not in text for w in SECRETS[t])
        assert keys[t] not in text and keys[t][:15] not in text
    assert str(runtime.cfg.home) not in text and "You are" not in text

    # the operator's page: the operator key only, never a tenant's
    for headers in ({}, *({"Authorization": f"Bearer {keys[t]}"} for t in TENANTS)):
        r = client.get("/status", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
        assert not any(w in r.text for t in TENANTS for w in SECRETS[t])
    r = client.get("/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and all(t in r.text for t in TENANTS)
    assert not any(k in r.text for k in keys.values())


# -- the real engine -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.vllm
def test_the_real_engine_counts_each_tenants_own_hot_prompt(served):
    """alice (adapter a1), bob (b1) and carol (the base) with their personas in the hot tier, on one
    vLLM: each answer names its own version, and the prompt tokens vLLM counted are exactly the
    caller's hot prompt + the question in the chat template (not another tenant's)."""
    from transformers import AutoTokenizer

    from agent.runtime.hot import HotTier
    from baker.chat import chat_ids

    tok = AutoTokenizer.from_pretrained(served.base)
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    with MemoryStore.in_home(served.home, actor="test") as store:
        for t, (persona, fact) in PERSONAS.items():
            store.add(t, "persona", persona)
            store.add(t, "fact", fact)
    tier = HotTier(served.home, 1500, count_tokens=count)
    served.gateway.hot_source = tier.prompt  # what `bakehouse run` injects
    question = "What is your name?"
    versions = {"alice": "alice@v1", "bob": "bob@v1", "carol": "base"}
    hot = {t: tier.prompt(t, versions[t], [{"role": "user", "content": question}]) for t in TENANTS}
    expected = {t: len(chat_ids(tok, question, hot[t].text)) for t in TENANTS}
    assert len(set(expected.values())) == 3  # the personas differ in length: the count tells them apart
    for t in TENANTS:
        r = httpx.post(f"{served.url}/v1/chat/completions", headers=_auth(served.keys[t]), timeout=120,
                       json={"model": t, "messages": [{"role": "user", "content": question}],
                             "max_tokens": 24, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert r.headers["x-bakehouse-version"] == versions[t] == body["model"]
        assert int(r.headers["x-bakehouse-hot-tokens"]) == hot[t].tokens
        assert body["usage"]["prompt_tokens"] == expected[t], (t, body["usage"], expected)
        answer = body["choices"][0]["message"]["content"]
        print(f"{t} ({versions[t]}): {answer!r}")
        assert not leaked(answer, t), answer
