"""The runtime's job rows and memory checks (memory/jobs.py), on a real SQLite file."""
from __future__ import annotations

import pytest

from memory import MemoryStore, StateError


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "b.db", actor="test")
    yield s
    s.close()


def test_job_lifecycle_and_allowed_moves(store):
    m = store.add("alice", "fact", "The ship is called the Marigold.")
    job = store.jobs.create("alice", "bake", [m.id, m.id], parent_version="alice@v1")
    assert job.state == "queued" and job.memory_ids == (m.id,) and job.attempts == 0
    job = store.jobs.move(job.id, "running", pid=4242)
    assert job.state == "running" and job.pid == 4242 and job.attempts == 1 and job.started_at
    assert store.jobs.move(job.id, "paused").state == "paused"
    assert store.jobs.move(job.id, "running").attempts == 1  # resuming is not a new attempt
    done = store.jobs.move(job.id, "done", version="alice@v2", result={"graduated": [m.id]})
    assert done.finished_at and done.pid is None and done.result == {"graduated": [m.id]}
    with pytest.raises(StateError, match="done"):
        store.jobs.move(job.id, "running")
    assert [a.action for a in store.audit("alice", limit=4)][0] == "job.done"


def test_interrupted_jobs_are_requeued_with_a_reason(tmp_path):
    path = tmp_path / "b.db"
    with MemoryStore(path) as s:
        m = s.add("bob", "fact", "Bob likes tea.")
        running = s.jobs.move(s.jobs.create("bob", "bake", [m.id]).id, "running", pid=1)
        queued = s.jobs.create("bob", "consolidate", [m.id])
    with MemoryStore(path) as s:  # a new runtime after a crash
        again = s.jobs.requeue_interrupted()
        assert [j.id for j in again] == [running.id]
        job = s.jobs.get(running.id)
        assert job.state == "queued" and "stopped" in job.reason and job.pid is None
        assert [j.id for j in s.jobs.active("bob")] == [running.id, queued.id]


def test_checks_count_failed_tries_per_memory(store):
    a = store.add("alice", "fact", "A is one.")
    b = store.add("alice", "fact", "B is two.")
    for passed in (False, False):
        job = store.jobs.create("alice", "bake", [a.id, b.id])
        store.jobs.record_checks(job.id, [(a.id, "graduate", passed, {"hits": 0}),
                                          (b.id, "graduate", True, {"hits": 2})])
    assert store.jobs.failed_tries([a.id, b.id]) == {a.id: 2, b.id: 0}
    assert [c.passed for c in store.jobs.checks(b.id)] == [True, True]
    other = store.add("eve", "fact", "Eve's secret.")
    with pytest.raises(Exception, match="not a memory of tenant"):
        store.jobs.record_checks(job.id, [(other.id, "graduate", True, {})])
