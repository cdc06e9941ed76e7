"""Prometheus metrics of the gateway (`GET /metrics`, text format, prometheus-client).

Labels carry tenant names only: never keys, prompts, memory texts or paths. Each gateway has its
own CollectorRegistry (several gateways in one test process do not collide); the runtime adds a
collector of its own for the hot tier and the bakes (`Metrics.add_collector`).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("bakehouse_requests", "Requests by tenant, endpoint and HTTP status",
                                ["tenant", "endpoint", "status"], registry=r)
        self.latency = Histogram("bakehouse_request_seconds", "Request latency (to the last byte)",
                                 ["tenant", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("bakehouse_tokens", "Tokens by tenant: prompt (hot prompt included) and completion",
                              ["tenant", "kind"], registry=r)
        self.swap = Histogram("bakehouse_swap_seconds", "From a new pointer seen to its route flipped",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.engine_restarts = Gauge("bakehouse_engine_restarts", "vLLM restarts since the gateway started",
                                     registry=r)
        self.engine_up = Gauge("bakehouse_engine_up", "1 while vLLM is up and every adapter is loaded", registry=r)
        self.inflight = Gauge("bakehouse_inflight_requests", "Requests in flight", registry=r)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def count_usage(self, tenant: str, usage: dict | None) -> None:
        if not isinstance(usage, dict):
            return
        for kind in ("prompt", "completion"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and n >= 0:
                self.tokens.labels(tenant, kind).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
