"""Faults, one case each: every one ends with a clear error or a 503 + Retry-After, loses nothing
stored, and the server serves again afterwards.

The engine cases run a real vLLM with SmolLM2 (one gateway + engine for the module, `served`):
kill -9 of the engine mid-request and mid-load, of the gateway process (`bakehouse serve`). The
others need no engine: a corrupt registry.json, a locked memory DB, a full disk at publish.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import make_adapter, wait_ready

from serving.errors import RegistryError
from serving.registry import Registry

BAKEHOUSE = str(Path(sys.executable).with_name("bakehouse"))
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(url: str, key: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"messages": QUESTION, "max_tokens": 12, "temperature": 0, **body})


def answers(s) -> dict:
    out = {}
    for t in ("alice", "bob", "carol"):
        r = chat(s.url, s.keys[t])
        assert r.status_code == 200, r.text
        out[t] = (r.json()["model"], r.json()["choices"][0]["message"]["content"])
    return out


def kill_engine(engine) -> int:
    """kill -9 of the whole engine: its API server and the engine core process."""
    pid = engine.pid
    os.killpg(pid, signal.SIGKILL)
    return pid


def served_again(s, old_pid: int) -> None:
    """/ready is 503 from the moment the engine died until a new one serves: wait for that."""
    assert httpx.get(f"{s.url}/ready", timeout=10).status_code == 503 or s.gateway.engine.pid != old_pid
    deadline = time.monotonic() + 600
    while s.gateway.engine.pid in (old_pid, None) and time.monotonic() < deadline:
        time.sleep(0.2)
    wait_ready(s.url, 600)
    assert s.gateway.engine.pid != old_pid


# -- the engine ------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_engine_killed_mid_request_ends_both_requests_at_once_and_serves_again(served):
    before = answers(served)
    registry = Registry(served.home).path.read_bytes()
    long = {"max_tokens": 400, "ignore_eos": True}
    out: dict = {}

    def plain():
        out["plain"] = chat(served.url, served.keys["alice"], **long)

    def stream():
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {served.keys['bob']}"},
                          json={"messages": QUESTION, "temperature": 0, "stream": True, **long}) as r:
            out["stream_status"] = r.status_code
            out["events"] = [line for line in r.iter_lines() if line.startswith("data:")]

    threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(served.gateway.inflight.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # both are generating
    t0 = time.monotonic()
    old = kill_engine(served.gateway.engine)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung after the engine died"
    assert time.monotonic() - t0 < 30
    p = out["plain"]
    assert p.status_code == 503 and p.headers.get("retry-after"), p.text
    assert p.json()["error"]["code"] == "engine_unavailable"
    # the stream had started (200): it ends with an OpenAI-shaped error event, not a silent cut
    assert out["stream_status"] == 200
    last = json.loads(out["events"][-1][len("data:"):])
    assert last["error"]["code"] == "engine_unavailable"
    served_again(served, old)
    assert answers(served) == before
    assert Registry(served.home).path.read_bytes() == registry  # nothing stored changed


@pytest.mark.vllm
def test_engine_killed_while_it_loads_a_new_version_serves_that_version_after_the_restart(served, tmp_path):
    gw = served.gateway
    real_post = gw.client.post
    fired = threading.Event()

    async def post(url, *a, **kw):  # the kill lands while vLLM is loading the new adapter
        if str(url).endswith("/v1/load_lora_adapter") and not fired.is_set():
            fired.set()
            threading.Timer(0.05, kill_engine, [gw.engine]).start()
        return await real_post(url, *a, **kw)

    gw.client.post = post
    old = gw.engine.pid
    try:
        v = Registry(served.home).publish("alice", served.ads["a2"], served.base, 16)
        assert fired.wait(30), "the gateway never loaded the new version"
        statuses = set()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            r = chat(served.url, served.keys["alice"])
            statuses.add(r.status_code)
            if r.status_code == 200 and r.json()["model"] == v.name:
                break
            if r.status_code == 503:
                assert r.headers.get("retry-after")
            time.sleep(0.5)
        else:
            pytest.fail(f"{v.name} never served after the restart (statuses {statuses})")
    finally:
        gw.client.post = real_post
    assert statuses <= {200, 503}, statuses
    assert gw.engine.pid != old and gw.engine.restarts >= 1
    rec = Registry(served.home).load()["alice"].versions[v.version]
    assert rec.status != "failed"  # a dying engine is not a bad adapter


@pytest.mark.vllm
def test_a_killed_gateway_takes_its_engine_along_and_a_new_one_serves_the_same(tmp_path, smollm2_dir):
    from serving.engine import free_port
    from serving.gateway import read_status
    from serving.tenants import TenantStore

    home = tmp_path / "home"
    key = TenantStore(home).add("dora")[1]
    Registry(home).publish("dora", make_adapter(smollm2_dir, tmp_path / "d1", seed=5, scale=2.0), smollm2_dir, 16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [BAKEHOUSE, "serve", "--home", str(home), "--port", str(port), "--model", str(smollm2_dir),
           "--kv-cache-gib", "0.5", "--max-model-len", "1024", "--max-lora-rank", "16"]

    def start():
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    gw = start()
    try:
        wait_ready(url, 600)
        first = chat(url, key).json()
        engine_pid = read_status(home)["engine"]["pid"]
        gw.kill()
        gw.wait(30)
        deadline = time.monotonic() + 30
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(engine_pid), "vLLM outlived its gateway"
        with pytest.raises(httpx.ConnectError):
            chat(url, key)
        gw = start()
        wait_ready(url, 600)
        again = chat(url, key).json()
        assert again["model"] == first["model"] == "dora@v1"
        assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    finally:
        gw.terminate()
        gw.wait(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent, the killed gateway, is gone)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# -- files and disks -------------------------------------------------------------------------------


@pytest.mark.vllm
def test_a_corrupt_registry_keeps_the_served_versions_and_names_the_file(served):
    reg = Registry(served.home)
    good = reg.path.read_bytes()
    before = answers(served)
    try:
        reg.path.write_text('{"schema": 1, "tenants": ')  # a half-written file
        time.sleep(1.0)  # several gateway polls
        assert answers(served) == before  # the last good registry keeps serving
        with pytest.raises(RegistryError, match="registry.json"):
            reg.publish("alice", served.ads["a1"], served.base, 16)
        p = subprocess.run([BAKEHOUSE, "adapters", "list", "--home", str(served.home)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "registry.json" in p.stderr and "Traceback" not in p.stderr
    finally:
        reg.path.write_bytes(good)
    assert reg.path.read_bytes() == good  # the failed publish wrote nothing over it
    time.sleep(1.0)
    assert answers(served) == before


def test_a_full_disk_at_publish_changes_nothing(home, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    reg = Registry(home)
    src = make_adapter(tiny_model_dir, tmp_path / "a", r=4)
    v1 = reg.publish("alice", src, tiny_model_dir, 16)
    before, listing = reg.path.read_bytes(), sorted(p.name for p in reg.root.joinpath("alice").iterdir())

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:  # the copy fails
        m.setattr(shutil, "copy2", full)
        with pytest.raises(RegistryError, match="No space left on device.*unchanged"):
            reg.publish("alice", src, tiny_model_dir, 16)
    with monkeypatch.context() as m:  # the copy succeeds, writing the new pointer fails
        m.setattr(os, "fsync", full)
        with pytest.raises(RegistryError, match="No space left on device"):
            reg.publish("alice", src, tiny_model_dir, 16)
    assert reg.path.read_bytes() == before
    assert sorted(p.name for p in reg.root.joinpath("alice").iterdir()) == listing  # no half version left
    assert reg.load()["alice"].current == v1.version
    assert reg.publish("alice", src, tiny_model_dir, 16).version > v1.version  # and the disk is fine again


def test_a_locked_db_is_a_clear_error_and_loses_nothing(home):
    from memory import MemoryStore
    from memory.errors import StoreUnavailable

    with MemoryStore.in_home(home) as store:
        kept = store.add("alice", "fact", "The bakery opens at six.")
    db_path = store.path
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="locked"):  # opening it or adding to it
            with MemoryStore(db_path, busy_timeout=0.5) as store:
                store.add("alice", "fact", "The oven is blue.")
        # the CLI waits for the lock (its busy timeout) instead of failing at once
        p = subprocess.Popen([BAKEHOUSE, "remember", "--home", str(home), "--tenant", "alice", "--kind", "fact",
                              "The oven is blue."], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert p.poll() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    with MemoryStore.in_home(home) as store:
        texts = [m.text for m in store.memories("alice")]
    assert sorted(texts) == sorted([kept.text, "The oven is blue."])
