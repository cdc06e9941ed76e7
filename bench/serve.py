"""Serving benchmark: vLLM multi-LoRA behind the bakehouse gateway (CPU, SmolLM2-135M).

One run, the same workload (N completions x T tokens, all in flight at once, ignore_eos; each
throughput figure is the best of --repeats runs, the loads taking turns: this shared machine's
noise only ever slows a run down):
  1. transformers + PEFT, the 8 tenants' requests one adapter at a time (batched): the baseline
  2. through the gateway: base model only / 1 adapter / 8 tenants' adapters mixed -> tokens/s
  3. gateway overhead: sequential requests via the gateway vs straight to vLLM, interleaved
  4. hot-swap latency: publish (validate + copy + pointer) -> first answer from the new version
  5. a flooding tenant: another tenant's p95 latency alone and while the first floods, with the
     gateway's per-tenant concurrency cap (ServeConfig.limits.max_inflight) at 64 / 8 / 2
The adapters are shaped as a bake makes them by default (BakeConfig: rank 16 on the attention
and MLP projections; `--adapter-rank`, `--attention-only` to vary), random non-zero weights.
Prints the figures and writes bench/out/serve.json.

    python bench/serve.py            # 32 requests x 32 tokens, 8 swaps
    python bench/serve.py --quick    # 16 x 32, 4 swaps
    python bench/serve.py --flood-only --skip-peft   # section 5 alone
"""
from __future__ import annotations

import argparse
import asyncio
import json
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

TARGETS = {
    "mixed8_vs_single_min": 0.8,
    "vllm_vs_peft_min": 5.0,
    "swap_p95_s_max": 1.0,
    "gateway_overhead_pct_max": 5.0,
    "flood_p95_ratio_max": 1.5,  # the quiet tenant's p95 while another floods, against alone
}
TOPICS = ["the sea", "a bakery", "trains", "the moon", "chess", "rain", "bees", "a library",
          "winter", "rivers", "music", "bridges", "tea", "mountains", "clocks", "gardens"]


def prompts(n: int) -> list[str]:
    return [f"Write a few sentences about {TOPICS[i % len(TOPICS)]} (note {i}):" for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


# -- baseline: transformers + PEFT, one adapter at a time ------------------------------------------


def peft_baseline(model_dir: Path, adapters: list[Path], n: int, tokens: int, repeats: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="t0")
    for i, a in enumerate(adapters[1:], 1):
        model.load_adapter(a, adapter_name=f"t{i}")
    ps = prompts(n)
    groups = {i: [p for j, p in enumerate(ps) if j % len(adapters) == i] for i in range(len(adapters))}
    # Warm-up, and pick the faster thread count: on this shared 2-core box two OpenMP threads
    # can run 50x slower than one when the other core is busy (the best case is the baseline).
    enc0 = tok(groups[0], return_tensors="pt", padding=True)
    timings = {}
    with torch.inference_mode():
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            t = time.perf_counter()
            model.generate(**enc0, max_new_tokens=4, min_new_tokens=4, pad_token_id=tok.pad_token_id)
            timings[threads] = time.perf_counter() - t
    threads = min(timings, key=timings.get)
    torch.set_num_threads(threads)
    print(f"      warm-up 4 tokens: {', '.join(f'{k} thread(s) {v:.2f} s' for k, v in timings.items())}", flush=True)
    passes = []
    for rep in range(repeats):  # the best pass counts (this shared machine's noise only slows)
        t0, made = time.perf_counter(), 0
        with torch.inference_mode():
            for i, group in groups.items():  # one adapter at a time, its requests batched
                model.set_adapter(f"t{i}")
                enc = tok(group, return_tensors="pt", padding=True)
                out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                made += (out.shape[1] - enc["input_ids"].shape[1]) * len(group)
        wall = time.perf_counter() - t0
        passes.append({"tokens": made, "seconds": round(wall, 2), "tokens_per_s": round(made / wall, 1)})
        print(f"      pass {rep + 1}: {passes[-1]}", flush=True)
    del model, base
    best = max(passes, key=lambda r: r["tokens_per_s"])
    return {**best, "torch_threads": threads, "passes_tokens_per_s": [r["tokens_per_s"] for r in passes]}


# -- load generation -----------------------------------------------------------------------------


async def burst(url: str, jobs: list[tuple[str, str]], tokens: int) -> dict:
    """All `jobs` (api_key, prompt) at once through `url`/v1/completions; tokens/s over the burst."""
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as c:
        async def one(key: str, prompt: str, model: str | None):
            t = time.perf_counter()
            r = await c.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": model, "prompt": prompt, "max_tokens": tokens,
                                   "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"], time.perf_counter() - t

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(k, p, m) for k, p, m in jobs))
        wall = time.perf_counter() - t0
    made = sum(n for n, _ in res)
    lat = [s for _, s in res]
    return {"tokens": made, "seconds": round(wall, 2), "tokens_per_s": round(made / wall, 1),
            "latency_p50_s": round(pct(lat, 0.5), 3)}


async def sequential_overhead(gw_url: str, key: str, engine_url: str, model: str, reps: int, tokens: int,
                              engine_headers: dict) -> dict:
    """The same request alternately via the gateway and straight to vLLM, one at a time."""
    import httpx

    async with httpx.AsyncClient(timeout=600) as c:
        async def timed(url: str, headers: dict, m: str | None) -> float:
            t = time.perf_counter()
            r = await c.post(f"{url}/v1/completions", headers=headers,
                             json={"model": m, "prompt": "Write about tea:", "max_tokens": tokens,
                                   "temperature": 0, "ignore_eos": True})
            r.raise_for_status()
            return time.perf_counter() - t

        gw, direct = [], []
        for _ in range(2):  # warm-up
            await timed(gw_url, {"Authorization": f"Bearer {key}"}, None)
            await timed(engine_url, engine_headers, model)
        for _ in range(reps):
            gw.append(await timed(gw_url, {"Authorization": f"Bearer {key}"}, None))
            direct.append(await timed(engine_url, engine_headers, model))
    g, d = statistics.median(gw), statistics.median(direct)
    return {"max_tokens": tokens, "gateway_p50_s": round(g, 4), "direct_p50_s": round(d, 4),
            "overhead_ms": round((g - d) * 1000, 2), "overhead_pct": round(100 * (g - d) / d, 2)}


def swap_latencies(gw_url: str, key: str, registry, tenant: str, sources: list[Path], base: Path,
                   max_rank: int, swaps: int) -> dict:
    """publish() -> first response answered by the new version, with 1-token requests looping."""
    import httpx

    out, publish_s = [], []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        for i in range(swaps):
            t0 = time.perf_counter()
            v = registry.publish(tenant, sources[i % len(sources)], base, max_rank)
            publish_s.append(time.perf_counter() - t0)
            while True:
                r = c.post(f"{gw_url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
                r.raise_for_status()
                if r.json()["model"] == v.name:
                    out.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"{v.name} never served")
            time.sleep(0.3)
    return {"swaps": swaps, "p50_s": round(pct(out, 0.5), 3), "p95_s": round(pct(out, 0.95), 3),
            "max_s": round(max(out), 3), "publish_call_p50_s": round(pct(publish_s, 0.5), 3)}


async def flood(url: str, quiet_key: str, loud_key: str, rounds: int, reps: int, tokens: int,
                workers: int) -> dict:
    """One tenant floods (`workers` clients, more than its running + waiting share, each sending
    the next request as soon as its last one ends, retrying a 429 after 0.1 s, not after its
    Retry-After), the quiet tenant sends one
    request at a time. The quiet tenant's latencies alone and during the flood, in alternating
    blocks of `reps` requests."""
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as c:
        body = {"prompt": "Write about tea:", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}

        async def quiet() -> float:
            t = time.perf_counter()
            r = await c.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {quiet_key}"}, json=body)
            r.raise_for_status()
            return time.perf_counter() - t

        counts = {"ok": 0, "429": 0, "other": 0}
        stop = asyncio.Event()

        async def loud():
            while not stop.is_set():
                try:
                    r = await c.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {loud_key}"},
                                     json=body)
                except httpx.HTTPError:
                    counts["other"] += 1
                    continue
                key = "ok" if r.status_code == 200 else "429" if r.status_code == 429 else "other"
                counts[key] += 1
                if r.status_code == 429:
                    await asyncio.sleep(0.1)

        for _ in range(2):
            await quiet()  # warm-up
        alone, flooded, loud_s = [], [], 0.0
        for _ in range(rounds):
            alone += [await quiet() for _ in range(reps)]
            stop.clear()
            tasks = [asyncio.create_task(loud()) for _ in range(workers)]
            await asyncio.sleep(2.0)  # the flood reaches its steady state
            t0 = time.perf_counter()
            flooded += [await quiet() for _ in range(reps)]
            loud_s += time.perf_counter() - t0 + 2.0
            stop.set()
            await asyncio.gather(*tasks)
    a, f = pct(alone, 0.95), pct(flooded, 0.95)
    return {"quiet_alone_p95_s": round(a, 3), "quiet_flooded_p95_s": round(f, 3), "ratio": round(f / a, 2),
            "quiet_alone_p50_s": round(pct(alone, 0.5), 3), "quiet_flooded_p50_s": round(pct(flooded, 0.5), 3),
            "loud_ok_per_s": round(counts["ok"] / loud_s, 2), "loud_429": counts["429"], "loud_other": counts["other"]}


def flood_arms(url: str, gateway, quiet_key: str, loud_key: str, quick: bool, tokens: int) -> dict:
    """The flood with the gateway's per-tenant concurrency cap at each setting, in one run."""
    from dataclasses import replace

    out = {}
    for cap in (64, 8, 2):  # 64: no cap in effect (max_num_seqs); 8: the default
        gateway.cfg.limits = replace(gateway.cfg.limits, max_inflight=cap)
        gateway.meter.limits = gateway.cfg.limits
        out[f"max_inflight_{cap}"] = r = asyncio.run(
            flood(url, quiet_key, loud_key, rounds=2 if quick else 3, reps=5 if quick else 8, tokens=tokens,
                  workers=48))
        print(f"      max_inflight {cap:>2}: {r}", flush=True)
    gateway.cfg.limits = gateway.meter.limits = replace(gateway.cfg.limits, max_inflight=8)
    return out


# -- main ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 requests, 4 swaps")
    ap.add_argument("--model", default=None, help="base model dir (default: the embedded SmolLM2)")
    ap.add_argument("--home", default=str(ROOT / "bench" / "out" / "home"), help="where the model is cached")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each throughput load, best counts (default 3, --quick 2)")
    ap.add_argument("--stock-lora-ops", action="store_true",
                    help="vLLM's own CPU LoRA ops instead of serving.cpu_lora's grouped ones")
    ap.add_argument("--adapter-rank", type=int, default=None, help="rank of the adapters (default: BakeConfig's)")
    ap.add_argument("--attention-only", action="store_true", help="adapters on q/k/v/o only")
    ap.add_argument("--max-lora-rank", type=int, default=None, help="engine max rank (default: ServeConfig's)")
    ap.add_argument("--flood-only", action="store_true", help="only the flooding tenant's section (5)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve.json"))
    args = ap.parse_args()
    n = args.requests or (16 if args.quick else 32)
    swaps = 4 if args.quick else 8
    repeats = args.repeats or (2 if args.quick else 3)
    T = args.tokens

    import uvicorn
    from baker.models import resolve_model
    from serving_helpers import make_adapter

    from serving.config import ServeConfig
    from serving.engine import free_port
    from serving.gateway import Gateway, create_app
    from serving.registry import Registry
    from serving.tenants import TenantStore

    model_dir = resolve_model(args.model, Path(args.home))
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    home = work / "home"
    print(f"model {model_dir}\nworkload: {n} requests x {T} tokens, all in flight; work dir {work}")
    from baker.config import ATTENTION, BakeConfig

    bake_defaults = BakeConfig()
    shape = {"r": args.adapter_rank or bake_defaults.rank,
             "targets": ATTENTION if args.attention_only else bake_defaults.target_modules}
    srcs = [make_adapter(model_dir, work / f"src{i}", seed=100 + i, **shape) for i in range(10)]
    import os

    res: dict = {"workload": {"requests": n, "tokens": T, "repeats": repeats, "adapter_rank": shape["r"],
                              "adapter_targets": list(shape["targets"])}, "targets": TARGETS,
                 "loadavg_start": os.getloadavg(), "cpus": os.cpu_count()}

    if not args.skip_peft and not args.flood_only:
        print("[1/4] transformers+PEFT baseline (8 adapters, one at a time, batched) ...", flush=True)
        res["peft_8_tenants"] = peft_baseline(model_dir, srcs[:8], n, T, repeats)
        print(f"      {res['peft_8_tenants']}")

    store, reg = TenantStore(home), Registry(home)
    keys = {f"t{i}": store.add(f"t{i}")[1] for i in range(8)}
    keys["plain"] = store.add("plain")[1]
    extra = {"max_lora_rank": args.max_lora_rank} if args.max_lora_rank else {}
    if args.stock_lora_ops:
        extra["grouped_lora_ops"] = False
    cfg = ServeConfig(model_dir=model_dir, port=free_port(), startup_timeout=600, **extra)
    res["config"] = {k: v for k, v in cfg.to_dict().items() if k not in ("extra_engine_args",)}
    for i in range(8):
        reg.publish(f"t{i}", srcs[i], model_dir, cfg.max_lora_rank)
    gateway = Gateway(cfg, home)
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    url = f"http://127.0.0.1:{cfg.port}"
    try:
        while not gateway.ready:
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("gateway not ready")
            time.sleep(0.2)
        res["engine_startup_s"] = round(time.perf_counter() - t0, 1)
        print(f"gateway + vLLM ready in {res['engine_startup_s']} s", flush=True)
        if args.flood_only:
            res["flood"] = run_flood(url, gateway, keys, args.quick, T)
            return finish_flood(res, args)
        print("[2/4] throughput ...", flush=True)
        ps = prompts(n)
        loads = {
            "base": [(keys["plain"], p, None) for p in ps],
            "adapter_1": [(keys["t0"], p, None) for p in ps],
            "adapters_8_mixed": [(keys[f"t{i % 8}"], p, None) for i, p in enumerate(ps)],
        }
        asyncio.run(burst(url, [(keys[f"t{i}"], "Hello", None) for i in range(8)] + [(keys["plain"], "Hi", None)], 4))
        for name, jobs in loads.items():
            asyncio.run(burst(url, jobs[: max(4, n // 4)], 8))  # warm-up: same batch shapes, loads LoRA slots
        runs: dict[str, list[dict]] = {name: [] for name in loads}
        for _ in range(repeats):  # the loads take turns, so slow spells of the machine hit all of them
            for name, jobs in loads.items():
                runs[name].append(asyncio.run(burst(url, jobs, T)))
        for name, rs in runs.items():
            res[name] = {**max(rs, key=lambda r: r["tokens_per_s"]), "runs_tokens_per_s": [r["tokens_per_s"] for r in rs]}
            print(f"      {name:<17} {res[name]}", flush=True)

        print("[3/4] gateway overhead (sequential, interleaved with direct vLLM calls) ...", flush=True)
        reps = 8 if args.quick else 16
        eng = gateway.engine.url
        res["overhead"] = {
            "full_request": asyncio.run(sequential_overhead(url, keys["t0"], eng, "t0@v1", reps, T,
                                                            gateway.engine.auth_headers())),
            "one_token": asyncio.run(sequential_overhead(url, keys["t0"], eng, "t0@v1", reps * 2, 1,
                                                         gateway.engine.auth_headers())),
        }
        print(f"      {res['overhead']}", flush=True)

        print(f"[4/4] hot swap x{swaps} (publish -> first answer from the new version) ...", flush=True)
        res["swap"] = swap_latencies(url, keys["t1"], reg, "t1", srcs[8:10], model_dir, cfg.max_lora_rank, swaps)
        print(f"      {res['swap']}", flush=True)
        res["flood"] = run_flood(url, gateway, keys, args.quick, T)
    finally:
        server.should_exit = True
        thread.join(60)
        gateway.engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    one, mixed, base = res["adapter_1"]["tokens_per_s"], res["adapters_8_mixed"]["tokens_per_s"], res["base"]["tokens_per_s"]
    summary = {
        "base_tokens_per_s": base,
        "adapter_1_tokens_per_s": one,
        "adapters_8_mixed_tokens_per_s": mixed,
        "adapter_1_vs_base": round(one / base, 2),
        "mixed8_vs_single": round(mixed / one, 2),
        "swap_p50_s": res["swap"]["p50_s"],
        "swap_p95_s": res["swap"]["p95_s"],
        "gateway_overhead_pct": res["overhead"]["full_request"]["overhead_pct"],
        "gateway_overhead_ms_one_token": res["overhead"]["one_token"]["overhead_ms"],
        "flood_quiet_p95_ratio": res["flood"]["max_inflight_8"]["ratio"],
    }
    if "peft_8_tenants" in res:
        summary["peft_tokens_per_s"] = res["peft_8_tenants"]["tokens_per_s"]
        summary["vllm_vs_peft"] = round(mixed / res["peft_8_tenants"]["tokens_per_s"], 2)
    checks = {
        "mixed8_vs_single >= 0.8": summary["mixed8_vs_single"] >= TARGETS["mixed8_vs_single_min"],
        "swap p95 <= 1 s": summary["swap_p95_s"] <= TARGETS["swap_p95_s_max"],
        "gateway overhead <= 5%": summary["gateway_overhead_pct"] <= TARGETS["gateway_overhead_pct_max"],
        "quiet tenant's p95 under a flood <= 1.5x": summary["flood_quiet_p95_ratio"] <= TARGETS["flood_p95_ratio_max"],
    }
    if "vllm_vs_peft" in summary:
        checks["vllm >= 5x peft"] = summary["vllm_vs_peft"] >= TARGETS["vllm_vs_peft_min"]
    write_results(res, Path(args.out), summary, checks)


def run_flood(url: str, gateway, keys: dict, quick: bool, tokens: int) -> dict:
    print("[5/5] one tenant floods, another asks (p95 alone vs during the flood, per concurrency cap) ...",
          flush=True)
    return flood_arms(url, gateway, keys["t2"], keys["t3"], quick, tokens)


def finish_flood(res: dict, args) -> None:
    summary = {"flood_quiet_p95_ratio": res["flood"]["max_inflight_8"]["ratio"]}
    checks = {"quiet tenant's p95 under a flood <= 1.5x": summary["flood_quiet_p95_ratio"] <= TARGETS["flood_p95_ratio_max"]}
    write_results(res, Path(args.out), summary, checks)


def write_results(res: dict, out: Path, summary: dict, checks: dict) -> None:
    """Print the summary and the target checks; write everything as JSON to `out`."""
    import os

    res["summary"], res["checks"] = summary, checks
    res["loadavg_end"] = os.getloadavg()  # other jobs on the shared 2 cores skew every figure
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k:<32} {v}")
    for k, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {k}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
