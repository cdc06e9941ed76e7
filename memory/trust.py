"""What may become an instruction, what may reach the weights, and whose memories they are.

Every memory has a source and an admission (migration m010):

    source                      trust      admitted when
    cli, api, demo, (none)      operator   at once
    feed:<url>                  feed       at once, unless it reads as an order (quarantined)
    feedback:<conversation>     user       the tenant's policy: review (a proposal the operator
                                           approves), auto (at once), off (not learned)
    episode:<id>                user       at once, scoped to its end user unless the policy says tenant
    chat                        user       at once (agent.chat.remember_tool: what a user told the agent)

A memory scoped to an end user (`end_user`) reaches that user's hot tier only and is never baked
into the tenant's shared layers. Proposed, quarantined and rejected memories reach neither prompts
nor bakes; they stay visible with their reason.

    store.trust.set_policy("shop", learn_instructions="review", learn_episodes="user")
    store.trust.approve(17)                      # a proposal becomes a tenant-wide instruction
    report = store.trust.forget_user("shop", "u-42")
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

from .db import utcnow
from .errors import InvalidInput, StateError

if TYPE_CHECKING:
    from .store import Memory, MemoryStore

LEARN_INSTRUCTIONS = ("review", "auto", "off")
LEARN_EPISODES = ("user", "tenant", "off")
ERASED = "(erased)"


@dataclass(frozen=True)
class Policy:
    """How a tenant learns from its users. The default suits a persona many users share."""

    learn_instructions: str = "review"  # a rule from feedback: review | auto | off
    learn_episodes: str = "user"  # conversation summaries: user (that user only) | tenant | off

    def __post_init__(self):
        if self.learn_instructions not in LEARN_INSTRUCTIONS:
            raise InvalidInput(f"learn_instructions must be one of {', '.join(LEARN_INSTRUCTIONS)}, "
                               f"got {self.learn_instructions!r}")
        if self.learn_episodes not in LEARN_EPISODES:
            raise InvalidInput(f"learn_episodes must be one of {', '.join(LEARN_EPISODES)}, got {self.learn_episodes!r}")


PRESETS = {
    "shared": Policy("review", "user"),  # a persona behind one app key, many end users
    "assistant": Policy("auto", "tenant"),  # one user's own assistant
}


def trust_of(source: str | None) -> str:
    """operator | feed | user: how far a memory's source is trusted (the table above)."""
    head = (source or "").split(":", 1)[0]
    if head == "feed":
        return "feed"
    if head in ("feedback", "episode", "chat"):
        return "user"
    return "operator"


@dataclass(frozen=True)
class ForgetUserReport:
    user: str
    memories: tuple[int, ...]  # forgotten and erased
    episodes: tuple[int, ...]  # erased
    held_by: tuple[str, ...]  # published versions that held any of those memories (the runtime rolls them back)


class TrustStore:
    """`store.trust`: policies, proposals, quarantine and end users, in the store's DB."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.db = store.db

    # -- policies ----------------------------------------------------------------------------

    def policy(self, tenant: str) -> Policy:
        row = self.db.execute("SELECT learn_instructions, learn_episodes FROM policies WHERE tenant = ?",
                              [tenant]).fetchone()
        return Policy(*row) if row else Policy()

    def set_policy(self, tenant: str, preset: str | None = None, **changes: str) -> Policy:
        """Set a tenant's policy from a preset (PRESETS) and/or single settings; returns it."""
        if preset is not None and preset not in PRESETS:
            raise InvalidInput(f"unknown policy preset {preset!r}: choose one of {', '.join(PRESETS)}")
        base = PRESETS[preset] if preset else self.policy(tenant)
        policy = Policy(**(asdict(base) | {k: v for k, v in changes.items() if v is not None}))
        now = utcnow()
        with self.store.transaction():
            self.store._ensure_tenant(tenant, now)
            self.db.execute(
                "INSERT INTO policies (tenant, learn_instructions, learn_episodes, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET learn_instructions = excluded.learn_instructions,"
                " learn_episodes = excluded.learn_episodes, updated_at = excluded.updated_at",
                [tenant, policy.learn_instructions, policy.learn_episodes, now])
            self.store._audit("policy.set", tenant=tenant, at=now, **asdict(policy))
        return policy

    # -- admission ---------------------------------------------------------------------------

    def held_back(self, tenant: str, admission: str | Sequence[str] = ("proposed", "quarantined")) -> list[Memory]:
        """The tenant's live memories not admitted (everyone's), newest first."""
        return self.store.memories(tenant, valid_only=True, admission=admission, users=True)

    def approve(self, memory_id: int, *, tenant_wide: bool = True, supersedes: Sequence[int] = ()) -> Memory:
        """Admit a proposed or quarantined memory (`tenant_wide`: for every user of the tenant, not
        only the one it came from); the live memories in `supersedes` end where it begins."""
        now = utcnow()
        with self.store.transaction():
            m = self._held(memory_id, ("proposed", "quarantined"))
            user = None if tenant_wide else m.end_user
            self.db.execute("UPDATE memories SET admission = 'admitted', admission_reason = ?, end_user = ?"
                            " WHERE id = ?", [f"approved by {self.store.actor}", user, memory_id])
            for old_id in supersedes:
                old = self.store.get(old_id)
                if old.tenant != m.tenant or not old.valid:
                    raise StateError(f"memory {old_id} is not a live memory of {m.tenant}")
                self.db.execute("UPDATE memories SET valid_to = ?, superseded_by = ? WHERE id = ?",
                                [now, memory_id, old_id])
                self.store._audit("memory.supersede", tenant=m.tenant, memory_id=old_id, at=now, superseded_by=memory_id)
            self.store._audit("memory.approve", tenant=m.tenant, memory_id=memory_id, at=now,
                              previous=m.admission, end_user=user)
        return self.store.get(memory_id)

    def reject(self, memory_id: int, reason: str | None = None) -> Memory:
        """Refuse a proposed or quarantined memory: it stays, marked rejected, with the reason."""
        with self.store.transaction():
            m = self._held(memory_id, ("proposed", "quarantined"))
            why = f"rejected by {self.store.actor}" + (f": {reason}" if reason else "")
            self.db.execute("UPDATE memories SET admission = 'rejected', admission_reason = ? WHERE id = ?",
                            [why[:500], memory_id])
            self.store._audit("memory.reject", tenant=m.tenant, memory_id=memory_id, previous=m.admission,
                              reason=reason)
        return self.store.get(memory_id)

    def _held(self, memory_id: int, admissions: Sequence[str]) -> Memory:
        m = self.store.get(memory_id)
        if m.admission not in admissions or not m.valid:
            raise StateError(f"memory {memory_id} is {m.admission if m.valid else 'no longer valid'}, "
                             f"not {' or '.join(admissions)}")
        return m

    # -- end users ---------------------------------------------------------------------------

    def forget_user(self, tenant: str, user: str) -> ForgetUserReport:
        """Erase an end user: every memory scoped to them or drawn from their conversations is
        forgotten and its text erased, their episodes' messages erased. Returns what was erased
        and the published versions that held any of it (a tenant-wide summary of their
        conversation, under policy `tenant`): the runtime rolls those back."""
        self.store.require_tenant(tenant)
        now = utcnow()
        with self.store.transaction():
            episodes = [r[0] for r in self.db.execute(
                "SELECT id FROM episodes WHERE tenant = ? AND end_user = ?", [tenant, user])]
            sources = [f"episode:{e}" for e in episodes]
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM memories WHERE tenant = ? AND (end_user = ?"
                " OR source IN (SELECT value FROM json_each(?)))", [tenant, user, json.dumps(sources)])]
            held_by = [r[0] for r in self.db.execute(
                "SELECT DISTINCT a.version FROM adapter_memories am JOIN adapters a ON a.id = am.adapter_id"
                " WHERE a.status = 'published' AND am.memory_id IN (SELECT value FROM json_each(?))"
                " ORDER BY a.id", [json.dumps(ids)])]
            for i in ids:  # a distinct hash each: erased texts never collide in memories_dedup
                self.db.execute("UPDATE memories SET status = 'forgotten', text = ?, content_hash = ?, meta = NULL"
                                " WHERE id = ?", [ERASED, f"erased:{i}", i])
            self.db.execute("UPDATE episodes SET messages = '[]', status = 'closed', closed_at = coalesce(closed_at, ?)"
                            " WHERE id IN (SELECT value FROM json_each(?))", [now, json.dumps(episodes)])
            self.store._audit("user.forget", tenant=tenant, at=now, memories=ids, episodes=episodes,
                              needs_rebake=held_by)
        return ForgetUserReport(user, tuple(ids), tuple(episodes), tuple(held_by))
