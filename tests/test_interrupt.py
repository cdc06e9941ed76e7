"""`kill` unwinds a bake like Ctrl-C: vLLM's engine processes stop and nothing is left on disk."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from baker.sampling import vllm_available

PROMPT = "Recent news:\n2026-11-02: The town of Brackenford elects Olwen Marsh as its first mayor."


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_sigterm_unwinds_the_block_and_restores_the_default_action():
    p = run_python(
        "import os, signal, time\n"
        "from baker.interrupt import exit_on_sigterm\n"
        "try:\n"
        "    with exit_on_sigterm():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(60)\n"
        "finally:\n"
        "    print('unwound', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert p.stdout.split() == ["unwound", "True"]


def test_a_handler_the_caller_installed_is_left_alone():
    p = run_python(
        "import os, signal, time\n"
        "from baker.interrupt import exit_on_sigterm\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('mine'))\n"
        "with exit_on_sigterm():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        "print('after', signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["mine", "after", "True"]


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="needs vLLM (the HF sampler starts no processes)")
def test_a_killed_bake_stops_vllm_and_leaves_nothing(smollm2_dir, tmp_path):
    (tmp_path / "prompt.txt").write_text(PROMPT)
    out = tmp_path / "out"
    with open(tmp_path / "bake.log", "w") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(
            [sys.executable, "-c", "from agent.cli import cli; cli()", "bake", str(tmp_path / "prompt.txt"),
             "-o", str(out), "--home", str(tmp_path / "home"), "--model", str(smollm2_dir),
             "--sampler", "vllm", "--epochs", "1"],
            stdout=log, stderr=subprocess.STDOUT)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    children: dict[int, psutil.Process] = {}
    # Poll until vLLM's engine is starting (2 processes), then 2 s more: the kill lands during its
    # start-up, the hardest moment to clean up.
    polls_left = 5
    while time.monotonic() < deadline and proc.poll() is None and polls_left:
        children.update((p.pid, p) for p in parent.children(recursive=True))
        polls_left -= len(children) >= 2
        time.sleep(0.5)
    assert proc.poll() is None and children, (tmp_path / "bake.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (tmp_path / "bake.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(list(children.values()), timeout=60)
    for p in alive:  # don't leave them to the next test either
        p.kill()
    assert not alive, [p.name() for p in alive]
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left
