"""`bakehouse status`: engine and gateway health and, per tenant, what is hot, what is baked and
served, and the state of its bake jobs. Read from the files and the DB, so it works whether or
not a runtime is running (the runtime's own status file adds the live figures)."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from memory import MemoryStore
from serving.gateway import read_status
from serving.registry import Registry

from .runtime import STATUS_FILE
from .served import Record


def collect(home: Path) -> dict:
    home = Path(home)
    gw = read_status(home)
    live_gw = gw if gw and time.time() - gw.get("updated", 0) < 5 else None
    try:
        rt = json.loads((home / "runtime" / STATUS_FILE).read_text())
        rt = rt if time.time() - rt.get("updated", 0) < 10 else None
    except (OSError, ValueError):
        rt = None
    state = Registry(home).load()
    out = {
        "runtime": None if rt is None else {**{k: rt.get(k) for k in ("pid", "started", "idle_for", "bakes", "last_error")},
                                            "bake": (rt.get("bakes") or [None])[0]},
        "gateway": None if live_gw is None else {
            "ready": live_gw["ready"], "port": live_gw["port"], "requests": live_gw["requests"],
            "inflight": live_gw["inflight"], "engine": live_gw["engine"]},
        "tenants": {},
    }
    with MemoryStore.in_home(home, actor="status") as store:
        record = Record(home, store)
        for tenant in store.tenants():
            v = record.served(tenant, state)
            served = (live_gw or {}).get("routes", {}).get(tenant, "base") if live_gw else (v.name if v else "base")
            name = v.name if v else None
            holds = set(record.holds(tenant, v))
            live = store.memories(tenant, valid_only=True)
            hot = [m for m in live if m.id not in holds]
            tries = store.jobs.failed_tries([m.id for m in hot])
            rt_hot = (rt or {}).get("hot", {}).get(tenant)
            layers = record.layers(tenant, v)
            jobs = store.jobs.list(tenant)
            finished = [j for j in jobs if j.state in ("done", "rejected", "failed")]
            last = finished[-1] if finished else None
            out["tenants"][tenant] = {
                "hot_memories": len(hot),
                "hot_tokens": rt_hot["tokens"] if rt_hot else None,
                "out_of_service": rt_hot.get("out_of_service", []) if rt_hot else [],
                "stay_hot": [m.id for m in hot if tries[m.id] > 0 and tries[m.id] >= _max_tries(rt)],
                "baked_memories": len(holds & {m.id for m in live}),
                "version": served,
                "pointer": name,
                "rank": v.rank if v else 0,
                "layers": layers,
                "last_bake": None if last is None else {
                    "job": last.id, "state": last.state, "finished_at": last.finished_at,
                    "seconds": (last.result.get("timings") or {}).get("wall"),
                    "graduated": len(last.result.get("graduated", [])),
                    "tried": len(last.memory_ids), "reason": last.reason, "version": last.version},
                "jobs": [{"id": j.id, "kind": j.kind, "state": j.state, "memories": len(j.memory_ids)}
                         for j in jobs if j.active],
                "stuck": stuck(finished),
                "held_back": _held_back(store, tenant),
            }
    return out


def _held_back(store: MemoryStore, tenant: str) -> dict:
    """How many live memories wait out of prompts and bakes (memory.trust), by admission."""
    waiting = Counter(m.admission for m in store.trust.held_back(tenant))
    return {"proposed": waiting["proposed"], "quarantined": waiting["quarantined"]}


STUCK_AFTER = 3  # rejected bakes in a row, for one reason, before a tenant is shown as stuck


def stuck(finished: list, n: int = STUCK_AFTER) -> dict | None:
    """{"reason", "jobs", "detail"} when the last `n` finished jobs were all rejected for one same
    kind of reason (the text before its ':', e.g. "forgotten memories still recalled"); else None."""
    last = finished[-n:]
    if len(last) < n or any(j.state != "rejected" or not j.reason for j in last):
        return None
    kinds = [{part.split(":")[0].strip() for part in j.reason.split("; ")} for j in last]
    common = set.intersection(*kinds)
    if not common:
        return None
    return {"reason": sorted(common)[0], "jobs": [j.id for j in last], "detail": last[-1].reason}


def _max_tries(rt: dict | None) -> int:
    return ((rt or {}).get("config") or {}).get("max_tries", 3)
