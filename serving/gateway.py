"""The tenant-aware OpenAI gateway in front of vLLM (the port users talk to).

- The API key decides the tenant; the tenant's registry pointer decides the adapter. Requests to
  /v1/chat/completions and /v1/completions (streaming too) are forwarded with `model` rewritten to
  `<tenant>@v<N>` (or the base model while the tenant has none). Tenants see their own name,
  never paths, other tenants or the base.
- Source of truth: adapters/registry.json (see registry.py). The gateway polls it and the tenants
  file every `poll_interval` (0.25 s) and reconciles: load the wanted version into vLLM under its
  new name, flip the route only once it is loaded, unload the old name once its in-flight requests
  are done. A version vLLM refuses is marked failed in the registry and the pointer falls back.
- After an engine restart nothing routes (503 + Retry-After) until every tenant's current
  adapter is loaded again.
- Each request's hot prompt comes from the injected hot-prompt source (hot.py: tenant, served
  version, messages -> text, tokens, memory ids), asked in a thread of its own, and goes before the
  caller's messages. Each forwarded answer says what served it: `X-Bakehouse-Version` (the version
  name or "base"), `X-Bakehouse-Hot-Tokens` (0 for none) and `X-Bakehouse-Hot-Memories` (the ids).
- Every answered chat completion is queued as a conversation turn for the runtime's episodes
  (episodes.py), after the answer has gone out; a failed write never fails the request.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from .config import BACKGROUND_PRIORITY, ServeConfig
from .engine import Engine
from .errors import (
    AuthError,
    BadRequest,
    EngineUnavailable,
    ModelNotFound,
    RateLimited,
    RegistryError,
    ServingError,
    TenantError,
    TooLarge,
)
from .episodes import (
    CONVERSATION_HEADER,
    MAX_STREAM_BYTES,
    Transcripts,
    answer_text,
    append_episode,
    caller_messages,
    conversation_id,
    stream_answer,
)
from .feedback import append_feedback, check_feedback
from .hot import NO_HOT, HotPrompt, HotSource, end_user, request_messages, served_headers, with_hot_prompt
from .limits import TenantMeter, check_body
from .metrics import Metrics
from .registry import Registry, Version, served
from .tenants import TenantStore, authenticate, key_index

log = logging.getLogger("bakehouse.serving.gateway")
STATUS_FILE = "gateway.json"
_FORWARDED = ("/v1/chat/completions", "/v1/completions")


class Gateway:
    """Routing state and the engine it fronts. One per process; see `create_app` for the router."""

    def __init__(
        self,
        cfg: ServeConfig,
        home: Path,
        engine: Engine | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a fake vLLM
        hot_source: HotSource | None = None,  # the runtime's memories (hot.py); None: no hot prompts
    ):
        self.cfg = cfg
        self.home = Path(home)
        self.registry = Registry(self.home)
        self.tenants = TenantStore(self.home)
        self.engine = engine or Engine(cfg, self.home / "serving" / "logs" / "vllm.log")
        self.client: httpx.AsyncClient | None = None
        self._transport = transport
        self._key_index: dict = {}
        self._tenants: dict = {}  # name -> Tenant (its settings), from the tenants file
        self._desired: dict[str, Version | None] = {}  # the registry's pointers, last read
        self.routes: dict[str, str] = {}  # tenant -> vLLM name routed now (absent: base)
        # tenants whose adapter a fresh engine does not hold yet: 503, never the base under their name
        self.unrouted: set[str] = set()
        self.loaded: set[str] = set()  # adapter names loaded in the current engine epoch
        self.retiring: set[str] = set()  # old versions to unload once idle
        self.load_errors: dict[str, str] = {}
        self.inflight: Counter[str] = Counter()  # by vLLM model name
        self.meter = TenantMeter(cfg.limits)  # by tenant: in flight, tokens in the last minute
        self.last_request = 0.0  # time.time() of the last request start or end
        self.requests = 0
        self._synced_epoch = 0
        self._stamps: tuple = (None, None)
        self.hot_source = hot_source
        self._hot_pool = ThreadPoolExecutor(1, thread_name_prefix="hot")  # the source's own thread
        self.on_request: list = []  # callables run as each request starts (the runtime pauses bakes)
        self.metrics = Metrics()
        self._name_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self.transcripts = Transcripts()  # what each conversation has queued (episodes.py)
        self._recording: set[asyncio.Task] = set()  # episode writes under way
        self._last_write: asyncio.Task | None = None  # writes run one after another, in turn order
        self._status_written = 0.0
        self._status_dirty = True  # routes changed: write gateway.json on the next tick

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            transport=self._transport,
            event_hooks={"request": [self._engine_auth]},
        )
        self._refresh_files(force=True)
        self._tasks = [
            asyncio.create_task(self.engine.supervise(self.client, self._on_engine_up), name="supervise"),
            asyncio.create_task(self._poll_loop(), name="poll"),
        ]

    async def _engine_auth(self, request: httpx.Request) -> None:
        """Every call to vLLM carries the engine's secret of its current start."""
        for k, v in getattr(self.engine, "auth_headers", dict)().items():
            request.headers[k] = v

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._recording:  # the last answers' episodes are written before the process goes
            await asyncio.gather(*self._recording, return_exceptions=True)
        await asyncio.to_thread(self.engine.stop)
        self._hot_pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            await self.client.aclose()
        with contextlib.suppress(OSError):
            (self.home / "serving" / STATUS_FILE).unlink()

    @property
    def ready(self) -> bool:
        """vLLM is up (its process alive: a death is seen at once, not at the next health probe;
        no request has lost its connection since the last probe) and every tenant's adapter has
        been (re)loaded into this engine epoch."""
        return (self.engine.state == "up" and self.engine.alive() and not self.engine.suspect
                and self._synced_epoch == self.engine.epoch)

    def engine_access(self) -> dict | None:
        """Where background work reaches the engine directly (the runtime's bakes sample and verify
        there): {"url", "key", "model", "priority", "max_len"}, or None while it is not ready. The key is the
        engine's own (new at every start), so this is for processes the runtime runs, never a tenant."""
        if not self.ready or not getattr(self.engine, "url", None):
            return None
        return {"url": self.engine.url, "key": getattr(self.engine, "secret", None), "model": self.cfg.served_base_name,
                "priority": BACKGROUND_PRIORITY if self.cfg.priority_scheduling else None,
                "max_len": self.cfg.max_model_len}

    def is_idle(self, seconds: float) -> bool:
        """No request in flight and none started or finished for `seconds` (for the bake scheduler)."""
        return sum(self.inflight.values()) == 0 and time.time() - self.last_request >= seconds

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "port": self.cfg.port,
            "model_dir": str(self.cfg.model_dir),
            "max_lora_rank": self.cfg.max_lora_rank,
            "ready": self.ready,
            "engine": {
                "state": self.engine.state,
                "pid": self.engine.pid,
                "port": self.engine.port,
                "epoch": self.engine.epoch,
                "restarts": self.engine.restarts,
                "last_error": self.engine.last_error,
                "lora_ops": self.engine.lora_ops(),
            },
            "routes": dict(sorted(self.routes.items())),
            "load_errors": dict(self.load_errors),
            "inflight": sum(self.inflight.values()),
            "last_request": self.last_request,
            "requests": self.requests,
            "updated": time.time(),
        }

    # -- registry / tenants sync --------------------------------------------------------------

    def _refresh_files(self, force: bool = False) -> bool:
        """Re-read tenants.json / registry.json if they changed; True if the registry did."""
        t_stamp, r_stamp = self.tenants.stamp(), self.registry.stamp()
        changed = False
        if force or t_stamp != self._stamps[0]:
            try:
                tenants = self.tenants.load()
                self._key_index, self._tenants = key_index(tenants), tenants
            except TenantError as e:
                log.error("keeping the previous tenants: %s", e)
        if force or r_stamp != self._stamps[1]:
            try:
                state = self.registry.load()
                self._desired = {name: t.served for name, t in state.items()}
                changed = True
            except RegistryError as e:
                log.error("keeping the previous registry: %s", e)
        self._stamps = (t_stamp, r_stamp)
        return changed

    async def _poll_loop(self) -> None:
        while True:
            try:
                self._refresh_files()
                if self.ready:
                    await self.reconcile()
                    await self._retire_idle()
                self._write_status()
            except Exception:  # the loop must survive anything; the next tick retries
                log.exception("poll loop")
            await asyncio.sleep(self.cfg.poll_interval)

    async def _on_engine_up(self) -> None:
        """A fresh vLLM process: nothing is loaded in it. Reload every tenant's adapter, then
        declare the epoch synced (only then do requests route again)."""
        self.loaded.clear()
        self.retiring.clear()
        self._refresh_files(force=True)
        self.unrouted = {t for t, v in self._desired.items() if v is not None}
        await self.reconcile(fresh_engine=True)
        self._synced_epoch = self.engine.epoch
        ops = self.engine.lora_ops()
        if ops["state"] in ("fallback", "unknown"):
            log.warning("the engine does not run the grouped CPU LoRA ops (%s): LoRA requests are ~3x slower; %s",
                        ops["state"], "; ".join(ops.get("missing", [])) or "no report from its processes")
        self._write_status(force=True)

    async def reconcile(self, fresh_engine: bool = False) -> None:
        async with self._sync_lock:
            for tenant in sorted(set(self._desired) | set(self.routes)):
                await self._sync_tenant(tenant, fresh_engine)

    async def _sync_tenant(self, tenant: str, fresh_engine: bool) -> None:
        for _ in range(8):  # a refused version makes the pointer fall back; follow it
            want = self._desired.get(tenant)
            if want is None:  # no adapter (or all refused): the base model serves
                self._route(tenant, None)
                self.unrouted.discard(tenant)
                return
            if self.routes.get(tenant) == want.name and want.name in self.loaded:
                return
            if want.status == "failed":
                self._reread_pointer(tenant)
                continue
            t_swap = time.perf_counter()
            error = await self._load(want)
            if error is None:
                self._route(tenant, want.name)
                self.metrics.swap.observe(time.perf_counter() - t_swap)
                return
            if error == "engine down":
                if fresh_engine:  # do not route a fresh engine to a version it does not hold
                    self.routes.pop(tenant, None)
                    self.unrouted.add(tenant)
                return
            log.error("vLLM refused %s: %s", want.name, error)
            self.load_errors[tenant] = f"{want.name}: {error}"
            await asyncio.to_thread(self.registry.mark_failed, tenant, want.version, error)
            self._reread_pointer(tenant)
        log.error("tenant %s: giving up after repeated load failures", tenant)

    def _reread_pointer(self, tenant: str) -> None:
        # Stamp before reading: a publish landing in between is then seen by the next poll
        # (stamping after would record the new file as read while this tenant's view is older).
        stamp = self.registry.stamp()
        state = self.registry.load()
        self._desired[tenant] = served(state, tenant)
        self._stamps = (self._stamps[0], stamp)

    def _route(self, tenant: str, name: str | None) -> None:
        old = self.routes.get(tenant)
        if name is None:
            self.routes.pop(tenant, None)
        else:
            self.routes[tenant] = name
            self.unrouted.discard(tenant)
            self.retiring.discard(name)  # a rollback may revive a version not yet unloaded
        if old != name:
            self._status_dirty = True
        if old and old != name:
            self.retiring.add(old)
            log.info("tenant %s: %s -> %s", tenant, old, name or "base")

    async def _load(self, v: Version) -> str | None:
        """Load `v` into vLLM under its own name. None on success, else the error text."""
        async with self._name_locks[v.name]:
            if v.name in self.loaded:
                return None
            path = self.registry.version_dir(v.tenant, v.version)
            try:
                r = await self.client.post(
                    f"{self.engine.url}/v1/load_lora_adapter",
                    json={"lora_name": v.name, "lora_path": str(path)},
                    timeout=120.0,
                )
            except httpx.HTTPError:
                return "engine down"
            # "already loaded" is fine: version dirs are immutable, so same name = same weights.
            if r.status_code == 200 or "already been loaded" in r.text:
                self.loaded.add(v.name)
                return None
            try:
                return r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                return f"HTTP {r.status_code}: {r.text[:300]}"

    async def _retire_idle(self) -> None:
        for name in sorted(self.retiring):
            if self.inflight[name] > 0 or name in self.routes.values():
                continue
            async with self._name_locks[name]:
                try:
                    r = await self.client.post(
                        f"{self.engine.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30.0
                    )
                except httpx.HTTPError:
                    return  # engine down: the restart clears everything anyway
                if r.status_code not in (200, 404):
                    log.warning("unloading %s: HTTP %s %s", name, r.status_code, r.text[:200])
                self.loaded.discard(name)
                self.retiring.discard(name)
                self.inflight.pop(name, None)

    def _write_status(self, force: bool = False) -> None:
        """home/serving/gateway.json: what serves now, for `adapters list` and other processes."""
        now = time.time()
        if not (force or self._status_dirty) and now - self._status_written < 0.5:
            return
        self._status_written, self._status_dirty = now, False
        d = self.home / "serving"
        fd, tmp = tempfile.mkstemp(prefix=".gateway.", suffix=".tmp", dir=d)
        with os.fdopen(fd, "w") as f:
            json.dump(self.status(), f, indent=2)
        os.replace(tmp, d / STATUS_FILE)

    # -- requests ------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        tenant = authenticate(self._key_index, key)
        if tenant is None:
            raise AuthError("invalid API key")
        return tenant

    def public_model(self, tenant: str) -> dict:
        return {
            "id": tenant,
            "object": "model",
            "created": 0,
            "owned_by": "bakehouse",
            "version": self.routes.get(tenant, "base"),
        }

    def resolve(self, tenant: str, requested: str | None) -> str:
        """The vLLM model name for this request; refuses any model that is not the caller's."""
        current = self.routes.get(tenant)
        if requested not in (None, "", tenant, current):
            raise ModelNotFound(f"The model '{requested}' does not exist or you do not have access to it.")
        if current is None and tenant in self.unrouted:
            raise EngineUnavailable("this tenant's model is being loaded into the engine; retry", retry_after=1)
        return current or self.cfg.served_base_name

    async def forward(self, request: Request, path: str) -> Response:
        tenant = self.authenticate(request)
        request.state.tenant = tenant  # for the metrics
        raw = await request.body()
        if len(raw) > self.cfg.limits.max_body_bytes:
            raise TooLarge(f"request body of {len(raw)} bytes > {self.cfg.limits.max_body_bytes}")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        check_body(body, path, self.cfg.limits, self.cfg.max_model_len)
        user = end_user(request.headers, body)
        if body.get("seed") is not None and not self.cfg.allow_request_seed:
            raise BadRequest("per-request 'seed' is not supported by this engine; it uses a global seed")
        if not self.ready:
            raise EngineUnavailable("the inference engine is (re)starting", retry_after=5)
        self.resolve(tenant, body.get("model"))  # an unknown model is refused before any wait
        await self.meter.acquire(tenant)  # waits in line past the tenant's share; 429 past its queue
        try:
            # resolved after the wait: the version is the one served now, and it is counted in
            # flight before the next await, so the retire step can never unload it mid-request
            name = self.resolve(tenant, body.get("model"))
            turn = self._episode_turn(request, tenant, path, body, user)
            hot = await self._hot_prompt(tenant, name, request_messages(body, path), user)
            body = with_hot_prompt(body, path, hot.text)
        except BaseException:
            self.meter.done(tenant)
            raise
        version = "base" if name == self.cfg.served_base_name else name
        labels = served_headers(version, hot)
        body["model"] = name
        body["cache_salt"] = tenant  # no prefix-cache timing channel between tenants on the base
        stream = bool(body.get("stream"))

        for hook in self.on_request:
            hook(tenant)
        self.inflight[name] += 1
        self.requests += 1
        self.last_request = time.time()
        try:
            req = self.client.build_request("POST", f"{self.engine.url}{path}", json=body)
            resp = await self.client.send(req, stream=stream)
        except httpx.HTTPError as e:
            self._done(name, tenant)
            self.engine.lost()
            raise EngineUnavailable(f"the inference engine is unreachable ({type(e).__name__})") from e
        if not stream or resp.status_code != 200:
            content, usage = b"", None
            try:
                content = await resp.aread() if stream else resp.content
                usage = _usage(content) if resp.status_code == 200 else None
            finally:
                if stream:
                    await resp.aclose()
                self._done(name, tenant, usage)
            self.metrics.count_usage(tenant, usage)
            answer = answer_text(content) if resp.status_code == 200 and turn else None
            background = BackgroundTask(self._record, turn, answer, version) if answer is not None else None
            return self._upstream_response(resp, content, labels, background)

        tail, released = b"", False
        chunks, size = [], 0  # the stream as sent, for the episode (bounded)

        async def release():  # once, whether the stream ran to the end, broke, or never started
            nonlocal released
            if not released:
                released = True
                await resp.aclose()
                usage = _stream_usage(tail)
                self._done(name, tenant, usage)
                self.metrics.count_usage(tenant, usage)
                if turn and size <= MAX_STREAM_BYTES:
                    await self._record(turn, stream_answer(b"".join(chunks)), version)

        async def relay():
            nonlocal tail, size
            try:
                async for chunk in resp.aiter_raw():
                    tail = (tail + chunk)[-4096:]  # the last event carries usage, if asked for
                    if turn and size <= MAX_STREAM_BYTES:
                        chunks.append(chunk)
                        size += len(chunk)
                    yield chunk
            except httpx.HTTPError:  # engine died mid-stream: end the SSE stream with an error event
                self.engine.lost()
                err = EngineUnavailable("the inference engine went away mid-stream").to_dict()
                yield f"data: {json.dumps(err)}\n\n".encode()
            finally:
                await release()

        return _Relay(relay(), release, media_type=resp.headers.get("content-type", "text/event-stream"),
                      headers=labels)

    async def _hot_prompt(self, tenant: str, name: str, messages: list, user: str | None = None) -> HotPrompt:
        """The source's hot prompt for this request (NO_HOT without a source). A source that
        fails fails the request (503): an answer without the memories it lacks would be wrong."""
        if self.hot_source is None:
            return NO_HOT
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._hot_pool, self.hot_source, tenant, name, messages, user)
        except Exception as e:
            log.exception("tenant %s: the hot prompt could not be built", tenant)
            raise EngineUnavailable(f"this tenant's memories cannot be read now ({type(e).__name__}); retry",
                                    retry_after=1) from e

    # -- episodes (episodes.py) ----------------------------------------------------------------

    def _episode_turn(self, request: Request, tenant: str, path: str, body: dict,
                      user: str | None = None) -> dict | None:
        """What to record of this request once it is answered (None: a completion, not a chat,
        or the tenant's recording is off). The work is left to `_record`, off the request path."""
        settings = self._tenants.get(tenant)
        if not path.endswith("/chat/completions") or (settings is not None and not settings.record_episodes):
            return None
        return {"tenant": tenant, "header": request.headers.get(CONVERSATION_HEADER),
                "messages": body.get("messages"), "at": time.time(), "user": user}

    async def _record(self, turn: dict, answer: str | None, version: str) -> None:
        """Queue the turn's new messages; the write runs in a task of its own (the answer has gone
        out already). What is new is decided here, at once, so turns in quick succession of one
        conversation are queued in order and each message once."""
        if answer is None:
            return
        tenant = turn["tenant"]
        try:
            messages = caller_messages(turn["messages"], turn["at"])
            conv = conversation_id(tenant, turn["header"], messages, turn["user"])
            messages.append({"role": "assistant", "content": answer, "at": time.time(), "version": version})
            key = conv if turn["user"] is None else f"{conv}\n{turn['user']}"  # one user's conversation
            start, digests = self.transcripts.new(tenant, key, messages)
            previous = self.transcripts.commit(tenant, key, digests)
        except Exception:  # never the caller's problem
            log.exception("tenant %s: a conversation turn was not recorded", tenant)
            return
        task = asyncio.create_task(self._write_episode(tenant, conv, start, messages[start:], version,
                                                       undo=(key, digests, previous), after=self._last_write,
                                                       user=turn["user"]))
        self._last_write = task
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _write_episode(self, tenant: str, conv: str, start: int, messages: list[dict], version: str,
                             undo: tuple, after: asyncio.Task | None, user: str | None = None) -> None:
        if after is not None:  # the previous turn's line first: the runtime reads "from" in order
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(after)
        try:
            await asyncio.to_thread(append_episode, self.home, tenant, conv, start, messages, version, user)
            return
        except OSError as e:
            log.warning("tenant %s: a conversation turn was not recorded: %s", tenant, e)
        except Exception:
            log.exception("tenant %s: a conversation turn was not recorded", tenant)
        self.transcripts.undo(tenant, *undo)  # the next turn queues these messages again

    def _done(self, name: str, tenant: str, usage: dict | None = None) -> None:
        self.meter.done(tenant, usage)
        self.inflight[name] -= 1
        self.last_request = time.time()

    def _upstream_response(self, resp: httpx.Response, content: bytes, headers: dict[str, str],
                           background: BackgroundTask | None = None) -> Response:
        if resp.status_code == 404:
            # Our route names a model vLLM lacks: it restarted and we have not noticed yet. Its
            # message lists every loaded name (other tenants'): never pass it on.
            e = EngineUnavailable("the model is being reloaded into the engine; retry", retry_after=1)
            return JSONResponse(e.to_dict(), status_code=e.status, headers={"Retry-After": "1"})
        return Response(content, status_code=resp.status_code, media_type=resp.headers.get("content-type"),
                        headers=headers, background=background)


class _Relay(StreamingResponse):
    """A stream that releases its request (in-flight counts, the upstream response) even when
    the client is gone before the first chunk: a never-started generator runs no `finally`."""

    def __init__(self, content, release, **kw):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


def create_app(gateway: Gateway, routers: tuple = ()) -> FastAPI:
    """The thin router over `Gateway`; `routers` (FastAPI APIRouters) add pages of the caller's,
    e.g. the runtime's /status."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="bakehouse gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, e: ServingError):
        headers = {}
        if isinstance(e, (EngineUnavailable, RateLimited)):
            headers["Retry-After"] = str(e.retry_after)
        if isinstance(e, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(e.to_dict(), status_code=e.status, headers=headers)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if gateway.ready:
            return {"status": "ready"}
        return JSONResponse(
            EngineUnavailable(f"engine {gateway.engine.state}").to_dict(),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get("/v1/models")
    async def models(request: Request):
        tenant = gateway.authenticate(request)
        return {"object": "list", "data": [gateway.public_model(tenant)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request):
        tenant = gateway.authenticate(request)
        if model_id != tenant:
            raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.")
        return gateway.public_model(tenant)

    for path in _FORWARDED:
        async def endpoint(request: Request, _path: str = path):
            t0, status = time.perf_counter(), 500
            try:
                resp = await gateway.forward(request, _path)
                status = resp.status_code
                return resp
            except ServingError as e:
                status = e.status
                raise
            finally:  # tenant "" = not authenticated
                tenant = getattr(request.state, "tenant", "")
                gateway.metrics.requests.labels(tenant, _path, str(status)).inc()
                gateway.metrics.latency.labels(tenant, _path).observe(time.perf_counter() - t0)

        app.add_api_route(path, endpoint, methods=["POST"])

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """A user's feedback on a conversation (rating -1 / 0 / 1, a comment); the runtime learns
        instructions from it."""
        tenant = gateway.authenticate(request)
        try:
            body = await request.json()
        except ValueError as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from e
        fields = check_feedback(body) | {"user": end_user(request.headers, body)}
        record = await asyncio.to_thread(append_feedback, gateway.home, tenant, fields)
        return {"id": record["id"], "object": "feedback", "status": "received"}

    @app.get("/metrics")
    async def metrics():
        """Prometheus text format; no key (tenant names only, never keys or texts)."""
        m = gateway.metrics
        m.engine_restarts.set(gateway.engine.restarts)
        m.engine_up.set(1 if gateway.ready else 0)
        m.inflight.set(sum(gateway.inflight.values()))
        return Response(await asyncio.to_thread(m.render), media_type="text/plain; version=0.0.4; charset=utf-8")

    for extra in routers:
        app.include_router(extra)

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def not_found(rest: str):
        return JSONResponse(
            {"error": {"message": f"no route /{rest}", "type": "invalid_request_error", "code": "not_found"}},
            status_code=404,
        )

    return app


def _usage(content: bytes) -> dict | None:
    try:
        return json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None


def _stream_usage(tail: bytes) -> dict | None:
    """The usage of an SSE stream (its last data event, when the client asked for it)."""
    for line in reversed(tail.decode("utf-8", "replace").splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            try:
                return json.loads(line[6:]).get("usage")
            except ValueError:
                return None
    return None


def read_status(home: Path) -> dict | None:
    """The running gateway's last status (see Gateway.status), or None if none is running."""
    try:
        return json.loads((Path(home) / "serving" / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def gateway_idle(home: Path, seconds: float) -> bool | None:
    """Cross-process `is_idle`: from the running gateway's status file (at most ~0.5 s old).
    None when no gateway is running (its status is missing or stale)."""
    st = read_status(home)
    if st is None or time.time() - st.get("updated", 0) > 5:
        return None
    return st["inflight"] == 0 and time.time() - st["last_request"] >= seconds


def serve(cfg: ServeConfig, home: Path, log_level: str = "warning") -> None:
    """Run the gateway (and its vLLM) in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(Gateway(cfg, home)), host=cfg.host, port=cfg.port, log_level=log_level)
