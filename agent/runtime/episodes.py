"""Episodes (episodic memory): conversations through the gateway, recorded and summarised.

1. The gateway queues every answered chat completion (serving/episodes.py); `EpisodeReader`
   reads what is new into the store: one open episode per client conversation, only the
   messages it does not hold yet (by their index in the conversation).
2. `close_idle`: an episode closes after `episode_idle` minutes without a message.
3. `summarise_closed`: each closed, unsummarised episode becomes an `episode_summary` memory of
   what the USER said, as the tenant's policy says (memory.trust): `user` (the default) scopes it to
   the end user who said it (their hot tier only, never baked; no end user named, no summary),
   `tenant` makes it the tenant's (hot at once, baked like any memory), `off` stores none. Of what
   the USER said, never of what the model answered: the
   135M model's answers are often wrong, and summaries of whole transcripts recorded them as the
   user's ("The user mentioned that the 100-year-old Silver Stag is a historic landmark").
   a. `user_statements`: the sentences of the user's turns that state something (not questions,
      greetings, thanks or requests). An episode without one (a one-shot question, "Hello") stores
      no memory: it is marked NOTHING_SAID once (a recorded reason, not a failure: `bakehouse
      episodes` shows it "skipped"), never sent to the model, never tried again.
   b. The tenant's own served model (`ServedModel`) is asked to summarise those statements alone.
   c. `model_summary` keeps its answer only if it says something (`check_summary`: not empty, too
      short or long, an echo of the prompt, repeated words), is `grounded` in the statements (its
      numbers and names all said by the user, most of its words too) and keeps their numbers and
      names (`lost_facts`: "My locker code is 7734." must not become "the user's locker code").
      Otherwise the dropped answer and why are logged, and `extractive_summary` is stored: the
      statements themselves, quoted (`The user said: "My locker code is 7734."`), grounded by
      construction. It is the fallback, not the primary, because a model summary that passes is
      shorter and in the third person; it is stored at once (no sampled retry) because a retry of
      a 135M model is likelier to invent than to fix. Long conversations mostly end extractive
      (one sentence rarely keeps every name), with what the user asked to be remembered first.
   A model error stores nothing: the episode keeps its messages, the reason is recorded, and a
   later tick tries again, `summary_tries` times in all.
"""
from __future__ import annotations

import logging
import os
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
MAX_EXTRACT_CHARS = 400  # an extractive summary: the user's statements quoted, up to this
SUMMARY_INTRO = "A user told you:"
SUMMARY_ASK = "In one sentence, what did the user tell you?"


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
    user = record.get("user")
    ep = store.conversation_episode(tenant, conv, user)
    held = ep.conversation_start + len(ep.messages) if ep is not None else 0
    new = messages[max(0, held - start):]
    if not new:
        return None
    if ep is not None and ep.status == "open":
        return store.record_episode(tenant, new, episode_id=ep.id)
    return store.record_episode(tenant, new, source="gateway", conversation_id=conv,
                                conversation_start=max(start, held), end_user=user)


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
# 3a. what the user stated: the sentences of the user's turns that state something

QUESTION_WORDS = frozenset("what who whom whose which why how when where".split())
AUXILIARIES = frozenset(
    "is are am was were can could do does did will would should shall have has isn't aren't wasn't "
    "weren't can't couldn't don't doesn't didn't won't wouldn't shouldn't haven't hasn't".split())
SUBJECTS = frozenset("i you he she it we they there this that these those the a an my your his her "
                     "our their anyone anybody someone somebody".split())
ACKNOWLEDGEMENTS = frozenset(
    "hello hi hey hiya howdy yo greetings good morning afternoon evening night day thanks thank thx ty "
    "cheers you ok okay k kk sure yes yeah yep yup no nope nah great cool nice awesome perfect wonderful "
    "excellent fine alright right got it bye goodbye see later soon sorry oh ah hmm hm lol haha wow well "
    "so very much a lot all there everyone again i understand understood agree think know don't makes "
    "sense sounds that's that is it's true exactly indeed of course problem worries welcome please "
    "interesting amazing really just bot assistant are you're it this was helpful".split())
REQUEST_VERBS = frozenset(
    "please tell write give explain show list describe summarise summarize translate help make find "
    "create generate suggest recommend compare define calculate draft repeat say answer continue remind "
    "let let's forget remember note".split())
FILLERS = frozenset("so and but well oh also then ok okay hey".split())  # skipped before the first word
# "Remember (that) my code is 7734." keeps its fact; "Please remember my locker code." has none
_REMEMBER = re.compile(r"^(?:please\s+)?(?:remember|note|keep in mind|bear in mind|(?:do not|don't|never) "
                       r"forget)\b\s*(that\b|[:,])?\s*(.*)$", re.I)
_REMEMBER_AFTER = re.compile(r"[,;]\s*(?:and\s+|so\s+)?(?:please\s+)?(?:remember|note|keep in mind|"
                             r"(?:do not|don't) forget)\b[^,;]*$", re.I)  # "X, please remember it."
_COPULA = re.compile(r"\b(?:is|are|am|was|were)\b|\w'(?:s|m|re)\b|\d", re.I)
NOTHING_SAID = "nothing to remember: the user stated nothing"
NOT_LEARNED = "not learned: the tenant's policy is learn_episodes=off"
NO_USER = ("not learned: no end user named (the request's `user` field), and the tenant's policy keeps "
           "each user's conversations to that user (learn_episodes=user)")
SETTLED = (NOTHING_SAID, NOT_LEARNED, NO_USER)  # recorded reasons, not failures: never tried again


def user_statements(messages: list[dict]) -> list[str]:
    """The sentences of the user's turns that state something, in order, once each: not questions
    ("...?", or starting with a wh-word or an auxiliary before its subject), not greetings, thanks or
    acknowledgements ("Hello", "ok thanks"), not requests ("Tell me a joke.", "Please remember my
    locker code."; "Remember that X" keeps X)."""
    return [s for s, _ in _statements(messages)]


def _statements(messages: list[dict]) -> list[tuple[str, bool]]:
    """(statement, whether its turn asked to remember something), for `user_statements`."""
    out: dict[str, bool] = {}
    for m in messages:
        text = m.get("content")
        if m.get("role") != "user" or not isinstance(text, str):
            continue
        said, remember = [], False
        for sentence in _sentences(text):
            kind, statement = _classify(sentence)
            remember |= kind == "remember"
            if statement:
                said.append(statement[:MAX_MESSAGE_CHARS])
        for s in said:
            out[s] = out.get(s, False) or remember
    return list(out.items())


def _sentences(text: str) -> list[str]:
    text = text.replace("\u2019", "'")
    return [" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+|\n+", text) if p.strip()]


def _classify(sentence: str) -> tuple[str, str]:
    """(kind, the statement it makes, or ""): kind is statement, question, ack, request or remember."""
    s = _peel_acks(sentence)
    words = _words(s)
    if not words or all(w in ACKNOWLEDGEMENTS for w in words):
        return "ack", ""
    if m := _REMEMBER.match(s):
        fact = m.group(2).strip()
        keep = fact and (m.group(1) or _COPULA.search(fact))
        return "remember", fact[0].upper() + fact[1:] if keep else ""
    if m := _REMEMBER_AFTER.search(s):  # "My code is 7734, please remember it."
        return "remember", _classify(s[:m.start()] + ".")[1]
    if s.endswith("?"):  # "My code is 7734, can you remember it?": the statement before the question
        for m in re.finditer(r",\s+(?:(?:and|so|but)\s+)?([\w']+)", s):
            if m.group(1).lower() in QUESTION_WORDS | AUXILIARIES:
                kind, statement = _classify(s[:m.start()] + ".")
                return ("remember" if "remember" in s[m.start():].lower() else kind), statement
        return "question", ""
    first, second = ([w for w in words if w not in FILLERS] + ["", ""])[:2]
    if first in QUESTION_WORDS and not (s.endswith(".") and "," in s):  # not "When I was ten, we ..."
        return "question", ""
    if first in AUXILIARIES and (second in SUBJECTS or not s.endswith((".", "!"))):  # not "Will is ..."
        return "question", ""
    if first in REQUEST_VERBS:
        return "request", ""
    return "statement", s[0].upper() + s[1:]


def _peel_acks(s: str) -> str:
    """"Hi there, I'm Sam." -> "I'm Sam."."""
    while (m := re.match(r"^([\w' ]+?)\s*[,!:;-]+\s+(.+)$", s)) and all(
            w in ACKNOWLEDGEMENTS for w in _words(m.group(1))):
        s = m.group(2)
    return s


# 3b. is a summary grounded in what the user said, and does it keep it?

GROUNDED_SHARE = 0.7  # of a summary's content words, at least this share said by the user
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as into about over after before than then "
    "so that this these those there here it its it's is are am was were be been being has have had do "
    "does did doing will would can could should shall may might must not no yes i i'm me my mine you "
    "your he him his she her we us our they them their theirs who whom which what when where why how "
    "all any some each every also just very too only own same such more most other again once out up "
    "down off one's i'll i've i'd you're you've they're they've we're we've he's she's that's don't "
    "doesn't didn't isn't aren't can't".split()) | frozenset(  # the summary's boilerplate
    "user user's users assistant conversation mentioned mention mentions said say says told tell tells "
    "asked ask asks talked talk talks stated states state shared shares explained explains noted notes "
    "wants want wanted like likes would shared sentence".split())
NOT_NAMES = frozenset("i i'm i'll i've i'd user user's users assistant".split())
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")


def grounded(summary: str, user_texts: list[str]) -> tuple[bool, str | None]:
    """(True, None) if what `summary` asserts is found in `user_texts`, else (False, why): each of its
    numbers and names (capitalised words but a sentence's first) said by the user, and at least
    GROUNDED_SHARE of its content words (stopwords and "user", "mentioned", ... aside; case-folded,
    "codes" ~ "code")."""
    said = " ".join(user_texts)
    stems = {_stem(w) for w in _words(said)}
    numbers = {re.sub(r"\D", "", n) for n in _NUMBER.findall(said)}
    if unsaid := [n for n in _NUMBER.findall(summary) if re.sub(r"\D", "", n) not in numbers]:
        return False, f"a number the user never said: {unsaid[0]}"
    if unsaid := [w for w in _names(summary) if not _said(w, stems)]:
        return False, f"a name the user never said: {unsaid[0]}"
    content = [w for w in _words(summary) if w not in STOPWORDS and not w.isdigit()]
    if not content:
        return False, "nothing the user said"
    unsaid = [w for w in content if not _said(w, stems)]
    if (share := 1 - len(unsaid) / len(content)) < GROUNDED_SHARE:
        return False, f"only {share:.0%} of its words were said by the user (not: {', '.join(unsaid[:5])})"
    return True, None


def lost_facts(summary: str, statements: list[str]) -> list[str]:
    """The numbers and names of the user's statements that `summary` leaves out ("7734")."""
    stems = {_stem(w) for w in _words(summary)}
    digits = {re.sub(r"\D", "", n) for n in _NUMBER.findall(summary)}
    facts = [n for s in statements for n in _NUMBER.findall(s) if re.sub(r"\D", "", n) not in digits]
    facts += [w for s in statements for w in _names(s) if not _said(w, stems)]
    return list(dict.fromkeys(facts))


def _names(text: str) -> list[str]:
    """Capitalised words but each sentence's first and those capitalised by grammar ("I'm", "User")."""
    return [w for s in _sentences(text) for w in re.findall(r"\w[\w']*", s)[1:]
            if w[0].isupper() and w.lower() not in NOT_NAMES]


def _stem(word: str) -> str:
    w = word.lower().removesuffix("'s")
    for suffix in ("ing", "ed", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)]
    return w


def _said(word: str, stems: set[str]) -> bool:
    """`word` (or a form of it: "codes" ~ "code", "lives" ~ "lived", "allergy" ~ "allergic") is
    among `stems`: one a prefix of the other, or a long common prefix."""
    w = _stem(word)
    return w in stems or any(_akin(w, t) for t in stems)


def _akin(a: str, b: str) -> bool:
    short, long = sorted((a, b), key=len)
    common = len(os.path.commonprefix([a, b]))
    return (len(short) >= 3 and len(long) - len(short) <= 3 and long.startswith(short)) or (
        common >= 5 and common >= len(short) - 2)


# 3c. the summary: the model's if it is grounded and keeps the facts, else the user's own words

def summary_messages(statements: list[str]) -> list[dict]:
    """What the model is asked: the user's statements, one a line (kept short and plain: the
    default model has 135M parameters)."""
    return [{"role": "user", "content": f"{SUMMARY_INTRO}\n\n" + "\n".join(statements) + f"\n\n{SUMMARY_ASK}"}]


def extractive_summary(statements: list[str], max_chars: int = MAX_EXTRACT_CHARS) -> str:
    """`The user said: "My locker code is 7734."`: the statements themselves, quoted, those that fit
    in `max_chars` (grounded by construction)."""
    quoted = [f'"{s.replace(chr(34), chr(39))}"' for s in statements]
    head = "The user said: "
    kept = _fit(quoted, max_chars - len(head)) or [quoted[0][: max_chars - len(head) - 2] + '…"']
    return head + " ".join(kept)


def _fit(items: list[str], max_chars: int) -> list[str]:
    """The items, in order, that fit in `max_chars` (one separator each)."""
    out, size = [], 0
    for item in items:
        if size + len(item) + 1 <= max_chars:
            out.append(item)
            size += len(item) + 1
    return out


def check_summary(text: str | None, prompt: str) -> tuple[str | None, str | None]:
    """(the summary, cleaned; None) if it is one, else (None, why not)."""
    s = " ".join((text or "").split()).strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':  # wrapped in quotes; a quotation inside stays whole
        s = s[1:-1].strip()
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


_INSTRUCTIONS = SUMMARY_INTRO + " " + SUMMARY_ASK


def _words(s: str) -> list[str]:
    return [w.strip("'") for w in re.findall(r"[\w']+", s.lower()) if w.strip("'")]


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(words[i:] for i in range(n))))


def model_summary(answer: str | None, statements: list[str], prompt: str) -> tuple[str | None, str | None]:
    """(the model's summary; None) if it says something (`check_summary`), is `grounded` in the
    user's statements and keeps their numbers and names (`lost_facts`), else (None, why not)."""
    summary, why = check_summary(answer, prompt)
    if summary is None:
        return None, why
    ok, why = grounded(summary, statements)
    if not ok:
        return None, f"not grounded: {why}"
    if lost := lost_facts(summary, statements):
        return None, f"leaves out what the user said: {', '.join(lost[:5])}"
    return summary, None


def summarise(store: MemoryStore, ep: Episode, complete: Complete) -> Memory | None:
    """Summarise one closed episode into its `episode_summary` memory: the model's summary of the
    user's statements if `model_summary` keeps it, else `extractive_summary`. None when the user
    stated nothing (recorded as NOTHING_SAID: not asked again) or the model failed (the reason
    recorded; a later tick tries again). Raises ModelUnavailable when the engine cannot be asked
    now (no try is counted)."""
    said, policy = _statements(ep.messages), store.trust.policy(ep.tenant)
    why_not = (NOT_LEARNED if policy.learn_episodes == "off" else NOTHING_SAID if not said
               else NO_USER if policy.learn_episodes == "user" and ep.end_user is None else None)
    if why_not:
        store.fail_summary(ep.id, why_not)
        log.info("episode %d (%s): no summary, %s", ep.id, ep.tenant, why_not)
        return None
    # what the user asked to be remembered first: it is what a length cap must keep
    statements = [s for s, remember in said if remember] + [s for s, remember in said if not remember]
    shown = _fit(statements, MAX_TRANSCRIPT_CHARS)
    messages = summary_messages(shown)
    try:
        answer = complete(ep.tenant, messages, max_tokens=SUMMARY_TOKENS, temperature=0.0)
    except ModelUnavailable:
        raise
    except Exception as e:  # the engine's error, a timeout, a malformed answer
        ep = store.fail_summary(ep.id, f"model error: {type(e).__name__}: {e}")
        log.warning("episode %d (%s): no summary stored (try %d): %s", ep.id, ep.tenant, ep.summary_tries,
                    ep.summary_error)
        return None
    summary, why = model_summary(answer, shown, messages[0]["content"])
    if summary is None:
        summary = extractive_summary(statements)
        log.warning("episode %d (%s): dropped the model's summary (%s): %r; stored the user's words",
                    ep.id, ep.tenant, why, " ".join((answer or "").split())[:200])
    m = store.summarise_episode(ep.id, summary, scoped=policy.learn_episodes == "user")
    log.info("episode %d (%s) summarised as #%d%s: %s", ep.id, ep.tenant, m.id,
             f" for end user {ep.end_user}" if m.end_user else "", summary)
    return m


def summarise_closed(store: MemoryStore, complete: Complete, *, max_tries: int, limit: int = 4) -> list[Memory]:
    """Summarise the closed, unsummarised episodes that have tries left, asking the model about
    `limit` of them at most; returns the summaries stored. An episode whose user stated nothing is
    marked NOTHING_SAID once (without asking the model, not counted in `limit`) and left alone."""
    out, asked = [], 0
    for tenant in store.tenants():
        for ep in store.episodes(tenant, status="closed", summarised=False):
            if ep.summary_tries >= max_tries or ep.summary_error in SETTLED:
                continue
            asks = bool(user_statements(ep.messages))
            if asks and asked >= limit:
                continue
            asked += asks
            try:
                m = summarise(store, ep, complete)
            except ModelUnavailable as e:
                log.info("summaries wait: %s", e)
                return out
            if m is not None:
                out.append(m)
    return out


def transcript(ep: Episode, max_chars: int = MAX_TRANSCRIPT_CHARS) -> str:
    """The episode's user and assistant turns as "User: ..." / "Assistant: ..." lines, the
    newest that fit in `max_chars` (what feedback is read against; summaries read only the user's
    statements)."""
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


def episode_rows(store: MemoryStore, tenant: str | None = None) -> list[dict]:
    """What `bakehouse episodes` shows: per episode its conversation, status, messages, times,
    and its summary, the last failure, or why it was skipped (status "skipped": NOTHING_SAID)."""
    rows = []
    for t in [tenant] if tenant else store.tenants():
        for ep in store.episodes(t):
            summary = store.get(ep.summary_memory_id).text if ep.summary_memory_id else None
            rows.append({
                "id": ep.id, "tenant": ep.tenant, "conversation_id": ep.conversation_id,
                "status": ("summarised" if summary is not None
                           else "skipped" if ep.summary_error == NOTHING_SAID else ep.status),
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
