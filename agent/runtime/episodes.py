"""Episodes (episodic memory): conversations through the gateway, recorded and summarised.

1. The gateway queues every answered chat completion (serving/episodes.py); `EpisodeReader`
   reads what is new into the store: one open episode per client conversation, only the
   messages it does not hold yet (by their index in the conversation).
2. `close_idle`: an episode closes after `episode_idle` minutes without a message.
3. `summarise_closed`: the tenant's own served model (`ServedModel`) summarises each closed,
   unsummarised episode into an `episode_summary` memory (hot at once, baked like any memory).
   A model error or a summary that says nothing (`check_summary`: empty, too short or long, an
   echo of the prompt, repeated words) stores nothing: the episode keeps its messages, the reason
   is recorded (`bakehouse episodes`), and a later tick tries again, `summary_tries` times in all.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from memory import Episode, InvalidInput, Memory, MemoryStore
from memory.db import iso
from serving.episodes import read_episodes

from .queues import OffsetFile

log = logging.getLogger("bakehouse.runtime.episodes")

# complete(tenant, messages, max_tokens=..., temperature=...) -> the model's answer text
Complete = Callable[..., str]

SUMMARY_TOKENS = 96
MIN_SUMMARY_WORDS, MAX_SUMMARY_CHARS = 4, 600
MAX_TRANSCRIPT_CHARS, MAX_MESSAGE_CHARS = 3000, 600  # the 135M model serves 2048 tokens
SUMMARY_ASK = "In one sentence, what did the user talk about?"


class ModelUnavailable(Exception):
    """The engine cannot be asked now (starting, restarting): not a failed try."""


class ModelError(Exception):
    """The engine answered with an error."""


# -- 1. the queue -> the store -------------------------------------------------------------------

def record_turn(store: MemoryStore, record: dict) -> Episode | None:
    """Add one queued turn to its conversation's open episode (or start one). The turn holds the
    conversation's messages from index `from` on; those the store already holds are skipped.
    Returns the episode, None when nothing was new."""
    tenant, conv, start = record["tenant"], record["conversation_id"], int(record.get("from", 0))
    messages = [{k: v for k, v in m.items() if k in ("role", "content", "at", "version")}
                for m in record["messages"]]
    ep = store.conversation_episode(tenant, conv)
    held = ep.conversation_start + len(ep.messages) if ep is not None else 0
    new = messages[max(0, held - start):]
    if not new:
        return None
    if ep is not None and ep.status == "open":
        return store.record_episode(tenant, new, episode_id=ep.id)
    return store.record_episode(tenant, new, source="gateway", conversation_id=conv,
                                conversation_start=max(start, held))


class EpisodeReader:
    """Reads the gateway's episode queue from where it stopped (HOME/runtime/episodes.offset)."""

    def __init__(self, store: MemoryStore, home: Path):
        self.store, self.home = store, Path(home)
        self.offset = OffsetFile(self.home / "runtime" / "episodes.offset")

    def poll(self) -> list[Episode]:
        """Record every new turn; returns the episodes that changed (once each)."""
        records, end = read_episodes(self.home, self.offset.get())
        changed: dict[int, Episode] = {}
        for r in records:
            try:
                ep = record_turn(self.store, r)
            except (InvalidInput, KeyError, TypeError, ValueError, AttributeError) as e:
                log.warning("skipped a malformed conversation turn %s: %s", r.get("id"), e)
                continue
            if ep is not None:
                changed[ep.id] = ep
        if records:  # after the store: a crash in between re-reads turns the indices then skip
            self.offset.set(end)
        return list(changed.values())


# -- 2. closing ----------------------------------------------------------------------------------

def close_idle(store: MemoryStore, idle_minutes: float, now: datetime | None = None) -> list[Episode]:
    """Close every open episode without a message for `idle_minutes`; returns them."""
    cutoff = iso((now or datetime.now(timezone.utc)) - timedelta(minutes=idle_minutes))
    closed = []
    for tenant in store.tenants():
        for ep in store.episodes(tenant, status="open"):
            if ep.updated_at <= cutoff:
                closed.append(store.close_episode(ep.id))
    return closed


# -- 3. summaries --------------------------------------------------------------------------------

def transcript(ep: Episode, max_chars: int = MAX_TRANSCRIPT_CHARS) -> str:
    """The episode's user and assistant turns as "User: ..." / "Assistant: ..." lines, the
    newest that fit in `max_chars`."""
    lines = []
    for m in ep.messages:
        if m.get("role") in ("user", "assistant") and m.get("content", "").strip():
            text = " ".join(m["content"].split())
            if len(text) > MAX_MESSAGE_CHARS:
                text = text[: MAX_MESSAGE_CHARS - 1] + "…"
            lines.append(f"{m['role'].capitalize()}: {text}")
    out, size = [], 0
    for line in reversed(lines):
        if size + len(line) + 1 > max_chars and out:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(reversed(out))


def summary_messages(text: str) -> list[dict]:
    """What the model is asked (kept short and plain: the default model has 135M parameters)."""
    return [{"role": "user", "content": f"Here is a conversation between a user and an assistant:\n\n"
                                        f"{text}\n\n{SUMMARY_ASK}"}]


def check_summary(text: str | None, prompt: str) -> tuple[str | None, str | None]:
    """(the summary, cleaned; None) if it is one, else (None, why not)."""
    s = " ".join((text or "").split()).strip().strip('"').strip()
    s = re.sub(r"^(?:summary|in one sentence)\s*:\s*", "", s, flags=re.I)
    words = _words(s)
    if not words:
        return None, "empty summary"
    if len(words) < MIN_SUMMARY_WORDS:
        return None, f"summary too short ({len(words)} words)"
    if len(s) > MAX_SUMMARY_CHARS:
        return None, f"summary too long ({len(s)} characters > {MAX_SUMMARY_CHARS})"
    # the prompt (or a part of it) said back, a transcript line continued, our own instructions
    grams = _grams(words, 4)
    if (" ".join(words) in " ".join(_words(prompt)) or re.match(r"^(user|assistant)\s*:", s, re.I)
            or (grams and len(grams & _grams(_words(_INSTRUCTIONS), 4)) / len(grams) > 0.5)):
        return None, "summary echoes the prompt"
    long_words = Counter(w for w in words if len(w) > 2)
    trigrams = Counter(zip(words, words[1:], words[2:]))
    if len(words) >= 8 and ((long_words and long_words.most_common(1)[0][1] / len(words) > 0.3)
                            or (trigrams and trigrams.most_common(1)[0][1] >= 3)):
        return None, "summary repeats itself"
    return s, None


_INSTRUCTIONS = "Here is a conversation between a user and an assistant. " + SUMMARY_ASK


def _words(s: str) -> list[str]:
    return re.findall(r"[\w']+", s.lower())


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(words[i:] for i in range(n))))


def summarise(store: MemoryStore, ep: Episode, complete: Complete) -> Memory | None:
    """Summarise one closed episode into its `episode_summary` memory; None (and the reason
    recorded on the episode) when the model fails or says nothing useful. Raises
    ModelUnavailable when the engine cannot be asked now (no try is counted)."""
    text = transcript(ep)
    if not text:
        store.fail_summary(ep.id, "nothing to summarise (no user or assistant text)")
        return None
    messages = summary_messages(text)
    try:  # greedy first; a retry samples, else it would say the same again
        answer = complete(ep.tenant, messages, max_tokens=SUMMARY_TOKENS,
                          temperature=0.0 if ep.summary_tries == 0 else 0.7)
    except ModelUnavailable:
        raise
    except Exception as e:  # the engine's error, a timeout, a malformed answer
        reason = f"model error: {type(e).__name__}: {e}"
    else:
        summary, reason = check_summary(answer, messages[0]["content"])
        if summary is not None:
            m = store.summarise_episode(ep.id, summary)
            log.info("episode %d (%s) summarised as #%d: %s", ep.id, ep.tenant, m.id, summary)
            return m
        reason = f"{reason}: {' '.join((answer or '').split())[:200]!r}"
    ep = store.fail_summary(ep.id, reason)
    log.warning("episode %d (%s): no summary stored (try %d): %s", ep.id, ep.tenant, ep.summary_tries, reason)
    return None


def summarise_closed(store: MemoryStore, complete: Complete, *, max_tries: int, limit: int = 4) -> list[Memory]:
    """Summarise up to `limit` closed, unsummarised episodes that have tries left; returns the
    summaries stored."""
    out, asked = [], 0
    for tenant in store.tenants():
        for ep in store.episodes(tenant, status="closed", summarised=False):
            if ep.summary_tries >= max_tries or asked >= limit:
                continue
            asked += 1
            try:
                m = summarise(store, ep, complete)
            except ModelUnavailable as e:
                log.info("summaries wait: %s", e)
                return out
            if m is not None:
                out.append(m)
    return out


def episode_rows(store: MemoryStore, tenant: str | None = None) -> list[dict]:
    """What `bakehouse episodes` shows: per episode its conversation, status, messages, times,
    and its summary or the last failure."""
    rows = []
    for t in [tenant] if tenant else store.tenants():
        for ep in store.episodes(t):
            summary = store.get(ep.summary_memory_id).text if ep.summary_memory_id else None
            rows.append({
                "id": ep.id, "tenant": ep.tenant, "conversation_id": ep.conversation_id,
                "status": "summarised" if summary is not None else ep.status,
                "messages": len(ep.messages), "started_at": ep.started_at, "updated_at": ep.updated_at,
                "closed_at": ep.closed_at, "summary": summary, "summary_memory_id": ep.summary_memory_id,
                "summary_tries": ep.summary_tries, "summary_error": ep.summary_error,
            })
    return rows


# -- the served model ----------------------------------------------------------------------------

class ServedModel:
    """The tenant's own served model (its current adapter, else the base), asked straight at the
    engine from the runtime's thread: no hot prompt, no episode, none of the tenant's limits.

    Example:
        complete = ServedModel(runtime.gateway)
        complete("alice", [{"role": "user", "content": "Hi"}], max_tokens=32)
    """

    def __init__(self, gateway, timeout: float = 120.0):
        self.gateway, self.timeout = gateway, timeout

    def __call__(self, tenant: str, messages: list[dict], *, max_tokens: int = 64,
                 temperature: float = 0.0) -> str:
        import httpx

        g = self.gateway
        if not g.ready or tenant in g.unrouted:
            raise ModelUnavailable("the engine is not ready")
        model = g.routes.get(tenant) or g.cfg.served_base_name
        headers = getattr(g.engine, "auth_headers", dict)()
        try:
            r = httpx.post(f"{g.engine.url}/v1/chat/completions", headers=headers, timeout=self.timeout,
                           json={"model": model, "messages": messages, "max_tokens": max_tokens,
                                 "temperature": temperature})
        except httpx.HTTPError as e:
            raise ModelError(f"the engine is unreachable ({type(e).__name__})") from e
        if r.status_code != 200:
            raise ModelError(f"HTTP {r.status_code}: {r.text[:200]}")
        return r.json()["choices"][0]["message"].get("content") or ""
