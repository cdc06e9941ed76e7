"""Adapter validation: refuse, before anything changes, what vLLM would refuse or serve wrongly.

Checks, in order: the PEFT config (LoRA only; no DoRA, bias, modules_to_save, PiSSA/OLoRA-style
inits; rank <= the engine's max), then the weights themselves: a readable safetensors file whose
every tensor is a lora_A/lora_B pair on a linear layer of *this* base model with matching shapes
(read from the base's safetensors header, so no model is loaded) and finite values.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterValidationError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_UNSUPPORTED_MODULES = ("embed_tokens", "lm_head")  # vLLM LoRA targets linear layers only here
_PLAIN_INITS = (True, False, "gaussian", None)  # anything else rewrites the base (PiSSA, OLoRA...)


@dataclass(frozen=True)
class AdapterInfo:
    rank: int  # largest rank over all modules
    target_modules: tuple[str, ...]
    n_tensors: int
    base_model_name: str | None


def base_linear_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """{'model.layers.0.self_attn.q_proj': (out, in), ...} from the base's safetensors header."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise AdapterValidationError(f"base model has no safetensors weights: {model_dir}")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                if k.endswith(".weight"):
                    shapes[k[: -len(".weight")]] = tuple(fh.get_slice(k).get_shape())
    return shapes


def _check_config(cfg: dict, max_rank: int) -> None:
    def refuse(why: str):
        raise AdapterValidationError(f"{ADAPTER_CONFIG}: {why}")

    if str(cfg.get("peft_type", "")).upper() != "LORA":
        refuse(f"peft_type must be LORA, got {cfg.get('peft_type')!r}")
    if cfg.get("use_dora"):
        refuse("DoRA adapters are not supported by vLLM (use_dora=true)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        refuse("LoRA bias is not supported by vLLM (bias/lora_bias set)")
    if cfg.get("modules_to_save"):
        refuse(f"modules_to_save is not supported: {cfg['modules_to_save']}")
    if cfg.get("init_lora_weights", True) not in _PLAIN_INITS:
        refuse(f"init_lora_weights={cfg['init_lora_weights']!r} changes the base weights; not servable")
    if cfg.get("target_parameters") or cfg.get("trainable_token_indices"):
        refuse("target_parameters/trainable_token_indices are not supported")
    ranks = [cfg.get("r", 0), *(cfg.get("rank_pattern") or {}).values()]
    if max(ranks) > max_rank:
        refuse(f"rank {max(ranks)} exceeds the engine's max_lora_rank {max_rank}")


def validate_adapter(adapter_dir: Path, base_dir: Path, max_rank: int) -> AdapterInfo:
    """Raise AdapterValidationError naming the file and the problem, or return what was found."""
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    if not adapter_dir.is_dir():
        raise AdapterValidationError(f"adapter directory not found: {adapter_dir}")
    cfg_path, w_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise AdapterValidationError(f"no {ADAPTER_CONFIG} in {adapter_dir}")
    if not w_path.is_file():
        raise AdapterValidationError(f"no {ADAPTER_WEIGHTS} in {adapter_dir} (safetensors required)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterValidationError(f"cannot read {cfg_path}: {e}") from e
    if not isinstance(cfg, dict):
        raise AdapterValidationError(f"{cfg_path}: not a JSON object")
    _check_config(cfg, max_rank)

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterValidationError(f"corrupt safetensors {w_path}: {e}") from e
    if not tensors:
        raise AdapterValidationError(f"{w_path} holds no tensors")

    base = base_linear_shapes(base_dir)
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise AdapterValidationError(f"{w_path}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        module = m["module"]
        if module.rsplit(".", 1)[-1] in _UNSUPPORTED_MODULES:
            raise AdapterValidationError(f"{w_path}: LoRA on {module} is not supported")
        if t.dim() != 2:
            raise AdapterValidationError(f"{w_path}: {key} is not a matrix (shape {tuple(t.shape)})")
        if not bool(t.float().isfinite().all()):
            raise AdapterValidationError(f"{w_path}: {key} holds NaN or inf")
        pairs.setdefault(module, {})[m["ab"]] = tuple(t.shape)

    missing = sorted(m for m in pairs if m not in base)
    if missing:
        raise AdapterValidationError(
            f"{w_path}: {len(missing)} target module(s) do not exist in the base model "
            f"{base_dir.name}, e.g. {missing[0]} (adapter trained on another base?)"
        )
    max_seen = 0
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterValidationError(f"{w_path}: {module} has lora_{'A' if 'A' in ab else 'B'} only")
        out_f, in_f = base[module][0], base[module][-1]
        (ra, a_in), (b_out, rb) = ab["A"], ab["B"]
        if ra != rb or a_in != in_f or b_out != out_f:
            raise AdapterValidationError(
                f"{w_path}: {module} A{ab['A']} B{ab['B']} does not fit the base weight "
                f"({out_f}, {in_f}) of {base_dir.name} (adapter trained on another base?)"
            )
        if ra > max_rank:
            raise AdapterValidationError(f"{w_path}: {module} rank {ra} exceeds max_lora_rank {max_rank}")
        max_seen = max(max_seen, ra)

    targets = tuple(sorted({m.rsplit(".", 1)[-1] for m in pairs}))
    return AdapterInfo(
        rank=max_seen,
        target_modules=targets,
        n_tensors=len(tensors),
        base_model_name=cfg.get("base_model_name_or_path"),
    )
