"""The runtime's settings: one typed dataclass, defaults sized for a 2-core CPU box."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RuntimeConfig:
    home: Path
    model_dir: Path
    host: str = "127.0.0.1"  # gateway bind address
    port: int = 8100  # gateway port
    hot_tier: str = "retrieval"  # each request's memories: "retrieval" (what it is about) or "static" (all)
    hot_budget: int = 1500  # tokens of memories in a request's system prompt at most
    hot_top_k: int = 3  # memories retrieved per request (besides persona and instructions)
    idle_seconds: float = 30.0  # a bake starts (or resumes) after this long without a request
    min_batch: int = 1  # hot memories a tenant needs before a bake ...
    max_wait: float = 600.0  # ... unless its oldest hot memory has waited this long (s)
    max_batch: int = 20  # memories per bake (oldest first)
    max_tries: int = 3  # failed graduations before a memory stays hot for good
    max_lora_rank: int = 64  # a stack that would exceed it is consolidated into one layer
    max_layers: int = 4  # ... and so is one that would have more layers than this
    concurrent_bakes: int = 1  # bakes at once (each tenant one at a time); 1 on a small CPU
    retry_after_failure: float = 300.0  # s before a tenant whose bake crashed is planned again
    gate_recheck: float = 1.0  # share of earlier graduated memories a new version must still hold
    gate_general: float = 0.9  # share of the base's right general answers a new version must keep
    graduation: str = "majority"  # when a memory's probes say the weights hold it (baker.verify.RULES)
    pause_bakes: bool = True  # SIGSTOP the bake while requests are served
    feed_minutes: float = 15.0  # how often every feed is polled
    episode_idle: float = 30.0  # minutes without a message before an episode closes and is summarised
    summary_tries: int = 3  # failed summaries of an episode before it is left unsummarised
    tick_seconds: float = 1.0  # planner period
    hot_seconds: float = 0.25  # how often the hot tier looks for new memories
    bake_overrides: dict = field(default_factory=dict)  # BakeConfig fields for every bake
    pursuit_rounds: int = 1  # > 1: every bake is Prompt Pursuit of this many rounds, stacked into one layer
    max_loras: int = 8
    kv_cache_gib: float = 1.0
    max_model_len: int = 2048
    sampler: str = "auto"  # the bakes' sampler: "auto" (the serving engine), "vllm" (one of the bake's own), "hf"
    bake_worker: str = "warm"  # "warm": one worker keeps the base loaded between bakes; "fresh": one per bake

    def __post_init__(self):
        self.home, self.model_dir = Path(self.home), Path(self.model_dir)
        for name in ("hot_budget", "hot_top_k", "min_batch", "max_batch", "max_tries", "max_layers", "concurrent_bakes",
                     "summary_tries", "pursuit_rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("idle_seconds", "max_wait", "retry_after_failure", "feed_minutes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.bake_worker not in ("warm", "fresh"):
            raise ValueError(f"bake_worker must be warm or fresh, got {self.bake_worker!r}")
        if self.hot_tier not in ("retrieval", "static"):
            raise ValueError(f"hot_tier must be retrieval or static, got {self.hot_tier!r}")
        if not self.episode_idle > 0:
            raise ValueError(f"episode_idle must be > 0 minutes, got {self.episode_idle!r}")
        from baker.verify import RULES

        if self.graduation not in RULES:
            raise ValueError(f"graduation must be one of {', '.join(RULES)}, got {self.graduation!r}")
        for name in ("gate_recheck", "gate_general"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    @property
    def work_dir(self) -> Path:
        """Bake jobs' scratch space (swept at every start)."""
        return self.home / "runtime" / "work"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["home"], d["model_dir"] = str(self.home), str(self.model_dir)
        return d
