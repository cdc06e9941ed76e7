"""Registry, tenants and adapter validation: fast, no vLLM (a tiny 2-layer Llama as the base)."""
from __future__ import annotations

import json

import pytest
from serving_helpers import corrupt_copy, make_adapter

from serving.errors import AdapterValidationError, RegistryError, TenantError
from serving.registry import Registry, check_tenant_name
from serving.tenants import TenantStore, authenticate, key_index
from serving.validate import validate_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("tiny-adapters")
    return {
        "a": make_adapter(tiny_model_dir, d / "a", seed=1),
        "b": make_adapter(tiny_model_dir, d / "b", seed=2, r=16),
        "mlp": make_adapter(tiny_model_dir, d / "mlp", seed=3, targets=("gate_proj", "up_proj", "down_proj")),
    }


# -- tenants -----------------------------------------------------------------------------------


def test_tenant_key_is_shown_once_and_stored_hashed(home):
    store = TenantStore(home)
    t, key = store.add("alice")
    raw = store.path.read_text()
    assert key.startswith("bh-") and key not in raw and key.split("-", 2)[2] not in raw
    idx = key_index(store.load())
    assert authenticate(idx, key) == "alice"
    assert authenticate(idx, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert authenticate(idx, "bh-nope-nope") is None
    assert authenticate(idx, "") is None and authenticate(idx, "garbage") is None
    _, key2 = store.add("bob")
    idx = key_index(store.load())
    assert authenticate(idx, key2) == "bob" and authenticate(idx, key) == "alice"


@pytest.mark.parametrize("name", ["", "Alice", "a@v1", "../x", "a/b", "x" * 64, "-a"])
def test_bad_tenant_names_are_refused(home, name):
    with pytest.raises(TenantError):
        TenantStore(home).add(name)
    with pytest.raises(RegistryError):
        check_tenant_name(name)


def test_duplicate_and_unknown_tenant(home):
    store = TenantStore(home)
    store.add("alice")
    with pytest.raises(TenantError, match="already exists"):
        store.add("alice")
    with pytest.raises(TenantError, match="no tenant"):
        store.remove("bob")
    store.remove("alice")
    assert store.load() == {}


# -- validation --------------------------------------------------------------------------------


def test_valid_adapters_pass(adapters, tiny_model_dir):
    info = validate_adapter(adapters["a"], tiny_model_dir, max_rank=32)
    assert info.rank == 8 and info.target_modules == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert validate_adapter(adapters["mlp"], tiny_model_dir, 8).target_modules == ("down_proj", "gate_proj", "up_proj")


def _edit_config(src, dst, **changes):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias"),
        ({"lora_bias": True}, "bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": 64}, "exceeds"),
    ],
)
def test_unservable_configs_are_refused(adapters, tiny_model_dir, tmp_path, changes, message):
    bad = _edit_config(adapters["a"], tmp_path / "bad", **changes)
    with pytest.raises(AdapterValidationError, match=message):
        validate_adapter(bad, tiny_model_dir, max_rank=32)


def test_rank_above_engine_max_is_refused(adapters, tiny_model_dir):
    with pytest.raises(AdapterValidationError, match="exceeds"):
        validate_adapter(adapters["b"], tiny_model_dir, max_rank=8)


def test_corrupt_and_missing_files_are_refused(adapters, tiny_model_dir, tmp_path):
    with pytest.raises(AdapterValidationError, match="corrupt safetensors"):
        validate_adapter(corrupt_copy(adapters["a"], tmp_path / "c"), tiny_model_dir, 32)
    with pytest.raises(AdapterValidationError, match="not found"):
        validate_adapter(tmp_path / "nope", tiny_model_dir, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterValidationError, match="adapter_config.json"):
        validate_adapter(tmp_path / "empty", tiny_model_dir, 32)


def test_adapter_for_another_base_is_refused(tmp_path, tiny_model_dir):
    """Same architecture and module names, other sizes: the shapes give it away."""
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(other)
    ad = make_adapter(other, tmp_path / "ad", seed=0)
    with pytest.raises(AdapterValidationError, match="does not fit the base"):
        validate_adapter(ad, tiny_model_dir, 32)
    deeper = tmp_path / "deeper"  # the tiny base's sizes, one more layer
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(deeper)
    with pytest.raises(AdapterValidationError, match="do not exist in the base"):
        validate_adapter(make_adapter(deeper, tmp_path / "ad3", seed=0), tiny_model_dir, 32)


# -- registry ----------------------------------------------------------------------------------


def test_publish_versions_pointer_and_persistence(home, adapters, tiny_model_dir):
    reg = Registry(home)
    v1 = reg.publish("alice", adapters["a"], tiny_model_dir, 32)
    v2 = reg.publish("alice", adapters["b"], tiny_model_dir, 32)
    assert (v1.name, v2.name) == ("alice@v1", "alice@v2")
    assert (home / "adapters/alice/v1/adapter_model.safetensors").is_file()
    assert (home / "adapters/alice/v2/bakehouse-adapter.json").is_file()
    again = Registry(home)  # another process: same state from disk
    assert again.current("alice").name == "alice@v2" and again.current("bob") is None
    assert sorted(again.load()["alice"].versions) == [1, 2]
    assert not list((home / "adapters/alice").glob(".incoming-*"))


def test_corrupt_publish_changes_nothing(home, adapters, tiny_model_dir, tmp_path):
    reg = Registry(home)
    reg.publish("alice", adapters["a"], tiny_model_dir, 32)
    before, stamp = reg.path.read_text(), reg.stamp()
    bad = corrupt_copy(adapters["a"], tmp_path / "bad")
    with pytest.raises(AdapterValidationError, match=str(bad)):  # names the user's dir
        reg.publish("alice", bad, tiny_model_dir, 32)
    assert reg.path.read_text() == before and reg.stamp() == stamp
    assert sorted(p.name for p in (home / "adapters/alice").iterdir()) == ["v1"]


def test_rollback_and_numbers_are_never_reused(home, adapters, tiny_model_dir):
    reg = Registry(home)
    for src in ("a", "b", "a"):
        reg.publish("alice", adapters[src], tiny_model_dir, 32)
    assert reg.rollback("alice", 1).name == "alice@v1"
    assert reg.current("alice").version == 1
    assert reg.publish("alice", adapters["b"], tiny_model_dir, 32).version == 4
    with pytest.raises(RegistryError, match="no version v9"):
        reg.rollback("alice", 9)
    with pytest.raises(RegistryError, match="no published"):
        reg.rollback("bob", 1)


def test_mark_failed_falls_back_to_previous(home, adapters, tiny_model_dir):
    reg = Registry(home)
    reg.publish("alice", adapters["a"], tiny_model_dir, 32)
    reg.publish("alice", adapters["b"], tiny_model_dir, 32)
    assert reg.mark_failed("alice", 2, "engine said no") == 1
    t = reg.load()["alice"]
    assert t.current == 1 and t.versions[2].status == "failed" and t.versions[2].error == "engine said no"
    with pytest.raises(RegistryError, match="failed to load"):
        reg.rollback("alice", 2)
    assert reg.mark_failed("alice", 1, "again") is None  # nothing healthy left: the base serves


@pytest.mark.parametrize("name", ["alice\n", "Alice", "", "-x", "a" * 64, "a/b"])
def test_tenant_names_must_match_whole(name):
    from serving.registry import check_tenant_name

    with pytest.raises(RegistryError):
        check_tenant_name(name)


@pytest.mark.parametrize("name", ["alice", "a", "t0", "team_b-2", "9lives", "a" * 63, "a" * 64, "Alice", "alice\n",
                                  " alice", "", "-x", "_x", "a.b", "a@b", "a/b", "ålice", "a b"])
def test_the_store_and_the_registry_accept_the_same_tenant_names(name):
    """One rule: a tenant that can have memories can be served, and the other way round."""
    from memory.errors import InvalidInput
    from memory.store import check_tenant
    from serving.registry import check_tenant_name

    def ok(check, error):
        try:
            check(name)
            return True
        except error:
            return False

    assert ok(check_tenant, InvalidInput) == ok(check_tenant_name, RegistryError)


# -- files of the wrong shape, symlinks -----------------------------------------------------


@pytest.mark.parametrize("text", [
    "[]", '"registry"', '{"schema": 1, "tenants": []}', '{"schema": 1, "tenants": {"alice": 3}}',
    '{"schema": 1, "tenants": {"alice": {"versions": {"one": {}}}}}',
    '{"schema": 1, "tenants": {"alice": {"versions": {"1": {"tenant": "alice"}}}}}',
    '{"schema": 1, "tenants": {"alice": {"current": 7, "versions": {}}}}',
    '{"schema": 1, "tenants": {"alice": {"current": "1", "versions": {}}}}',
])
def test_a_registry_of_the_wrong_shape_is_a_domain_error_naming_the_file(home, text):
    reg = Registry(home)
    reg.path.write_text(text)
    with pytest.raises(RegistryError, match="registry.json"):
        reg.load()


@pytest.mark.parametrize("text", ["[]", '{"schema": 1, "tenants": []}', '{"schema": 1, "tenants": {"a": 1}}',
                                  '{"schema": 1, "tenants": {"alice": {"name": "alice"}}}'])
def test_a_tenants_file_of_the_wrong_shape_is_a_domain_error_naming_the_file(home, text):
    store = TenantStore(home)
    store.path.write_text(text)
    with pytest.raises(TenantError, match="tenants.json"):
        store.load()


def test_publish_does_not_follow_symlinks_out_of_the_adapter_dir(home, adapters, tiny_model_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    src = tmp_path / "sneaky"
    src.mkdir()
    for f in adapters["a"].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "notes.txt").symlink_to(secret)
    reg = Registry(home)
    with pytest.raises(RegistryError, match="symlink out of the adapter directory"):
        reg.publish("alice", src, tiny_model_dir, 64)
    assert reg.load() == {} and not list((reg.root / "alice").glob("v*"))
    (src / "notes.txt").unlink()
    (src / "README.md").write_text("inside")
    (src / "notes.txt").symlink_to(src / "README.md")  # a link inside the directory is fine
    assert reg.publish("alice", src, tiny_model_dir, 64).version == 1
