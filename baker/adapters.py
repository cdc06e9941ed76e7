"""Operations on baked adapters: half-baking by strength, and exact stacking of layers.

A LoRA layer adds ΔW = s·B·A (s = alpha / r) to each target weight.
- Half-baking: scaling B by α gives exactly α·ΔW — a prompt strength between 0 (the base) and 1
  (fully baked); above 1 over-bakes. (Early epochs, `checkpoints/epoch-N`, are the other kind.)
- Stacking: concatenating the A's (rows) and the B's (columns) of several layers gives one adapter
  whose ΔW is exactly the sum of theirs; ranks add up. Each layer's own scale is folded into its
  B so the stack can carry a single alpha = r_total (scale 1).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import AdapterError
from .outputs import prepare_output, replace_output, temp_dir

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a PEFT LoRA dir; a clear AdapterError if it is not one."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
        tensors = load_file(str(path / WEIGHTS))
    except FileNotFoundError as e:
        raise AdapterError(f"not a PEFT adapter directory ({e.filename} missing): {path}") from e
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise AdapterError(f"corrupt adapter in {path}: {e}") from e
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path} is a {config.get('peft_type')} adapter, not LoRA")
    if config.get("use_dora") or config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{path}: DoRA, rsLoRA or per-module rank/alpha: not scaled or stacked exactly here")
    return config, tensors


def _write_adapter(out: str | os.PathLike, config: dict, tensors: dict, extra: dict, force: bool = False) -> Path:
    """Write the adapter (kind `extra["kind"]`, recorded in bake.json) to `out`. An existing `out`
    is replaced only if bakehouse wrote it, another kind only with `force` (baker/outputs.py)."""
    kind = extra["kind"]
    out = prepare_output(out, kind, force)
    tmp = temp_dir(out)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        (tmp / "bake.json").write_text(json.dumps(extra, indent=2))
        replace_output(tmp, out, kind, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def scale_adapter(src: str | os.PathLike, out: str | os.PathLike, strength: float, force: bool = False) -> Path:
    """Half-bake: write an adapter whose update is `strength` × the update of `src`."""
    if not (strength >= 0):
        raise AdapterError(f"strength must be >= 0, got {strength!r}")
    config, tensors = read_adapter(src)
    scaled = {k: (v * strength if "lora_B" in k else v) for k, v in tensors.items()}
    return _write_adapter(out, config, scaled, {"kind": "half-baked", "source": str(Path(src).resolve()),
                                                "strength": strength}, force)


def stack_adapters(layers: list[str | os.PathLike], out: str | os.PathLike,
                   weights: list[float] | None = None, force: bool = False) -> Path:
    """One adapter whose update is exactly Σ wᵢ·ΔWᵢ of `layers` (rank = Σ rᵢ)."""
    if not layers:
        raise AdapterError("nothing to stack")
    weights = weights or [1.0] * len(layers)
    read = [read_adapter(p) for p in layers]
    modules = set(read[0][1])
    for (cfg, t), p in zip(read[1:], layers[1:]):
        if set(t) != modules:
            raise AdapterError(f"{p} adapts other modules than {layers[0]}: stack layers of one base/config")
    a_keys = sorted(k for k in modules if "lora_A" in k)
    stacked = {}
    for a_key in a_keys:
        b_key = a_key.replace("lora_A", "lora_B")
        As, Bs = [], []
        for (cfg, t), w in zip(read, weights):
            s = cfg["lora_alpha"] / cfg["r"]
            As.append(t[a_key])  # (r, in)
            Bs.append(t[b_key] * (s * w))  # (out, r), the layer's scale folded in
        stacked[a_key] = torch.cat(As, 0)
        stacked[b_key] = torch.cat(Bs, 1)
    rank = sum(cfg["r"] for cfg, _ in read)
    config = dict(read[0][0], r=rank, lora_alpha=rank)  # scale alpha/r = 1: the B's carry the scales
    config.pop("rank_pattern", None), config.pop("alpha_pattern", None)
    return _write_adapter(out, config, stacked, {"kind": "stack", "layers": [str(Path(p).resolve()) for p in layers],
                                                  "weights": weights, "rank": rank}, force)
