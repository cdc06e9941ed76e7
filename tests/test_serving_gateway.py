"""The gateway's routing, auth, swap protocol and error shapes against a fake vLLM (no engine).

The fake speaks the few vLLM endpoints the gateway uses and answers "from <model>", so the tests
see exactly which adapter name a request was routed to.
"""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from serving_helpers import FakeEngine, make_adapter

from serving.config import ServeConfig
from serving.gateway import Gateway, create_app, read_status
from serving.limits import Limits, TenantMeter
from serving.registry import Registry
from serving.tenants import TenantStore


class FakeVLLM:
    def __init__(self):
        self.loaded: dict[str, str] = {}
        self.refuse: set[str] = set()  # names whose load fails
        self.unreachable = False  # loads fail as if the engine were gone
        self.dying = False  # requests lose their connection
        self.log: list[tuple[str, str]] = []
        self.bodies: list[dict] = []
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health():
            return {}

        @app.post("/v1/load_lora_adapter")
        async def load(body: dict):
            name = body["lora_name"]
            if self.unreachable:
                raise httpx.ConnectError("engine gone")
            if name in self.refuse:
                return JSONResponse({"error": {"message": "bad adapter", "type": "X", "code": 500}}, 500)
            if name in self.loaded:
                return JSONResponse({"error": {"message": "has already been loaded"}}, 400)
            self.loaded[name] = body["lora_path"]
            self.log.append(("load", name))
            return "ok"

        @app.post("/v1/unload_lora_adapter")
        async def unload(body: dict):
            self.loaded.pop(body["lora_name"], None)
            self.log.append(("unload", body["lora_name"]))
            return "ok"

        async def generate(request: Request):
            body = await request.json()
            self.bodies.append(body)
            if self.dying:
                raise httpx.ConnectError("engine gone")
            m = body["model"]
            if m != "base" and m not in self.loaded:
                return JSONResponse({"error": {"message": f"The model `{m}` does not exist. Valid: {list(self.loaded)}"}}, 404)
            await asyncio.sleep((body.get("metadata") or {}).get("delay", 0))
            return {"object": "chat.completion", "model": m, "choices": [{"message": {"content": f"from {m}"}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}

        app.add_api_route("/v1/chat/completions", generate, methods=["POST"])
        app.add_api_route("/v1/completions", generate, methods=["POST"])
        return app


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("gw-adapters")
    return [make_adapter(tiny_model_dir, d / f"a{i}", seed=i) for i in range(3)]


@pytest.fixture
def limits():
    return Limits()


@pytest.fixture
def gw(home, tiny_model_dir, limits):
    """(client, gateway, fake vllm, fake engine, keys)"""
    store = TenantStore(home)
    keys = {n: store.add(n)[1] for n in ("alice", "bob", "carol")}
    fake, engine = FakeVLLM(), FakeEngine()
    cfg = ServeConfig(model_dir=tiny_model_dir, poll_interval=0.05, limits=limits)
    gateway = Gateway(cfg, home, engine=engine, transport=httpx.ASGITransport(app=fake.app))
    with TestClient(create_app(gateway)) as client:
        _wait(lambda: gateway.ready)
        yield client, gateway, fake, engine, keys


def _wait(cond, timeout=3.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - t0


def _chat(client, key, model=None, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    if model is not None:
        body["model"] = model
    return client.post("/v1/chat/completions", json=body, headers=headers)


def _publish(home, tiny_model_dir, tenant, src):
    return Registry(home).publish(tenant, src, tiny_model_dir, 32)


def test_routing_rewrites_model_and_isolates_caches(gw, home, tiny_model_dir, tiny_adapters):
    client, gateway, fake, _, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    r = _chat(client, keys["alice"], model="alice")
    assert r.status_code == 200 and r.json()["model"] == "alice@v1"
    assert fake.bodies[-1]["cache_salt"] == "alice"
    assert _chat(client, keys["alice"], model=None).json()["model"] == "alice@v1"
    assert _chat(client, keys["bob"], model="bob").json()["model"] == "base"  # no adapter yet
    assert fake.loaded["alice@v1"] == str(home / "adapters/alice/v1")
    r = client.post("/v1/completions", json={"model": "alice", "prompt": "x"},
                    headers={"Authorization": f"Bearer {keys['alice']}"})
    assert r.json()["model"] == "alice@v1"


@pytest.mark.parametrize(
    "key, model, status, code",
    [
        (None, "alice", 401, "invalid_api_key"),
        ("bh-000000000000-wrong", "alice", 401, "invalid_api_key"),
        ("alice", "bob", 404, "model_not_found"),
        ("alice", "bob@v1", 404, "model_not_found"),
        ("alice", "base", 404, "model_not_found"),
    ],
)
def test_errors_are_openai_shaped(gw, home, tiny_model_dir, tiny_adapters, key, model, status, code):
    client, gateway, _, _, keys = gw
    _publish(home, tiny_model_dir, "bob", tiny_adapters[1])
    _wait(lambda: gateway.routes.get("bob") == "bob@v1")
    r = _chat(client, keys.get(key, key), model=model)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["type"] and err["message"]
    assert "/adapters" not in r.text  # no paths
    assert model == "bob@v1" or "bob@v1" not in r.text  # no other tenant's names unless echoed


def test_models_lists_only_the_callers_model(gw):
    client, _, _, _, keys = gw
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {keys['carol']}"})
    assert [m["id"] for m in r.json()["data"]] == ["carol"]
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models/alice", headers={"Authorization": f"Bearer {keys['carol']}"}).status_code == 404


def test_bad_requests(gw):
    client, _, _, _, keys = gw
    h = {"Authorization": f"Bearer {keys['alice']}"}
    assert _chat(client, keys["alice"], seed=3).json()["error"]["message"].startswith("per-request 'seed'")
    r = client.post("/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/embeddings", json={}, headers=h)
    assert r.status_code == 404 and "error" in r.json()


def test_publish_from_another_process_swaps_within_a_second(gw, home, tiny_model_dir, tiny_adapters):
    client, gateway, fake, _, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    t0 = time.monotonic()
    _publish(home, tiny_model_dir, "alice", tiny_adapters[1])
    while _chat(client, keys["alice"]).json()["model"] != "alice@v2":
        assert time.monotonic() - t0 < 1.0
    _wait(lambda: "alice@v1" not in fake.loaded)  # the old version is retired
    assert fake.log.index(("load", "alice@v2")) < fake.log.index(("unload", "alice@v1"))
    Registry(home).rollback("alice", 1)
    _wait(lambda: _chat(client, keys["alice"]).json()["model"] == "alice@v1", timeout=1.0)
    st = read_status(home)
    assert st["routes"]["alice"] == "alice@v1" and st["ready"]


def test_old_version_stays_loaded_until_its_requests_finish(gw, home, tiny_model_dir, tiny_adapters):
    client, gateway, fake, _, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    out = {}
    slow = threading.Thread(target=lambda: out.update(r=_chat(client, keys["alice"], metadata={"delay": 1.0})))
    slow.start()
    _wait(lambda: gateway.inflight["alice@v1"] == 1)
    _publish(home, tiny_model_dir, "alice", tiny_adapters[1])
    _wait(lambda: gateway.routes.get("alice") == "alice@v2")
    time.sleep(0.3)
    assert "alice@v1" in fake.loaded  # still answering the slow request
    slow.join()
    assert out["r"].status_code == 200 and out["r"].json()["model"] == "alice@v1"
    _wait(lambda: "alice@v1" not in fake.loaded)


def test_refused_version_is_marked_failed_and_old_keeps_serving(gw, home, tiny_model_dir, tiny_adapters):
    client, gateway, fake, _, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    fake.refuse.add("alice@v2")
    _publish(home, tiny_model_dir, "alice", tiny_adapters[1])
    _wait(lambda: Registry(home).load()["alice"].versions[2].status == "failed")
    t = Registry(home).load()["alice"]
    assert t.current == 1 and "bad adapter" in t.versions[2].error
    assert _chat(client, keys["alice"]).json()["model"] == "alice@v1"
    assert "alice@v2" in gateway.load_errors["alice"]


def test_engine_down_gives_503_then_restart_reloads_adapters(gw, home, tiny_model_dir, tiny_adapters):
    client, gateway, fake, engine, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    engine.want_up, engine.state = False, "down"
    fake.loaded.clear()  # a new process holds nothing
    r = _chat(client, keys["alice"])
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "engine_unavailable"
    assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200
    engine.want_up = True
    _wait(lambda: gateway.ready)
    assert "alice@v1" in fake.loaded
    assert _chat(client, keys["alice"]).json()["model"] == "alice@v1"


def test_unreachable_engine_is_a_503(home, tiny_model_dir):
    """A transport error (the process died between two health probes) -> 503 + Retry-After."""

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    TenantStore(home).add("alice")
    engine = FakeEngine()
    gateway = Gateway(ServeConfig(model_dir=tiny_model_dir), home, engine=engine,
                      transport=httpx.MockTransport(refuse))
    _, key = TenantStore(home).add("dave")
    with TestClient(create_app(gateway)) as client:
        _wait(lambda: gateway.ready)
        r = _chat(client, key)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert gateway.inflight["base"] == 0


def test_is_idle(gw):
    client, gateway, _, _, keys = gw
    assert gateway.is_idle(0)
    _chat(client, keys["carol"])
    assert not gateway.is_idle(5) and gateway.is_idle(0)
    time.sleep(0.2)
    assert gateway.is_idle(0.1)


class _Source:
    """A hot-prompt source as the runtime injects one: tenant -> served name -> HotPrompt; it
    records what each request asked it."""

    def __init__(self, prompts):
        self.prompts, self.asked = prompts, []

    def __call__(self, tenant, served, messages, user=None):
        from serving.hot import NO_HOT

        self.asked.append((tenant, served, messages))
        versions = self.prompts.get(tenant, {})
        return versions.get(served, versions.get("*", NO_HOT))


def test_hot_prompt_goes_before_the_callers_system_message_per_served_version(gw, home, tiny_model_dir, tiny_adapters):
    from serving.hot import HotPrompt

    client, gateway, fake, _, keys = gw
    base = gateway.cfg.served_base_name
    gateway.hot_source = _Source({"alice": {"*": HotPrompt("ALL MEMORIES", 3), base: HotPrompt("BASE HOT", 3),
                                            "alice@v1": HotPrompt("V1 HOT", 3)}})
    _chat(client, keys["alice"])
    assert fake.bodies[-1]["messages"] == [{"role": "system", "content": "BASE HOT"},
                                           {"role": "user", "content": "hi"}]
    assert gateway.hot_source.asked[-1] == ("alice", base, [{"role": "user", "content": "hi"}])
    client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {keys['alice']}"},
                json={"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    assert fake.bodies[-1]["messages"][0] == {"role": "system", "content": "BASE HOT\n\nBe brief."}
    _chat(client, keys["bob"])  # a tenant without hot memories is sent as it asked
    assert fake.bodies[-1]["messages"] == [{"role": "user", "content": "hi"}]

    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    _chat(client, keys["alice"])
    assert fake.bodies[-1]["messages"][0]["content"] == "V1 HOT"  # asked with the version it routes to
    assert gateway.hot_source.asked[-1][1] == "alice@v1"
    _publish(home, tiny_model_dir, "alice", tiny_adapters[1])
    _wait(lambda: gateway.routes.get("alice") == "alice@v2")
    _chat(client, keys["alice"])
    assert fake.bodies[-1]["messages"][0]["content"] == "ALL MEMORIES"
    r = client.post("/v1/completions", json={"prompt": "Q:"}, headers={"Authorization": f"Bearer {keys['alice']}"})
    assert r.status_code == 200 and fake.bodies[-1]["prompt"] == "ALL MEMORIES\n\nQ:"
    assert gateway.hot_source.asked[-1][2] == [{"role": "user", "content": "Q:"}]  # a prompt, as a user message
    r = client.post("/v1/completions", json={"prompt": [1, 2, 3]}, headers={"Authorization": f"Bearer {keys['alice']}"})
    assert r.status_code == 400 and "token ids" in r.json()["error"]["message"]


def test_answers_name_the_served_version_the_hot_prompts_tokens_and_its_memories(gw, home, tiny_model_dir,
                                                                                 tiny_adapters):
    from serving.hot import HotPrompt

    client, gateway, _, _, keys = gw
    base = gateway.cfg.served_base_name
    gateway.hot_source = _Source({"alice": {base: HotPrompt("BASE", 5, (3, 1)), "alice@v1": HotPrompt("V1", 2, (7,))},
                                  "carol": {"*": HotPrompt("COST UNKNOWN", None, (4,))}})

    def served(key):
        return {k: v for k, v in _chat(client, key).headers.items() if k.startswith("x-bakehouse")}

    assert served(keys["alice"]) == {"x-bakehouse-version": "base", "x-bakehouse-hot-tokens": "5",
                                     "x-bakehouse-hot-memories": "3,1"}
    assert served(keys["bob"]) == {"x-bakehouse-version": "base", "x-bakehouse-hot-tokens": "0",
                                   "x-bakehouse-hot-memories": ""}
    assert served(keys["carol"]) == {"x-bakehouse-version": "base", "x-bakehouse-hot-memories": "4"}
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    assert served(keys["alice"]) == {"x-bakehouse-version": "alice@v1", "x-bakehouse-hot-tokens": "2",
                                     "x-bakehouse-hot-memories": "7"}
    with client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {keys['alice']}"},
                       json={"messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
        assert r.headers["x-bakehouse-version"] == "alice@v1" and r.headers["x-bakehouse-hot-memories"] == "7"
    assert "x-bakehouse-version" not in _chat(client, "bh-000000000000-wrong").headers


def test_ready_is_503_from_a_lost_connection_until_the_engine_answers_a_probe(gw):
    client, gateway, fake, engine, keys = gw
    assert client.get("/ready").status_code == 200
    fake.dying = True  # the engine is dying: its connections drop before its process exits
    r = _chat(client, keys["alice"])
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    assert client.get("/ready").status_code == 503  # at once, though the process still looks alive
    assert _chat(client, keys["alice"]).status_code == 503  # and nothing is routed meanwhile
    fake.dying, engine.suspect = False, False  # what the engine's next answered probe does
    assert client.get("/ready").status_code == 200 and _chat(client, keys["alice"]).status_code == 200


def test_a_failing_hot_source_refuses_the_request_instead_of_answering_without_memories(gw):
    client, gateway, fake, _, keys = gw

    def broken(tenant, served, messages):
        raise OSError("disk I/O error")

    gateway.hot_source = broken
    before = len(fake.bodies)
    r = _chat(client, keys["alice"])
    assert r.status_code == 503 and "memories" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
    assert len(fake.bodies) == before  # nothing reached the engine
    gateway.hot_source = None
    assert _chat(client, keys["alice"]).status_code == 200


def test_metrics_are_prometheus_text_with_tenant_names_only(gw, home, tiny_model_dir, tiny_adapters):
    from prometheus_client.parser import text_string_to_metric_families

    client, gateway, fake, _, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: gateway.routes.get("alice") == "alice@v1")
    for _ in range(3):
        assert _chat(client, keys["alice"]).status_code == 200
    assert _chat(client, "bh-000000000000-wrong").status_code == 401
    assert _chat(client, keys["bob"], model="alice").status_code == 404
    r = client.get("/metrics")  # no key needed
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(r.text) for s in f.samples}
    chat = "/v1/chat/completions"
    assert samples[("bakehouse_requests_total", (("endpoint", chat), ("status", "200"), ("tenant", "alice")))] == 3
    assert samples[("bakehouse_requests_total", (("endpoint", chat), ("status", "401"), ("tenant", "")))] == 1
    assert samples[("bakehouse_requests_total", (("endpoint", chat), ("status", "404"), ("tenant", "bob")))] == 1
    assert samples[("bakehouse_tokens_total", (("kind", "prompt"), ("tenant", "alice")))] == 21
    assert samples[("bakehouse_tokens_total", (("kind", "completion"), ("tenant", "alice")))] == 9
    assert samples[("bakehouse_request_seconds_count", (("endpoint", chat), ("tenant", "alice")))] == 3
    assert samples[("bakehouse_swap_seconds_count", ())] >= 1
    assert samples[("bakehouse_engine_up", ())] == 1
    for key in keys.values():
        assert key not in r.text and key[:15] not in r.text
    assert str(home) not in r.text


# -- what and how much a tenant may send -------------------------------------------------------

@pytest.mark.parametrize("extra, status, message", [
    ({"vllm_xargs": {"x": 1}}, 400, "unsupported field 'vllm_xargs'"),
    ({"kv_transfer_params": {}, "priority": 9}, 400, "unsupported field 'kv_transfer_params' (and 1 more)"),
    ({"request_id": "mine"}, 400, "unsupported field 'request_id'"),
    ({"n": 50}, 400, "'n' must be an integer from 1 to 4"),
    ({"max_tokens": 10**6}, 400, "'max_tokens' must be an integer from 1 to 2048"),
    ({"max_completion_tokens": "9"}, 400, "'max_completion_tokens' must be an integer"),
    ({"messages": [{"role": "user", "content": "hi"}] * 300}, 400, "too many messages: 300 > 256"),
    ({"messages": [{"content": "no role"}]}, 400, "messages[0] must be an object with a role"),
    ({"messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413, "request body of"),
])
def test_only_bounded_openai_fields_reach_the_engine(gw, extra, status, message):
    client, _, fake, _, keys = gw
    r = _chat(client, keys["alice"], **extra)
    assert r.status_code == status and message in r.json()["error"]["message"], r.text
    assert fake.bodies == []  # nothing was forwarded
    ok = _chat(client, keys["alice"], temperature=0.2, max_tokens=16, n=2, stream_options=None, user="u1")
    assert ok.status_code == 200 and fake.bodies[-1]["max_tokens"] == 16


@pytest.mark.parametrize("limits", [Limits(max_inflight=1, max_queued=0)])
def test_a_tenant_past_its_concurrency_gets_429_and_others_do_not(gw, limits):
    client, gateway, _, _, keys = gw
    out = {}
    slow = threading.Thread(target=lambda: out.update(r=_chat(client, keys["alice"], metadata={"delay": 1.0})))
    slow.start()
    _wait(lambda: gateway.meter.inflight["alice"] == 1)
    r = _chat(client, keys["alice"])
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
    assert _chat(client, keys["bob"]).status_code == 200  # another tenant is not held up
    slow.join()
    assert out["r"].status_code == 200 and gateway.meter.inflight["alice"] == 0
    assert _chat(client, keys["alice"]).status_code == 200


@pytest.mark.parametrize("limits", [Limits(max_inflight=1, max_queued=1)])
def test_past_its_concurrency_a_request_waits_in_line_and_past_the_line_gets_429(gw, limits):
    client, gateway, _, _, keys = gw
    out = {}
    first = threading.Thread(target=lambda: out.update(a=_chat(client, keys["alice"], metadata={"delay": 1.0})))
    first.start()
    _wait(lambda: gateway.meter.inflight["alice"] == 1)
    second = threading.Thread(target=lambda: out.update(b=_chat(client, keys["alice"])))
    second.start()
    _wait(lambda: len(gateway.meter.waiting["alice"]) == 1)
    r = _chat(client, keys["alice"])  # the line is full
    assert r.status_code == 429 and "1 waiting" in r.json()["error"]["message"]
    assert _chat(client, keys["bob"]).status_code == 200  # another tenant is not held up
    first.join()
    second.join()
    assert out["a"].status_code == 200 and out["b"].status_code == 200  # the waiter was served after
    assert gateway.meter.inflight["alice"] == 0 and not gateway.meter.waiting["alice"]


def test_a_waiter_that_leaves_gives_up_its_place_and_leaks_no_slot():
    import asyncio

    async def run():
        meter = TenantMeter(Limits(max_inflight=1, max_queued=4))
        await meter.acquire("a")
        gone = asyncio.create_task(meter.acquire("a"))
        stays = asyncio.create_task(meter.acquire("a"))
        await asyncio.sleep(0)
        assert len(meter.waiting["a"]) == 2
        gone.cancel()  # the client disconnected while waiting
        await asyncio.sleep(0)
        meter.done("a")  # the slot goes to the one still waiting, not the one that left
        await stays
        assert gone.cancelled() and meter.inflight["a"] == 1
        meter.done("a")
        assert meter.inflight["a"] == 0 and not meter.waiting["a"]
        # handed a slot at the moment it is cancelled: the slot passes on, nothing leaks
        await meter.acquire("a")
        late = asyncio.create_task(meter.acquire("a"))
        await asyncio.sleep(0)
        meter.done("a")
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert meter.inflight["a"] == 0

    asyncio.run(run())


@pytest.mark.parametrize("limits", [Limits(tokens_per_minute=15)])
def test_a_tenant_past_its_token_rate_gets_429_with_retry_after(gw, limits):
    client, _, _, _, keys = gw
    assert [_chat(client, keys["alice"]).status_code for _ in range(2)] == [200, 200]  # 10 tokens each
    r = _chat(client, keys["alice"])
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60 and "20 of 15 tokens" in r.text
    assert _chat(client, keys["bob"]).status_code == 200


def test_the_token_window_slides():
    now = [0.0]
    meter = TenantMeter(Limits(tokens_per_minute=100), clock=lambda: now[0])
    admit = lambda tenant: asyncio.run(meter.acquire(tenant))  # noqa: E731
    admit("a")
    meter.done("a", {"total_tokens": 120})
    now[0] = 30.0
    with pytest.raises(Exception, match="120 of 100") as e:
        admit("a")
    assert e.value.retry_after == 30
    now[0] = 60.5
    admit("a")  # the minute has passed
    assert meter.inflight["a"] == 1


def test_after_a_restart_a_tenant_whose_adapter_is_not_back_gets_503_not_the_base(gw, home, tiny_model_dir,
                                                                                   tiny_adapters):
    client, gateway, fake, engine, keys = gw
    _publish(home, tiny_model_dir, "alice", tiny_adapters[0])
    _wait(lambda: _chat(client, keys["alice"]).json().get("model") == "alice@v1")
    fake.unreachable = True
    fake.loaded.clear()
    engine.state = "restarting"  # the supervisor brings a fresh engine up; alice's load fails
    _wait(lambda: gateway.ready and engine.epoch == 2)
    r = _chat(client, keys["alice"])
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert _chat(client, keys["bob"]).json()["model"] == "base"  # no adapter: the base is right for bob
    fake.unreachable = False
    _wait(lambda: _chat(client, keys["alice"]).json().get("model") == "alice@v1")


def test_a_client_gone_before_the_stream_starts_releases_its_request(gw):
    import contextlib
    import json

    client, gateway, _, _, keys = gw
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "headers": [(b"authorization", f"Bearer {keys['alice']}".encode()), (b"content-type", b"application/json")]}

    async def gone():
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            raise OSError("the client went away")

        with contextlib.suppress(Exception):
            await client.app(scope, receive, send)

    client.portal.call(gone)
    assert sum(gateway.inflight.values()) == 0 and gateway.meter.inflight["alice"] == 0
    assert _chat(client, keys["alice"]).status_code == 200


def test_feedback_is_queued_for_the_runtime_and_bad_feedback_is_refused(gw, home):
    from agent.chat import BakehouseChat
    from serving.feedback import read_feedback

    client, _, _, _, keys = gw
    chat = BakehouseChat(api_key=keys["alice"], base_url="http://testserver/v1", http_client=client,
                         conversation_id="conv-9")
    receipt = chat.feedback("From now on answer in one sentence.", rating=-1)
    assert receipt["status"] == "received"
    for bad, message in [({"rating": 5}, "'rating' must be"), ({}, "needs a 'comment' or a 'rating'"),
                         ({"comment": "x", "tenant": "bob"}, "unsupported field 'tenant'"),
                         ({"comment": "x" * 5000}, "at most 2000")]:
        r = client.post("/v1/feedback", json=bad, headers={"Authorization": f"Bearer {keys['alice']}"})
        assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert client.post("/v1/feedback", json={"rating": 1}).status_code == 401
    (record,), end = read_feedback(home)
    assert (record["tenant"], record["conversation_id"], record["rating"], record["id"]) == \
        ("alice", "conv-9", -1, receipt["id"])
    with open(home / "serving" / "feedback.jsonl", "a") as f:
        f.write('{"tenant": "bob", "comment": "half a li')  # a line still being written
    assert read_feedback(home, end) == ([], end)
