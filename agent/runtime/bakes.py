"""A bake job's process: spawned as its own process group, paused and resumed as a whole
(SIGSTOP / SIGCONT: the training step and the bake's vLLM sampler stop competing for the cores
the moment a request arrives), killed as a whole."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .worker import ERROR, RESULT

log = logging.getLogger("bakehouse.runtime.bakes")


class BakeProcess:
    def __init__(self, job_id: int, tenant: str, spec: dict, work: Path, log_dir: Path):
        self.job_id, self.tenant = job_id, tenant
        self.out = Path(spec["out_dir"])
        self.out.mkdir(parents=True, exist_ok=True)
        spec_path = self.out / "spec.json"
        spec_path.write_text(json.dumps({**spec, "parent_pid": os.getpid()}, default=str))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"bake-{job_id}.log"
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.runtime.worker", str(spec_path)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own group: pause/kill reach vLLM's children too
            )
        self.started = time.monotonic()
        self.paused_at: float | None = None
        self.paused_seconds = 0.0
        self.pauses = 0
        log.info("bake job %d (%s) started, pid %d", job_id, tenant, self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def pause(self) -> None:
        if self.paused_at is None and self.proc.poll() is None:
            self._signal(signal.SIGSTOP)
            self.paused_at = time.monotonic()
            self.pauses += 1

    def resume(self) -> None:
        if self.paused_at is not None:
            self._signal(signal.SIGCONT)
            self.paused_seconds += time.monotonic() - self.paused_at
            self.paused_at = None

    def poll(self) -> int | None:
        return self.proc.poll()

    def outcome(self) -> tuple[dict | None, str | None]:
        """(result, None) after a successful run, else (None, why it failed)."""
        if (self.out / RESULT).is_file():
            return json.loads((self.out / RESULT).read_text()), None
        try:
            return None, json.loads((self.out / ERROR).read_text())["error"]
        except (OSError, ValueError, KeyError):
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:] if self.log_path.exists() else []
            return None, f"the bake process exited with code {self.proc.returncode}: " + " | ".join(tail)[-500:]

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM the group (the baker unwinds and stops its vLLM), SIGKILL what is left."""
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)  # the group may outlive its leader
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
