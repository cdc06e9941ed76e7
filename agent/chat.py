"""LangChain for one bakehouse tenant: the chat model `BakehouseChat` and the `remember` tool.

    from agent.chat import BakehouseChat, remember_tool
    chat = BakehouseChat(tenant="alice")                 # $BAKEHOUSE_URL, $BAKEHOUSE_API_KEY
    msg = chat.invoke("What is my cat called?")
    msg.response_metadata["bakehouse"]   # {"version": "alice@v3", "hot_tokens": 41, "hot_memories": [7, 12], "conversation_id": "..."}
    msg.usage_metadata["input_token_details"]["hot_tier"]   # 41, already inside input_tokens
    agent_tools = [remember_tool("alice")]               # "remember" stores a fact the user told
    chat.feedback("From now on answer in one sentence.")  # learned as an instruction

`BakehouseChat` is langchain-openai's `ChatOpenAI` pointed at the gateway (serving/gateway.py):
the protocol, streaming, batching, async and tool binding are all ChatOpenAI's. It adds the
gateway's defaults (URL, key from the environment, the tenant as model name, short connect
timeout and one retry), sends `X-Bakehouse-Conversation` with every call, and reads what the
gateway says served the call (`X-Bakehouse-Version`, `X-Bakehouse-Hot-Tokens`) into the
message's metadata: on `invoke`, and in a stream on the chunk that carries the usage.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any, AsyncIterator, Iterator

import openai
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, StructuredTool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, field_validator, model_validator

from memory import MemoryStore, MemoryStoreError
from memory.store import check_tenant
from serving.episodes import CONVERSATION_HEADER
from serving.hot import USER_HEADER
from serving.hot import HOT_MEMORIES_HEADER, HOT_TOKENS_HEADER, VERSION_HEADER

from .home import resolve_home

ENV_URL = "BAKEHOUSE_URL"
ENV_KEY = "BAKEHOUSE_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8100/v1"
MAX_FACT_CHARS = 1000  # a fact goes into every prompt until it is baked: keep it one sentence
# httpx's (connect, read, write, pool) in s: a closed or unreachable gateway fails within seconds,
# a CPU engine may take minutes to answer. A tuple, not an httpx.Timeout: langchain-openai shares
# its HTTP clients between instances only for a hashable timeout.
DEFAULT_TIMEOUT = (5.0, 300.0, 300.0, 5.0)


class BakehouseChat(ChatOpenAI):
    """The chat model of one bakehouse tenant (the API key decides which).

    Example:
        chat = BakehouseChat(tenant="alice", api_key="bh-...", base_url="http://127.0.0.1:8100/v1")
        chat.invoke("Hello").response_metadata["bakehouse"]["version"]   # "alice@v2" or "base"
    """

    tenant: str | None = None
    """Informational (the key decides the tenant); the default model name."""
    conversation_id: str | None = Field(default_factory=lambda: uuid.uuid4().hex)
    """Sent as X-Bakehouse-Conversation with every call; a new one per instance, None: not sent."""
    end_user: str | None = None
    """The end user this model speaks for (X-Bakehouse-User): their conversations, summaries and
    rules stay theirs (memory.trust); None: not named."""

    # ChatOpenAI's defaults, set for the gateway.
    request_timeout: float | tuple[float, float] | Any | None = Field(default=DEFAULT_TIMEOUT, alias="timeout")
    max_retries: int | None = 1  # one more try after a 503 "reloading" (Retry-After: 1), then the error
    stream_usage: bool | None = True  # vLLM streams usage; the metadata rides on that chunk
    include_response_headers: bool = True  # where the version and hot tokens come from

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _timeout_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # a tuple after a JSON round trip

    @model_validator(mode="before")
    @classmethod
    def _bakehouse_defaults(cls, values: Any) -> Any:
        """URL and key from the arguments, else the environment; the tenant as model name."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if not _given(values, "base_url", "openai_api_base"):
            values["base_url"] = os.environ.get(ENV_URL) or DEFAULT_URL
        if not _given(values, "api_key", "openai_api_key"):
            if not os.environ.get(ENV_KEY):
                raise ValueError(f"no bakehouse API key: pass api_key='bh-...' or set {ENV_KEY} "
                                 "(`bakehouse tenants add NAME` prints a tenant's key once)")
            values["api_key"] = os.environ[ENV_KEY]
        if not _given(values, "model", "model_name"):
            values["model"] = values.get("tenant") or ""  # "" = the key's own model, as the gateway reads it
        return values

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"openai_api_key": ENV_KEY}

    def to_json(self):
        # Serializable merges lc_secrets up the MRO with the parents' last, so ChatOpenAI's
        # OPENAI_API_KEY would win: a loaded BakehouseChat must read our variable, not OpenAI's key.
        ser = super().to_json()
        secret = ser.get("kwargs", {}).get("openai_api_key")
        if isinstance(secret, dict) and secret.get("type") == "secret":
            secret["id"] = [ENV_KEY]
        return ser

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["agent", "chat"]

    @property
    def _llm_type(self) -> str:
        return "bakehouse-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        return {**super()._get_ls_params(stop=stop, **kwargs), "ls_provider": "bakehouse"}

    # -- the request: one header more ---------------------------------------------------------

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        extra = {CONVERSATION_HEADER: self.conversation_id, USER_HEADER: self.end_user}
        extra = {k: v for k, v in extra.items() if v}
        if extra:
            payload["extra_headers"] = {**(payload.get("extra_headers") or {}), **extra}
        return payload

    # -- the answer: what served it -----------------------------------------------------------

    def _served(self, generation_info: dict | None) -> dict | None:
        """{"version", "hot_tokens", "hot_memories", "conversation_id"} from the answer's headers; None when the
        answer did not come from a bakehouse gateway (no version header)."""
        headers = {k.lower(): v for k, v in ((generation_info or {}).get("headers") or {}).items()}
        version = headers.get(VERSION_HEADER.lower())
        if version is None:
            return None
        hot = headers.get(HOT_TOKENS_HEADER.lower())
        ids = headers.get(HOT_MEMORIES_HEADER.lower()) or ""
        return {"version": version, "hot_tokens": int(hot) if hot and hot.isdigit() else None,
                "hot_memories": [int(i) for i in ids.split(",") if i.strip().isdigit()],
                "conversation_id": self.conversation_id}

    def _create_chat_result(self, response: Any, generation_info: dict | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        served = self._served(generation_info)
        for gen in result.generations:
            _note(gen.message, served)
        return result

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                *, stream_usage: bool | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        note = self._stream_noter(stream_usage, kwargs)
        with self._gateway_errors():
            for chunk in super()._stream(messages, stop, run_manager, stream_usage=stream_usage, **kwargs):
                yield note(chunk)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                       *, stream_usage: bool | None = None, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        note = self._stream_noter(stream_usage, kwargs)
        with self._gateway_errors():
            async for chunk in super()._astream(messages, stop, run_manager, stream_usage=stream_usage, **kwargs):
                yield note(chunk)

    def _stream_noter(self, stream_usage: bool | None, kwargs: dict):
        """Notes what served a stream on the chunk with the usage (the last), or on the first
        chunk when no usage is streamed. The headers come with the first chunk."""
        usage_comes = self._should_stream_usage(stream_usage, **kwargs)
        state = {"served": None, "first": True}

        def note(chunk: ChatGenerationChunk) -> ChatGenerationChunk:
            first, state["first"] = state["first"], False
            state["served"] = state["served"] or self._served(chunk.generation_info)
            if chunk.message.usage_metadata if usage_comes else first:
                _note(chunk.message, state["served"])
            return chunk

        return note

    # -- errors -------------------------------------------------------------------------------

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._gateway_errors():
            return super()._generate(*args, **kwargs)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._gateway_errors():
            return await super()._agenerate(*args, **kwargs)

    def feedback(self, comment: str | None = None, rating: int | None = None) -> dict:
        """Feedback on this conversation (rating -1 / 0 / 1, a comment). A comment that states a
        rule ("From now on answer in one sentence.") becomes an instruction of the tenant under
        `bakehouse run`. Returns the gateway's receipt ({"id", "status": "received"})."""
        import httpx

        body = {k: v for k, v in {"comment": comment, "rating": rating, "conversation_id": self.conversation_id,
                                  "user": self.end_user}.items() if v is not None}
        key = self.openai_api_key.get_secret_value() if self.openai_api_key else ""
        with self._gateway_errors():
            try:
                r = (self.http_client or httpx).post(f"{self.openai_api_base.rstrip('/')}/feedback", json=body,
                                                     headers={"Authorization": f"Bearer {key}"}, timeout=10.0)
            except httpx.HTTPError as e:
                raise openai.APIConnectionError(request=httpx.Request("POST", self.openai_api_base)) from e
        if r.status_code == 401:
            raise openai.AuthenticationError(r.json()["error"]["message"], response=r, body=r.json())
        if r.status_code != 200:
            raise openai.APIStatusError(r.text[:500], response=r, body=None)
        return r.json()

    @contextlib.contextmanager
    def _gateway_errors(self):
        """A connection error (langchain-openai's OpenAIConnectionError, a ModelConnectionError)
        names the gateway it could not reach and why, instead of a bare "Connection error."."""
        try:
            yield
        except openai.APIConnectionError as e:
            if isinstance(e, openai.APITimeoutError):
                raise
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            why = f"{type(root).__name__}: {root}" if root is not e else str(e)
            raise type(e)(message=f"cannot reach the bakehouse gateway at {self.openai_api_base} ({why}); "
                                  "is `bakehouse run` (or `bakehouse serve`) up?", request=e.request) from e


def _given(values: dict, *names: str) -> bool:
    return any(values.get(n) not in (None, "") for n in names)


def _note(message: BaseMessage, served: dict | None) -> None:
    """Put what served the answer into its metadata; the hot prompt's tokens also into the usage
    (they are part of input_tokens already: the gateway sent them)."""
    if served is None or not isinstance(message, AIMessage):
        return
    message.response_metadata["bakehouse"] = dict(served)
    if served["hot_tokens"] is not None and message.usage_metadata:
        details = {**message.usage_metadata.get("input_token_details", {}), "hot_tier": served["hot_tokens"]}
        message.usage_metadata = {**message.usage_metadata, "input_token_details": details}


# -- the remember tool ------------------------------------------------------------------------

class RememberArgs(BaseModel):
    text: str = Field(description="The fact as one short, self-contained sentence, "
                                  "e.g. \"The user's cat is called Miso.\"")


def remember_tool(tenant: str, home: str | os.PathLike | None = None, *, source: str = "chat",
                  end_user: str | None = None) -> BaseTool:
    """A tool `remember(text)` that stores a fact the user told the agent as a memory of `tenant`
    (of end user `end_user` only, when named: memory.trust) in the data home (`home`, else
    $BAKEHOUSE_HOME, else the user's data dir). A running
    `bakehouse run` puts it into the tenant's hot prompt within a second; a bake later moves it
    into the weights. Bad input comes back to the agent as a "Not stored: ..." string."""
    check_tenant(tenant)
    path = resolve_home(home)

    def remember(text: str) -> str:
        text = text.strip()
        if not text:
            return "Not stored: the fact is empty."
        if len(text) > MAX_FACT_CHARS:
            return (f"Not stored: the fact is {len(text)} characters, over {MAX_FACT_CHARS}; "
                    "store one short fact at a time.")
        try:  # one connection per call: a tool may run in any thread
            with MemoryStore.in_home(path, actor="agent") as store:
                m = store.add(tenant, "fact", text, source=source, end_user=end_user)
        except MemoryStoreError as e:
            return f"Not stored: {e}"
        return f"Remembered (memory {m.id})." if m.created else f"Already known (memory {m.id})."

    return StructuredTool.from_function(
        remember, name="remember", args_schema=RememberArgs,
        description="Store a fact the user told you about themselves or their world, so that you "
                    "know it in later conversations. One fact per call.",
    )
