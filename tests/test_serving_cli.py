"""`bakehouse tenants ...` and `bakehouse adapters ...` through click's CliRunner (no engine)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from serving_helpers import corrupt_copy, make_adapter

from agent.cli import cli
from serving.tenants import TenantStore, authenticate, key_index


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_model_dir):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("cli") / "lora", seed=5)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_tenants_add_prints_the_key_once_and_list(home):
    r = run("tenants", "add", "alice")
    assert r.exit_code == 0, r.output
    key = r.output.strip().splitlines()[-1]
    assert authenticate(key_index(TenantStore(home).load()), key) == "alice"
    r = run("tenants", "list")
    assert "alice" in r.output and key not in r.output and "base" in r.output
    r = run("tenants", "add", "alice")
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output


def test_publish_list_rollback(home, lora, tiny_model_dir, tmp_path):
    run("tenants", "add", "alice")
    for _ in range(2):
        r = run("adapters", "publish", "alice", lora, "--model", tiny_model_dir)
        assert r.exit_code == 0, r.output
    assert "published alice@v2" in r.output and "no gateway running" in r.output
    r = run("adapters", "list", "alice")
    lines = r.output.splitlines()
    assert any(ln.startswith("* alice@v2") for ln in lines) and any(ln.startswith("  alice@v1") for ln in lines)
    r = run("adapters", "rollback", "alice", "v1")
    assert r.exit_code == 0 and "alice@v1" in r.output
    reg = json.loads((home / "adapters/registry.json").read_text())
    assert reg["tenants"]["alice"]["current"] == 1
    assert "alice@v1" in run("tenants", "list").output


@pytest.mark.parametrize(
    "args, message",
    [
        (("adapters", "publish", "nobody", "{lora}", "--model", "{base}"), "no tenant named 'nobody'"),
        (("adapters", "publish", "alice", "{bad}", "--model", "{base}"), "corrupt safetensors"),
        (("adapters", "publish", "alice", "{lora}", "--model", "{base}", "--max-rank", "4"), "exceeds"),
        (("adapters", "rollback", "alice", "v7"), "no published adapters"),
        (("adapters", "rollback", "alice", "latest"), "VERSION must look like"),
        (("adapters", "list", "zed"), "has no published adapters"),
        (("tenants", "add", "Bad Name"), "invalid tenant name"),
    ],
)
def test_user_errors_are_one_line(home, lora, tiny_model_dir, tmp_path, args, message):
    run("tenants", "add", "alice")
    bad = corrupt_copy(lora, tmp_path / "bad")
    fill = {"{lora}": lora, "{base}": tiny_model_dir, "{bad}": bad}
    r = run(*[fill.get(a, a) for a in args])
    assert r.exit_code != 0 and message in r.output, r.output
    assert "Traceback" not in r.output
    assert not list((home / "adapters").glob("*/v*"))  # nothing was published
