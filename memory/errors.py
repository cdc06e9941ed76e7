"""Domain errors of the memory store. The CLI turns them into one line; the server into a 4xx."""
from __future__ import annotations


class MemoryStoreError(Exception):
    """Base class: anything the caller did or met that the store refuses, with a clear message."""


class StoreUnavailable(MemoryStoreError):
    """The DB file cannot be opened, is not a database, or stayed locked past the busy timeout."""


class MigrationError(MemoryStoreError):
    """A migration failed (the DB is left at the previous migration) or the DB is newer than us."""


class InvalidInput(MemoryStoreError):
    """A tenant name, kind, status, text or message list that the store does not accept."""


class UnknownTenant(MemoryStoreError):
    def __init__(self, tenant: str):
        super().__init__(f"No tenant named {tenant!r}")
        self.tenant = tenant


class UnknownMemory(MemoryStoreError):
    def __init__(self, memory_id: int):
        super().__init__(f"No memory with id {memory_id}")
        self.memory_id = memory_id


class UnknownEpisode(MemoryStoreError):
    def __init__(self, episode_id: int):
        super().__init__(f"No episode with id {episode_id}")
        self.episode_id = episode_id


class UnknownAdapter(MemoryStoreError):
    def __init__(self, tenant: str, version: str):
        super().__init__(f"No adapter version {version!r} for tenant {tenant!r}")
        self.tenant, self.version = tenant, version


class UnknownFeed(MemoryStoreError):
    def __init__(self, feed_id: int):
        super().__init__(f"No feed with id {feed_id}")
        self.feed_id = feed_id


class StateError(MemoryStoreError):
    """The operation does not apply to the record's current state (e.g. forgetting twice)."""


class FeedError(MemoryStoreError):
    """A feed source that cannot be fetched or parsed; `poll` records it on the feed row."""
