"""The one record of what each tenant is served and what each version holds.

Everyone asks two questions, and asks them here: `served(tenant)`, the version the registry
points the tenant at (a `serving.registry.Version`; None: the base model), and `holds(tenant,
version)`, the memories verified in that version's weights (the bake ledger). The learner, the
hot tier, `bakehouse status`, the page and /metrics read them through `Record`; a version is named
the one way the engine knows it, "<tenant>@v<N>" (`Version.name`).

Where the state lives, and why some of it is in files:
- `adapters/registry.json` (serving/registry.py): the versions and each tenant's pointer. A file
  because other processes change it while the runtime runs (`bakehouse adapters publish` and
  `rollback`) and `bakehouse serve` reads it without a runtime; writers lock, readers never do.
- the memory DB (`adapters`, `adapter_memories`): the ledger of what each version holds, written
  once when the runtime publishes a version. `memories.status = 'baked'` is derived from it.
- `runtime/status.json` and `serving/gateway.json`: snapshots for `bakehouse status`, which runs
  in another process. Nothing in the runtime reads them back.
The gateway keeps its own routes (what the engine has loaded, which may lag the pointer while a
version loads); it asks the hot tier per request with the version it routes to, so the prompt
always matches the weights that answer.
"""
from __future__ import annotations

from pathlib import Path

from memory import MemoryStore, UnknownAdapter
from serving.registry import Registry, TenantAdapters, Version, served


def held(store: MemoryStore, tenant: str, version: str | None) -> tuple[int, ...]:
    """The memories verified in the weights of `version` ("<tenant>@v<N>"; None or a name the
    ledger does not know, such as the base model's: nothing)."""
    if version is None:
        return ()
    try:
        return store.adapter(tenant, version).memory_ids
    except UnknownAdapter:  # the base, or published by hand, not by the runtime
        return ()


def layers_of(store: MemoryStore, tenant: str, version: str | None) -> int:
    """Layers in the stack of `version` (a version published by hand counts as one)."""
    if version is None:
        return 0
    try:
        return store.adapter(tenant, version).layer + 1
    except UnknownAdapter:
        return 1


class Record:
    """`served` and `holds` over one data home's registry and one store connection. `state`
    pins one read of the registry for callers that ask about many tenants at once."""

    def __init__(self, home: Path, store: MemoryStore):
        self.registry, self.store = Registry(home), store

    def state(self) -> dict[str, TenantAdapters]:
        return self.registry.load()

    def served(self, tenant: str, state: dict[str, TenantAdapters] | None = None) -> Version | None:
        return served(self.state() if state is None else state, tenant)

    def holds(self, tenant: str, version: Version | str | None) -> tuple[int, ...]:
        return held(self.store, tenant, version.name if isinstance(version, Version) else version)

    def layers(self, tenant: str, version: Version | str | None) -> int:
        return layers_of(self.store, tenant, version.name if isinstance(version, Version) else version)
