"""Shared fixtures. No test touches the real data home; none uses the network.

- `home` (autouse): BAKEHOUSE_HOME points at a fresh tmp dir for every test.
- `tiny_model_dir`: a tiny randomly initialised Llama (+ the real SmolLM2 tokenizer when it is
  installed, else a byte-level one) saved once per session, for fast unit tests.
- `smollm2_dir`: the real SmolLM2-135M-Instruct, materialised once per session into a shared cache.
- `served` (per module, skipped without vLLM): a real gateway + vLLM on SmolLM2 in this process.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():  # CI clones main with shared/ beside it; a local checkout may differ
    SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("BAKEHOUSE_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def model_cache_home(tmp_path_factory) -> Path:
    """A data home shared by the whole session, so the real model is materialised once.
    BAKEHOUSE_TEST_MODEL_HOME reuses one across sessions (developer machines)."""
    env = os.environ.get("BAKEHOUSE_TEST_MODEL_HOME")
    return Path(env) if env else tmp_path_factory.mktemp("model-home")


@pytest.fixture(scope="session")
def smollm2_dir(model_cache_home) -> Path:
    from baker.models import ensure_default_model

    return ensure_default_model(model_cache_home)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer/chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def headlines() -> list[dict]:
    import json

    path = SHARED_DATA / "headlines.jsonl"
    if not path.is_file():
        pytest.skip(f"fixture data not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_dir):
    """Tenants alice (adapter a1 as v1), bob (b1 as v1) and carol (the base) behind a real gateway
    and vLLM: SimpleNamespace(home, url, keys, ads, gateway, base). One engine per test module."""
    pytest.importorskip("vllm")
    import uvicorn
    from serving_helpers import make_adapter, wait_ready

    from serving.config import ServeConfig
    from serving.engine import free_port
    from serving.gateway import Gateway, create_app
    from serving.registry import Registry
    from serving.tenants import TenantStore

    home = tmp_path_factory.mktemp("serve-home")
    src = tmp_path_factory.mktemp("serve-adapters")
    ads = {
        "a1": make_adapter(smollm2_dir, src / "a1", seed=1, scale=2.0),
        "b1": make_adapter(smollm2_dir, src / "b1", seed=2, scale=3.0),
        "a2": make_adapter(smollm2_dir, src / "a2", seed=3, scale=3.0),
    }
    store = TenantStore(home)
    keys = {n: store.add(n)[1] for n in ("alice", "bob", "carol")}
    reg = Registry(home)
    reg.publish("alice", ads["a1"], smollm2_dir, 16)
    reg.publish("bob", ads["b1"], smollm2_dir, 16)
    cfg = ServeConfig(
        model_dir=smollm2_dir, port=free_port(), max_loras=4, max_cpu_loras=8, max_lora_rank=16,
        kv_cache_bytes=512 << 20, max_model_len=1024, max_num_seqs=32, startup_timeout=600,
    )
    gateway = Gateway(cfg, home)
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{cfg.port}"
    try:
        wait_ready(url, 600)
        yield SimpleNamespace(home=home, url=url, keys=keys, ads=ads, gateway=gateway, base=smollm2_dir)
    finally:
        server.should_exit = True
        thread.join(60)
        gateway.engine.stop()  # idempotent; makes sure no vLLM outlives the tests
