"""The continual-learning runtime, measured: `bakehouse run` on the real SmolLM2 with 4 tenants,
each fed a local RSS file of 5 headlines from shared/data/headlines.jsonl.

Figures (printed, and written to bench/out/runtime.json):
- chat latency p50/p95 with no bake, during background bakes (paused while serving), and during
  a bake that is not paused (`--no-pause`, a second run): target p95 during a bake <= 1.5x idle;
- feed poll -> answerable from the hot tier (target <= 2 s), -> graduated and served from the
  weights, and the bake's share of that;
- prompt tokens per request before / after graduation (target <= 0.2x);
- graduation rate, headline accuracy hot-only vs after graduation (target: not lower);
- failed requests over the whole run (target 0);
- per bake: the overhead (everything but the optimiser steps) as a share of its wall time, the
  memories verified into the weights per hour of baking, and the whole runtime's peak RSS (every
  process: gateway, vLLM, bake worker) during the bakes. `--bake-worker` / `--bake-sampler` pick
  the arm (bench/bake_worker.py runs both and compares).

    python bench/runtime.py [--tenants 4] [--per-tenant 5] [--epochs N] [--bake-worker warm|fresh]
                            [--bake-sampler auto|vllm] [--out bench/out/runtime.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.home import resolve_home  # noqa: E402
from agent.runtime.session import RunSession  # noqa: E402
from baker.models import resolve_model  # noqa: E402
from memory import MemoryStore, feeds  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "headlines.jsonl"
GENERIC = "Give me one tip for staying focused while working."


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


class Load:
    """Chat requests, timed; failures counted."""

    def __init__(self, s: RunSession):
        self.s, self.failed, self.lock = s, 0, threading.Lock()

    def one(self, tenant: str, question: str = GENERIC, max_tokens: int = 16) -> tuple[float, dict | None]:
        t = time.perf_counter()
        try:
            r = self.s.chat(tenant, question, max_tokens=max_tokens)
        except Exception as e:  # noqa: BLE001  counted, the run goes on
            with self.lock:
                self.failed += 1
            print(f"  request failed: {e}")
            return time.perf_counter() - t, None
        return time.perf_counter() - t, r

    def burst(self, tenants: list[str], n: int) -> list[float]:
        return [self.one(tenants[i % len(tenants)])[0] for i in range(n)]


def write_rss(path: Path, items: list[dict]) -> Path:
    entries = "".join(f"<item><title>{h['headline']}</title><guid>{h['id']}</guid>"
                      f"<pubDate>{h['date']}T08:00:00Z</pubDate></item>" for h in items)
    path.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{entries}</channel></rss>')
    return path


def accuracy(load: Load, tenants: dict[str, list[dict]]) -> tuple[int, int, float]:
    right, n, tokens = 0, 0, []
    for tenant, items in tenants.items():
        for h in items:
            for q in h["questions"]:
                _, r = load.one(tenant, q["q"], max_tokens=30)
                n += 1
                if r is not None:
                    right += any(a.lower() in r["text"].lower() for a in q["answer"])
                    tokens.append(r["prompt_tokens"])
    return right, n, statistics.mean(tokens) if tokens else 0.0


class PeakRSS:
    """The largest sum of RSS over a process and all its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self.thread.join(5)
        return self.peak / (1 << 30)


def bake_costs(jobs) -> dict:
    """Per finished bake job, on the worker's own clock (a pause stops the worker, not its clock, so
    pauses fall into whichever phase they hit, in both terms): the bake and its verification
    (`work_s`), its optimiser steps (the training phase, the first step at the others' pace: the
    compile counts as overhead) and the rest's share of the work."""
    rows = []
    for j in jobs:
        t = (j.result or {}).get("timings") or {}
        bake = (j.result or {}).get("bake") or {}
        bt = bake.get("timings") or {}
        if "train" not in bt or "total" not in bt:
            continue
        steps = bake.get("steps")
        train, first = bt["train"], bt.get("first_step") or 0.0
        per_step = (train - first) / (steps - 1) if steps and steps > 1 else train
        optimiser = train - first + per_step
        work = bt["total"] + (t.get("verify") or 0.0)
        rows.append({"job": j.id, "work_s": round(work, 1), "optimiser_s": round(optimiser, 1),
                     "overhead_share": round(1 - optimiser / work, 3), "wall_s": t.get("wall"), "paused_s": t.get("paused"),
                     "graduated": len((j.result or {}).get("graduated") or []), "state": j.state,
                     "phases": {k: round(v, 1) for k, v in bt.items() if isinstance(v, (int, float))},
                     "verify_s": t.get("verify"), "worker": (j.result or {}).get("worker"),
                     "sampler": (j.result or {}).get("sampler")})
    work = sum(r["work_s"] for r in rows)
    return {"jobs": rows, "overhead_share": round(1 - sum(r["optimiser_s"] for r in rows) / work, 3) if rows else None}


def bake_phase(s: RunSession, load: Load, tenants: list[str], timeout: float, burst_every: float, burst_n: int):
    """Until every tenant has finished its bakes: a burst of requests every `burst_every` s while a
    bake is running (each burst pauses it, when pausing is on). Latencies of requests that
    overlapped a running bake."""
    during, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = s.status()
        rt = st.get("runtime") or {}
        running = rt.get("bake") is not None
        pending = [t for t in tenants if st["tenants"].get(t, {}).get("jobs")
                   or st["tenants"].get(t, {}).get("last_bake") is None]
        if not pending and not running:
            break
        if running:
            during += load.burst(tenants, burst_n)
        time.sleep(burst_every)
    return during


OUT = ROOT / "bench" / "out" / "runtime.json"


def save(out: dict) -> None:
    """After every phase: a crash late in a long run keeps the figures measured so far."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2, default=str))


def hot_prompt_tokens(s: RunSession, tenants: list[str]) -> dict[str, int]:
    """Tokens of each tenant's hot prompt for its served version (the runtime's own count)."""
    st = s.status()["tenants"]
    return {t: (st.get(t) or {}).get("hot_tokens") or 0 for t in tenants}


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None, help="Data home with the model cache (default: the user's).")
    ap.add_argument("--model", default=None)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--per-tenant", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="Epochs per bake (default: BakeConfig's).")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--graduation", default=None, help="The runtime's --graduation rule (default: its own).")
    ap.add_argument("--requests", type=int, default=20, help="Requests per latency sample.")
    ap.add_argument("--timeout", type=float, default=7200.0)
    ap.add_argument("--skip-no-pause", action="store_true", help="Skip the unpaused-bake comparison run.")
    ap.add_argument("--burst-every", type=float, default=15.0,
                    help="Seconds between bursts of requests while a bake runs (each burst pauses it).")
    ap.add_argument("--bake-worker", choices=["warm", "fresh"], default="warm")
    ap.add_argument("--bake-sampler", choices=["auto", "vllm"], default="auto")
    ap.add_argument("--out", type=Path, default=None, help="Where the JSON goes (default: bench/out/runtime.json).")
    args = ap.parse_args()
    OUT = args.out or OUT

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    work = home / "bench-runtime"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    heads = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
    names = [f"t{i}" for i in range(args.tenants)]
    share = {n: heads[i * args.per_tenant:(i + 1) * args.per_tenant] for i, n in enumerate(names)}
    extra = ["--idle-seconds", str(args.idle_seconds), "--max-tries", "1", "--feed-minutes", "1440",
             "--bake-worker", args.bake_worker, "--bake-sampler", args.bake_sampler]
    if args.epochs:
        extra += ["--epochs", str(args.epochs)]
    if args.graduation:
        extra += ["--graduation", args.graduation]
    out: dict = {"tenants": args.tenants, "per_tenant": args.per_tenant, "epochs": args.epochs,
                 "graduation": args.graduation, "bake_worker": args.bake_worker, "bake_sampler": args.bake_sampler}

    s = RunSession(work, model, args=tuple(extra))
    for n in names:
        s.add_tenant(n)
    s.start()
    load = Load(s)
    try:
        load.burst(names, 4)  # warm-up
        idle = load.burst(names, args.requests)
        out["latency_idle"] = {"p50": pct(idle, 0.5), "p95": pct(idle, 0.95)}

        # feed poll -> answerable from the hot tier
        to_hot = []
        polled_at = {}
        with MemoryStore.in_home(work, actor="bench") as store:
            for n in names:
                feeds.add_feed(store, str(write_rss(work / f"{n}.xml", share[n])), tenant=n)
            for n in names:
                (r,) = feeds.poll(store, tenant=n)
                polled_at[n] = time.monotonic()
                question = share[n][0]["questions"][0]["q"]
                while True:  # one-token probes: the figure is the hot tier's delay, not a chat's
                    _, resp = load.one(n, question, max_tokens=1)
                    if resp and resp["hot_memories"]:  # the answer names the memories it was given
                        to_hot.append(time.monotonic() - polled_at[n])
                        break
                    if time.monotonic() - polled_at[n] > 30:
                        to_hot.append(None)
                        break
        out["feed_to_hot_s"] = to_hot
        right, nq, hot_tokens = accuracy(load, share)
        out["hot"] = {"correct": right, "questions": nq, "prompt_tokens": hot_tokens,
                      "hot_prompt_tokens": hot_prompt_tokens(s, names)}
        save(out)
        print(f"hot tier: {right}/{nq} correct, {hot_tokens:.0f} prompt tokens per question, "
              f"feed -> hot {max((t for t in to_hot if t is not None), default=float('nan')):.2f} s at most")

        t_bakes = time.monotonic()
        rss = PeakRSS(s.proc.pid)
        during = bake_phase(s, load, names, args.timeout, burst_every=args.burst_every, burst_n=8)
        out["peak_rss_gib"] = round(rss.stop(), 2)
        out["latency_during_bake"] = {"p50": pct(during, 0.5), "p95": pct(during, 0.95), "n": len(during)}
        out["bake_phase_s"] = time.monotonic() - t_bakes
        save(out)
        st = s.status()
        served, share_s = {}, []
        with MemoryStore.in_home(work) as store:
            for n in names:
                jobs = [j for j in store.jobs.list(n) if j.state == "done"]
                served[n] = {"version": st["tenants"][n]["version"],
                             "graduated": st["tenants"][n]["baked_memories"],
                             "hot": st["tenants"][n]["hot_memories"]}
                for j in jobs:
                    wall = (j.result.get("timings") or {}).get("wall")
                    fin = _ts(j.finished_at) - (time.time() - time.monotonic())  # to the monotonic clock
                    if wall:
                        share_s.append({"tenant": n, "feed_to_served_s": fin - polled_at[n], "bake_wall_s": wall,
                                        "bake_paused_s": (j.result.get("timings") or {}).get("paused")})
            out["bakes"] = bake_costs([j for n in names for j in store.jobs.list(n)])
        out["served"] = served
        out["feed_to_weights"] = share_s
        graduated = sum(v["graduated"] for v in served.values())
        out["verified_per_hour"] = round(graduated / (out["bake_phase_s"] / 3600), 2)
        out["graduation_rate"] = graduated / (args.tenants * args.per_tenant)
        idle2 = load.burst(names, args.requests)  # no bake any more: idle again
        out["latency_idle_after"] = {"p50": pct(idle2, 0.5), "p95": pct(idle2, 0.95)}
        right2, nq2, after_tokens = accuracy(load, share)
        out["after"] = {"correct": right2, "questions": nq2, "prompt_tokens": after_tokens,
                        "hot_prompt_tokens": hot_prompt_tokens(s, names)}
        out["prompt_tokens_ratio"] = after_tokens / hot_tokens if hot_tokens else None
        before_hot = sum(out["hot"]["hot_prompt_tokens"].values())
        out["hot_prompt_tokens_ratio"] = sum(out["after"]["hot_prompt_tokens"].values()) / before_hot if before_hot else None
        save(out)
    finally:
        s.stop()

    if not args.skip_no_pause:  # the same kind of bake, not paused: what pausing buys
        s2 = RunSession(work, model, args=tuple(extra + ["--no-pause"]), log_name="run-nopause.out")
        s2.keys = s.keys
        s2.start()
        load2 = Load(s2)
        try:
            extra_heads = heads[args.tenants * args.per_tenant:][:args.per_tenant] or heads[:args.per_tenant]
            with MemoryStore.in_home(work, actor="bench") as store:
                for h in extra_heads:
                    store.add(names[0], "fact", "Update: " + h["headline"])
            t_wait = time.monotonic()  # the planner starts the bake after --idle-seconds
            while (s2.status().get("runtime") or {}).get("bake") is None and time.monotonic() - t_wait < 120:
                time.sleep(1)
            during2 = bake_phase(s2, load2, [names[0]], args.timeout, burst_every=15.0, burst_n=8)
            out["latency_during_unpaused_bake"] = {"p50": pct(during2, 0.5), "p95": pct(during2, 0.95), "n": len(during2)}
        finally:
            s2.stop()
        load.failed += load2.failed
    out["failed_requests"] = load.failed
    # against the quieter of the two idle samples (the stricter ratio)
    idle_p95 = min(out["latency_idle"]["p95"], out.get("latency_idle_after", {}).get("p95") or 1e9)
    out["p95_ratio_paused"] = (out["latency_during_bake"]["p95"] or 0) / idle_p95
    if "latency_during_unpaused_bake" in out:
        out["p95_ratio_unpaused"] = (out["latency_during_unpaused_bake"]["p95"] or 0) / idle_p95
    save(out)
    print(json.dumps(out, indent=2, default=str))


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
