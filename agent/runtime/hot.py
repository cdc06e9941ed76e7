"""The hot tier: every memory that the served weights do not hold goes in the system prompt.

What a version holds is the bake ledger's record for it (`store.adapter(tenant, name)`): the
memories verified in its weights. For each tenant the runtime writes one prompt per version the
gateway might serve (serving/hot.py): the live memories minus those that version holds. So a
memory leaves the prompt exactly when the gateway routes to a version holding it, and comes back
the moment it routes to one that does not (a rollback, a failed load): it is never in neither.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memory import MemoryStore, UnknownAdapter
from serving.hot import ALL, write_hot
from serving.registry import Registry

log = logging.getLogger("bakehouse.runtime.hot")
RECENT_VERSIONS = 8  # per tenant, hot prompts are written for this many newest versions


def held(store: MemoryStore, tenant: str, version: str | None) -> tuple[int, ...]:
    """The memories verified in the weights of `version` ("<tenant>@v<N>"; None: the base)."""
    if version is None:
        return ()
    try:
        return store.adapter(tenant, version).memory_ids
    except UnknownAdapter:  # published by hand, not by the runtime: it holds nothing we know of
        return ()


def layers_of(store: MemoryStore, tenant: str, version: str | None) -> int:
    """Layers in the stack of `version` (a version published by hand counts as one)."""
    if version is None:
        return 0
    try:
        return store.adapter(tenant, version).layer + 1
    except UnknownAdapter:
        return 1


@dataclass(frozen=True)
class TenantHot:
    """The hot tier of the version a tenant is served now."""

    version: str | None
    memory_ids: tuple[int, ...]
    tokens: int
    left_out: tuple[int, ...]  # hot memories that did not fit the budget


class HotTier:
    """Writes serving/hot.json whenever the memories or the registry change."""

    def __init__(self, home: Path, store: MemoryStore, budget: int,
                 count_tokens: Callable[[str], int] | None = None, base_name: str = "base"):
        self.home, self.store, self.budget = Path(home), store, budget
        self.count_tokens, self.base_name = count_tokens, base_name
        self.registry = Registry(home)
        self._seen: tuple | None = None
        self.current: dict[str, TenantHot] = {}

    def _changes(self) -> tuple:
        (audit_id,) = self.store.db.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
        return audit_id, self.registry.stamp()

    def sync(self, force: bool = False) -> bool:
        """Recompute and write the hot prompts if anything changed; True if it wrote."""
        seen = self._changes()
        if not force and seen == self._seen:
            return False
        state = self.registry.load()
        out, current = {}, {}
        for tenant in self.store.tenants():
            t = state.get(tenant)
            # the versions the gateway may route to soon: the pointer, the previous one and the
            # newest few; any other version it serves gets `*` (every memory) until the next sync
            names = []
            if t:
                ready = sorted(n for n, v in t.versions.items() if v.status == "ready")
                keep = set(ready[-RECENT_VERSIONS:]) | {t.current, t.previous}
                names = [t.versions[n].name for n in ready if n in keep]
            served = t.versions[t.current].name if t and t.current is not None else None
            everything = self.store.compose(tenant, budget_tokens=self.budget, count_tokens=self.count_tokens)
            prompts = {ALL: everything, self.base_name: everything}
            for name in names:
                prompts[name] = self.store.compose(tenant, budget_tokens=self.budget,
                                                   count_tokens=self.count_tokens,
                                                   exclude=held(self.store, tenant, name))
            if not everything.memory_ids and not everything.left_out:
                continue  # no live memories: nothing to tell the model
            out[tenant] = {name: {"text": p.text, "tokens": p.tokens, "memories": len(p.memory_ids)}
                           for name, p in prompts.items()}
            p = prompts[served or self.base_name]
            current[tenant] = TenantHot(served, p.memory_ids, p.tokens, p.left_out)
        write_hot(self.home, out)
        self._seen, self.current = seen, current
        return True
