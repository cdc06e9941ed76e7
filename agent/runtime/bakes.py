"""The bake worker process and the jobs it runs.

`BakeWorker` is one `python -m agent.runtime.worker --serve` process: its own process group, the
base model kept loaded between jobs, jobs fed on its stdin. `BakeProcess` is one job in it, paused
and resumed with the whole group (SIGSTOP / SIGCONT: the training step stops competing for the
cores the moment a request arrives) and killed with it. A worker that crashed or was killed is
not reused: the next job starts a fresh one. `warm=False` gives each job a worker of its own that
exits after it (the model loaded per bake: the baseline of bench/runtime.py).
"""
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


class BakeWorker:
    def __init__(self, log_dir: Path, warm: bool = True):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.warm = warm
        self.log_path = log_dir / "bake-worker.log"
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING",
                   BAKEHOUSE_PARENT_PID=str(os.getpid()))
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%F %T')} bake worker starting\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.runtime.worker", "--serve"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=env,
                start_new_session=True,  # its own group: pause/kill reach a sampler's vLLM children too
            )
        log.info("bake worker started, pid %d%s", self.proc.pid, "" if warm else " (one job)")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, spec_path: Path, engine: dict | None) -> None:
        self.proc.stdin.write((json.dumps({"spec": str(spec_path), "engine": engine}) + "\n").encode())
        self.proc.stdin.flush()
        if not self.warm:
            self.proc.stdin.close()  # one job, then end of input: the worker exits

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM the group (the baker unwinds and stops a vLLM of its own), SIGKILL what is left."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # the group may outlive its leader
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self, timeout: float = 10.0) -> None:
        """End of input: an idle worker exits on its own (killed if it does not)."""
        try:
            if not self.proc.stdin.closed:
                self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


class BakeProcess:
    """One job in a worker."""

    def __init__(self, job_id: int, tenant: str, spec: dict, worker: BakeWorker, engine: dict | None = None):
        self.job_id, self.tenant, self.worker = job_id, tenant, worker
        self.out = Path(spec["out_dir"])
        self.out.mkdir(parents=True, exist_ok=True)
        spec_path = self.out / "spec.json"
        spec_path.write_text(json.dumps(spec, default=str))
        self.log_path = worker.log_path
        self.started = time.monotonic()
        self.paused_at: float | None = None
        self.paused_seconds = 0.0
        self.pauses = 0
        worker.submit(spec_path, engine)
        log.info("bake job %d (%s) started in worker %d", job_id, tenant, worker.pid)

    @property
    def pid(self) -> int:
        return self.worker.pid

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def pause(self) -> None:
        if self.paused_at is None and self.poll() is None:
            self.worker.signal(signal.SIGSTOP)
            self.paused_at = time.monotonic()
            self.pauses += 1

    def resume(self) -> None:
        if self.paused_at is not None:
            self.worker.signal(signal.SIGCONT)
            self.paused_seconds += time.monotonic() - self.paused_at
            self.paused_at = None

    def poll(self) -> int | None:
        """None while the job runs; 0 with a result, 1 with an error, else the worker's exit code."""
        if (self.out / RESULT).is_file():
            return 0
        if (self.out / ERROR).is_file():
            return 1
        code = self.worker.proc.poll()
        if code is None:
            return None
        # it may have written its answer just before it exited
        return 0 if (self.out / RESULT).is_file() else 1 if (self.out / ERROR).is_file() else (code or 1)

    @property
    def died(self) -> bool:
        """The worker is gone and left no answer (a crash or a kill, not a bake that failed)."""
        return self.poll() is not None and not (self.out / RESULT).is_file() and not (self.out / ERROR).is_file()

    def outcome(self) -> tuple[dict | None, str | None]:
        """(result, None) after a successful run, else (None, why it failed)."""
        if (self.out / RESULT).is_file():
            return json.loads((self.out / RESULT).read_text()), None
        try:
            return None, json.loads((self.out / ERROR).read_text())["error"]
        except (OSError, ValueError, KeyError):
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:] if self.log_path.exists() else []
            return None, (f"the bake worker exited with code {self.worker.proc.returncode}: "
                          + " | ".join(tail)[-500:])

    def kill(self) -> None:
        """The job cannot be stopped alone: its worker goes (the next job starts a fresh one)."""
        self.worker.kill()
