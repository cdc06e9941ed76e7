"""torch.compile for the bake's training step: each decoder layer, and the full-vocabulary KL.

A 135M model's training step on CPU is dominated by small ops around the matmuls (norms, rotary,
LoRA scaling, dtype casts, the 49k-wide softmax of the loss); inductor fuses them. Layers are
compiled one by one, not the whole model, so the 30 identical layers share one compiled graph and
the first compile costs ~45 s on 2 cores (~11 s from inductor's on-disk cache afterwards) instead of
minutes. Shapes are dynamic, so batches of other lengths do not recompile.

Only training runs compiled: the teacher pass and the evaluations run eagerly
(`eager()`), so they cost no extra graphs. A model or machine inductor cannot handle (no C++
compiler, an unsupported layer) falls back to eager with a warning: the result is the same, only
slower.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from .kl import causal_lm, kl_per_position

_kl_compiled = None


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks, found by the class names transformers marks as never split
    across devices (`_no_split_modules`, e.g. LlamaDecoderLayer)."""
    lm = causal_lm(model)
    names = set(getattr(lm, "_no_split_modules", None) or [])
    return [m for m in lm.modules() if type(m).__name__ in names]


def compile_layers(model) -> list[torch.nn.Module]:
    """Compile each decoder layer in place (dynamic shapes). Returns the layers compiled; an empty
    list when the model names none."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return layers


def uncompile(layers: list[torch.nn.Module]) -> None:
    for layer in layers:
        layer._compiled_call_impl = None


def compiled_kl():
    """`kl_per_position`, compiled once per process (dynamic shapes)."""
    global _kl_compiled
    if _kl_compiled is None:
        _kl_compiled = torch.compile(kl_per_position, dynamic=True)
    return _kl_compiled


@contextmanager
def eager():
    """Run everything compiled by torch.compile eagerly inside this block (no new graphs)."""
    with torch.compiler.set_stance("force_eager"):
        yield


def compile_failed(error: Exception) -> None:
    warnings.warn(f"torch.compile failed, training eagerly instead (same result, slower): "
                  f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  RuntimeWarning, stacklevel=2)
