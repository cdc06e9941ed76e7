"""Does an adapter hold a behaviour (a persona, an instruction)? A behaviour has no name or number
to ask about, so it is checked as Prompt Baking defines success: on requests the bake did not
train on, the model with the adapter and no prompt should be close to the base model with the
behaviour as its system prompt, much closer than the base model without it.

Per behaviour memory u, over the shipped anchor questions (never trained on when a prompt has a
behaviour line, see `baker.baking`) and the prompted model's own greedy answers to them:

    kl_base  = KL( P(· | u) ‖ P_base(·) )       what the behaviour changes
    kl_baked = KL( P(· | u) ‖ P_adapter(·) )    what the adapter still misses

token-averaged, full vocabulary. The memory holds when kl_baked <= max_ratio × kl_base: the weights
carry at least (1 - max_ratio) of the prompt's effect. One HF model, greedy, on CPU a few seconds
per memory on SmolLM2-135M.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .contexts import anchor_questions

MAX_RATIO = 0.5  # kl_baked / kl_base at most this: the adapter carries half the prompt's effect
REQUESTS = 12  # anchor questions asked per memory


@dataclass
class BehaviourResult:
    item_id: Any
    kl_base: float
    kl_baked: float
    passed: bool
    requests: int

    @property
    def ratio(self) -> float:
        return self.kl_baked / self.kl_base if self.kl_base > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


def check_behaviours(model_dir, adapter_dir, items: list[tuple[Any, str]], requests: int = REQUESTS,
                     max_new_tokens: int = 32, max_ratio: float = MAX_RATIO) -> dict[Any, BehaviourResult]:
    """`BehaviourResult` per (item_id, text) of `items` for the adapter at `adapter_dir` (None:
    the base model itself, which holds no behaviour)."""
    import torch

    from .chat import chat_ids
    from .kl import mean_kl, sequence_logprobs
    from .sampling import HFSampler

    if not items:
        return {}
    questions = anchor_questions()[:requests]
    sampler = HFSampler(Path(model_dir), adapter_dir)
    model, tok = sampler.model, sampler.tok
    pad = tok.pad_token_id
    plain = [chat_ids(tok, q) for q in questions]
    out: dict[Any, BehaviourResult] = {}
    try:
        for item_id, text in items:
            prompted = [chat_ids(tok, q, text) for q in questions]
            gens = sampler.generate(prompted, max_new_tokens, temperature=None, use_adapter=False)
            keep = [i for i, g in enumerate(gens) if g]
            if not keep:
                out[item_id] = BehaviourResult(item_id, 0.0, 0.0, False, 0)
                continue
            ctx, gen, plain_k = [prompted[i] for i in keep], [gens[i] for i in keep], [plain[i] for i in keep]
            with torch.inference_mode(), model.disable_adapter() if adapter_dir is not None else nullcontext():
                teacher = sequence_logprobs(model, ctx, gen, pad, store="float32")
                kl_base = mean_kl(model, plain_k, gen, teacher, pad, "float32")
            kl_baked = mean_kl(model, plain_k, gen, teacher, pad, "float32") if adapter_dir is not None else kl_base
            out[item_id] = BehaviourResult(item_id, round(kl_base, 4), round(kl_baked, 4),
                                           kl_base > 0 and kl_baked <= max_ratio * kl_base, len(keep))
    finally:
        sampler.close()
    return out
