"""Retrieval: which of a tenant's memories a request is about, best first, for its hot prompt.

A request's hot prompt is built per request from the memories its served version does not hold
(`retrieve`): the pinned kinds first (persona and instructions shape every answer; a stable prefix
also keeps the engine's prefix cache useful), then the memories most relevant to the request's last
user message (and the user message before it, where short), best first, within a token budget and
a top-k. So a prompt stays short however much a tenant knows, and no memory is ever out of service
because a budget is full: a pinned memory that does not fit is ranked like any other.

    prompt = retrieve(store, "alice", [{"role": "user", "content": "Who runs the Velmora port?"}],
                      exclude=held_ids, top_k=3, budget_tokens=500)

`Ranker` is the interface (`rank(store, tenant, query, ...) -> [Hit]`). The default, `FTS5Ranker`,
ranks by SQLite FTS5's bm25 over the `memories_fts` index (migration m008, kept in step with every
insert by triggers) through sqlite-utils' `Table.search`; an embedding index can take its place.
Superseded and forgotten memories are never retrieved. A request that asks for the latest
("latest", "newest", "now", "current", ...) gets, among the memories that match it nearly as well
as the best one, the newest first.
"""
from __future__ import annotations

import json
import re
from typing import Callable, NamedTuple, Protocol, Sequence

from .compose import Item, Prompt, select

PINNED = ("persona", "instruction")  # in every prompt while they fit ...
PINNED_SHARE = 0.5  # ... in this share of the budget (the rest is for what the request is about)
MAX_TERMS = 32
PREVIOUS_TURN_CHARS = 200  # the user message before the last one joins the query when this short
LATEST_WORDS = frozenset("latest newest recent recently current currently now today update updated".split())
LATEST_SHARE = 0.5  # "latest": memories scoring at least this share of the best are ranked by date
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not of off on once only or other our ours ourselves out over own same she should so
some such than that the their theirs them themselves then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you
your yours yourself yourselves tell please know say says said give me let us called named name
""".split())


class Hit(NamedTuple):
    id: int
    kind: str
    text: str
    valid_from: str
    score: float  # higher is more relevant


class Ranker(Protocol):
    def rank(self, store, tenant: str, query: str, *, exclude: Sequence[int] = (),
             limit: int = 10, user: str | None = None) -> list[Hit]:
        """The tenant's live memories about `query`, best first (none: [])."""


def terms(text: str) -> list[str]:
    """The words of `text` worth searching for: case-folded, stopwords dropped, each once."""
    out: list[str] = []
    for word in re.findall(r"\w+", text.casefold()):
        if word not in STOPWORDS and (len(word) > 1 or word.isdigit()) and word not in out:
            out.append(word)
    return out[:MAX_TERMS]


def wants_latest(text: str) -> bool:
    return bool(LATEST_WORDS & set(re.findall(r"\w+", text.casefold())))


def request_queries(messages: Sequence[dict]) -> list[str]:
    """What a request asks, as search queries: its last user message, then the user message
    before it when that one is short (a follow-up such as "and when does it open?")."""
    said = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    said = [s for s in said if s.strip()]
    queries = said[-1:]
    if len(said) > 1 and len(said[-2]) <= PREVIOUS_TURN_CHARS:
        queries.append(said[-2])
    return queries


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# live, admitted, the tenant's own or the asking end user's (memory.trust), not excluded
_LIVE = ("tenant = :tenant AND valid_to IS NULL AND status != 'forgotten' AND admission = 'admitted'"
         " AND (end_user IS NULL OR end_user IS :user) AND id NOT IN (SELECT value FROM json_each(:exclude))")


class FTS5Ranker:
    """bm25 over SQLite FTS5 (memories_fts); any query word may match (OR), rare words weigh most."""

    def rank(self, store, tenant: str, query: str, *, exclude: Sequence[int] = (),
             limit: int = 10, user: str | None = None) -> list[Hit]:
        words = terms(query)
        if not words or limit < 1:
            return []
        latest = wants_latest(query)
        rows = store.db["memories"].search(
            " OR ".join(f'"{w}"' for w in words), columns=["id", "kind", "text", "valid_from"],
            where=_LIVE, where_args={"tenant": tenant, "exclude": json.dumps(list(exclude)), "user": user},
            limit=limit * 4 if latest else limit, include_rank=True)
        hits = [Hit(r["id"], r["kind"], r["text"], r["valid_from"], -r["rank"]) for r in rows]
        return (by_date_among_best(hits) if latest else hits)[:limit]


def by_date_among_best(hits: list[Hit]) -> list[Hit]:
    """The hits scoring at least LATEST_SHARE of the best one, newest first, then the rest."""
    if not hits:
        return hits
    floor = hits[0].score * LATEST_SHARE
    close = sorted((h for h in hits if h.score >= floor), key=lambda h: (h.valid_from, h.id), reverse=True)
    return close + [h for h in hits if h.score < floor]


def retrieve(store, tenant: str, messages: Sequence[dict], *, exclude: Sequence[int] = (), top_k: int = 3,
             budget_tokens: int = 1500, count_tokens: Callable[[str], int] | None = None,
             ranker: Ranker | None = None, user: str | None = None) -> Prompt:
    """The hot prompt of one request: the pinned memories within PINNED_SHARE of the budget, then
    the `top_k` most relevant others (see the module docstring). `exclude`: what the served
    weights hold; `user`: the end user asking (their own memories join the tenant's). A pinned
    memory past its share is ranked like any other."""
    pinned = _live(store, tenant, exclude, "AND kind IN (SELECT value FROM json_each(:kinds))", PINNED, user=user)
    ranker = ranker or FTS5Ranker()
    queries = request_queries(messages)
    seen, ranked = set(exclude), []
    for query in queries:  # the last message's hits first, then the previous one's
        for h in ranker.rank(store, tenant, query, exclude=sorted(seen), limit=2 * top_k + min(len(pinned), 20),
                              user=user):
            seen.add(h.id)
            ranked.append(Item(h.id, h.kind, h.text, h.valid_from))
    if not ranked and queries and wants_latest(queries[0]):  # "what is new?": the newest ones
        ranked = _live(store, tenant, exclude, "AND kind NOT IN (SELECT value FROM json_each(:kinds))",
                       PINNED, limit=top_k, user=user)
    return select(pinned, ranked, top_k=top_k, budget_tokens=budget_tokens, pinned_tokens=budget_tokens * PINNED_SHARE,
                  count_tokens=count_tokens)


def _live(store, tenant: str, exclude: Sequence[int], where: str, kinds: Sequence[str], limit: int = -1,
          user: str | None = None) -> list[Item]:
    """The tenant's live memories outside `exclude` that match `where` (over `:kinds`), newest first."""
    rows = store.db.execute(
        f"SELECT id, kind, text, valid_from FROM memories WHERE {_LIVE} {where} ORDER BY valid_from DESC, id DESC"
        " LIMIT :limit",
        {"tenant": tenant, "exclude": json.dumps(list(exclude)), "kinds": json.dumps(list(kinds)), "limit": limit,
         "user": user})
    return [Item(*r) for r in rows.fetchall()]
