"""Shared fixtures. No test touches the real data home; none uses the network.

- `home` (autouse): BAKEHOUSE_HOME points at a fresh tmp dir for every test.
- `tiny_model_dir`: a tiny randomly initialised Llama (+ the real SmolLM2 tokenizer when it is
  installed, else a byte-level one) saved once per session, for fast unit tests.
- `smollm2_dir`: the real SmolLM2-135M-Instruct, materialised once per session into a shared cache.
"""
from __future__ import annotations

import os
from pathlib import Path

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
