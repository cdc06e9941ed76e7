"""Memory store at scale: 1,000,000 memories over 1,000 tenants.

Measures the insert rate through the public API (add_many: validation, dedup, audit rows, one
transaction per batch), single-add latency, and compose() p50/p95 for one tenant at a 2,000-token
budget, over random tenants (cold-ish pages) and one tenant repeated (warm). Reports the DB size.
Target: compose p95 <= 50 ms.

    python bench/memory.py            # full size (~1-3 min and ~0.5 GB on disk)
    python bench/memory.py --quick    # 50 tenants x 200 memories, seconds
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import MemoryStore  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
TARGET_P95_MS = 50.0

# Per tenant, out of 1,000: mostly dated news, as a news-reading agent would hold.
KIND_MIX = [("persona", 2), ("instruction", 8), ("fact", 150), ("episode_summary", 90), ("headline", 750)]
WORDS = ("harbor commissioner battery seaweed rail strike wage deal institute council river bridge "
         "festival museum archive observatory vineyard ferry glacier tram library election orchard "
         "lighthouse market canal theatre").split()
PLACES = "Velmora Dunmarrow Quillon Ashgrove Brindlemoor Caskport Emberfall Lowmere".split()


def synth_items(rng: random.Random, tenant_no: int, n: int) -> list[dict]:
    kinds = [k for k, w in KIND_MIX for _ in range(w)]
    items = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18)))
        text = f"{rng.choice(PLACES)} {words} (t{tenant_no} #{i})."
        item = {"kind": kind, "text": text[0].upper() + text[1:], "source": "bench"}
        if kind == "headline":  # published over the last two years
            day = rng.randint(0, 730)
            item["published_at"] = f"{2025 + day // 365}-{1 + (day % 365) // 31:02d}-{1 + day % 28:02d}"
        items.append(item)
    return items


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--per-tenant", type=int, default=1000)
    ap.add_argument("--composes", type=int, default=200)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="50 tenants x 200 memories, 100 composes")
    ap.add_argument("--db", type=Path, default=OUT / "memory-bench.db")
    ap.add_argument("--keep-db", action="store_true", help="keep the DB file afterwards")
    args = ap.parse_args()
    if args.quick:
        args.tenants, args.per_tenant, args.composes = 50, 200, 100

    OUT.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(args.db) + suffix).unlink(missing_ok=True)
    rng = random.Random(0)
    tenants = [f"tenant-{i:04d}" for i in range(args.tenants)]
    total = args.tenants * args.per_tenant
    print(f"inserting {total:,} memories over {args.tenants:,} tenants into {args.db}")

    # 1. Inserts: one add_many (one transaction) per tenant; text generation is timed apart.
    store = MemoryStore(args.db, actor="bench")
    insert_s = gen_s = 0.0
    for n, tenant in enumerate(tenants):
        t0 = time.perf_counter()
        items = synth_items(rng, n, args.per_tenant)
        t1 = time.perf_counter()
        stored = store.add_many(tenant, items)
        insert_s += time.perf_counter() - t1
        gen_s += t1 - t0
        assert len(stored) == len(items) and all(m.created for m in stored)
        if (n + 1) % max(1, args.tenants // 10) == 0:
            print(f"  {n + 1:>5} tenants, {(n + 1) * args.per_tenant:>9,} rows, "
                  f"{(n + 1) * args.per_tenant / insert_s:,.0f} rows/s")
    rows_per_s = total / insert_s

    # 2. Single adds (the agent's path during a conversation), on a full DB.
    single = []
    for i in range(200):
        t0 = time.perf_counter()
        store.add(rng.choice(tenants), "fact", f"Single add number {i} at {time.time()}.")
        single.append((time.perf_counter() - t0) * 1000)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size_mb = sum(Path(str(args.db) + s).stat().st_size for s in ("", "-wal") if Path(str(args.db) + s).exists()) / 1e6

    # 3. Compose on a freshly opened store: random tenants, then one tenant repeated.
    store = MemoryStore(args.db, actor="bench")
    plan = [r[-1] for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT id, kind, text, valid_from FROM memories WHERE tenant = ?"
        " AND status IN (SELECT value FROM json_each(?)) AND kind IN (SELECT value FROM json_each(?))"
        " AND valid_to IS NULL ORDER BY valid_from DESC, id DESC",
        [tenants[0], '["pending","baked"]', '["headline"]'],
    ).fetchall()]
    results = {}
    for label, picks in [("random_tenants", [rng.choice(tenants) for _ in range(args.composes)]),
                         ("one_tenant", [tenants[len(tenants) // 2]] * args.composes)]:
        times, sizes = [], []
        for tenant in picks:
            t0 = time.perf_counter()
            p = store.compose(tenant, budget_tokens=args.budget)
            times.append((time.perf_counter() - t0) * 1000)
            sizes.append((len(p.memory_ids), len(p.left_out), p.tokens))
        results[label] = {
            "p50_ms": round(statistics.median(times), 2), "p95_ms": round(pct(times, 95), 2),
            "max_ms": round(max(times), 2),
            "memories_in_prompt": sizes[0][0], "left_out": sizes[0][1], "tokens": sizes[0][2],
        }
    store.close()
    if not args.keep_db:
        for suffix in ("", "-wal", "-shm"):
            Path(str(args.db) + suffix).unlink(missing_ok=True)

    report = {
        "tenants": args.tenants, "memories_per_tenant": args.per_tenant, "memories": total,
        "insert_rows_per_s": round(rows_per_s), "insert_seconds": round(insert_s, 1),
        "text_generation_seconds": round(gen_s, 1),
        "single_add_p50_ms": round(statistics.median(single), 2),
        "single_add_p95_ms": round(pct(single, 95), 2),
        "db_size_mb": round(size_mb, 1), "compose_budget_tokens": args.budget,
        "composes": args.composes, "compose": results, "compose_query_plan": plan,
        "target_compose_p95_ms": TARGET_P95_MS,
        "target_met": all(r["p95_ms"] <= TARGET_P95_MS for r in results.values()),
        "python": sys.version.split()[0],
    }
    print(f"insert: {rows_per_s:,.0f} memories/s ({insert_s:.1f} s; with audit rows, dedup index)")
    print(f"single add: p50 {report['single_add_p50_ms']} ms, p95 {report['single_add_p95_ms']} ms")
    print(f"DB size: {size_mb:,.1f} MB")
    for label, r in results.items():
        print(f"compose ({label}, budget {args.budget}): p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
              f"max {r['max_ms']} ms; {r['memories_in_prompt']} memories in, {r['left_out']} left out")
    print(f"query plan: {' | '.join(plan)}")
    print(f"target compose p95 <= {TARGET_P95_MS:g} ms: {'met' if report['target_met'] else 'NOT met'}")
    out = OUT / ("memory-quick.json" if args.quick else "memory.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
