"""Drive a `bakehouse run` from the outside, as a user would: start it as a child process, talk to
its gateway over HTTP, watch `status`, stop it with SIGTERM. Used by the demo, the runtime bench
and the end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.engine import free_port
from serving.hot import HOT_MEMORIES_HEADER
from serving.tenants import TenantStore

from .status import collect


class RunSession:
    def __init__(self, home: Path, model_dir: Path, *, port: int | None = None, args: tuple[str, ...] = (),
                 log_name: str = "run.out"):
        self.home, self.model_dir = Path(home), Path(model_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.log_path = self.home / log_name
        self.proc: subprocess.Popen | None = None
        self.keys: dict[str, str] = {}

    def add_tenant(self, name: str) -> str:
        self.keys[name] = TenantStore(self.home).add(name)[1]
        return self.keys[name]

    def start(self, timeout: float = 300.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "agent.cli", "run", "--home", str(self.home), "--model", str(self.model_dir),
               "--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bakehouse run exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"bakehouse run not ready after {timeout:.0f} s; see {self.log_path}")

    def chat(self, tenant: str, question: str, max_tokens: int = 40, system: str | None = None) -> dict:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        r = httpx.post(f"{self.url}/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                       json={"model": tenant, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
        r.raise_for_status()
        body = r.json()
        ids = r.headers.get(HOT_MEMORIES_HEADER, "")
        return {"text": body["choices"][0]["message"]["content"], "model": body["model"],
                "prompt_tokens": body["usage"]["prompt_tokens"],
                "hot_memories": [int(i) for i in ids.split(",") if i.strip().isdigit()]}

    def status(self) -> dict:
        return collect(self.home)

    def wait_for_bakes(self, tenant: str, timeout: float, on_tick=None) -> dict:
        """Until the tenant has no hot memory left to try and no job queued or running."""
        deadline, settled = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            st = self.status()
            t = st["tenants"].get(tenant)
            if on_tick:
                on_tick(st)
            settled = settled + 1 if t and not t["jobs"] and t["last_bake"] is not None else 0
            if settled >= 2:  # twice in a row: the planner had its chance to queue a retry
                return st
            if self.proc.poll() is not None:
                raise RuntimeError(f"bakehouse run exited with code {self.proc.returncode}; see {self.log_path}")
            time.sleep(2)
        raise TimeoutError(f"the bake of {tenant} did not finish in {timeout:.0f} s")

    def bake_outcome(self, tenant: str, status: dict | None = None) -> str:
        """One line on the tenant's last bake: "job 3 done: 2 of 4 graduated; serving alice@v1"."""
        t = (status or self.status())["tenants"][tenant]
        job = t["last_bake"]
        return (f"job {job['job']} {job['state']}: {job['graduated']} of {job['tried']} graduated"
                + (f" ({job['reason']})" if job["state"] != "done" else "") + f"; serving {t['version']}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
