"""What to bake next: a pure decision over the tenants' state (the runtime gathers the state,
runs the job and records it; this module only says *what*).

- A tenant is due when it has hot memories still worth trying (fewer than `max_tries` failed
  graduations) and either at least `min_batch` of them or the oldest has waited `max_wait`.
- Due tenants go oldest hot memory first. Nothing is planned unless the gateway has been idle
  for `idle_seconds`.
- The new layer goes on the tenant's current stack (sequential baking) unless that stack would
  exceed `max_lora_rank` or `max_layers`: then everything the tenant holds plus its hot memories
  is rebaked from the base into one layer (consolidation).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HotMemory:
    id: int
    age: float  # seconds since it was stored
    failed_tries: int = 0


@dataclass(frozen=True)
class TenantState:
    name: str
    hot: tuple[HotMemory, ...]
    version: str | None = None  # served now ("<tenant>@v<N>"), None: the base
    rank: int = 0  # the served stack's LoRA rank
    layers: int = 0  # layers in the served stack
    held: tuple[int, ...] = ()  # memories the served version holds
    since_failure: float | None = None  # s since its last crashed job (None: none)


@dataclass(frozen=True)
class Plan:
    tenant: str
    kind: str  # "bake" (a layer on `parent`) or "consolidate" (one layer from the base)
    memory_ids: tuple[int, ...]
    parent: str | None
    why: str = field(default="", compare=False)


@dataclass(frozen=True)
class Limits:
    idle_seconds: float = 30.0
    min_batch: int = 1
    max_wait: float = 600.0
    max_batch: int = 20
    max_tries: int = 3
    layer_rank: int = 16
    max_lora_rank: int = 64
    max_layers: int = 4
    retry_after_failure: float = 300.0


def next_bake(tenants: list[TenantState], idle_for: float, limits: Limits) -> Plan | None:
    """The one bake to start now, or None."""
    if idle_for < limits.idle_seconds:
        return None
    due = []
    for t in tenants:
        if t.since_failure is not None and t.since_failure < limits.retry_after_failure:
            continue
        hot = sorted((m for m in t.hot if m.failed_tries < limits.max_tries), key=lambda m: -m.age)
        if not hot:
            continue
        if len(hot) >= limits.min_batch or hot[0].age >= limits.max_wait:
            due.append((hot[0].age, t, hot))
    if not due:
        return None
    _, t, hot = max(due, key=lambda d: d[0])  # the oldest waiting memory first
    take = tuple(m.id for m in hot[: limits.max_batch])
    if t.version is not None and (t.rank + limits.layer_rank > limits.max_lora_rank
                                  or t.layers + 1 > limits.max_layers):
        ids = tuple(sorted(set(t.held) | set(take)))
        return Plan(t.name, "consolidate", ids, None,
                    f"rank {t.rank}+{limits.layer_rank} / {t.layers + 1} layers over the limit")
    return Plan(t.name, "bake", take, t.version, f"{len(take)} hot memories")
