"""`bakehouse run`: the gateway + vLLM and the learning loop in one supervised process tree.

    main thread      uvicorn: the gateway (it supervises the vLLM engine process group)
    scheduler thread APScheduler, jobs run one at a time in that thread: the learner's tick
                     (hot tier, rollbacks, plan / pace / finish a bake), feed polls, feedback and
                     episodes (read from the gateway's queues; summaries by the served model), status
    bake worker      one job at a time, its own process group, the base model kept loaded between
                     jobs (agent/runtime/worker.py); it samples and verifies through the engine

Ctrl-C / SIGTERM stop all of it: uvicorn shuts the gateway (and vLLM) down, then the scheduler
stops and a running bake is killed and queued again.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from .config import RuntimeConfig
from .observe import take_snapshot
from .procs import hold_home, record, sweep

log = logging.getLogger("bakehouse.runtime")
STATUS_FILE = "status.json"


class Runtime:
    def __init__(self, cfg: RuntimeConfig, engine=None, transport=None):
        from serving.config import ServeConfig
        from serving.gateway import Gateway

        self.cfg = cfg
        serve_cfg = ServeConfig(model_dir=cfg.model_dir, host=cfg.host, port=cfg.port,
                                max_loras=cfg.max_loras, max_cpu_loras=max(32, cfg.max_loras),
                                max_lora_rank=cfg.max_lora_rank, kv_cache_bytes=int(cfg.kv_cache_gib * (1 << 30)),
                                max_model_len=cfg.max_model_len)
        from .hot import hot_tier

        self.hot = hot_tier(cfg, _token_counter(cfg.model_dir))  # each request's memories
        self.gateway = Gateway(serve_cfg, cfg.home, engine=engine, transport=transport, hot_source=self.hot.prompt)
        self.gateway.on_request.append(self._on_request)
        from .observe import RuntimeCollector, Snapshot

        self.snapshot = Snapshot()  # what /metrics shows of the runtime, renewed every tick
        self.gateway.metrics.add_collector(RuntimeCollector(self))
        self.learner = None  # made in the scheduler thread (SQLite connections stay in one thread)
        self._feedback = None  # the feedback queue reader (same thread)
        self._episodes = None  # the episode queue reader (same thread)
        self.scheduler = None
        self.started = time.time()
        self.last_error: str | None = None
        self._stopping = threading.Event()

    # -- idle time, as the gateway sees it -------------------------------------------------------

    def idle_for(self) -> float:
        g = self.gateway
        if sum(g.inflight.values()) > 0 or not g.ready:
            return 0.0
        return time.time() - g.last_request

    def _on_request(self, tenant: str) -> None:
        if self.learner is not None:
            self.learner.on_request(tenant)

    # -- scheduled jobs (all in the scheduler's one thread) -----------------------------------

    def _learner(self):
        if self.learner is None:
            from memory import MemoryStore

            from .learner import Learner

            store = MemoryStore.in_home(self.cfg.home, actor="runtime")
            self.learner = Learner(self.cfg, store, self.idle_for, hot=self.hot, engine=self.gateway.engine_access)
            again = self.learner.recover()
            if again:
                log.info("re-queued %d bake job(s) a previous runtime left unfinished", len(again))
        return self.learner

    def tick(self) -> None:
        if self._stopping.is_set():
            return
        try:
            learner = self._learner()
            learner.tick()
            record(self.cfg.home, "bake", sorted(w.pid for w in learner.workers if w.alive()) or None)
            self.snapshot = take_snapshot(learner)
            self.last_error = None
        except Exception as e:  # the loop must survive anything; the job row says what failed
            self.last_error = f"{type(e).__name__}: {e}"
            log.exception("runtime tick")
        self._write_status()

    def poll_feeds(self) -> None:
        from memory import feeds

        if self._stopping.is_set():
            return
        learner = self._learner()
        for f in feeds.due_feeds(learner.store, self.cfg.feed_minutes):
            r = feeds.poll_feed(learner.store, f)
            if r.new or r.error:
                log.info("feed %s (%s): %d new%s", r.feed.source, r.feed.tenant, r.new,
                         f", error: {r.error}" if r.error else "")
        learner.hot.sync()

    def _readers(self):
        """The readers of the gateway's episode and feedback queues (made in the scheduler's thread)."""
        from .episodes import EpisodeReader, ServedModel
        from .feedback import FeedbackReader

        learner = self._learner()
        if self._feedback is None:
            self._episodes = EpisodeReader(learner.store, self.cfg.home)
            self._feedback = FeedbackReader(learner.store, self.cfg.home, complete=ServedModel(self.gateway))
        return self._episodes, self._feedback

    def learn_feedback(self) -> None:
        """Instructions from the gateway's feedback queue: hot at once, baked like any memory."""
        if self._stopping.is_set():  # the store is closed, or about to be
            return
        episodes, feedback = self._readers()
        episodes.poll()  # first: a comment may be about a turn still in the episode queue
        learned = feedback.poll()
        for m in learned:
            log.info("learned an instruction from feedback (%s): #%d %s", m.tenant, m.id, m.text)
        if learned:  # at once, not at the hot job's next tick
            self.learner.hot.sync()

    def summarise_episodes(self) -> None:
        """Close the episodes idle for --episode-idle minutes; summarise closed ones with each
        tenant's served model into episode_summary memories (hot at once)."""
        from .episodes import ServedModel, close_idle, summarise_closed

        if self._stopping.is_set():
            return
        episodes, _ = self._readers()
        episodes.poll()
        store = self.learner.store
        for ep in close_idle(store, self.cfg.episode_idle):
            log.info("episode %d (%s) closed after %g idle minutes", ep.id, ep.tenant, self.cfg.episode_idle)
        if summarise_closed(store, ServedModel(self.gateway), max_tries=self.cfg.summary_tries):
            self.learner.hot.sync()

    def _write_status(self) -> None:
        learner = self.learner
        engine = self.gateway.engine
        if engine.pid:
            record(self.cfg.home, "engine", engine.pid)
        st = {
            "pid": os.getpid(), "started": self.started, "updated": time.time(),
            "config": self.cfg.to_dict(), "last_error": self.last_error,
            "idle_for": self.idle_for(),
            "bakes": [] if learner is None else [
                {"job": p.job_id, "tenant": p.tenant, "pid": p.pid, "paused": p.paused, "pauses": p.pauses,
                 "paused_seconds": p.paused_seconds} for p in learner.procs.values()],
            "hot": {} if learner is None else {
                t: {"version": h.version, "memories": list(h.memory_ids), "tokens": h.tokens,
                    "out_of_service": list(h.out_of_service)} for t, h in learner.hot.current.items()},
        }
        path = self.cfg.home / "runtime" / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, default=str))
        os.replace(tmp, path)

    # -- the whole thing -----------------------------------------------------------------------

    def start_scheduler(self) -> None:
        from apscheduler.executors.debug import DebugExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        s = BackgroundScheduler(executors={"default": DebugExecutor()},
                                job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30})
        s.add_job(self.tick, "interval", seconds=self.cfg.tick_seconds, id="tick", next_run_time=_now())
        # every feed at its own interval (else --feed-minutes): look for due ones each half minute
        s.add_job(self.poll_feeds, "interval", seconds=min(30.0, 60 * self.cfg.feed_minutes), id="feeds",
                  next_run_time=_now())
        s.add_job(self._hot_sync, "interval", seconds=self.cfg.hot_seconds, id="hot")
        s.add_job(self.learn_feedback, "interval", seconds=1.0, id="feedback")
        s.add_job(self.summarise_episodes, "interval", seconds=10.0, id="episodes")
        s.start()
        self.scheduler = s

    def _hot_sync(self) -> None:
        if self.learner is not None and not self._stopping.is_set():
            try:
                self.learner.hot.sync()
            except Exception:
                log.exception("hot tier")

    def stop(self) -> None:
        """Stop the bake (its job is queued again) and the scheduler. The learner's DB
        connection belongs to the scheduler's thread, so the bake is stopped there."""
        self._stopping.set()
        if self.scheduler is not None:
            done = threading.Event()

            def stop_learner():
                try:
                    if self.learner is not None:
                        self.learner.stop()
                        self.learner.store.close()
                finally:
                    done.set()

            self.scheduler.add_job(stop_learner, id="stop")
            if not done.wait(timeout=60):
                log.error("the scheduler did not stop the bake in 60 s")
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        record(self.cfg.home, "bake", None)

    def run(self, log_level: str = "warning") -> None:
        """Serve and learn until Ctrl-C / SIGTERM."""
        import uvicorn

        from serving.gateway import create_app

        from . import page

        with hold_home(self.cfg.home):
            killed = sweep(self.cfg.home)
            if killed:
                log.warning("stopped %d process(es) left by a runtime that did not shut down", len(killed))
            self.start_scheduler()
            # uvicorn catches SIGINT/SIGTERM, shuts the gateway (and vLLM) down, then raises the
            # signal again for the handler that was there before it: ours, so that the rest of
            # the tree is stopped too instead of the process dying on the spot.
            previous = {sig: signal.signal(sig, _stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                app = create_app(self.gateway, routers=(page.router(self.cfg.home),))
                server = uvicorn.Server(uvicorn.Config(app, host=self.cfg.host,
                                                       port=self.cfg.port, log_level=log_level))
                server.run()
            except _Stop:
                pass
            finally:
                self.stop()
                record(self.cfg.home, "engine", None)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            log.info("runtime stopped")


class _Stop(Exception):
    """Ctrl-C or SIGTERM, after uvicorn has shut the gateway down."""


def _stop_signal(signum, frame):
    raise _Stop()


def _now():
    from datetime import datetime

    return datetime.now()


def _token_counter(model_dir: Path):
    """Real token counts for the hot budget (the served model's tokenizer)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # a model dir without a tokenizer: the store's ~4 chars/token estimate
        return None
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
