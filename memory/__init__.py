"""Memory: what the agent learns, stored safely in SQLite before it is baked into adapters.

    from memory import MemoryStore
    store = MemoryStore.in_home(home, actor="agent")
    m = store.add("alice", "fact", "Alice's cat is called Miso.", source="chat")
    prompt = store.compose("alice", budget_tokens=2000)   # Prompt(text, memory_ids, tokens, left_out)
    store.record_bake("alice", "v1", memory_ids=prompt.memory_ids, prompt_hash=prompt.hash)
    store.forget(m.id, reason="user asked")                # -> ["v1"]: needs a rebake

This package imports nothing from baker/, serving/ or agent/.
"""
from .compose import Prompt, approx_tokens
from .errors import (
    FeedError,
    InvalidInput,
    MemoryStoreError,
    MigrationError,
    StateError,
    StoreUnavailable,
    UnknownAdapter,
    UnknownEpisode,
    UnknownFeed,
    UnknownMemory,
    UnknownTenant,
)
from .jobs import ACTIVE_STATES, JOB_STATES, Check, Job, JobStore, UnknownJob
from .store import (
    ADAPTER_STATUSES,
    DB_FILENAME,
    DEFAULT_TENANT,
    ADMISSIONS,
    KINDS,
    STATUSES,
    Adapter,
    AuditEntry,
    Episode,
    Memory,
    MemoryStore,
    content_hash,
)
from .trust import PRESETS, ForgetUserReport, Policy, TrustStore, trust_of

__all__ = [
    "ADAPTER_STATUSES", "DB_FILENAME", "DEFAULT_TENANT", "KINDS", "STATUSES",
    "Adapter", "AuditEntry", "Episode", "Memory", "MemoryStore", "Prompt",
    "approx_tokens", "content_hash",
    "FeedError", "InvalidInput", "MemoryStoreError", "MigrationError", "StateError",
    "StoreUnavailable", "UnknownAdapter", "UnknownEpisode", "UnknownFeed", "UnknownMemory",
    "UnknownTenant", "ACTIVE_STATES", "JOB_STATES", "Check", "Job", "JobStore", "UnknownJob",
    "ADMISSIONS", "PRESETS", "ForgetUserReport", "Policy", "TrustStore", "trust_of",
]
