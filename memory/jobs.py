"""The runtime's bake jobs and the per-memory checks they record, in the memory DB.

A job is a row with a small state machine (as rq's jobs are):

    queued -> running <-> paused
    running -> done | rejected | failed
    running | paused -> queued      (the runtime stopped or died mid-bake: it runs again)
    queued -> failed                (cancelled before it ran)

A crash leaves a job `running`; the next runtime finds it with `requeue_interrupted`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .db import utcnow
from .errors import InvalidInput, StateError

if TYPE_CHECKING:
    from .store import MemoryStore

JOB_KINDS = ("bake", "consolidate")
JOB_STATES = ("queued", "running", "paused", "done", "rejected", "failed")
ACTIVE_STATES = ("queued", "running", "paused")
CHECK_PURPOSES = ("graduate", "recheck", "forgotten")
_MOVES = {
    "queued": {"running", "failed"},
    "running": {"paused", "done", "rejected", "failed", "queued"},
    "paused": {"running", "queued", "failed"},
}


class UnknownJob(InvalidInput):
    def __init__(self, job_id: int):
        super().__init__(f"No job with id {job_id}")
        self.job_id = job_id


@dataclass(frozen=True)
class Job:
    id: int
    tenant: str
    kind: str
    state: str
    memory_ids: tuple[int, ...]
    parent_version: str | None
    version: str | None
    reason: str | None
    result: dict
    pid: int | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class Check:
    memory_id: int
    job_id: int
    purpose: str  # graduate | recheck | forgotten
    passed: bool  # forgotten: True = no longer recalled
    detail: dict
    at: str


class JobStore:
    """`store.jobs`: bake jobs and memory checks, in the store's DB and transactions."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.db = store.db

    def create(self, tenant: str, kind: str, memory_ids: Sequence[int],
               parent_version: str | None = None) -> Job:
        if kind not in JOB_KINDS:
            raise InvalidInput(f"invalid job kind {kind!r}: choose one of {', '.join(JOB_KINDS)}")
        now = utcnow()
        with self.store.transaction():
            self.store.require_tenant(tenant)
            job_id = self.db["jobs"].insert({
                "tenant": tenant, "kind": kind, "state": "queued",
                "memory_ids": json.dumps(sorted(set(memory_ids))), "parent_version": parent_version,
                "created_at": now, "updated_at": now,
            }).last_pk
            self.store._audit("job.create", tenant=tenant, at=now, job=job_id, kind=kind,
                              memories=len(set(memory_ids)), parent=parent_version)
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        row = next(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]), None)
        if row is None:
            raise UnknownJob(job_id)
        return _job(row)

    def list(self, tenant: str | None = None, states: Sequence[str] | None = None,
             limit: int | None = None) -> list[Job]:
        """Jobs, oldest first (`limit`: the newest `limit` of them)."""
        sql, params = "SELECT * FROM jobs WHERE 1", []
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [*params, tenant]
        if states is not None:
            for s in states:
                if s not in JOB_STATES:
                    raise InvalidInput(f"invalid job state {s!r}")
            sql, params = sql + " AND state IN (SELECT value FROM json_each(?))", [*params, json.dumps(list(states))]
        if limit is not None:
            rows = list(self.db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit]))[::-1]
        else:
            rows = list(self.db.query(sql + " ORDER BY id", params))
        return [_job(r) for r in rows]

    def active(self, tenant: str | None = None) -> list[Job]:
        return self.list(tenant, ACTIVE_STATES)

    def move(self, job_id: int, state: str, *, reason: str | None = None, result: dict | None = None,
             version: str | None = None, pid: int | None = None) -> Job:
        """Change a job's state along the allowed moves; the reason/result/version given are kept."""
        now = utcnow()
        with self.store.transaction():
            job = self.get(job_id)
            if state not in _MOVES.get(job.state, set()):
                raise StateError(f"job {job_id} is {job.state}; it cannot become {state}")
            fields = {"state": state, "updated_at": now}
            if state == "running" and job.state == "queued":
                fields.update(started_at=now, attempts=job.attempts + 1, finished_at=None)
            if state in ("done", "rejected", "failed"):
                fields["finished_at"] = now
            if state in ("queued", "done", "rejected", "failed"):
                fields["pid"] = None
            if pid is not None:
                fields["pid"] = pid
            if reason is not None:
                fields["reason"] = reason[:2000]
            if result is not None:
                fields["result"] = json.dumps(result, sort_keys=True, default=str)
            if version is not None:
                fields["version"] = version
            self.db["jobs"].update(job_id, fields)
            self.store._audit("job." + state, tenant=job.tenant, at=now, job=job_id,
                              reason=reason, version=version)
        return self.get(job_id)

    def requeue_interrupted(self, reason: str = "the runtime stopped during the bake") -> list[Job]:
        """Jobs left running or paused by a runtime that is gone go back to the queue."""
        return [self.move(j.id, "queued", reason=reason) for j in self.list(states=("running", "paused"))]

    # -- per-memory checks -------------------------------------------------------------------

    def record_checks(self, job_id: int, rows: Sequence[tuple[int, str, bool, dict]]) -> None:
        """(memory_id, purpose, passed, detail) per memory checked by this job."""
        now = utcnow()
        with self.store.transaction():
            job = self.get(job_id)
            for memory_id, purpose, passed, detail in rows:
                if purpose not in CHECK_PURPOSES:
                    raise InvalidInput(f"invalid check purpose {purpose!r}")
                m = self.store.get(memory_id)
                if m.tenant != job.tenant:
                    raise InvalidInput(f"memory {memory_id} is not a memory of tenant {job.tenant!r}")
                self.db["memory_checks"].insert({
                    "memory_id": memory_id, "job_id": job_id, "purpose": purpose,
                    "passed": int(bool(passed)), "detail": json.dumps(detail, default=str), "at": now,
                })

    def checks(self, memory_id: int) -> list[Check]:
        return [_check(r) for r in self.db.query(
            "SELECT * FROM memory_checks WHERE memory_id = ? ORDER BY id", [memory_id])]

    def record_hot_score(self, memory_id: int, hits: int, asked: int, served: str | None, detail=None) -> None:
        """How well the served model with its hot tier answered the memory's probes; kept once (the
        first measure stands: later ones would see a hot tier the memory has already left)."""
        if not 0 <= hits <= asked:
            raise InvalidInput(f"hot score {hits}/{asked} of memory {memory_id} is not a share")
        with self.store.transaction():
            self.store.get(memory_id)  # an unknown memory is refused
            self.db.execute("INSERT OR IGNORE INTO hot_scores (memory_id, hits, asked, served, detail, at)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            [memory_id, hits, asked, served, json.dumps(detail, default=str), utcnow()])

    def hot_scores(self, memory_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """{memory_id: (hits, asked)} for those of `memory_ids` measured."""
        return {r["memory_id"]: (r["hits"], r["asked"]) for r in self.db.query(
            "SELECT memory_id, hits, asked FROM hot_scores WHERE memory_id IN (SELECT value FROM json_each(?))",
            [json.dumps([int(i) for i in memory_ids])])}

    def failed_tries(self, memory_ids: Sequence[int]) -> dict[int, int]:
        """How many bakes tried to graduate each memory and failed."""
        out = {int(i): 0 for i in memory_ids}
        for r in self.db.query(
            "SELECT memory_id, count(*) AS n FROM memory_checks WHERE purpose = 'graduate' AND passed = 0"
            " AND memory_id IN (SELECT value FROM json_each(?)) GROUP BY memory_id",
            [json.dumps(list(out))],
        ):
            out[r["memory_id"]] = r["n"]
        return out


def _job(r: dict) -> Job:
    return Job(
        id=r["id"], tenant=r["tenant"], kind=r["kind"], state=r["state"],
        memory_ids=tuple(json.loads(r["memory_ids"])), parent_version=r["parent_version"],
        version=r["version"], reason=r["reason"], result=json.loads(r["result"]) if r["result"] else {},
        pid=r["pid"], attempts=r["attempts"], created_at=r["created_at"], started_at=r["started_at"],
        finished_at=r["finished_at"], updated_at=r["updated_at"],
    )


def _check(r: dict) -> Check:
    return Check(memory_id=r["memory_id"], job_id=r["job_id"], purpose=r["purpose"],
                 passed=bool(r["passed"]), detail=json.loads(r["detail"]) if r["detail"] else {}, at=r["at"])
