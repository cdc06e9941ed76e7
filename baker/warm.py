"""A base model kept loaded between bakes: `bake(..., base=WarmBase())` in a long-lived process
loads and sets up the model once, not once per bake.

Each bake gets the base exactly as loaded: a parent stack is added into the weights it touches
(ΔW = s·B·A per target module, as `merge_and_unload` would) after keeping a copy of those weights,
and `give_back` removes the student's LoRA modules (`unload`, nothing merged) and copies the kept
weights back, so no bake sees what an earlier one merged or trained.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapters import read_adapter
from .models import load_model

_PREFIX = "base_model.model."


class WarmBase:
    def __init__(self):
        self.key: tuple | None = None
        self.model = None
        self.tok = None
        self.loads = 0  # how many times a model was read from disk
        self.bakes = 0
        self._kept: dict[str, torch.Tensor] = {}  # parameter name -> its weights as loaded
        self._lent = False

    def take(self, model_dir: Path, dtype: torch.dtype, parent: Path | None):
        """(model, tokenizer): the base at `model_dir` in `dtype`, with `parent` added in."""
        if self._lent:
            raise RuntimeError("the warm base is lent to a bake that has not given it back")
        key = (str(Path(model_dir).resolve()), str(dtype))
        if key != self.key:
            self.model = self.tok = None
            self._kept = {}
            self.model, self.tok = load_model(Path(model_dir), dtype=dtype, attn_implementation="eager")
            self.key, self.loads = key, self.loads + 1
        if parent is not None:
            self._merge(Path(parent))
        self._lent, self.bakes = True, self.bakes + 1
        return self.model, self.tok

    def give_back(self) -> None:
        """After a bake, finished or failed: the student's LoRA modules out, the weights as loaded."""
        _strip_lora(self.model)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, w in self._kept.items():
                params[name].copy_(w)
        self._lent = False

    def _merge(self, parent: Path) -> None:
        config, tensors = read_adapter(parent)
        scale = config["lora_alpha"] / config["r"]
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, a in tensors.items():
                if ".lora_A." not in key:
                    continue
                module = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
                module = module.split(".lora_A.")[0]
                name = f"{module}.weight"
                if name not in params:
                    raise ValueError(f"{parent}: the adapter targets {module}, which the model does not have")
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                w = params[name]
                if name not in self._kept:
                    self._kept[name] = w.detach().clone()
                w.add_((scale * (b.float() @ a.float())).to(w.dtype))


def _strip_lora(model) -> None:
    """Put each LoRA-wrapped module's own base layer back in its place (what PEFT's `unload` does,
    on the model PEFT injected into, which is the one kept here)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
