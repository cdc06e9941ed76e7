"""Hot prompts: what a request's model must be told in its system prompt, beside its weights.

The gateway does not know memories. It asks an injected hot-prompt source, once per request:

    source(tenant, served, messages) -> HotPrompt(text, tokens, memory_ids)

`served` is the vLLM name the request is routed to ("<tenant>@v<N>", or the base model's name);
`messages` are the caller's chat messages (a completion's prompt comes as one user message). The
runtime (agent/runtime/hot.py) answers with the memories that version does not hold which the
request is about. The source is called in a thread of the gateway's own, never on the event loop.

The text goes before the caller's own system message (`with_hot_prompt`), so `usage.prompt_tokens`
counts it; the answer's headers say which version served it, what its hot prompt cost (the
source's count, in the served model's tokens when it has the tokenizer) and which memories were
in it, so a user can see why it answered as it did.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .errors import BadRequest

# The gateway's answer to each forwarded request says which version served it, what its hot
# prompt cost and which memories it held (agent/chat.py reads them).
VERSION_HEADER = "X-Bakehouse-Version"
HOT_TOKENS_HEADER = "X-Bakehouse-Hot-Tokens"
HOT_MEMORIES_HEADER = "X-Bakehouse-Hot-Memories"  # comma-separated memory ids, in prompt order


class HotPrompt(NamedTuple):
    text: str
    tokens: int | None  # as counted by the source; None when it cannot say
    memory_ids: tuple[int, ...] = ()


NO_HOT = HotPrompt("", 0)
# (tenant, served version, the request's messages, its end user or None) -> the hot prompt
HotSource = Callable[[str, str, list, "str | None"], HotPrompt]
USER_HEADER = "X-Bakehouse-User"  # the end user, where the OpenAI `user` field cannot be set
MAX_USER_CHARS = 200


def end_user(headers, body: dict) -> str | None:
    """The end user a request speaks for: the `X-Bakehouse-User` header, else the OpenAI `user`
    field; None when neither names one. Their episodes and feedback are scoped to them, and their
    own memories join the tenant's in their hot prompt."""
    user = headers.get(USER_HEADER) or body.get("user")
    if user is None:
        return None
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_CHARS:
        raise BadRequest(f"'user' must be a non-blank string of at most {MAX_USER_CHARS} characters")
    return user


def request_messages(body: dict, path: str) -> list:
    """What a request says, as chat messages, for the hot-prompt source."""
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        return list(messages) if isinstance(messages, list) else []
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(p for p in prompt if isinstance(p, str))
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []


def served_headers(version: str, hot: HotPrompt) -> dict[str, str]:
    """What served a request: the version name ("base" for none), the hot prompt's tokens and
    the memories in it."""
    headers = {VERSION_HEADER: version, HOT_MEMORIES_HEADER: ",".join(map(str, hot.memory_ids))}
    if not hot.text:
        headers[HOT_TOKENS_HEADER] = "0"
    elif hot.tokens is not None:
        headers[HOT_TOKENS_HEADER] = str(hot.tokens)
    return headers


def with_hot_prompt(body: dict, path: str, text: str) -> dict:
    """The request body with `text` before everything the caller sent (its own system message
    is kept, after the hot prompt). Raises ServingError(400) for a body it cannot extend."""
    if not text:
        return body
    body = dict(body)
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("'messages' must be a list")
        messages = list(messages)
        first = messages[0] if messages else None
        if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
            messages[0] = {**first, "content": f"{text}\n\n{first['content']}"}
        elif isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), list):
            messages[0] = {**first, "content": [{"type": "text", "text": text + "\n\n"}, *first["content"]]}
        else:
            messages.insert(0, {"role": "system", "content": text})
        body["messages"] = messages
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            body["prompt"] = f"{text}\n\n{prompt}"
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            body["prompt"] = [f"{text}\n\n{p}" for p in prompt]
        else:
            raise BadRequest("this tenant has memories in its prompt: send 'prompt' as text, not token ids")
    return body

