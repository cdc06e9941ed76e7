"""The learning loop: plan a bake in idle time, run it in its own process, gate it, publish it,
graduate what the weights hold; roll back when a held memory is forgotten or superseded. What
the served version does not hold is in each request's prompt meanwhile (hot.py).

Every step is recorded in the memory DB (jobs, per-memory checks, the bake ledger) before the
next one, so a crash anywhere leaves a state the next start can read: a job that was running is
queued again, and a version is only ever recorded once the registry serves it.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from memory import Job, MemoryStore
from serving.errors import ServingError

from .bakes import BakeProcess, BakeWorker
from .config import RuntimeConfig
from .hot import HotTier, hot_tier
from .planner import HotMemory, Limits, TenantState, next_bake
from .served import Record

log = logging.getLogger("bakehouse.runtime")


class Learner:
    def __init__(self, cfg: RuntimeConfig, store: MemoryStore, idle_for: Callable[[], float],
                 count_tokens: Callable[[str], int] | None = None, hot: HotTier | None = None,
                 engine: Callable[[], dict | None] | None = None):
        """`engine`: where the serving engine is ({"url", "key", "model", "priority"}, None while it is
        not up); with it, sampler "auto" samples and verifies there (no vLLM of a bake's own)."""
        from baker import BakeConfig

        self.cfg, self.store, self.idle_for = cfg, store, idle_for
        self.record = Record(cfg.home, store)  # what each tenant is served and what it holds
        self.registry = self.record.registry
        self.hot = hot or hot_tier(cfg, count_tokens)
        self.engine = engine or (lambda: None)
        self.sampler = "engine" if cfg.sampler == "auto" and engine is not None else cfg.sampler
        self.bake_config = BakeConfig.from_dict({"sampler": self.sampler, **cfg.bake_overrides})
        layer_rank = self.bake_config.rank * cfg.pursuit_rounds  # a pursuit's rounds make one layer
        if layer_rank > cfg.max_lora_rank:
            raise ValueError(f"a layer of rank {self.bake_config.rank} x {cfg.pursuit_rounds} pursuit round(s) "
                             f"exceeds max_lora_rank {cfg.max_lora_rank}")
        self.limits = Limits(idle_seconds=cfg.idle_seconds, min_batch=cfg.min_batch, max_wait=cfg.max_wait,
                             max_batch=cfg.max_batch, max_tries=cfg.max_tries, layer_rank=layer_rank,
                             max_lora_rank=cfg.max_lora_rank, max_layers=cfg.max_layers,
                             retry_after_failure=cfg.retry_after_failure)
        self.procs: dict[str, BakeProcess] = {}  # tenant -> its running bake (one per tenant)
        self.workers: list[BakeWorker] = []  # warm: kept between jobs; each runs one job at a time
        self._crashed: dict[str, float] = {}  # tenant -> time.time() of its last crashed bake
        self.pauses: Counter[str] = Counter()  # tenant -> times its bake was paused for requests

    # -- lifecycle ---------------------------------------------------------------------------

    def recover(self) -> list[Job]:
        """At start: jobs a dead runtime left running go back to the queue; scratch is swept."""
        shutil.rmtree(self.cfg.work_dir, ignore_errors=True)
        again = self.store.jobs.requeue_interrupted()
        self.hot.sync(force=True)
        return again

    def stop(self) -> None:
        """Stop the running bakes; their jobs are queued again for the next start."""
        for p in self.procs.values():
            p.kill()
            self._requeue(p.job_id, "the runtime stopped during the bake")
        self.procs.clear()
        for w in self.workers:
            w.close(timeout=2.0)
        self.workers.clear()

    def _worker(self) -> BakeWorker:
        """An idle live worker, or a new one (a dead one is dropped: its job was requeued)."""
        busy = {p.worker for p in self.procs.values()}
        self.workers = [w for w in self.workers if w.alive() or w in busy]
        idle = next((w for w in self.workers if w not in busy and w.warm), None)
        if idle is None:
            idle = BakeWorker(self.cfg.home / "runtime" / "logs", warm=self.cfg.bake_worker == "warm")
            self.workers.append(idle)
        return idle

    @property
    def proc(self) -> BakeProcess | None:
        """The oldest running bake (the only one with `concurrent_bakes` 1)."""
        return next(iter(self.procs.values()), None)

    def _requeue(self, job_id: int, reason: str) -> None:
        job = self.store.jobs.get(job_id)
        if job.state in ("running", "paused"):
            self.store.jobs.move(job_id, "queued", reason=reason)

    # -- serving comes first -----------------------------------------------------------------

    def on_request(self, tenant: str | None = None) -> None:
        """A request arrived: stop competing for the cores at once (called on the request path)."""
        if not self.cfg.pause_bakes:
            return
        for p in list(self.procs.values()):
            if not p.paused:
                p.pause()
                self.pauses[p.tenant] += 1

    def _pace(self, p: BakeProcess) -> None:
        if p.paused and self.idle_for() >= self.cfg.idle_seconds:
            p.resume()
        state = "paused" if p.paused else "running"
        if self.store.jobs.get(p.job_id).state != state:
            self.store.jobs.move(p.job_id, state)
            log.info("bake job %d (%s) %s", p.job_id, p.tenant, "paused for requests" if p.paused else "resumed")

    # -- the tick ------------------------------------------------------------------------------

    def tick(self) -> None:
        """One planner step (APScheduler runs it every `tick_seconds`, one at a time)."""
        self.hot.sync()
        self.roll_back_invalidated()
        for tenant, p in list(self.procs.items()):
            if p.poll() is None:
                self._pace(p)
                continue
            del self.procs[tenant]
            self._finish(p)
            self.hot.sync(force=True)
        while len(self.procs) < self.cfg.concurrent_bakes:
            if self.sampler == "engine" and self.engine() is None:
                break  # the bakes sample through the serving engine: they wait for it
            job = self._next_job()
            if job is None:
                break
            self._start(job)

    def _next_job(self) -> Job | None:
        """A queued job (oldest first) or a new plan, for a tenant without a running bake."""
        if self.idle_for() < self.cfg.idle_seconds:
            return None
        queued = [j for j in self.store.jobs.list(states=("queued",)) if j.tenant not in self.procs]
        if queued:
            return queued[0]
        plan = next_bake([t for t in self.tenant_states() if t.name not in self.procs], self.idle_for(), self.limits)
        if plan is None:
            return None
        log.info("planning a %s for %s: %s", plan.kind, plan.tenant, plan.why)
        return self.store.jobs.create(plan.tenant, plan.kind, plan.memory_ids, plan.parent)

    def tenant_states(self) -> list[TenantState]:
        state = self.record.state()
        now = time.time()
        out = []
        for tenant in self.store.tenants():
            v = self.record.served(tenant, state)
            holds = self.record.holds(tenant, v)
            hot = [m for m in self.store.memories(tenant, valid_only=True) if m.id not in set(holds)]
            tries = self.store.jobs.failed_tries([m.id for m in hot])
            layers = self.record.layers(tenant, v)
            crashed = self._crashed.get(tenant)
            out.append(TenantState(
                name=tenant,
                hot=tuple(HotMemory(m.id, now - _ts(m.created_at), tries[m.id]) for m in hot),
                version=v.name if v else None, rank=v.rank if v else 0, layers=layers, held=holds,
                since_failure=None if crashed is None else now - crashed))
        return out

    # -- running a job -------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        served = self.record.served(job.tenant)
        if job.kind == "bake" and (served.name if served else None) != job.parent_version:
            self.store.jobs.move(job.id, "running")
            self.store.jobs.move(job.id, "failed", reason=f"stale: {job.tenant} now serves "
                                 f"{served.name if served else 'the base'}, not {job.parent_version}")
            return
        mems = [m for m in (self.store.get(i) for i in job.memory_ids) if m.valid]
        if not mems:
            self.store.jobs.move(job.id, "running")
            self.store.jobs.move(job.id, "failed", reason="every memory of the job was forgotten or superseded")
            return
        parent = self.registry.version_dir(job.tenant, served.version) if job.kind == "bake" and served else None
        recheck = []
        if parent is not None:
            recheck = [m for m in (self.store.get(i) for i in self.record.holds(job.tenant, served)) if m.valid]
        spec = {
            "model_dir": str(self.cfg.model_dir),
            "out_dir": str(self.cfg.work_dir / f"job-{job.id}"),
            "parent": str(parent) if parent else None,
            "config": self.bake_config.to_dict(),
            "sampler": self.sampler,
            "rule": self.cfg.graduation,
            "pursuit_rounds": self.cfg.pursuit_rounds,
            "memories": [{"id": m.id, "kind": m.kind, "text": m.text, "valid_from": m.valid_from} for m in mems],
            "recheck": [{"id": m.id, "kind": m.kind, "text": m.text, "valid_from": m.valid_from} for m in recheck],
            "forgotten": self._to_unlearn(job.tenant),
        }
        if self.cfg.graduation == "hot":
            spec["hot"] = self._hot_reference(job.tenant, served, mems, recheck)
        shutil.rmtree(spec["out_dir"], ignore_errors=True)
        engine = self.engine() if self.sampler == "engine" else None
        p = self.procs[job.tenant] = BakeProcess(job.id, job.tenant, spec, self._worker(), engine)
        self.store.jobs.move(job.id, "running", pid=p.pid)

    def _hot_reference(self, tenant: str, served, mems, recheck) -> dict:
        """What rule "hot" compares the candidate with: per memory, the served model's hits on its
        verification probes, each asked with the system prompt the hot tier builds for it now.
        Measured once per memory (in the bake worker, stored by `publish`); the scores of the
        memories measured before, rechecked ones included, go with the job."""
        from baker.verify import verification_probes

        scores = self.store.jobs.hot_scores([m.id for m in mems + recheck])
        name = served.name if served else None
        systems = {}
        for m in mems:
            if m.id not in scores:
                systems[str(m.id)] = [self.hot.prompt(tenant, name, [{"role": "user", "content": p.question}]).text
                                      or None for p in verification_probes(m.id, m.text)]
        return {"systems": systems, "scores": {str(i): h for i, (h, _) in scores.items()},
                "served_adapter": str(self.registry.version_dir(tenant, served.version)) if served else None}

    def _invalid_ever_held(self, tenant: str):
        """Forgotten or superseded memories some version of the tenant held."""
        rows = self.store.db.execute(
            "SELECT DISTINCT am.memory_id FROM adapter_memories am JOIN adapters a ON a.id = am.adapter_id"
            " JOIN memories m ON m.id = am.memory_id WHERE a.tenant = ?"
            " AND (m.status = 'forgotten' OR m.valid_to IS NOT NULL)", [tenant]).fetchall()
        return [self.store.get(r[0]) for r in rows]

    def _to_unlearn(self, tenant: str) -> list[dict]:
        """What a bake must show is gone: the forgotten or superseded memories some version held,
        except those a published version was already shown not to recall (the list does not
        grow for ever). A superseded one carries its live update ("instead"): only what changed
        is checked (baker.verify.what_changed)."""
        shown_gone = {r[0] for r in self.store.db.execute(
            "SELECT mc.memory_id FROM memory_checks mc JOIN jobs j ON j.id = mc.job_id"
            " WHERE j.tenant = ? AND j.state = 'done' AND mc.purpose = 'forgotten' AND mc.passed = 1", [tenant])}
        out = []
        for m in self._invalid_ever_held(tenant):
            if m.id in shown_gone:
                continue
            item = {"id": m.id, "text": m.text}
            if m.status != "forgotten" and m.superseded_by is not None:
                item["instead"] = self._latest(m).text
            out.append(item)
        return out

    def _name(self, ids: list[int], chars: int = 60) -> str:
        """Memories as a reason names them: #id "the start of its text"."""
        out = []
        for i in ids:
            text = self.store.get(i).text
            out.append(f'#{i} "{text[:chars]}{"..." if len(text) > chars else ""}"')
        return ", ".join(out)

    def _latest(self, m):
        """The live end of `m`'s chain of updates (itself if none is live)."""
        seen = {m.id}
        while m.superseded_by is not None and m.superseded_by not in seen:
            m = self.store.get(m.superseded_by)
            seen.add(m.id)
        return m

    def _finish(self, p: BakeProcess) -> None:
        job = self.store.jobs.get(p.job_id)
        result, error = p.outcome()
        if result is None:
            log.error("bake job %d (%s) failed: %s", job.id, job.tenant, error)
            self._crashed[job.tenant] = time.time()
            if p.died and job.attempts < 2:
                self.store.jobs.move(job.id, "queued", reason=f"the bake worker died; again in a fresh one: {error}")
            else:
                self.store.jobs.move(job.id, "failed", reason=error)
            return
        result["timings"].update(wall=time.monotonic() - p.started, paused=p.paused_seconds, pauses=p.pauses)
        self.publish(job, result)

    def publish(self, job: Job, result: dict) -> str | None:
        """Gate a finished bake's verification, then publish it and graduate what it holds.
        Returns the published version's name, or None (the job is rejected, nothing changes)."""
        for i, r in (result.get("hot_scores") or {}).items():  # measured once, whatever the gate says
            self.store.jobs.record_hot_score(int(i), r["hits"], r["asked"], job.parent_version, r.get("answers"))
        rep = result["verify"]
        items = {int(it["item_id"]): it for it in rep["items"]}
        recheck = [i for i in items if i not in job.memory_ids]
        graduated = [i for i in job.memory_ids if items.get(i, {}).get("passed")]
        kept = [i for i in recheck if items[i]["passed"]]
        recalled = [int(f["item_id"]) for f in rep.get("forgotten", []) if f["recalled"]]
        self.store.jobs.record_checks(job.id, [
            *((i, "graduate", bool(items.get(i, {}).get("passed")), items.get(i, {})) for i in job.memory_ids
              if i in items),
            *((i, "recheck", items[i]["passed"], items[i]) for i in recheck),
            *((int(f["item_id"]), "forgotten", not f["recalled"], f) for f in rep.get("forgotten", [])),
        ])
        reasons = []
        if not graduated:
            reasons.append("no memory graduated")
        if recheck and len(kept) < self.cfg.gate_recheck * len(recheck):
            lost = [i for i in recheck if i not in kept]
            reasons.append(f"earlier graduated memories lost: {len(lost)} of {len(recheck)} ({self._name(lost)})")
        general = rep.get("general") or {}
        if general.get("base_right") and general["kept_fraction"] < self.cfg.gate_general:
            reasons.append(f"general answers kept {general['kept']}/{general['base_right']} "
                           f"< {self.cfg.gate_general:.0%}")
        if recalled:
            reasons.append(f"forgotten memories still recalled: {self._name(recalled)}")
        v = self.record.served(job.tenant)
        served = v.name if v else None
        if job.kind == "bake" and served != job.parent_version:
            reasons.append(f"stale: {job.tenant} now serves {served or 'the base'}")
        summary = {"graduated": graduated, "failed": [i for i in job.memory_ids if i not in graduated],
                   "recheck_kept": kept, "recheck_lost": [i for i in recheck if i not in kept],
                   "general": general, "bake": result.get("bake"), "timings": result.get("timings"),
                   "worker": result.get("worker"), "sampler": rep.get("sampler")}
        if reasons:
            self.store.jobs.move(job.id, "rejected", reason="; ".join(reasons), result=summary)
            log.warning("bake job %d (%s) rejected: %s", job.id, job.tenant, "; ".join(reasons))
            return None
        try:
            v = self.registry.publish(job.tenant, Path(result["candidate"]), self.cfg.model_dir,
                                      self.cfg.max_lora_rank)
        except ServingError as e:
            self.store.jobs.move(job.id, "failed", reason=f"publish refused: {e}", result=summary)
            return None
        layer = self.record.layers(job.tenant, job.parent_version) if job.kind == "bake" else 0
        self.store.record_bake(job.tenant, v.name, memory_ids=sorted(set(kept) | set(graduated)),
                               prompt_hash=(result.get("bake") or {}).get("prompt_sha256", ""),
                               parent=job.parent_version if job.kind == "bake" else None, layer=layer,
                               metrics={"job": job.id, **{k: summary[k] for k in ("general", "bake", "timings")}})
        self.store.jobs.move(job.id, "done", version=v.name, result=summary)
        log.info("published %s: %d graduated, %d stay hot", v.name, len(graduated), len(summary["failed"]))
        return v.name

    # -- forget and supersede reach the weights -----------------------------------------------

    def roll_back_invalidated(self) -> None:
        """A served version holding a forgotten or superseded memory is replaced at once by the
        newest version that holds none (or the base); what graduated since returns to the hot
        tier by itself (hot prompts are per version), and the planner bakes it again."""
        state = self.record.state()
        for tenant, t in state.items():
            cur = t.served
            if cur is None:
                continue
            invalid = {m.id for m in self._invalid_ever_held(tenant)}
            bad = set(self.record.holds(tenant, cur)) & invalid
            if not bad:
                continue
            target = next((v for n, v in sorted(t.versions.items(), reverse=True)
                           if n != t.current and v.status == "ready"
                           and self.registry.version_dir(tenant, n).is_dir()
                           and not set(self.record.holds(tenant, v)) & invalid), None)
            if target is not None:
                self.registry.rollback(tenant, target.version)
            else:
                self.registry.unpoint(tenant)
            self.store.set_adapter_status(tenant, cur.name, "rolled_back",
                                          reason=f"holds forgotten/superseded memories {sorted(bad)}")
            p = self.procs.pop(tenant, None)
            if p is not None:
                p.kill()
                self.store.jobs.move(p.job_id, "failed", reason="stale: the tenant was rolled back")
            log.info("%s: %s held forgotten memories %s; now serving %s", tenant, cur.name, sorted(bad),
                     target.name if target else "the base")
            self.hot.sync(force=True)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).replace(tzinfo=timezone.utc).timestamp()

