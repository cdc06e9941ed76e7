"""The learning loop (agent/runtime) on the tiny random Llama: planner, hot-tier invariant,
graduation and the publish gate, retries, consolidation, forget/rollback, job recovery, pausing.

The bake worker runs for real (its own process, a real bake and a real verification with the
transformers sampler). A random model never recalls anything, so the tests of what happens when
memories *do* verify hand `Learner.publish` a verification report; the SmolLM2 integration test
(test_runtime_integration.py) runs the whole path with real verification."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
from serving_helpers import FakeEngine, make_adapter

from agent.runtime import RuntimeConfig
from agent.runtime.served import held
from agent.runtime.learner import Learner
from agent.runtime.planner import HotMemory, Limits, TenantState, next_bake
from memory import MemoryStore
from serving.registry import Registry

TINY_BAKE = dict(epochs=1, generic_contexts=4, self_questions=0, max_new_tokens=6, batch_size=4, rank=4,
                 compute_dtype="float32", teacher_cache_dtype="float32", compile=False, checkpoints=False)


# -- planner (pure) ------------------------------------------------------------------------------

def _t(name, ages, **kw):
    return TenantState(name, tuple(HotMemory(i, a) for i, a in ages), **kw)


def test_planner_waits_for_idle_and_takes_the_oldest_tenant_first():
    lim = Limits(idle_seconds=30, min_batch=1)
    tenants = [_t("young", [(1, 5.0)]), _t("old", [(2, 50.0), (3, 1.0)])]
    assert next_bake(tenants, idle_for=10, limits=lim) is None
    plan = next_bake(tenants, idle_for=31, limits=lim)
    assert (plan.tenant, plan.kind, plan.memory_ids, plan.parent) == ("old", "bake", (2, 3), None)


def test_planner_min_batch_max_wait_and_tries():
    lim = Limits(idle_seconds=0, min_batch=3, max_wait=100, max_tries=2)
    assert next_bake([_t("a", [(1, 10.0), (2, 5.0)])], 1, lim) is None  # 2 < min_batch
    assert next_bake([_t("a", [(1, 101.0), (2, 5.0)])], 1, lim).memory_ids == (1, 2)  # waited long
    spent = TenantState("a", (HotMemory(1, 500.0, failed_tries=2),))
    assert next_bake([spent], 1, lim) is None  # stays hot for good
    crashed = _t("a", [(1, 500.0)], since_failure=10.0)
    assert next_bake([crashed], 1, Limits(idle_seconds=0, retry_after_failure=60)) is None


def test_planner_layers_on_the_served_stack_then_consolidates():
    lim = Limits(idle_seconds=0, layer_rank=16, max_lora_rank=64, max_layers=4)
    t = _t("a", [(9, 1.0)], version="a@v2", rank=32, layers=2, held=(1, 2))
    assert next_bake([t], 1, lim) == next_bake([t], 1, lim)
    plan = next_bake([t], 1, lim)
    assert (plan.kind, plan.parent, plan.memory_ids) == ("bake", "a@v2", (9,))
    full = _t("a", [(9, 1.0)], version="a@v4", rank=64, layers=4, held=(1, 2, 3))
    plan = next_bake([full], 1, lim)
    assert (plan.kind, plan.parent, plan.memory_ids) == ("consolidate", None, (1, 2, 3, 9))


# -- the learner ---------------------------------------------------------------------------------

@pytest.fixture
def learner(home, tiny_model_dir):
    store = MemoryStore.in_home(home, actor="test")
    cfg = RuntimeConfig(home=home, model_dir=tiny_model_dir, idle_seconds=0, sampler="hf", max_tries=1,
                        max_lora_rank=16, max_layers=2, bake_overrides=TINY_BAKE)
    idle = {"for": 1e9}
    lr = Learner(cfg, store, lambda: idle["for"])
    lr.idle = idle
    lr.recover()
    yield lr
    lr.stop()
    store.close()


def _report(passed: dict[int, bool], forgotten: dict[int, bool] = None, kept=10, base_right=10):
    return {"verify": {
        "items": [{"item_id": i, "passed": p, "hits": int(p), "asked": 2} for i, p in passed.items()],
        "forgotten": [{"item_id": i, "recalled": r, "hits": int(r), "asked": 2} for i, r in (forgotten or {}).items()],
        "general": {"asked": 12, "base_right": base_right, "kept": kept, "kept_fraction": kept / base_right}},
        "bake": {"prompt_sha256": "x"}, "timings": {}}


def _publish(lr, tiny_model_dir, tmp_path, tenant, ids, passed, seed=0, **kw):
    """A finished bake of `ids` on the served version, verified as `passed` says."""
    served = Registry(lr.cfg.home).current(tenant)
    job = lr.store.jobs.create(tenant, "bake", ids, served.name if served else None)
    lr.store.jobs.move(job.id, "running")
    result = _report(passed, **kw)
    result["candidate"] = str(make_adapter(tiny_model_dir, tmp_path / f"cand-{job.id}", seed=seed, r=8))
    return job.id, lr.publish(lr.store.jobs.get(job.id), result)


def _asked(lr, tenant, served, question):
    """The hot prompt the gateway would send with `question` to `served` ("base": the base model)."""
    return lr.hot.prompt(tenant, served, [{"role": "user", "content": question}]).text


def test_a_memory_is_hot_at_once_and_leaves_only_for_a_version_that_holds_it(learner, tiny_model_dir, tmp_path):
    lr, home = learner, learner.cfg.home
    a = lr.store.add("alice", "fact", "The ship is called the Marigold.")
    b = lr.store.add("alice", "fact", "The cook is named Ada Brennan.")
    assert "Marigold" in _asked(lr, "alice", "base", "What is the ship called?")  # no sync needed

    job_id, name = _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id, b.id], {a.id: True, b.id: False})
    assert name == "alice@v1" and held(lr.store, "alice", name) == (a.id,)
    assert "Marigold" not in _asked(lr, "alice", name, "What is the ship called?")
    assert "Ada Brennan" in _asked(lr, "alice", name, "Who is the cook?")  # b failed: it stays hot
    assert "Marigold" in _asked(lr, "alice", "base", "What is the ship called?")  # the base still needs it
    checks = {c.memory_id: c.passed for c in lr.store.jobs.checks(a.id) + lr.store.jobs.checks(b.id)}
    assert checks == {a.id: True, b.id: False}
    assert lr.store.jobs.get(job_id).state == "done" and lr.store.jobs.get(job_id).version == name
    assert lr.store.jobs.failed_tries([b.id]) == {b.id: 1}


@pytest.mark.parametrize("case, reason", [
    ("nothing", "no memory graduated"),
    ("recheck", "earlier graduated memories lost"),
    ("general", "general answers kept"),
    ("forgotten", "forgotten memories still recalled"),
])
def test_the_gate_rejects_and_the_previous_version_keeps_serving(learner, tiny_model_dir, tmp_path, case, reason):
    lr = learner
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    _, v1 = _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id], {a.id: True})
    c = lr.store.add("alice", "fact", "Gamma is the third letter.")
    passed = {c.id: case != "nothing", a.id: case != "recheck"}
    kw = {"kept": 5} if case == "general" else {}
    if case == "forgotten":
        d = lr.store.add("alice", "fact", "Delta was a letter the user asked us to forget.")
        lr.store.forget(d.id)
        kw["forgotten"] = {d.id: True}
    job_id, name = _publish(lr, tiny_model_dir, tmp_path, "alice", [c.id], passed, seed=1, **kw)
    job = lr.store.jobs.get(job_id)
    assert name is None and job.state == "rejected" and reason in job.reason
    assert Registry(lr.cfg.home).current("alice").name == v1  # nothing published


def test_a_real_bake_job_that_verifies_nothing_is_rejected_and_the_memory_stays_hot(learner):
    lr = learner
    m = lr.store.add("alice", "fact", "Port authority of Velmora names Ines Tarrago as harbor commissioner.")
    lr.tick()
    assert lr.proc is not None and lr.store.jobs.get(lr.proc.job_id).state == "running"
    job = _run_job(lr)
    assert job.state == "rejected", (job.state, job.reason)
    assert "no memory graduated" in job.reason  # a random model recalls nothing
    assert job.result["general"]["asked"] >= 50 and job.result["timings"]["bake"] > 0
    assert Registry(lr.cfg.home).current("alice") is None
    assert "Velmora" in _asked(lr, "alice", "base", "Who is the harbor commissioner of Velmora?")
    assert lr.store.jobs.failed_tries([m.id]) == {m.id: 1}
    lr.tick()  # max_tries=1: it stays hot for good, no new job is planned
    assert lr.proc is None and len(lr.store.jobs.list("alice")) == 1


def test_forget_rolls_back_to_a_version_without_it_and_its_successors_return_hot(learner, tiny_model_dir, tmp_path):
    lr, home = learner, learner.cfg.home
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    _, v1 = _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id], {a.id: True})
    b = lr.store.add("alice", "fact", "Beta is the second letter.")
    c = lr.store.add("alice", "fact", "Gamma is the third letter.")
    _, v2 = _publish(lr, tiny_model_dir, tmp_path, "alice", [b.id, c.id], {a.id: True, b.id: True, c.id: True}, seed=1)
    assert set(held(lr.store, "alice", v2)) == {a.id, b.id, c.id}

    lr.store.forget(b.id, reason="user asked")
    lr.tick()
    reg = Registry(home)
    assert reg.current("alice").name == v1  # the newest version that does not hold b
    assert lr.store.adapter("alice", v2).status == "rolled_back"
    hot = _asked(lr, "alice", v1, "Which letters are Alpha, Beta and Gamma?")
    assert "Gamma" in hot and "Beta" not in hot and "Alpha" not in hot
    plan_ids = lr.store.jobs.list("alice", states=("running", "queued"))
    assert plan_ids and set(plan_ids[-1].memory_ids) == {c.id} and plan_ids[-1].parent_version == v1
    spec = json.loads((lr.cfg.work_dir / f"job-{plan_ids[-1].id}" / "spec.json").read_text())
    assert [f["id"] for f in spec["forgotten"]] == [b.id]  # the rebake must show b is gone

    lr.store.forget(a.id)  # v1 holds a: nothing left but the base
    lr.tick()
    assert reg.current("alice") is None
    assert "Gamma" in _asked(lr, "alice", "base", "Which letter is Gamma?")


def test_an_update_to_a_baked_memory_does_not_lock_the_tenant_out(learner, tiny_model_dir, tmp_path):
    """A graduated memory superseded by an update about the same subject: the tenant is rolled
    back, the next bake checks only what the update changed (here nothing: the new name repeats
    the old one), and once a published version is shown not to recall it, it is checked no more."""
    lr, home = learner, learner.cfg.home
    lr.idle["for"] = 0  # no bake is planned until the test says so
    ferry = lr.store.add("alice", "fact", "The ferry to Orla Island is named the Marigold.")
    _, v1 = _publish(lr, tiny_model_dir, tmp_path, "alice", [ferry.id], {ferry.id: True})
    renamed = lr.store.supersede(ferry.id, "The ferry to Orla Island is renamed the Wild Marigold.")
    keeper = lr.store.add("alice", "fact", "The Orla Island lighthouse keeper is Bertil Sand.")
    lr.tick()
    assert Registry(home).current("alice") is None  # v1 held the old name
    assert lr._to_unlearn("alice") == [{"id": ferry.id, "text": ferry.text, "instead": renamed.text}]

    # the next bake graduates both and is shown not to recall the old memory: published
    job_id, v2 = _publish(lr, tiny_model_dir, tmp_path, "alice", [renamed.id, keeper.id],
                          {renamed.id: True, keeper.id: True}, seed=1, forgotten={ferry.id: False})
    assert v2 == "alice@v2" and set(held(lr.store, "alice", v2)) == {renamed.id, keeper.id}
    assert lr._to_unlearn("alice") == []  # checked no more

    lr.store.forget(keeper.id)  # a forgotten memory is still checked with its own spans
    lr.tick()
    assert lr._to_unlearn("alice") == [{"id": keeper.id, "text": keeper.text}]
    # a bake that still recalls it is rejected and names it
    gone = _publish(lr, tiny_model_dir, tmp_path, "alice", [renamed.id], {renamed.id: True}, seed=2,
                    forgotten={keeper.id: True})[0]
    assert f'#{keeper.id} "The Orla Island lighthouse keeper is Bertil Sand."' in lr.store.jobs.get(gone).reason


def test_rule_hot_measures_each_memory_once_against_the_hot_tier_its_probes_get(learner, tiny_model_dir, tmp_path):
    from baker.verify import verification_probes

    lr = learner
    lr.cfg.graduation = "hot"
    a = lr.store.add("alice", "fact", "The ferry to Orla Island is named the Marigold.")
    b = lr.store.add("alice", "fact", "The Orla lighthouse keeper is Bertil Sand.")
    ref = lr._hot_reference("alice", None, [a, b], [])
    assert ref["scores"] == {} and ref["served_adapter"] is None
    for m in (a, b):  # each probe is asked with what the hot tier gives that very question
        systems, probes = ref["systems"][str(m.id)], verification_probes(m.id, m.text)
        assert len(systems) == len(probes) and all(m.text in s for s in systems)
    # the worker's measure is kept once, whatever the gate decides, and goes with later jobs
    result = _report({a.id: True, b.id: False})
    result["hot_scores"] = {str(a.id): {"hits": 1, "asked": 4, "answers": []},
                            str(b.id): {"hits": 3, "asked": 4, "answers": []}}
    result["candidate"] = str(make_adapter(tiny_model_dir, tmp_path / "cand", seed=0, r=8))
    job = lr.store.jobs.create("alice", "bake", [a.id, b.id], None)
    lr.store.jobs.move(job.id, "running")
    assert lr.publish(lr.store.jobs.get(job.id), result) == "alice@v1"
    assert lr.store.jobs.hot_scores([a.id, b.id]) == {a.id: (1, 4), b.id: (3, 4)}
    lr.store.jobs.record_hot_score(a.id, 4, 4, None)  # a later measure does not replace the first
    assert lr.store.jobs.hot_scores([a.id]) == {a.id: (1, 4)}
    served = Registry(lr.cfg.home).current("alice")
    again = lr._hot_reference("alice", served, [b], [a])
    assert again["systems"] == {} and again["scores"] == {str(a.id): 1, str(b.id): 3}
    assert again["served_adapter"] == str(lr.registry.version_dir("alice", served.version))


def test_a_tenant_whose_bakes_keep_being_rejected_for_one_reason_is_shown_stuck(learner, tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from agent.cli import cli
    from agent.runtime.status import collect, stuck

    lr = learner
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    for n in range(3):
        _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id], {a.id: False}, seed=n, kept=9 - n)
        st = collect(lr.cfg.home)["tenants"]["alice"]["stuck"]
        assert (st is None) == (n < 2)
    assert st["reason"] == "no memory graduated" and len(st["jobs"]) == 3
    jobs = lr.store.jobs.list("alice")
    assert stuck(jobs[:2]) is None  # fewer than three
    r = CliRunner().invoke(cli, ["status", "--home", str(lr.cfg.home)])
    assert r.exit_code == 0 and "STUCK: the last 3 bakes were rejected: no memory graduated" in r.output
    _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id], {a.id: True}, seed=5)  # one gets through
    assert collect(lr.cfg.home)["tenants"]["alice"]["stuck"] is None


def test_the_hot_tier_invariant_holds_at_every_moment(learner, tiny_model_dir, tmp_path):
    """A reader polling what any served version would get never finds a live memory that is in
    neither that version's weights nor the hot prompt of a request about it, across publishes, a
    rollback and a forget (the reader asks the runtime's own hot-prompt source, in its own thread)."""
    lr, home = learner, learner.cfg.home
    violations, checked, stop = [], [], threading.Event()

    def watch():
        with MemoryStore.in_home(home) as store:
            while not stop.is_set():
                live = store.memories("alice", valid_only=True) if "alice" in store.tenants() else []
                state = Registry(home).load().get("alice")
                names = ["base"] + ([v.name for v in state.versions.values()] if state else [])
                for name in names:
                    holds = set(held(store, "alice", name))
                    for m in live:
                        if m.id not in holds and m.id not in lr.hot.prompt("alice", name, [
                                {"role": "user", "content": m.text}]).memory_ids:
                            still = any(x.id == m.id for x in store.memories("alice", valid_only=True))
                            if still and m.id not in held(store, "alice", name):  # not recorded meanwhile
                                violations.append((name, m.id))
                checked.append(len(live) * len(names))

    ids = [lr.store.add("alice", "fact", f"Fact number {i} is about the letter {c}.").id for i, c in enumerate("ABCD")]
    lr.hot.sync()
    t = threading.Thread(target=watch)
    t.start()
    try:
        _publish(lr, tiny_model_dir, tmp_path, "alice", ids[:2], {ids[0]: True, ids[1]: True})
        lr.hot.sync()
        _publish(lr, tiny_model_dir, tmp_path, "alice", ids[2:], {i: True for i in ids}, seed=2)
        lr.hot.sync()
        lr.store.forget(ids[3])
        lr.tick()
        Registry(home).rollback("alice", 1)
        lr.hot.sync()
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert violations == [] and len(checked) > 3 and sum(checked) > 20


def test_consolidation_replaces_the_stack_when_it_would_exceed_the_rank(learner, tiny_model_dir, tmp_path):
    lr = learner  # max_lora_rank 16, layers of rank 4 (TINY_BAKE): a rank-16 stack is full
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    served = lr.store.jobs.create("alice", "bake", [a.id])
    lr.store.jobs.move(served.id, "running")
    result = _report({a.id: True})
    result["candidate"] = str(make_adapter(tiny_model_dir, tmp_path / "r16", r=16))
    lr.publish(lr.store.jobs.get(served.id), result)
    lr.store.add("alice", "fact", "Beta is the second letter.")
    lr.tick()
    job = lr.store.jobs.list("alice")[-1]
    assert job.kind == "consolidate" and job.parent_version is None and a.id in job.memory_ids
    spec = json.loads((lr.cfg.work_dir / f"job-{job.id}" / "spec.json").read_text())
    assert spec["parent"] is None and spec["recheck"] == []


def _layer_spec(tiny_model_dir, tmp_path, **extra):
    """A worker spec: one new memory baked on a served rank-4 stack that holds `earlier` (rechecked)."""
    parent = make_adapter(tiny_model_dir, tmp_path / "served", r=4, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"))
    earlier = {"id": 7, "kind": "headline", "text": "Port authority of Velmora names Ines Tarrago as harbor commissioner.",
               "valid_from": "2026-11-02"}
    spec = {"model_dir": str(tiny_model_dir), "out_dir": str(tmp_path / "job"), "parent": str(parent),
            "config": TINY_BAKE | {"replay": 2, "sampler": "hf"}, "sampler": "hf", "forgotten": [],
            "memories": [{"id": 8, "kind": "fact", "text": "The Lumen Bridge in Caldera reopened after 14 months.",
                          "valid_from": ""}],
            "recheck": [earlier], **extra}
    return spec, parent, earlier


def test_a_layer_on_the_served_stack_replays_the_memories_it_rechecks(tiny_model_dir, tmp_path):
    from agent.runtime import worker
    from baker.contexts import probe_questions
    from baker.verify import verification_probes

    spec, parent, earlier = _layer_spec(tiny_model_dir, tmp_path)
    result = worker.run(spec)
    assert {i["item_id"] for i in result["verify"]["items"]} == {7, 8}  # the earlier memory is rechecked
    layer = tmp_path / "job" / "layer"
    assert json.loads((layer / "bake.json").read_text())["contexts"]["replay"] == 2
    rows = [json.loads(line) for line in (layer / "trajectories.jsonl").read_text().splitlines()]
    replayed = {r["context"] for r in rows if r["source"] == "replay"}
    assert len(replayed) == 2 and replayed <= set(probe_questions(worker.bake_prompt([earlier])))
    # the verifier's questions about the earlier memory stay unseen by the new layer
    assert not {p.question for p in verification_probes(7, earlier["text"])} & {r["context"] for r in rows}


def test_a_pursuit_bake_stacks_its_rounds_into_one_layer_on_the_served_stack(tiny_model_dir, tmp_path):
    from agent.runtime import worker

    spec, parent, _ = _layer_spec(tiny_model_dir, tmp_path, pursuit_rounds=2)
    result = worker.run(spec)
    layer = tmp_path / "job" / "layer"
    assert len(json.loads((layer / "pursuit.json").read_text())["rounds"]) == 2
    assert json.loads((layer / "adapter_config.json").read_text())["r"] == 2 * TINY_BAKE["rank"]  # both rounds
    rounds = [json.loads((layer / "layers" / f"round-{k}" / "bake.json").read_text()) for k in (1, 2)]
    # round 1 starts from the served stack, round 2 from the served stack and round 1
    assert rounds[0]["parent"]["path"] == str(parent.resolve())
    assert rounds[1]["parent"]["sha256"] != rounds[0]["parent"]["sha256"]
    assert all(r["contexts"]["replay"] == 2 for r in rounds)  # each round replays what the stack held
    assert {i["item_id"] for i in result["verify"]["items"]} == {7, 8}
    cand = json.loads((tmp_path / "job" / "stack" / "adapter_config.json").read_text())
    assert cand["r"] == 4 + 2 * TINY_BAKE["rank"]  # what is published: the served stack and the new layer


def test_pursuit_rounds_that_would_overflow_the_rank_are_refused(home, tiny_model_dir):
    cfg = RuntimeConfig(home=home, model_dir=tiny_model_dir, max_lora_rank=16, pursuit_rounds=5,
                        bake_overrides=TINY_BAKE)  # 5 rounds of rank 4
    with MemoryStore.in_home(home) as store, pytest.raises(ValueError, match="pursuit"):
        Learner(cfg, store, idle_for=lambda: 0.0)
    with pytest.raises(ValueError, match="pursuit_rounds"):
        RuntimeConfig(home=home, model_dir=tiny_model_dir, pursuit_rounds=0)


def test_a_restart_requeues_the_interrupted_job_and_sweeps_its_scratch(home, tiny_model_dir):
    cfg = RuntimeConfig(home=home, model_dir=tiny_model_dir, idle_seconds=0, sampler="hf", bake_overrides=TINY_BAKE)
    with MemoryStore.in_home(home) as store:
        m = store.add("alice", "fact", "The ship is called the Marigold.")
        job = store.jobs.move(store.jobs.create("alice", "bake", [m.id]).id, "running", pid=123)
    (cfg.work_dir / f"job-{job.id}" / ".layer.tmp-1-x").mkdir(parents=True)
    with MemoryStore.in_home(home) as store:
        lr = Learner(cfg, store, lambda: 1e9)
        assert [j.id for j in lr.recover()] == [job.id]
        assert not cfg.work_dir.exists()
        assert store.jobs.get(job.id).state == "queued" and store.get(m.id).status == "pending"
        lr.tick()  # the same job runs again
        assert lr.proc is not None and lr.proc.job_id == job.id
        lr.stop()
        assert store.jobs.get(job.id).state == "queued"


def test_a_request_pauses_the_bake_process_group_and_idle_resumes_it(learner):
    lr = learner
    p = _bake_started(lr)
    time.sleep(2)
    lr.cfg.idle_seconds, lr.idle["for"] = 5, 0.0  # a request: not idle for 5 s
    lr.on_request("alice")
    assert _status_becomes(p.pid, psutil.STATUS_STOPPED)
    lr.tick()
    assert lr.store.jobs.get(p.job_id).state == "paused"
    lr.idle["for"] = 1e9
    lr.tick()
    assert _status_becomes(p.pid, psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING, psutil.STATUS_DISK_SLEEP)
    assert lr.store.jobs.get(p.job_id).state == "running" and p.paused_seconds > 0
    lr.stop()
    assert not psutil.pid_exists(p.pid) or psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE


def _run_job(lr, timeout=240):
    job_id = lr.proc.job_id
    deadline = time.time() + timeout
    while lr.proc is not None and time.time() < deadline:
        lr.tick()
        time.sleep(0.5)
    return lr.store.jobs.get(job_id)


def test_one_warm_worker_runs_the_jobs_one_after_another_on_the_model_it_loaded_once(learner):
    lr = learner
    lr.store.add("alice", "fact", "The ship is called the Marigold.")
    lr.tick()
    first = _run_job(lr)
    lr.store.add("bob", "fact", "The lighthouse of Corvessa is painted green.")
    lr.tick()
    second = _run_job(lr)
    a, b = first.result["timings"], second.result["timings"]
    assert first.state == second.state == "rejected"  # a random model recalls nothing
    workers = [j.result.get("worker") for j in (first, second)]
    assert workers[0]["pid"] == workers[1]["pid"] and len(lr.workers) == 1 and lr.workers[0].alive()
    assert (workers[0]["bakes"], workers[1]["bakes"], workers[1]["loads"]) == (1, 2, 1)
    assert a["bake"] > 0 and b["bake"] > 0


def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_again(learner):
    lr = learner
    p = _bake_started(lr)
    time.sleep(1)
    os.killpg(p.pid, signal.SIGKILL)
    p.worker.proc.wait(10)
    lr.tick()
    job = lr.store.jobs.get(p.job_id)
    assert job.state == "running" and "the bake worker died" in job.reason  # queued, then started again
    assert lr.proc.pid != p.pid and lr.proc.worker.alive()
    os.killpg(lr.proc.pid, signal.SIGKILL)  # twice: that is a failure, not a loop
    lr.proc.worker.proc.wait(10)
    lr.tick()
    assert lr.store.jobs.get(p.job_id).state == "failed"


def _bake_started(lr):
    """A memory stored and the tick that starts its bake: the running job."""
    lr.store.add("alice", "fact", "The ship is called the Marigold.")
    lr.tick()
    return lr.proc


def _status_becomes(pid, *states, timeout=3.0):
    """Signals are delivered asynchronously: poll the process state for a moment."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if psutil.Process(pid).status() in states:
            return True
        time.sleep(0.02)
    return False


def test_a_second_runtime_on_the_same_home_refuses(home, tiny_model_dir):
    from click.testing import CliRunner

    from agent.cli import cli
    from agent.runtime.procs import hold_home

    with hold_home(home):
        r = CliRunner().invoke(cli, ["run", "--home", str(home), "--model", str(tiny_model_dir), "--port", "0"])
    assert r.exit_code == 1
    assert "another `bakehouse run` is using" in r.output and f"pid {__import__('os').getpid()}" in r.output


def test_status_json_reports_each_tenants_tiers_and_jobs(learner, tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from agent.cli import cli

    lr = learner
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    b = lr.store.add("alice", "fact", "Beta is the second letter.")
    _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id, b.id], {a.id: True, b.id: False})
    lr.store.jobs.create("alice", "bake", [b.id], "alice@v1")
    r = CliRunner().invoke(cli, ["status", "--json", "--home", str(lr.cfg.home)])
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)["tenants"]["alice"]
    assert (t["hot_memories"], t["baked_memories"], t["version"], t["layers"]) == (1, 1, "alice@v1", 1)
    assert t["last_bake"]["state"] == "done" and (t["last_bake"]["graduated"], t["last_bake"]["tried"]) == (1, 2)
    assert [j["state"] for j in t["jobs"]] == ["queued"]
    r = CliRunner().invoke(cli, ["memories", "--json", "--tenant", "alice", "--home", str(lr.cfg.home)])
    checks = {m["id"]: [c["passed"] for c in m["checks"]] for m in json.loads(r.output)}
    assert checks == {a.id: [True], b.id: [False]}


def test_the_runtime_metrics_show_hot_tier_graduation_and_bakes(learner, tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from agent.runtime.observe import RuntimeCollector, take_snapshot

    lr = learner
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    b = lr.store.add("alice", "fact", "Beta is the second letter.")
    _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id, b.id], {a.id: True, b.id: False})
    _publish(lr, tiny_model_dir, tmp_path, "alice", [b.id], {a.id: True, b.id: False}, seed=1)  # rejected
    lr.hot.sync()
    reg = CollectorRegistry()
    reg.register(RuntimeCollector(SimpleNamespace(snapshot=take_snapshot(lr))))
    text = generate_latest(reg).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("bakehouse_graduated_memories", (("tenant", "alice"),))] == 1
    assert samples[("bakehouse_hot_memories", (("tenant", "alice"),))] == 1
    assert samples[("bakehouse_hot_tokens", (("tenant", "alice"),))] == 0  # facts only: nothing is pinned
    assert samples[("bakehouse_hot_out_of_service", (("tenant", "alice"),))] == 0
    assert samples[("bakehouse_bakes_total", (("outcome", "published"), ("tenant", "alice")))] == 1
    assert samples[("bakehouse_bakes_total", (("outcome", "rejected"), ("tenant", "alice")))] == 1
    assert "Alpha" not in text and "Beta" not in text  # tenant names only, never memory texts


@pytest.fixture
def status_site(learner, tiny_model_dir, tmp_path):
    """The gateway app with the runtime's /status page (fake engine), a tenant key and the
    operator key, after one published and one rejected bake."""
    import httpx
    from fastapi.testclient import TestClient
    from test_serving_gateway import FakeVLLM

    from agent.runtime.page import ensure_admin_key, router
    from serving.config import ServeConfig
    from serving.gateway import Gateway, create_app
    from serving.tenants import TenantStore

    lr, home = learner, learner.cfg.home
    a = lr.store.add("alice", "fact", "Alpha is the first letter.")
    b = lr.store.add("alice", "fact", "Beta is the second letter.")
    job_id, _ = _publish(lr, tiny_model_dir, tmp_path, "alice", [a.id, b.id], {a.id: True, b.id: False})
    result = dict(lr.store.jobs.get(job_id).result)
    result["bake"] = {"eval_kl_before": 0.5, "epochs": [{"epoch": 1, "train_loss": 0.4, "heldout_kl": 0.3},
                                                       {"epoch": 2, "train_loss": 0.2, "heldout_kl": 0.2}]}
    lr.store.db["jobs"].update(job_id, {"result": json.dumps(result)})
    lr.store.add("bob", "persona", "You are Bob, a lighthouse keeper.")
    tenant_key = TenantStore(home).add("alice")[1]
    admin = ensure_admin_key(home)
    assert admin and ensure_admin_key(home) is None  # generated once, then only its hash is kept
    gateway = Gateway(ServeConfig(model_dir=tiny_model_dir, poll_interval=0.05), home, engine=FakeEngine(),
                      transport=httpx.ASGITransport(app=FakeVLLM().app))
    app = create_app(gateway, routers=(router(home),))
    with TestClient(app) as client:
        yield client, app, tenant_key, admin


def test_the_status_page_needs_the_operator_key_and_shows_tiers_and_bakes(status_site):
    client, _, tenant_key, admin = status_site
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers={"Authorization": f"Bearer {tenant_key}"}).status_code == 401
    assert client.get("/status?key=wrong").status_code == 401
    r = client.get("/status", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and 'http-equiv="refresh"' in r.text
    page = r.text
    assert 'id="tenant-alice"' in page and 'id="tenant-bob"' in page
    assert "Beta is the second letter." in page.split("Graduated")[0]  # hot
    assert "Alpha is the first letter." in page.split("Graduated")[1]  # in the weights
    assert "<svg" in page and page.count("<polyline") == 2  # the bake's KL per epoch
    assert admin not in page and tenant_key not in page


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed")
def test_the_status_page_in_a_real_headless_chromium(status_site, tmp_path):
    import socket
    import subprocess

    import uvicorn

    _, app, _, admin = status_site
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _deadline = time.time() + 10
    while not server.started and time.time() < _deadline:
        time.sleep(0.05)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]

    def chromium(*args, url):
        return subprocess.run(["chromium", *flags, *args, url], capture_output=True, text=True, timeout=120)

    try:
        shot = tmp_path / "status.png"
        url = f"http://127.0.0.1:{port}/status?key={admin}"
        chromium(f"--screenshot={shot}", "--window-size=1280,1600", url=url)
        assert shot.is_file() and shot.stat().st_size > 10_000
        dom = chromium("--dump-dom", url=url).stdout
        assert 'id="tenant-alice"' in dom and 'id="tenant-bob"' in dom and "<polyline" in dom
        denied = chromium("--dump-dom", url=f"http://127.0.0.1:{port}/status?key=wrong").stdout
        assert "operator key required" in denied and "tenant-alice" not in denied
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_concurrent_bakes_run_one_per_tenant_at_once(home, tiny_model_dir):
    cfg = RuntimeConfig(home=home, model_dir=tiny_model_dir, idle_seconds=0, sampler="hf", concurrent_bakes=2,
                        bake_overrides=TINY_BAKE)
    with MemoryStore.in_home(home) as store:
        for tenant in ("alice", "bob"):
            store.add(tenant, "fact", f"{tenant.title()} keeps a lighthouse on the island of Corvessa.")
            store.add(tenant, "fact", f"{tenant.title()} has a dog called Biscuit.")
        lr = Learner(cfg, store, lambda: 1e9)
        lr.recover()
        try:
            lr.tick()
            assert sorted(lr.procs) == ["alice", "bob"]  # two bakes, never two of one tenant
            lr.on_request("alice")
            assert all(p.paused for p in lr.procs.values())  # a request pauses every bake
        finally:
            lr.stop()
        assert [j.state for j in store.jobs.list()] == ["queued", "queued"]


def test_the_graduation_rule_is_checked_and_reaches_the_bake_spec(home, tiny_model_dir):
    with pytest.raises(ValueError, match="graduation must be one of"):
        RuntimeConfig(home=home, model_dir=tiny_model_dir, graduation="most")
    store = MemoryStore.in_home(home, actor="test")
    cfg = RuntimeConfig(home=home, model_dir=tiny_model_dir, idle_seconds=0, sampler="hf", graduation="strict",
                        bake_overrides=TINY_BAKE)
    lr = Learner(cfg, store, lambda: 1e9)
    try:
        lr.recover()
        store.add("alice", "fact", "The ship is called the Marigold.")
        lr.tick()
        (p,) = lr.procs.values()
        assert json.loads((p.out / "spec.json").read_text())["rule"] == "strict"
    finally:
        lr.stop()
        store.close()
