"""`bakehouse run` (serve + learn) and `bakehouse status`: thin layers over agent.runtime."""
from __future__ import annotations

import json
import logging

import click

from baker.errors import BakeError
from baker.verify import RULES
from memory import MemoryStoreError
from serving.config import VLLM_LORA_RANKS
from serving.errors import ServingError

from . import cli, domain_errors, home_option


@cli.command()
@click.option("--port", default=8100, show_default=True, help="Gateway port (the one users talk to).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway bind address.")
@click.option("--model", "model_opt", default=None, help="Base model dir (default: the embedded SmolLM2).")
@click.option("--idle-seconds", default=30.0, show_default=True,
              help="Bake (or resume a paused bake) after this long without a request.")
@click.option("--hot-tier", default="retrieval", show_default=True, type=click.Choice(["retrieval", "static"]),
              help="Each request's memories: retrieval (persona and instructions, then what the request is "
                   "about) or static (every memory the weights lack, cut at the budget; a baseline).")
@click.option("--hot-budget", default=1500, show_default=True, help="Tokens of memories in a request's system prompt.")
@click.option("--hot-top-k", default=3, show_default=True, type=click.IntRange(min=1),
              help="Memories retrieved per request (besides persona and instructions).")
@click.option("--feed-minutes", default=15.0, show_default=True, help="How often every feed is polled.")
@click.option("--episode-idle", default=30.0, show_default=True,
              help="Minutes without a message before a conversation's episode closes and is summarised.")
@click.option("--min-batch", default=1, show_default=True, help="Hot memories a tenant needs before a bake ...")
@click.option("--max-wait", default=600.0, show_default=True, help="... unless its oldest has waited this long (s).")
@click.option("--max-batch", default=20, show_default=True, help="Memories per bake.")
@click.option("--max-tries", default=3, show_default=True, help="Failed graduations before a memory stays hot for good.")
@click.option("--max-lora-rank", default="64", show_default=True, type=click.Choice([str(r) for r in VLLM_LORA_RANKS]),
              help="A stack that would exceed it is consolidated into one layer.")
@click.option("--max-layers", default=4, show_default=True, help="Layers before consolidation.")
@click.option("--epochs", type=int, default=None, help="Epochs per bake (default: BakeConfig's).")
@click.option("--bake-config", "bake_config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="BakeConfig fields for every bake, as JSON (as `bakehouse bake --config`); "
                   "--epochs and --min-steps win over it.")
@click.option("--no-pause", is_flag=True, help="Let bakes run while requests are served.")
@click.option("--bake-worker", default="warm", show_default=True, type=click.Choice(["warm", "fresh"]),
              help="warm: one bake worker keeps the base model loaded between bakes; fresh: a process per bake.")
@click.option("--bake-sampler", default="auto", show_default=True, type=click.Choice(["auto", "vllm", "hf"]),
              help="Where bakes sample and verify: auto, the serving engine at a lower priority than users; "
                   "vllm, an engine of the bake's own; hf, transformers.")
@click.option("--concurrent-bakes", default=1, show_default=True,
              help="Bakes at once, of different tenants (for machines with more cores than this one).")
@click.option("--kv-cache-gib", default=1.0, show_default=True, help="vLLM KV cache size (GiB of RAM).")
@click.option("--gate-general", default=0.9, show_default=True,
              help="Share of the general questions the base answers right that a new version must keep.")
@click.option("--gate-recheck", default=1.0, show_default=True,
              help="Share of the earlier graduated memories a new version must still hold.")
@click.option("--graduation", default="majority", show_default=True, type=click.Choice(list(RULES)),
              help="When a memory leaves the prompt: " + "; ".join(f"{k}: {v}" for k, v in RULES.items()) + ".")
@click.option("--pursuit-rounds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Bake by Prompt Pursuit: this many rounds per bake, stacked into one layer.")
@click.option("--min-steps", default=0, show_default=True,
              help="Optimiser steps a bake takes at least (a bake of a few memories gets more epochs).")
@click.option("--admin-key", default=None, envvar="BAKEHOUSE_ADMIN_KEY",
              help="Operator key for /status (default: generated at the first start, printed once).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per log line (runtime.log and the terminal).")
@home_option
@domain_errors(ServingError, BakeError, MemoryStoreError, ValueError, RuntimeError)
def run(port, host, model_opt, idle_seconds, hot_tier, hot_budget, hot_top_k, feed_minutes, episode_idle, min_batch, max_wait, max_batch,
        max_tries, max_lora_rank, max_layers, epochs, bake_config, no_pause, bake_worker, bake_sampler, concurrent_bakes, kv_cache_gib, gate_general, gate_recheck,
        graduation, pursuit_rounds, min_steps, admin_key, log_format, home):
    """Serve every tenant and keep learning: memories are answered from the system prompt at once,
    baked into a new LoRA layer in idle time, verified, and swapped in.

    Runs vLLM + the gateway + a scheduler (feeds, bakes) until Ctrl-C / SIGTERM. One per home.

    Example usage:

        bakehouse run --port 8100 --idle-seconds 30
        bakehouse remember --tenant alice "The ship is called the Marigold."   # answerable at once
        bakehouse status
    """
    from baker.models import resolve_model

    from ..runtime import RuntimeConfig
    from ..runtime.runtime import Runtime

    log_path = home / "runtime" / "logs" / "runtime.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(log_path), _ConsoleEvents()]
    if log_format == "json":
        for h in handlers:
            h.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers)
    for noisy in ("httpx", "apscheduler"):  # a line per request / per scheduled tick otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = {"min_steps": min_steps, **({"epochs": epochs} if epochs else {})}
    if bake_config:  # the file's fields, under --epochs and a given --min-steps
        from baker import BakeConfig

        BakeConfig.from_json_file(bake_config)  # a bad field is an error now, not at the first bake
        with open(bake_config) as f:
            overrides = {**json.load(f), **({"min_steps": min_steps} if min_steps else {}),
                         **({"epochs": epochs} if epochs else {})}
    cfg = RuntimeConfig(home=home, model_dir=resolve_model(model_opt, home), host=host, port=port,
                        idle_seconds=idle_seconds, hot_tier=hot_tier, hot_budget=hot_budget, hot_top_k=hot_top_k,
                        feed_minutes=feed_minutes,
                        episode_idle=episode_idle,
                        min_batch=min_batch, max_wait=max_wait, max_batch=max_batch, max_tries=max_tries,
                        max_lora_rank=int(max_lora_rank), max_layers=max_layers, pause_bakes=not no_pause,
                        concurrent_bakes=concurrent_bakes, bake_worker=bake_worker, sampler=bake_sampler,
                        kv_cache_gib=kv_cache_gib, gate_general=gate_general, gate_recheck=gate_recheck,
                        graduation=graduation, pursuit_rounds=pursuit_rounds, bake_overrides=overrides)
    click.echo(f"bakehouse run: gateway on http://{host}:{port}, base model {cfg.model_dir.name}; "
               f"logs in {log_path.parent}")
    from ..runtime.page import ensure_admin_key

    new_key = ensure_admin_key(home, admin_key)
    if new_key:
        click.echo(f"operator key for http://{host}:{port}/status (shown once, store it now): {new_key}")
    Runtime(cfg).run()


class JsonLines(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _ConsoleEvents(logging.StreamHandler):
    """One line per runtime event on the terminal; vLLM and library chatter stay in the log file."""

    def __init__(self):
        super().__init__()
        self.setLevel(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        self.addFilter(lambda r: r.name.startswith("bakehouse") or r.levelno >= logging.ERROR)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
@domain_errors(ServingError, MemoryStoreError)
def status(as_json, home):
    """Engine and gateway health, and per tenant: hot memories and tokens, baked memories, the
    served version and its layers, the last bake and the queued or running jobs.

    Example usage:

        bakehouse status
        bakehouse status --json | jq .tenants.alice
    """
    from ..runtime.status import collect

    st = collect(home)
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    rt, gw = st["runtime"], st["gateway"]
    click.echo(f"runtime: {'pid ' + str(rt['pid']) if rt else 'not running'}"
               + (f", bake job {rt['bake']['job']} ({rt['bake']['tenant']}, "
                  f"{'paused' if rt['bake']['paused'] else 'running'})" if rt and rt.get("bake") else ""))
    click.echo(f"gateway: {'ready' if gw and gw['ready'] else 'not ready' if gw else 'not running'}"
               + (f" on port {gw['port']}, engine {gw['engine']['state']} (LoRA ops: "
                  f"{gw['engine'].get('lora_ops', {}).get('state', 'unknown')}), {gw['requests']} requests" if gw else ""))
    if not st["tenants"]:
        click.echo("no tenants with memories")
    for name, t in st["tenants"].items():
        lb = t["last_bake"]
        last = "-" if lb is None else (f"job {lb['job']} {lb['state']} {lb['graduated']}/{lb['tried']} graduated"
                                       + (f" ({lb['reason']})" if lb["reason"] and lb["state"] != "done" else ""))
        jobs = ", ".join(f"{j['id']} {j['state']}" for j in t["jobs"]) or "-"
        tokens = "" if t["hot_tokens"] is None else f" ({t['hot_tokens']} tokens pinned)"
        if t["out_of_service"]:
            tokens += f", {len(t['out_of_service'])} out of service"
        click.echo(f"{name}: {t['hot_memories']} hot{tokens}, {t['baked_memories']} baked, serving "
                   f"{t['version']} ({t['layers']} layers, rank {t['rank']}); last bake: {last}; "
                   f"jobs: {jobs}")
        held = t.get("held_back") or {}
        if any(held.values()):
            click.echo(f"  held back: {held['proposed']} proposed instructions (bakehouse instructions list), "
                       f"{held['quarantined']} quarantined")
        if t.get("stuck"):
            click.echo(f"  STUCK: the last {len(t['stuck']['jobs'])} bakes were rejected: {t['stuck']['detail']}")
