"""Soak: the gateway and vLLM (CPU, SmolLM2-135M) under steady traffic while adapters churn.

4 tenants, each with its own client asking one chat question after another; every few seconds a
random tenant gets a new version published or is rolled back to an earlier one. Loopback only,
bounded by --minutes. Measured:
  - failed requests: anything but a 200 (there is no engine restart in the soak, so no window
    in which a 503 would be expected);
  - RSS of the gateway process and of the engine's processes, sampled every 10 s; "flat" means
    the median of the last quarter of the run within 10% of the median of the first quarter
    after warm-up;
  - leaked vLLM adapters: after the run goes quiet, adapters the engine still holds that no
    tenant is routed to (every retired version must have been unloaded).
Prints the figures and writes bench/out/soak.json.

    python bench/soak.py                 # 20 minutes
    python bench/soak.py --minutes 2     # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # serving_helpers.make_adapter
sys.path.insert(0, str(ROOT / "bench"))

from serve import write_results  # noqa: E402

TENANTS = ("t0", "t1", "t2", "t3")
QUESTIONS = ["What is the capital of France?", "Name a fruit.", "What is 2 + 2?", "Say hello.",
             "What colour is the sky?", "Name a bird."]
RSS_FLAT_MAX = 1.10


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (the engine's API server and its engine core)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid:
                    out.append(int(p.name))
            except OSError:
                continue
    return out


async def client_loop(url: str, key: str, stop: asyncio.Event, stats: dict, rng: random.Random) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=120) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                                       "max_tokens": 12, "temperature": 0})
                code = r.status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            stats["latency"].append(time.perf_counter() - t)
            if code == 200:
                stats["ok"] += 1
            else:
                stats["failed"] += 1
                stats["failures"].append([round(time.time(), 1), code])


def churn(registry, sources: dict, base: Path, rank: int, stop: threading.Event, every: float, rng: random.Random,
          log: dict) -> None:
    """Every `every` s (jittered) a random tenant: a new version published, or a rollback."""
    while not stop.wait(every * rng.uniform(0.5, 1.5)):
        tenant = rng.choice(TENANTS)
        state = registry.load()[tenant]
        earlier = [v for v in state.versions if v != state.current and state.versions[v].status != "failed"]
        try:
            if earlier and rng.random() < 0.4:
                registry.rollback(tenant, rng.choice(earlier))
                log["rollbacks"] += 1
            else:
                registry.publish(tenant, rng.choice(sources[tenant]), base, rank)
                log["publishes"] += 1
        except Exception as e:  # noqa: BLE001 - counted and shown: a soak reports, it does not stop
            log["errors"].append(f"{type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--churn-every", type=float, default=4.0, help="seconds between publishes/rollbacks (mean)")
    ap.add_argument("--model", default=None, help="base model dir (default: the embedded SmolLM2)")
    ap.add_argument("--home", default=str(ROOT / "bench" / "out" / "home"), help="where the model is cached")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    args = ap.parse_args()

    import httpx
    import uvicorn
    from baker.models import resolve_model
    from serving_helpers import make_adapter

    from serving.config import ServeConfig
    from serving.engine import free_port
    from serving.gateway import Gateway, create_app
    from serving.registry import Registry
    from serving.tenants import TenantStore

    model_dir = resolve_model(args.model, Path(args.home))
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    home = work / "home"
    rank = 8
    sources = {t: [make_adapter(model_dir, work / f"{t}-{i}", seed=10 * j + i, r=rank, scale=2.0)
                   for i in range(3)] for j, t in enumerate(TENANTS)}
    store, reg = TenantStore(home), Registry(home)
    keys = {t: store.add(t)[1] for t in TENANTS}
    cfg = ServeConfig(model_dir=model_dir, port=free_port(), max_lora_rank=16, kv_cache_bytes=512 << 20,
                      max_model_len=1024, startup_timeout=600)
    for t in TENANTS:
        reg.publish(t, sources[t][0], model_dir, cfg.max_lora_rank)
    gateway = Gateway(cfg, home)
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{cfg.port}"
    res: dict = {"minutes": args.minutes, "churn_every_s": args.churn_every, "tenants": len(TENANTS),
                 "adapter_rank": rank, "loadavg_start": os.getloadavg()}
    samples: list[dict] = []
    try:
        t0 = time.monotonic()
        while not gateway.ready:
            if time.monotonic() - t0 > 600:
                raise TimeoutError("gateway not ready")
            time.sleep(0.2)
        epoch = gateway.engine.epoch
        print(f"model {model_dir}; ready in {time.monotonic() - t0:.0f} s; soaking {args.minutes} min", flush=True)
        stats = {t: {"ok": 0, "failed": 0, "failures": [], "latency": []} for t in TENANTS}
        log = {"publishes": 0, "rollbacks": 0, "errors": []}
        stop_churn = threading.Event()
        churner = threading.Thread(target=churn, args=(reg, sources, model_dir, cfg.max_lora_rank, stop_churn,
                                                       args.churn_every, random.Random(args.seed + 1), log))

        async def soak() -> None:
            stop = asyncio.Event()
            clients = [asyncio.create_task(client_loop(url, keys[t], stop, stats[t], random.Random(i)))
                       for i, t in enumerate(TENANTS)]
            end = time.monotonic() + args.minutes * 60
            start = time.monotonic()
            while time.monotonic() < end:
                engine = group_pids(gateway.engine.pid) if gateway.engine.pid else []
                samples.append({"t": round(time.monotonic() - start), "gateway_mb": rss_mb([os.getpid()]),
                                "engine_mb": rss_mb(engine),
                                "requests": sum(s["ok"] + s["failed"] for s in stats.values()),
                                "publishes": log["publishes"], "rollbacks": log["rollbacks"]})
                print(f"  {samples[-1]}", flush=True)
                await asyncio.sleep(min(10.0, max(0.0, end - time.monotonic())))
            stop.set()
            await asyncio.gather(*clients)

        churner.start()
        asyncio.run(soak())
        stop_churn.set()
        churner.join(60)
        time.sleep(5.0)  # quiet: every retired version gets unloaded
        with httpx.Client(timeout=30) as c:
            held = [m["id"] for m in c.get(f"{gateway.engine.url}/v1/models", headers=gateway.engine.auth_headers())
                    .json()["data"] if m["id"] != cfg.served_base_name]
        routed = set(gateway.routes.values())
        res["leaked_adapters"] = sorted(set(held) - routed)
        res["held_adapters"] = len(held)
        res["engine_restarts"] = gateway.engine.epoch - epoch
    finally:
        server.should_exit = True
        thread.join(60)
        gateway.engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    lat = [x for s in stats.values() for x in s["latency"]]
    quarter = max(1, len(samples) // 4)
    warm = samples[1:1 + quarter] or samples[:1]  # after the first sample (engine warm-up)
    last = samples[-quarter:]
    first_mb = {k: statistics.median(s[k] for s in warm) for k in ("gateway_mb", "engine_mb")}
    last_mb = {k: statistics.median(s[k] for s in last) for k in ("gateway_mb", "engine_mb")}
    summary = {
        "requests": sum(s["ok"] + s["failed"] for s in stats.values()),
        "failed": sum(s["failed"] for s in stats.values()),
        "publishes": log["publishes"], "rollbacks": log["rollbacks"], "churn_errors": len(log["errors"]),
        "latency_p50_s": round(statistics.median(lat), 3), "latency_p95_s": round(sorted(lat)[int(0.95 * (len(lat) - 1))], 3),
        "gateway_rss_mb": [first_mb["gateway_mb"], last_mb["gateway_mb"]],
        "engine_rss_mb": [first_mb["engine_mb"], last_mb["engine_mb"]],
        "rss_ratio_last_vs_first": round(max(last_mb[k] / first_mb[k] for k in first_mb if first_mb[k]), 3),
        "leaked_adapters": len(res["leaked_adapters"]),
        "engine_restarts": res["engine_restarts"],
    }
    checks = {"0 failed requests": summary["failed"] == 0,
              f"RSS flat (last/first <= {RSS_FLAT_MAX})": summary["rss_ratio_last_vs_first"] <= RSS_FLAT_MAX,
              "no leaked vLLM adapters": summary["leaked_adapters"] == 0,
              "no churn errors": summary["churn_errors"] == 0}
    res.update({"samples": samples, "churn_errors": log["errors"][:20],
                "failures": {t: s["failures"][:20] for t, s in stats.items()}})
    write_results(res, Path(args.out), summary, checks)

if __name__ == "__main__":
    main()
