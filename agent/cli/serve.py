"""`bakehouse serve`, `bakehouse tenants ...`, `bakehouse adapters ...`: the serving commands."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from baker.errors import BakeError
from serving.config import VLLM_LORA_RANKS, ServeConfig
from serving.errors import ServingError
from serving.gateway import read_status
from serving.registry import Registry
from serving.tenants import TenantStore

from . import cli, domain_errors, home_option

_DEFAULT_RANK = ServeConfig.__dataclass_fields__["max_lora_rank"].default


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _live_status(home: Path) -> dict | None:
    """The running gateway's status if it wrote one recently."""
    st = read_status(home)
    return st if st and time.time() - st.get("updated", 0) < 5 else None


@cli.command()
@click.option("--port", default=8100, show_default=True, help="Gateway port (the one users talk to).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--model", "model_opt", default=None, help="Base model dir (default: the embedded SmolLM2).")
@click.option("--engine-port", default=0, help="vLLM port on 127.0.0.1 (default: a free one).")
@click.option("--max-loras", default=8, show_default=True, help="Adapters per batch in vLLM.")
@click.option("--max-lora-rank", default=_DEFAULT_RANK, show_default=True,
              type=click.Choice([str(r) for r in VLLM_LORA_RANKS]), help="Largest adapter rank.")
@click.option("--kv-cache-gib", default=1.0, show_default=True, help="vLLM KV cache size (GiB of RAM).")
@click.option("--max-model-len", default=2048, show_default=True, help="Context length served.")
@home_option
@domain_errors(ServingError, BakeError, ValueError)
def serve(port, host, model_opt, engine_port, max_loras, max_lora_rank, kv_cache_gib, max_model_len, home):
    """Serve every tenant's current adapter through vLLM behind an OpenAI-compatible gateway.

    Starts vLLM (multi-LoRA, runtime loading) on a loopback port, supervises it, and answers
    /v1/chat/completions, /v1/completions and /v1/models on --port for tenants' API keys.
    Adapters published while it runs are served within a second.

    Example usage:

        bakehouse serve --port 8100
        curl localhost:8100/v1/chat/completions -H "Authorization: Bearer $KEY" \\
             -d '{"model": "alice", "messages": [{"role": "user", "content": "hi"}]}'
    """
    import logging

    from baker.models import resolve_model
    from serving.gateway import serve as run_gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request otherwise
    cfg = ServeConfig(
        model_dir=resolve_model(model_opt, home),
        host=host,
        port=port,
        engine_port=engine_port,
        max_loras=max_loras,
        max_cpu_loras=max(32, max_loras),
        max_lora_rank=int(max_lora_rank),
        kv_cache_bytes=int(kv_cache_gib * (1 << 30)),
        max_model_len=max_model_len,
    )
    click.echo(f"gateway on http://{host}:{port} (base model {cfg.model_dir.name}; vLLM log: "
               f"{home / 'serving' / 'logs' / 'vllm.log'})")
    run_gateway(cfg, home)


@cli.group()
def tenants():
    """Tenants and their API keys."""


@tenants.command("add")
@click.argument("name")
@home_option
@domain_errors(ServingError)
def tenants_add(name, home):
    """Create a tenant and print its API key (shown once, stored hashed).

    Example usage:

        bakehouse tenants add alice
    """
    t, key = TenantStore(home).add(name)
    click.echo(f"tenant {t.name} created. API key (shown once, store it now):")
    click.echo(key)


@tenants.command("list")
@home_option
@domain_errors(ServingError)
def tenants_list(home):
    """List tenants with their key id and the adapter version they are served.

    Example usage:

        bakehouse tenants list
    """
    all_tenants = TenantStore(home).load()
    if not all_tenants:
        click.echo("no tenants (bakehouse tenants add NAME)")
        return
    state = Registry(home).load()
    live = _live_status(home)
    click.echo(f"{'tenant':<16} {'key id':<14} {'created':<19}  {'episodes':<8}  {'adapter':<14} serving")
    for name, t in sorted(all_tenants.items()):
        cur = state.get(name)
        pointer = f"{name}@v{cur.current}" if cur and cur.current is not None else "base"
        serving = live["routes"].get(name, "base") if live else "(gateway not running)"
        episodes = "on" if t.record_episodes else "off"
        click.echo(f"{name:<16} {t.key_id:<14} {_when(t.created):<19}  {episodes:<8}  {pointer:<14} {serving}")


@tenants.command("set")
@click.argument("name")
@click.option("--episodes/--no-episodes", "record_episodes", default=None,
              help="Record the tenant's conversations as episodes (summarised into memories) or not.")
@home_option
@domain_errors(ServingError)
def tenants_set(name, record_episodes, home):
    """Change a tenant's settings; the running gateway applies them within a second.

    Example usage:

        bakehouse tenants set alice --no-episodes
    """
    t = TenantStore(home).set(name, record_episodes=record_episodes)
    click.echo(f"tenant {t.name}: episodes: {'on' if t.record_episodes else 'off'}")


@tenants.command("remove")
@click.argument("name")
@home_option
@domain_errors(ServingError)
def tenants_remove(name, home):
    """Delete a tenant: its key stops working at once (its adapters stay on disk).

    Example usage:

        bakehouse tenants remove alice
    """
    TenantStore(home).remove(name)
    click.echo(f"tenant {name} removed")


@cli.group()
def adapters():
    """Published adapter versions: publish, list, rollback."""


@adapters.command("publish")
@click.argument("tenant")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_opt", default=None, help="Base model dir the adapter must fit.")
@click.option("--max-rank", type=int, default=None,
              help="Largest rank accepted (default: the running gateway's, else 32).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="If a gateway is running, wait until it serves the new version.")
@home_option
@domain_errors(ServingError, BakeError)
def adapters_publish(tenant, adapter_dir, model_opt, max_rank, wait, home):
    """Validate a PEFT LoRA dir and make it the tenant's new version (served within a second).

    Example usage:

        bakehouse adapters publish alice ./runs/alice-lora
    """
    from baker.models import resolve_model

    if tenant not in TenantStore(home).load():
        raise click.ClickException(f"no tenant named {tenant!r} (bakehouse tenants add {tenant})")
    live = _live_status(home)
    if max_rank is None:
        max_rank = (live or {}).get("max_lora_rank") or _DEFAULT_RANK
    base = Path(live["model_dir"]) if live and not model_opt else resolve_model(model_opt, home)
    reg = Registry(home)
    v = reg.publish(tenant, adapter_dir, base, max_rank)
    click.echo(f"published {v.name} (rank {v.rank}, {', '.join(v.target_modules)}) -> {reg.version_dir(tenant, v.version)}")
    if not live:
        click.echo("no gateway running: it will serve this version when it starts")
        return
    if not wait:
        return
    t0 = time.time()
    while time.time() - t0 < 30:
        st = read_status(home) or {}
        if st.get("routes", {}).get(tenant) == v.name:
            click.echo(f"serving {v.name} ({time.time() - t0:.2f} s after publish)")
            return
        rec = reg.load()[tenant].versions[v.version]
        if rec.status == "failed":
            raise click.ClickException(f"the engine refused {v.name}: {rec.error}; the previous version keeps serving")
        time.sleep(0.1)
    raise click.ClickException(f"the gateway has not switched to {v.name} after 30 s (see bakehouse adapters list)")


@adapters.command("list")
@click.argument("tenant", required=False)
@home_option
@domain_errors(ServingError)
def adapters_list(tenant, home):
    """List published versions (all tenants, or one); '*' marks the current pointer.

    Example usage:

        bakehouse adapters list alice
    """
    state = Registry(home).load()
    if tenant is not None and tenant not in state:
        raise click.ClickException(f"tenant {tenant!r} has no published adapters")
    live = _live_status(home)
    rows = [(n, t) for n, t in sorted(state.items()) if tenant in (None, n)]
    if not rows:
        click.echo("no adapters published (bakehouse adapters publish TENANT DIR)")
        return
    click.echo(f"  {'name':<20} {'rank':>4}  {'published':<19}  {'status':<8} note")
    for name, t in rows:
        for n, v in sorted(t.versions.items()):
            mark = "*" if n == t.current else " "
            note = v.error or ""
            if live and live["routes"].get(name) == v.name:
                note = "serving" + (f"; {note}" if note else "")
            click.echo(f"{mark} {v.name:<20} {v.rank:>4}  {_when(v.created):<19}  {v.status:<8} {note}")


@adapters.command("rollback")
@click.argument("tenant")
@click.argument("version")
@home_option
@domain_errors(ServingError)
def adapters_rollback(tenant, version, home):
    """Point TENANT back at an earlier VERSION (3 or v3); the gateway switches within a second.

    Example usage:

        bakehouse adapters rollback alice v1
    """
    raw = version[1:] if version.lower().startswith("v") else version
    if not raw.isdigit():
        raise click.ClickException(f"VERSION must look like 3 or v3, got {version!r}")
    v = Registry(home).rollback(tenant, int(raw))
    click.echo(f"{tenant} now points at {v.name}")
