"""What a tenant may send, and how much: the gateway's request policy.

- Only OpenAI fields (and vLLM's per-request sampling extensions: `top_k`, `min_p`, `ignore_eos`,
  `prompt_logprobs`, ...) reach vLLM. Anything else (`vllm_xargs`, `kv_transfer_params`,
  `priority`, `request_id`, or a typo) is refused with a 400 that names it: a tenant must not
  steer the engine around the gateway.
- `n`, `max_tokens`, the number of messages and the body size are bounded by the server's
  settings.
- Per tenant, at most `max_inflight` requests at once; up to `max_queued` more wait for a slot
  in order (a rejected request that is retried at once costs the gateway more than one that
  waits); past that, and past `tokens_per_minute` tokens (prompt + completion, as the engine
  reports them) in any minute, a 429 with Retry-After. One tenant flooding cannot hold every
  engine slot.
"""
from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass

from .errors import BadRequest, RateLimited

COMMON = {"model", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty",
          "seed", "stop", "stream", "stream_options", "temperature", "top_p", "user",
          # vLLM's sampling extensions: they shape one request's sampling, nothing else
          "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "prompt_logprobs",
          "stop_token_ids", "skip_special_tokens"}
FIELDS = {
    "/v1/chat/completions": COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                                      "tools", "tool_choice", "parallel_tool_calls", "metadata", "store"},
    "/v1/completions": COMMON | {"prompt", "best_of", "echo", "suffix"},
}
ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # a request body larger than this is refused (413)
    max_messages: int = 256
    max_n: int = 4  # choices per request (each is a full generation on this CPU)
    max_tokens: int | None = None  # per request; None: the served context length
    max_inflight: int = 8  # requests of one tenant at once
    max_queued: int = 32  # more of one tenant's requests wait (in order) for a slot; past that, 429
    tokens_per_minute: int | None = None  # per tenant; None: no rate limit


def check_body(body: dict, path: str, limits: Limits, context_len: int) -> None:
    """Refuse (BadRequest) a body with a field vLLM should not see or a value out of bounds."""
    allowed = FIELDS.get(path)
    if allowed is None:
        return
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unsupported field {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                         + ": this server accepts the OpenAI fields only")
    n = body.get("n", 1)
    if n is not None and (type(n) is not int or not 1 <= n <= limits.max_n):
        raise BadRequest(f"'n' must be an integer from 1 to {limits.max_n}, got {n!r}")
    cap = min(limits.max_tokens or context_len, context_len)
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is not None and (type(v) is not int or not 1 <= v <= cap):
            raise BadRequest(f"{name!r} must be an integer from 1 to {cap}, got {v!r}")
    if path == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        if len(messages) > limits.max_messages:
            raise BadRequest(f"too many messages: {len(messages)} > {limits.max_messages}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRequest(f"messages[{i}] must be an object with a role among {sorted(ROLES)}")


class TenantMeter:
    """In-flight and waiting requests and a sliding minute of tokens, per tenant."""

    def __init__(self, limits: Limits, clock=time.monotonic):
        self.limits, self.clock = limits, clock
        self.inflight: collections.Counter[str] = collections.Counter()
        self.waiting: dict[str, collections.deque] = collections.defaultdict(collections.deque)  # futures
        self.spent: dict[str, collections.deque] = collections.defaultdict(collections.deque)  # (t, tokens)

    async def acquire(self, tenant: str) -> None:
        """Count a request in, waiting in line for a slot if the tenant has `max_inflight` running;
        RateLimited past `max_queued` waiting or past the token rate."""
        self._check_rate(tenant)
        queue = self.waiting[tenant]
        if self.inflight[tenant] < self.limits.max_inflight and not queue:
            self.inflight[tenant] += 1
            return
        if len(queue) >= self.limits.max_queued:
            raise RateLimited(f"too many concurrent requests for this tenant (at most {self.limits.max_inflight} "
                              f"running and {self.limits.max_queued} waiting)")
        slot = asyncio.get_running_loop().create_future()
        queue.append(slot)
        try:
            await slot  # done() hands its slot over: the in-flight count stays as it is
        except asyncio.CancelledError:  # the client left while waiting
            if slot.done() and not slot.cancelled():  # ... just as it was handed a slot: pass it on
                self.done(tenant)
            else:
                try:
                    queue.remove(slot)
                except ValueError:
                    pass
            raise

    def done(self, tenant: str, usage: dict | None = None) -> None:
        tokens = (usage or {}).get("total_tokens") or 0
        if tokens and self.limits.tokens_per_minute is not None:
            self.spent[tenant].append((self.clock(), int(tokens)))
        queue = self.waiting[tenant]
        while queue:
            slot = queue.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.inflight[tenant] -= 1

    def _check_rate(self, tenant: str) -> None:
        cap = self.limits.tokens_per_minute
        if cap is None:
            return
        window = self._window(tenant)
        used = sum(t for _, t in window)
        if used >= cap:
            wait = 60 - (self.clock() - window[0][0])
            raise RateLimited(f"token rate limit: {used} of {cap} tokens in the last minute",
                              retry_after=max(1, math.ceil(wait)))

    def _window(self, tenant: str) -> collections.deque:
        w, now = self.spent[tenant], self.clock()
        while w and now - w[0][0] >= 60:
            w.popleft()
        return w
