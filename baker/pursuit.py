"""Prompt Pursuit (Bhargava et al. 2024, §5): re-prompt the baked model and bake again,
θ_{k+1} = argmin KL( P_θk(· | u) ‖ P_θk+1(·) ). Each round is a sequential bake of the same
prompt on top of the stack so far, so the prompt's effect is amplified round after round."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .adapters import stack_adapters
from .baking import BakeResult, bake
from .config import BakeConfig
from .errors import ConfigError
from .outputs import prepare_output, replace_output

KIND = "prompt-pursuit"


def pursue(model_dir, prompt: str, out_dir: str | os.PathLike, rounds: int = 2,
           config: BakeConfig | None = None, progress: bool = True, force: bool = False,
           parent: str | os.PathLike | None = None, **bake_kwargs) -> list[BakeResult]:
    """Run `rounds` rounds; `out_dir` gets the stack of all layers (one adapter, rank = Σ r),
    `layers/round-K/` for each layer (with its own bake.json) and `pursuit.json`. An existing
    `out_dir` is replaced only if it is a pursuit bakehouse wrote (another kind only with `force`);
    anything else is refused before the first round.

    With `parent` (an adapter the rounds are baked on, as a sequential bake's) every round's
    teacher and student start from the parent plus the rounds before; `out_dir` holds the rounds
    only, not the parent. `bake_kwargs` go to every round's `bake` (exclude_contexts, replay_prompt)."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    config = config or BakeConfig()
    out_dir = prepare_output(out_dir, KIND, force)
    work = out_dir.parent / f".{out_dir.name}.pursuit-{os.getpid()}"
    results: list[BakeResult] = []
    try:
        layers: list[Path] = []
        for k in range(1, rounds + 1):
            below = ([Path(parent)] if parent is not None else []) + layers
            base = None
            if below:
                base = below[0] if len(below) == 1 else stack_adapters(below, work / f"stack-{k}")
            r = bake(model_dir, prompt, work / "final" / "layers" / f"round-{k}",
                     config.replace(seed=config.seed + k - 1), progress=progress, parent=base, **bake_kwargs)
            layers.append(r.adapter_dir)
            results.append(r)
        stack = stack_adapters(layers, work / "stack")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy(stack / name, work / "final" / name)
        record = {"kind": KIND, "rounds": [
            {k: r.metrics[k] for k in ("eval_kl_before", "eval_kl_after", "drift_kl", "prompt_sha256")}
            for r in results]}
        (work / "final" / "pursuit.json").write_text(json.dumps(record, indent=2))
        replace_output(work / "final", out_dir, KIND, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results
