"""`bakehouse run` end to end on the real SmolLM2 and a real vLLM engine: a feed file's headline is
answerable from the hot tier at once, baked in idle time, verified, served from the weights (the
prompt shrinks), then superseded by an update without locking the tenant out; `kill -9` mid-bake leaves no process and loses nothing, and the job runs again;
SIGTERM leaves no process."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from agent.runtime.procs import group_members
from agent.runtime.session import RunSession
from memory import MemoryStore
from serving.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
HEADLINE = ("2026-11-05", "The Halvik Observatory names its new telescope the Starloom.")
FAST = ("--epochs", "6", "--max-tries", "1")


def _rss(path: Path, items: list[tuple[str, str]]) -> Path:
    entries = "".join(f"<item><title>{t}</title><guid>g{i}</guid><pubDate>{d}T08:00:00Z</pubDate></item>"
                      for i, (d, t) in enumerate(items))
    path.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>News</title>{entries}</channel></rss>')
    return path


def _groups(home: Path) -> dict[str, int]:
    try:
        return json.loads((home / "runtime" / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def _alive(groups) -> list[int]:
    """Live processes of the recorded process groups (a role holds one pgid or a list of them)."""
    pgids = [g for x in groups for g in (x if isinstance(x, list) else [x])]
    return [p.pid for g in pgids for p in group_members(int(g)) if p.status() != psutil.STATUS_ZOMBIE]


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_feed_to_hot_to_weights(tmp_path, smollm2_dir):
    from agent.runtime.demo import load_demo
    from memory import feeds

    # two of the demo's fictional headlines (the test is of the runtime's path, not of the bake's
    # quality: these two graduated together in a bake of 2 x 10 epochs when the test was written)
    demo = load_demo()
    picked = [0, 3]
    demo = {"headlines": [demo["headlines"][i] for i in picked], "questions": [demo["questions"][i] for i in picked]}
    home = tmp_path / "home"
    # a looser gate and graduation than the defaults, so that CI usually needs one bake, not two
    s = RunSession(home, smollm2_dir, args=("--idle-seconds", "2", "--max-tries", "1", "--gate-general", "0.8",
                                            "--graduation", "any"))
    s.add_tenant("alice")
    s.start()
    try:
        q = demo["questions"][0]["prompt"]
        plain = s.chat("alice", q)
        assert plain["model"] == "base"
        with MemoryStore.in_home(home) as store:
            store.trust.set_policy("alice", "assistant")  # one user's assistant: feedback learned at once
            rss = _rss(tmp_path / "news.xml", [(h["date"], h["text"]) for h in demo["headlines"]])
            feeds.add_feed(store, str(rss), tenant="alice")
            assert feeds.poll(store)[0].new == 2
        with MemoryStore.in_home(home) as store:
            ids = {m.text: m.id for m in store.memories("alice")}
        headline_of = {q["prompt"]: ids[h["text"]] for q, h in zip(demo["questions"], demo["headlines"])}
        questions = [q["prompt"] for q in demo["questions"]]
        # answerable from the hot tier before any bake (how fast: bench/runtime.py): each question's
        # prompt holds its own headline, and the prompt tokens say what it cost
        hot = _wait(lambda: (r := s.chat("alice", q))["hot_memories"] == [headline_of[q]] and r,
                    10, "the question's headline in its hot prompt")
        assert hot["model"] == "base" and hot["prompt_tokens"] > plain["prompt_tokens"]
        hot_tokens = sum(s.chat("alice", x)["prompt_tokens"] for x in questions)

        # one bake, or more: the gate may reject one (general answers lost) and the planner then
        # bakes again what had not failed its verification
        st = s.wait_for_bakes("alice", timeout=2400)
        t = st["tenants"]["alice"]
        job = t["last_bake"]
        assert job["state"] == "done" and job["graduated"] >= 1, job
        assert t["version"] == "alice@v1" and t["baked_memories"] == job["graduated"]
        assert t["hot_memories"] == 2 - job["graduated"]
        time.sleep(1.0)
        with MemoryStore.in_home(home) as store:
            baked_ids = {m.id for m in store.memories("alice") if m.status == "baked"}
        answers = [s.chat("alice", x) for x in questions]
        assert {a["model"] for a in answers} == {"alice@v1"}
        for x, a in zip(questions, answers):  # a graduated headline left its question's prompt
            assert a["hot_memories"] == ([] if headline_of[x] in baked_ids else [headline_of[x]])
        assert sum(a["prompt_tokens"] for a in answers) < hot_tokens
        with MemoryStore.in_home(home) as store:
            for m in store.memories("alice"):
                checks = store.jobs.checks(m.id)
                assert checks and {c.purpose for c in checks} == {"graduate"}
                assert checks[-1].passed == (m.status == "baked")  # baked exactly when verified

        # feedback that states a rule is learned as an instruction, hot at once
        r = httpx.post(f"{s.url}/v1/feedback", json={"comment": "From now on answer in one sentence.", "rating": -1},
                       headers={"Authorization": f"Bearer {s.keys['alice']}"}, timeout=10)
        assert r.status_code == 200, r.text
        # (token counts cannot tell: a short hot prompt replaces the template's default system prompt)
        def learned():
            with MemoryStore.in_home(home) as store:
                rules = store.memories("alice", kind="instruction")
            return rules and rules[0].id in s.chat("alice", q)["hot_memories"] and rules

        rules = _wait(learned, 10, "the learned instruction in the hot prompt")
        assert [m.text for m in rules] == ["Answer in one sentence."]

        # a graduated headline superseded by an update about the same subject, and an unrelated
        # memory beside it: the tenant is rolled back (v1 holds the old headline), and the update
        # and the unrelated memory can still graduate; the old headline is checked only for what
        # the update changed, and no bake is rejected for it once a candidate no longer says it
        old = min(baked_ids)
        updates = {ids[demo["headlines"][0]["text"]]: "The town of Brackenford elects Ivo Brandt as its new mayor.",
                   ids[demo["headlines"][1]["text"]]: "Chef Ines Varga wins this year's Golden Ladle prize for her fish stew."}
        last_job = job["job"]
        with MemoryStore.in_home(home) as store:
            update = store.supersede(old, updates[old])
            keeper = store.add("alice", "fact", "The Orla Island lighthouse keeper is Bertil Sand.")
        _wait(lambda: s.chat("alice", q)["model"] == "base", 30, "the roll-back of alice@v1")

        def newer_bake():
            with MemoryStore.in_home(home) as store:
                return [j for j in store.jobs.list("alice") if j.id > last_job and j.kind == "bake"]

        _wait(newer_bake, 120, "a bake of the update")  # before it is queued, the tenant looks settled
        st = s.wait_for_bakes("alice", timeout=2400)
        with MemoryStore.in_home(home) as store:
            later = [j for j in store.jobs.list("alice") if j.id > last_job and j.kind == "bake"]
            assert later and not [j for j in later if "still recalled" in (j.reason or "")], [j.reason for j in later]
            assert {store.get(update.id).status, store.get(keeper.id).status} & {"baked"}, [j.reason for j in later]
            gone = [c for j in later for c in store.jobs.checks(old) if c.job_id == j.id and c.purpose == "forgotten"]
            assert gone and gone[-1].passed  # asked who is the mayor / who won now, it does not answer the old name
        assert st["tenants"]["alice"]["version"].startswith("alice@v")
    finally:
        assert s.stop() == 0
    assert _alive(_groups(home).values()) == []


def test_kill_9_mid_bake_then_restart_then_sigterm_leaves_nothing(tmp_path, smollm2_dir):
    home = tmp_path / "home"
    s = RunSession(home, smollm2_dir, args=("--idle-seconds", "0", *FAST))
    s.add_tenant("alice")
    s.start()
    with MemoryStore.in_home(home) as store:
        m = store.add("alice", "headline", HEADLINE[1], published_at=HEADLINE[0])
    groups = _wait(lambda: (g := _groups(home)).get("bake") and g.get("engine") and g, 60, "a running bake")
    time.sleep(20)  # into the bake: the worker is loading the model or sampling through the engine
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    # the engine (PR_SET_PDEATHSIG) and the bake (it watches its parent) go with the runtime
    _wait(lambda: not _alive(groups.values()), 60, "the runtime's children to exit")
    assert Registry(home).load() == {}  # nothing half-made was published
    with MemoryStore.in_home(home) as store:
        assert store.get(m.id).status == "pending" and store.jobs.list()[0].state == "running"

    s2 = RunSession(home, smollm2_dir, port=s.port, args=("--idle-seconds", "0", *FAST), log_name="run2.out")
    s2.keys = s.keys
    s2.start()
    try:
        with MemoryStore.in_home(home) as store:
            job = _wait(lambda: (j := store.jobs.get(1)).state == "running" and j.attempts == 2 and j, 60,
                        "the job to run again")
            assert "stopped during the bake" in job.reason
        groups = _wait(lambda: (g := _groups(home)).get("bake") and g, 30, "the new bake")
    finally:
        assert s2.stop() == 0
    assert _alive(groups.values()) == []
    with MemoryStore.in_home(home) as store:
        assert store.jobs.get(1).state == "queued"  # to run at the next start
