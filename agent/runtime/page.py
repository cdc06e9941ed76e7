"""The operator's status page (`GET /status` on the gateway port, server-rendered HTML that
refreshes itself), behind an operator key that is not a tenant key.

The key is `bakehouse run --admin-key KEY`, or generated at the first start and printed once; only
its sha256 is kept (`runtime/admin.json`). Send it as `Authorization: Bearer KEY` or `?key=KEY`.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from baker.report import kl_chart
from memory import MemoryStore, approx_tokens
from serving.registry import Registry, served

from .served import Record
from .status import collect

ADMIN_FILE = "admin.json"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_admin_key(home: Path, given: str | None = None) -> str | None:
    """Store the operator key's hash; returns a newly generated key (to print once) or None."""
    path = Path(home) / "runtime" / ADMIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = None
    if given is None and path.is_file():
        return None
    key = given or (new := "bh-admin-" + secrets.token_urlsafe(24))
    path.write_text(json.dumps({"sha256": _digest(key), "created": time.time()}))
    path.chmod(0o600)
    return new


def check_admin(home: Path, key: str | None) -> bool:
    try:
        want = json.loads((Path(home) / "runtime" / ADMIN_FILE).read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(key) and hmac.compare_digest(_digest(key), want)


def router(home: Path, refresh_seconds: int = 5) -> APIRouter:
    r = APIRouter()

    @r.get("/status", response_class=HTMLResponse)
    async def status(request: Request, key: str | None = None):
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else key
        if not check_admin(home, given):
            return JSONResponse({"error": {"message": "operator key required (not a tenant key)",
                                           "type": "authentication_error", "code": "invalid_admin_key"}},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return HTMLResponse(await asyncio.to_thread(render_page, home, refresh_seconds))

    return r


def _age(iso: str) -> str:
    s = time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).replace(tzinfo=timezone.utc).timestamp()
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def render_page(home: Path, refresh_seconds: int = 5) -> str:
    st = collect(home)
    e = html.escape
    rt, gw = st["runtime"], st["gateway"]
    head = (f"runtime {'pid ' + str(rt['pid']) if rt else 'not running'} &middot; gateway "
            + (f"{'ready' if gw['ready'] else 'not ready'}, engine {e(gw['engine']['state'])}, "
               f"{gw['engine']['restarts']} restarts, {gw['requests']} requests" if gw else "not running"))
    sections = []
    state = Registry(home).load()
    with MemoryStore.in_home(home, actor="status-page") as store:
        for tenant, t in st["tenants"].items():
            holds = set(Record(home, store).holds(tenant, served(state, tenant)))
            live = store.memories(tenant, valid_only=True)
            tries = store.jobs.failed_tries([m.id for m in live])
            hot = [m for m in live if m.id not in holds]
            rows_hot = "".join(
                f"<tr><td>#{m.id}</td><td>{e(m.kind)}</td><td>{e(m.text)}</td><td>{_age(m.created_at)}</td>"
                f"<td>{approx_tokens(m.text)}</td><td>{tries[m.id]}</td></tr>" for m in hot)
            rows_baked = "".join(
                f"<tr><td>#{m.id}</td><td>{e(m.text)}</td><td>{e(', '.join(m.adapter_versions))}</td></tr>"
                for m in live if m.id in holds)
            jobs = store.jobs.list(tenant, limit=8)[::-1]
            job_rows = []
            for j in jobs:
                bake = (j.result or {}).get("bake") or {}
                epochs = bake.get("epochs") or []
                chart = kl_chart(epochs, bake.get("eval_kl_before"), 240, 110) if epochs else ""
                timings = (j.result or {}).get("timings") or {}
                tt = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if isinstance(v, (int, float)) and k != "pauses")
                outcome = (f"{len(j.result.get('graduated', []))} graduated, {len(j.result.get('failed', []))} stay hot"
                           if j.result else "")
                job_rows.append(
                    f"<tr><td>job {j.id}</td><td>{e(j.kind)}</td><td class='state {e(j.state)}'>{e(j.state)}</td>"
                    f"<td>{len(j.memory_ids)} memories on {e(j.parent_version or 'the base')}"
                    f"{' &rarr; ' + e(j.version) if j.version else ''}</td><td>{e(outcome)}<br>{e(j.reason or '')}"
                    f"<br><small>{e(tt)}</small></td><td>{chart}</td></tr>")
            sections.append(f"""<section class="tenant" id="tenant-{e(tenant)}">
<h2>{e(tenant)}</h2>
<p>serving <b>{e(t['version'])}</b> ({t['layers']} layers, rank {t['rank']}) &middot; {t['hot_memories']} hot
({t['hot_tokens'] if t['hot_tokens'] is not None else '?'} tokens; {len(t['out_of_service'])} out of service)
&middot; {t['baked_memories']} in the weights</p>
{f"<p class='stuck'>stuck: the last {len(t['stuck']['jobs'])} bakes were rejected: {e(t['stuck']['detail'])}</p>" if t.get('stuck') else ''}
<h3>Hot (not in the weights: retrieved into the prompts about them)</h3><table><tr><th>id</th><th>kind</th><th>text</th><th>age</th><th>tokens</th><th>failed tries</th></tr>{rows_hot}</table>
<h3>Graduated (in the weights)</h3><table><tr><th>id</th><th>text</th><th>versions</th></tr>{rows_baked}</table>
<h3>Bakes</h3><table class="jobs">{''.join(job_rows)}</table></section>""")
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh_seconds}">
<title>bakehouse status</title><style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}}
.stuck{{color:#c0392b;font-weight:bold}}.state.done{{color:#1e8449}}.state.rejected,.state.failed{{color:#c0392b}}.state.running{{color:#2471a3}}</style></head>
<body><h1>bakehouse</h1><p>{head}</p>{''.join(sections) or '<p>no tenants with memories</p>'}</body></html>"""
