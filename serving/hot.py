"""Hot prompts: what each tenant's model must be told in its system prompt, per served version.

The runtime (agent/) knows which memories each adapter version holds; the gateway only knows
which version it routes a request to. They meet in one file, `serving/hot.json`, replaced whole
(atomically) by the runtime and polled by the gateway:

    {"schema": 1, "updated": 1764580000.0,
     "tenants": {"alice": {"*": {"text": "...", "tokens": 312},            # every live memory
                           "base": {"text": "...", "tokens": 312},
                           "alice@v3": {"text": "...", "tokens": 41}}}}  # what v3 does not hold

A request routed to `alice@v3` gets the `alice@v3` text; a version the file does not name gets
`*` (all of the tenant's memories), so whatever the gateway serves, a memory is always in the
weights or in the prompt. A tenant absent from the file gets no hot prompt.

`tokens` is the writer's count of the text (the served model's tokenizer when the runtime has
it): the gateway has no tokenizer and reports it as is (X-Bakehouse-Hot-Tokens). A file from
before the counts has none: the prompt is still sent, its cost is unknown (None).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .errors import BadRequest, ServingError

HOT_FILE = "hot.json"
SCHEMA = 1
ALL = "*"
# The gateway's answer to each forwarded request says which version served it and what its hot
# prompt cost (agent/chat.py reads them).
VERSION_HEADER = "X-Bakehouse-Version"
HOT_TOKENS_HEADER = "X-Bakehouse-Hot-Tokens"


class HotPrompt(NamedTuple):
    text: str
    tokens: int | None  # as counted by the writer; None when the file does not say


NO_HOT = HotPrompt("", 0)


def hot_path(home: Path) -> Path:
    return Path(home) / "serving" / HOT_FILE


def write_hot(home: Path, tenants: dict[str, dict[str, dict]]) -> None:
    """Replace the hot file: tenant -> served name ("base", "<tenant>@v<N>", "*") -> {"text", ...}."""
    path = hot_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = {"schema": SCHEMA, "updated": time.time(), "tenants": tenants}
    fd, tmp = tempfile.mkstemp(prefix=".hot.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(raw, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_hot_prompts(home: Path) -> dict[str, dict[str, HotPrompt]]:
    """tenant -> served name -> HotPrompt; {} when there is no file."""
    path = hot_path(home)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ServingError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or not isinstance(raw.get("tenants"), dict):
        raise ServingError(f"{path}: not a hot-prompt file of schema {SCHEMA}")
    out: dict[str, dict[str, HotPrompt]] = {}
    for tenant, versions in raw["tenants"].items():
        if not isinstance(versions, dict):
            raise ServingError(f"{path}: tenant {tenant!r} must map versions to prompts")
        out[tenant] = {name: HotPrompt(str(v.get("text", "")), _count(v.get("tokens")))
                       for name, v in versions.items() if isinstance(v, dict)}
    return out


def _count(tokens) -> int | None:
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None


def read_hot(home: Path) -> dict[str, dict[str, str]]:
    """tenant -> served name -> text; {} when there is no file."""
    return {t: {name: p.text for name, p in versions.items()} for t, versions in read_hot_prompts(home).items()}


def hot_prompt(hot: dict[str, dict[str, HotPrompt]], tenant: str, served: str) -> HotPrompt:
    """The hot prompt for a request of `tenant` served by `served` (NO_HOT for none)."""
    return _pick(hot, tenant, served, NO_HOT)


def hot_text(hot: dict[str, dict[str, str]], tenant: str, served: str) -> str:
    """The system text for a request of `tenant` served by `served` ("" for none)."""
    return _pick(hot, tenant, served, "")


def _pick(hot: dict, tenant: str, served: str, none):
    """`served`'s entry of `tenant`, else the tenant's `*` entry, else `none`."""
    versions = hot.get(tenant) or {}
    return versions.get(served, versions.get(ALL, none))


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

