"""What the runtime shows an operator: a snapshot of its state (taken in the scheduler's thread,
where its DB connection lives) and the Prometheus collector that serves it on the gateway's
/metrics. Tenant names only: never memory texts, prompts or keys."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


BAKE_BUCKETS = (30, 60, 120, 300, 600, 1200, 2400, 4800)
OUTCOMES = {"done": "published", "rejected": "rejected", "failed": "failed"}


@dataclass
class Snapshot:
    hot_memories: dict[str, int] = field(default_factory=dict)
    hot_tokens: dict[str, int] = field(default_factory=dict)
    out_of_service: dict[str, int] = field(default_factory=dict)
    graduated: dict[str, int] = field(default_factory=dict)
    bakes: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, outcome) -> count
    bake_seconds: dict[str, list[float]] = field(default_factory=dict)  # tenant -> walls of finished bakes
    pauses: dict[str, int] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)  # tenant -> "running" | "paused"


def take_snapshot(learner) -> Snapshot:
    """Read the learner's state (call in the thread that owns its DB connection)."""
    snap = Snapshot(pauses=dict(learner.pauses))
    for tenant, h in learner.hot.current.items():
        snap.hot_memories[tenant] = len(h.memory_ids)
        snap.hot_tokens[tenant] = h.tokens
        snap.out_of_service[tenant] = len(h.out_of_service)
    state = learner.record.state()
    for tenant in learner.store.tenants():
        live = {m.id for m in learner.store.memories(tenant, valid_only=True)}
        snap.graduated[tenant] = len(set(learner.record.holds(tenant, learner.record.served(tenant, state))) & live)
    for tenant, st, result in learner.store.db.execute(
            "SELECT tenant, state, result FROM jobs WHERE state IN ('done', 'rejected', 'failed')"):
        key = (tenant, OUTCOMES[st])
        snap.bakes[key] = snap.bakes.get(key, 0) + 1
        wall = (json.loads(result or "{}").get("timings") or {}).get("wall")
        if wall:
            snap.bake_seconds.setdefault(tenant, []).append(float(wall))
    for tenant, p in learner.procs.items():
        snap.running[tenant] = "paused" if p.paused else "running"
    return snap


class RuntimeCollector:
    """prometheus-client collector over the latest snapshot (no DB access on the request path)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def describe(self):
        return []

    def collect(self):
        snap: Snapshot = self.runtime.snapshot
        gauges = [
            ("bakehouse_hot_memories", "Memories in the tenant's hot prompt (served version)", snap.hot_memories),
            ("bakehouse_hot_tokens", "Tokens of the tenant's pinned hot prompt (served version)", snap.hot_tokens),
            ("bakehouse_hot_out_of_service", "Memories in neither the served weights nor the prompt of a request about them",
             snap.out_of_service),
            ("bakehouse_graduated_memories", "Live memories the served weights hold", snap.graduated),
            ("bakehouse_bake_pauses", "Times a running bake was paused for requests", snap.pauses),
        ]
        for name, doc, values in gauges:
            g = GaugeMetricFamily(name, doc, labels=["tenant"])
            for tenant, v in sorted(values.items()):
                g.add_metric([tenant], v)
            yield g
        c = CounterMetricFamily("bakehouse_bakes", "Finished bake jobs by outcome", labels=["tenant", "outcome"])
        for (tenant, outcome), n in sorted(snap.bakes.items()):
            c.add_metric([tenant, outcome], n)
        yield c
        g = GaugeMetricFamily("bakehouse_bake_running", "1 while a bake of the tenant runs", labels=["tenant", "state"])
        for tenant, state in snap.running.items():
            g.add_metric([tenant, state], 1)
        yield g
        h = HistogramMetricFamily("bakehouse_bake_seconds", "Wall time of finished bakes (pauses included)",
                                  labels=["tenant"])
        for tenant, walls in sorted(snap.bake_seconds.items()):
            buckets = [(str(b), sum(w <= b for w in walls)) for b in BAKE_BUCKETS] + [("+Inf", len(walls))]
            h.add_metric([tenant], buckets, sum(walls))
        yield h
