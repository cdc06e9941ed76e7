"""The warm bake worker against a process per bake, in one run on one machine: bench/runtime.py
twice, one arm after the other (never at once: two timed arms on two cores mean nothing).

    fresh   a process per bake that loads the model and samples and verifies on vLLM engines of
            its own (--bake-worker fresh --bake-sampler vllm)
    warm    one worker keeps the model loaded; sampling and verification go through the serving
            engine at a lower priority than users' requests (the defaults)

Figures (printed, and written to bench/out/bake_worker.json): per arm the bakes' overhead share
(everything but optimiser steps, of the bakes' wall time; target <= 0.25), memories verified into
the weights per hour of the bake phase (target: warm >= 3x fresh), peak RSS of the whole runtime
during the bakes, p95 latency during bakes, failed requests.

    python bench/bake_worker.py [--tenants 2] [--per-tenant 3] [--arms fresh warm]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
ARMS = {"fresh": ["--bake-worker", "fresh", "--bake-sampler", "vllm"],
        "warm": ["--bake-worker", "warm", "--bake-sampler", "auto"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tenants", type=int, default=2)
    ap.add_argument("--per-tenant", type=int, default=3)
    ap.add_argument("--burst-every", type=float, default=60.0, help="(bench/runtime.py's) fewer pauses: shorter arms")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--home", default=None)
    args, rest = ap.parse_known_args()
    results = {}
    for arm in args.arms:
        out = OUT / f"runtime-{arm}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "runtime.py"), "--tenants", str(args.tenants),
               "--per-tenant", str(args.per_tenant), "--burst-every", str(args.burst_every), "--skip-no-pause", "--out", str(out), *ARMS[arm], *rest]
        if args.home:
            cmd += ["--home", args.home]
        print(f"== {arm}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        r = json.loads(out.read_text())
        results[arm] = {"overhead_share": r["bakes"]["overhead_share"], "verified_per_hour": r["verified_per_hour"],
                        "graduated": sum(v["graduated"] for v in r["served"].values()),
                        "bake_phase_s": round(r["bake_phase_s"], 1), "peak_rss_gib": r["peak_rss_gib"],
                        "p95_during_bake_s": r["latency_during_bake"]["p95"], "failed_requests": r["failed_requests"],
                        "bakes": [{k: b.get(k) for k in ("job", "work_s", "wall_s", "optimiser_s", "overhead_share",
                                                         "graduated", "verify_s", "phases")} for b in r["bakes"]["jobs"]]}
    if {"fresh", "warm"} <= results.keys():
        f, w = results["fresh"], results["warm"]
        results["warm_vs_fresh"] = {
            "verified_per_hour": round(w["verified_per_hour"] / f["verified_per_hour"], 2) if f["verified_per_hour"] else None,
            "bake_work": round(sum(b["work_s"] for b in w["bakes"]) / max(1e-9, sum(b["work_s"] for b in f["bakes"])), 2),
            "peak_rss": round(w["peak_rss_gib"] / f["peak_rss_gib"], 2)}
    (OUT / "bake_worker.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
