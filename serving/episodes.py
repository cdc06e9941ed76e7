"""Episodes: every chat completion through the gateway, queued for the runtime as conversation turns.

After an answer has gone out, the gateway appends one JSON line for it to
HOME/serving/episodes.jsonl (see jsonl.py) in a background task; a failed write is logged, never
an error for the caller:

    {"id": "...", "tenant": "alice", "conversation_id": "c-42", "from": 2, "at": 1764580001.3,
     "version": "alice@v3",
     "messages": [{"role": "user", "content": "...", "at": 1764580000.1},
                  {"role": "assistant", "content": "...", "at": 1764580001.3, "version": "alice@v3"}]}

`conversation_id` is the client's X-Bakehouse-Conversation header, else derived from the tenant
and the first user message, so a client that resends its growing history stays in one
conversation. `messages` are the conversation's messages from index `from` on: what the caller
sent (never the hot prompt the gateway puts before it) and the answer. A client resends the whole
history every turn; the gateway remembers what it queued per conversation (`Transcripts`) and
queues only the rest. After a gateway restart it queues a history from 0 again; the runtime
(agent/runtime/episodes.py) skips by index what it already holds.

A tenant whose `record_episodes` is off (tenants.json, `bakehouse tenants set NAME
--no-episodes`) is never recorded.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from .jsonl import append_line, read_lines

EPISODES_FILE = "episodes.jsonl"
CONVERSATION_HEADER = "X-Bakehouse-Conversation"  # sent by agent.chat.BakehouseChat
MAX_CONVERSATION_ID = 200
MAX_STREAM_BYTES = 8 << 20  # a stream longer than this is recorded without its answer


def episodes_path(home: Path) -> Path:
    return Path(home) / "serving" / EPISODES_FILE


def conversation_id(tenant: str, header: str | None, messages: list[dict], user: str | None = None) -> str:
    """The client's conversation id, else one derived from the tenant, the end user and the first
    user message (two users who open with the same words are two conversations)."""
    if header and len(header) <= MAX_CONVERSATION_ID:
        return header
    first = next((message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"), "")
    salt = f"{tenant}\n{first}" if user is None else f"{tenant}\n{user}\n{first}"
    return "auto-" + hashlib.sha256(salt.encode()).hexdigest()[:16]


def message_text(message: dict) -> str:
    """A message's content as text (the text parts of a multi-part content; "" for none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def caller_messages(messages: list, at: float) -> list[dict]:
    """The caller's messages as {"role", "content", "at"} (roles and text only)."""
    return [{"role": m["role"], "content": message_text(m), "at": at}
            for m in messages if isinstance(m, dict) and isinstance(m.get("role"), str)]


def answer_text(content: bytes) -> str | None:
    """The first choice's message of a chat completion body; None when there is none."""
    try:
        msg = json.loads(content)["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return message_text(msg) if isinstance(msg, dict) else None


def stream_answer(raw: bytes) -> str | None:
    """The first choice's content assembled from an SSE stream of chat completion chunks."""
    parts, seen = [], False
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("data: {"):
            continue
        try:
            choices = json.loads(line[6:]).get("choices") or []
        except ValueError:
            continue
        for c in choices:
            if isinstance(c, dict) and c.get("index", 0) == 0 and isinstance(c.get("delta"), dict):
                seen = True
                parts.append(c["delta"].get("content") or "")
    return "".join(parts) if seen else None


class Transcripts:
    """Per conversation, digests of the messages already queued (the newest `size` conversations),
    so that a resent history is queued once."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._seen: OrderedDict[tuple[str, str], list[bytes]] = OrderedDict()

    def new(self, tenant: str, conv: str, messages: list[dict]) -> tuple[int, list[bytes]]:
        """(index of the first message not queued yet, the digests of all `messages`)."""
        digests = [_digest(m) for m in messages]
        known = self._seen.get((tenant, conv), [])
        start = 0
        while start < min(len(known), len(digests)) and known[start] == digests[start]:
            start += 1
        return start, digests

    def commit(self, tenant: str, conv: str, digests: list[bytes]) -> list[bytes] | None:
        """Note `digests` as queued; returns what was noted before (for `undo`)."""
        key = (tenant, conv)
        previous = self._seen.get(key)
        self._seen[key] = digests
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return previous

    def undo(self, tenant: str, conv: str, digests: list[bytes], previous: list[bytes] | None) -> None:
        """Forget a commit whose write failed (unless a later turn has committed since)."""
        key = (tenant, conv)
        if self._seen.get(key) is digests:
            if previous is None:
                del self._seen[key]
            else:
                self._seen[key] = previous


def _digest(m: dict) -> bytes:
    return hashlib.blake2b(f"{m['role']}\0{m['content']}".encode(), digest_size=8).digest()


def append_episode(home: Path, tenant: str, conv: str, start: int, messages: list[dict], version: str,
                   user: str | None = None) -> dict:
    """Queue a conversation's messages from index `start` on (of end user `user`); returns the record."""
    record = {"id": uuid.uuid4().hex, "tenant": tenant, "conversation_id": conv, "from": start,
              "at": time.time(), "version": version, "messages": messages, "user": user}
    append_line(episodes_path(home), record)
    return record


def read_episodes(home: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Whole records from byte `offset` on, and the offset after the last whole line."""
    return read_lines(episodes_path(home), offset)
