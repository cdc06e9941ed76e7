"""The hot tier: the memories the served weights do not hold, put in each request's prompt.

What a version holds is the bake ledger's record for it (served.py: the memories verified in its
weights). The gateway asks `HotTier.prompt` once per request with the
version it routes that request to (serving/hot.py), so a memory leaves the prompt exactly when the
gateway routes to a version holding it, and comes back the moment it routes to one that does not
(a rollback, a failed load).

Two tiers (`--hot-tier`):
- `retrieval` (default): the pinned kinds (persona, instructions), then the memories the request
  is about, best first, within `--hot-budget` tokens and `--hot-top-k` (memory.retrieval). Every
  live memory is, at every moment, held by the served weights or retrievable for a request about it.
- `static`: every memory the version does not hold, newest first, cut at `--hot-budget` (what a
  memory past the budget gets: neither the prompt nor the weights). Kept as a baseline.

`sync` (the scheduler's tick) records per tenant what its served version leaves to the prompt and
which of those memories a request about them would not reach (`out_of_service`), for `bakehouse
status`, the page and /metrics. Each thread that asks gets its own connection to the store.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memory import Memory, MemoryStore, Prompt, UnknownTenant
from memory.retrieval import retrieve
from serving.hot import NO_HOT, HotPrompt
from serving.registry import Registry, served

from .served import held

log = logging.getLogger("bakehouse.runtime.hot")
TIERS = ("retrieval", "static")


def hot_tier(cfg, count_tokens: Callable[[str], int] | None = None) -> "HotTier":
    """The hot tier a RuntimeConfig asks for."""
    return HotTier(cfg.home, cfg.hot_budget, top_k=cfg.hot_top_k, tier=cfg.hot_tier, count_tokens=count_tokens)


@dataclass(frozen=True)
class TenantHot:
    """What a tenant's served version leaves to the prompt."""

    version: str | None
    memory_ids: tuple[int, ...]  # live memories the version does not hold
    tokens: int  # the prompt of a request about nothing (the pinned part; all of it when static)
    out_of_service: tuple[int, ...]  # of those, the ones a request about them would not get


class HotTier:
    def __init__(self, home: Path, budget: int, *, top_k: int = 3, tier: str = "retrieval",
                 count_tokens: Callable[[str], int] | None = None):
        if tier not in TIERS:
            raise ValueError(f"hot tier must be one of {', '.join(TIERS)}, got {tier!r}")
        self.home, self.budget, self.top_k, self.tier = Path(home), budget, top_k, tier
        self.count_tokens = count_tokens
        self.registry = Registry(home)
        self._local = threading.local()
        self._seen: tuple | None = None
        self.current: dict[str, TenantHot] = {}

    def store(self) -> MemoryStore:
        """This thread's connection to the store."""
        if getattr(self._local, "store", None) is None:
            self._local.store = MemoryStore.in_home(self.home, actor="runtime")
        return self._local.store

    def build(self, store: MemoryStore, tenant: str, exclude, messages: list, user: str | None = None) -> Prompt:
        """`user`: the end user asking; their own memories (memory.trust) join the tenant's when
        retrieved (the static tier holds the tenant's only)."""
        if self.tier == "static":
            return store.compose(tenant, budget_tokens=self.budget, count_tokens=self.count_tokens, exclude=exclude)
        return retrieve(store, tenant, messages, exclude=exclude, top_k=self.top_k, budget_tokens=self.budget,
                        count_tokens=self.count_tokens, user=user)

    def prompt(self, tenant: str, served: str, messages: list, user: str | None = None) -> HotPrompt:
        """The gateway's hot-prompt source: what this request (of end user `user`) needs that
        `served` does not hold."""
        store = self.store()
        try:
            p = self.build(store, tenant, held(store, tenant, served), messages, user)
        except UnknownTenant:  # a key with no memories yet
            return NO_HOT
        return HotPrompt(p.text, p.tokens, p.memory_ids) if p.memory_ids else NO_HOT

    def _changes(self, store: MemoryStore) -> tuple:
        (audit_id,) = store.db.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
        return audit_id, self.registry.stamp()

    def sync(self, force: bool = False) -> bool:
        """Recompute `current` if the memories or the registry changed; True if it did."""
        store = self.store()
        seen = self._changes(store)
        if not force and seen == self._seen:
            return False
        state, current = self.registry.load(), {}
        for tenant in store.tenants():
            v = served(state, tenant)
            holds = held(store, tenant, v.name if v else None)
            unheld = [m for m in store.memories(tenant, valid_only=True) if m.id not in holds]
            if not unheld:
                continue
            idle = self.build(store, tenant, holds, [])
            current[tenant] = TenantHot(v.name if v else None, tuple(m.id for m in unheld), idle.tokens,
                                        self._out_of_service(store, tenant, holds, unheld, idle))
        self._seen, self.current = seen, current
        return True

    def _out_of_service(self, store: MemoryStore, tenant: str, holds, unheld: list[Memory],
                        idle: Prompt) -> tuple[int, ...]:
        """The unheld memories a request about them would not get: for `static`, those cut by
        the budget; for `retrieval`, those not retrieved for a request made of their own text."""
        if self.tier == "static":
            return tuple(m.id for m in unheld if m.id not in idle.memory_ids)
        about = [(m, self.build(store, tenant, holds, [{"role": "user", "content": m.text}])) for m in unheld]
        return tuple(m.id for m, p in about if m.id not in p.memory_ids)
