"""Full-vocabulary KL between the prompted teacher and the un-prompted student, on generated
positions only. Logits are computed only where a loss is taken (the LM head over 49k tokens is a
large share of a small model's compute), and the teacher's shared prompt prefix is run once."""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(dtype: str):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=_DTYPES[dtype])


def causal_lm(model):
    """The plain *ForCausalLM under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest shared prefix, leaving each sequence at least one token of its own."""
    if not seqs:
        return 0
    limit = min(map(len, seqs)) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def pad_right(seqs: list[list[int]], pad: int):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def gen_positions(ctx_lens: list[int], gen_lens: list[int]):
    """(rows, cols) of the logits that predict each generated token: the token at ctx+j is
    predicted at ctx+j-1. Padding and the context itself are never scored."""
    rows, cols = [], []
    for i, (c, g) in enumerate(zip(ctx_lens, gen_lens)):
        rows += [i] * g
        cols += range(c - 1, c - 1 + g)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def logits_at(model, ids, mask, rows, cols, past=None, layers: bool = False):
    """Logits (N, V) at the given positions only; with `layers`, also every decoder layer's
    output there, (N, L, H) (transformers gives the last layer's after the final norm)."""
    lm = causal_lm(model)
    if past is not None:  # the cached prefix is attended to by every row
        mask = torch.cat([torch.ones(ids.shape[0], past.get_seq_length(), dtype=mask.dtype), mask], 1)
    hidden = lm.model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=past is not None,
                      output_hidden_states=layers)
    h = hidden.last_hidden_state[rows, cols]  # (N, H)
    if not layers:
        return lm.lm_head(h)  # (N, V)
    # hidden_states[0] is the embedding, the same token for teacher and student: not compared
    return lm.lm_head(h), torch.stack([x[rows, cols] for x in hidden.hidden_states[1:]], 1)


@torch.inference_mode()
def sequence_logprobs(model, contexts: list[list[int]], gens: list[list[int]], pad: int,
                      batch_size: int = 16, dtype: str = "float32", store: str = "float16",
                      share_prefix: bool = True, layers: bool = False):
    """Full-vocabulary log-probs (len(gen_i), V) of `model` at each generated position of
    context_i + gen_i. The prefix all contexts share (the system prompt) is computed once and its
    KV cache reused by every batch: the teacher's long prompt is not re-read per trajectory.
    With `layers`, each item is a pair (log-probs, the layers' hidden states (len(gen_i), L, H)),
    from the same pass, stored in `store` too."""
    p = common_prefix_len(contexts) if share_prefix else 0
    past = None
    lm = causal_lm(model)
    with autocast(dtype):
        if p > 0:
            past = lm.model(input_ids=torch.tensor([contexts[0][:p]]), use_cache=True).past_key_values
        out: list[torch.Tensor] = []
        for i in range(0, len(contexts), batch_size):
            ctx = [c[p:] for c in contexts[i : i + batch_size]]
            gen = gens[i : i + batch_size]
            ids, mask = pad_right([c + g for c, g in zip(ctx, gen)], pad)
            rows, cols = gen_positions([len(c) for c in ctx], [len(g) for g in gen])
            cache = None
            if past is not None:
                cache = copy.deepcopy(past)
                cache.batch_repeat_interleave(len(ctx))
            sizes = [len(g) for g in gen]
            if layers:
                logits, hid = logits_at(model, ids, mask, rows, cols, cache, layers=True)
            else:
                logits, hid = logits_at(model, ids, mask, rows, cols, cache), None
            lp = list(F.log_softmax(logits.float(), -1).to(_DTYPES[store]).split(sizes))
            out += lp if hid is None else list(zip(lp, hid.to(_DTYPES[store]).split(sizes)))
    return out


def grouped_logprobs(model, contexts: list[list[int]], gens: list[list[int]], groups: list, **kw) -> list[torch.Tensor]:
    """`sequence_logprobs` per group of contexts with the same `groups` key (their system
    prompt), so each group's shared prefix is read once; results in the order given."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list = [None] * len(contexts)
    for idx in members.values():
        for i, lp in zip(idx, sequence_logprobs(model, [contexts[i] for i in idx], [gens[i] for i in idx], **kw)):
            out[i] = lp
    return out


def kl_per_position(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the full vocabulary at each position: (N, V) -> (N,)."""
    s = F.log_softmax(student_logits.float(), -1)
    return F.kl_div(s, teacher_logprobs.float(), log_target=True, reduction="none").sum(-1)


def hidden_l1(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Deep Context Distillation's hidden-state term (Caccia et al. 2025, arXiv 2503.08727): per
    position, the L1 distance of each layer's hidden state to the teacher's, divided by the
    teacher's L1 norm there, averaged over layers: (N, L, H) x2 -> (N,)."""
    s, t = student_hidden.float(), teacher_hidden.float()
    return ((s - t).abs().sum(-1) / t.abs().sum(-1).clamp_min(1e-6)).mean(-1)


def sharpen(teacher_logprobs: torch.Tensor, weight: float) -> torch.Tensor:
    """Log of (1 - weight) * teacher + weight * one-hot(the teacher's most likely token), per
    position: KL(sharpened || student) = (1 - weight) * KL(teacher || student) + weight * the
    cross-entropy of the student on the teacher's greedy token, up to a constant in the student.
    Stored as the input is, so a sharpened cache costs nothing more to train on."""
    p = teacher_logprobs.float().exp() * (1 - weight)
    p[torch.arange(p.shape[0]), teacher_logprobs.argmax(-1)] += weight
    return p.log().to(teacher_logprobs.dtype)


def batch_kl(model, contexts, gens, teacher: list[torch.Tensor], pad: int, dtype: str,
             share_prefix: bool = True, kl_fn=kl_per_position, teacher_hidden: list[torch.Tensor] | None = None):
    """Per-position KL of `model` (student, no prompt) against cached teacher log-probs.

    The prefix the batch's contexts share (the chat template's default system turn) is run once
    and its KV cache broadcast to every row; gradients flow back through it, so this equals the
    plain batched forward while skipping (B-1) copies of the prefix. `kl_fn` computes the KL from
    (student logits, teacher log-probs), e.g. a compiled `kl_per_position`. With `teacher_hidden`
    (the teacher's layers at the same positions), returns (KL, `hidden_l1`), both (N,)."""
    p = common_prefix_len(contexts) if share_prefix and len(contexts) > 1 else 0
    ctx = [c[p:] for c in contexts]
    ids, mask = pad_right([c + g for c, g in zip(ctx, gens)], pad)
    rows, cols = gen_positions([len(c) for c in ctx], [len(g) for g in gens])
    with autocast(dtype):
        past = None
        if p > 0:
            past = causal_lm(model).model(input_ids=torch.tensor([contexts[0][:p]]), use_cache=True).past_key_values
            past.batch_repeat_interleave(len(ctx))
        if teacher_hidden is None:
            logits = logits_at(model, ids, mask, rows, cols, past)
        else:
            logits, hid = logits_at(model, ids, mask, rows, cols, past, layers=True)
    # outside autocast: CPU autocast refuses float16 inputs (the teacher cache) to cat and friends
    kl = kl_fn(logits, torch.cat(teacher))
    return kl if teacher_hidden is None else (kl, hidden_l1(hid, torch.cat(teacher_hidden)))


@torch.inference_mode()
def mean_kl(model, contexts, gens, teacher, pad: int, dtype: str, batch_size: int = 16) -> float:
    """Token-averaged KL (nats/token) over a set of trajectories."""
    return grouped_kl(model, contexts, gens, teacher, pad, dtype, batch_size)["all"]


@torch.inference_mode()
def grouped_kl(model, contexts, gens, teacher, pad: int, dtype: str, batch_size: int = 16,
               groups: list[str] | None = None) -> dict[str, float]:
    """Token-averaged KL overall ("all") and per group label (e.g. the context's source)."""
    groups = groups or ["all"] * len(contexts)
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for i in range(0, len(contexts), batch_size):
        sl = slice(i, i + batch_size)
        kl = batch_kl(model, contexts[sl], gens[sl], teacher[sl], pad, dtype)
        for g, part in zip(groups[sl], kl.split([len(x) for x in gens[sl]])):
            for key in {g, "all"}:
                total[key] = total.get(key, 0.0) + float(part.sum())
                count[key] = count.get(key, 0) + part.numel()
    return {k: total[k] / max(count[k], 1) for k in total} or {"all": 0.0}


@torch.inference_mode()
def prompt_weights(model, contexts, gens, teacher, pad: int, dtype: str, batch_size: int = 16,
                   mix: float = 0.5) -> list[torch.Tensor]:
    """Per generated position, how much the prompt matters there: (1 - mix) + mix * KL(teacher ||
    model without the prompt) / its mean over all positions. `contexts` are the prompt-less ones,
    `teacher` the cached log-probs; the model's own log-probs are never stored."""
    kls: list[torch.Tensor] = []
    for i in range(0, len(contexts), batch_size):
        sl = slice(i, i + batch_size)
        kl = batch_kl(model, contexts[sl], gens[sl], teacher[sl], pad, dtype).float()
        kls += list(kl.split([len(g) for g in gens[sl]]))
    mean = float(torch.cat(kls).mean()) if kls else 0.0
    if mean <= 0:
        return [torch.ones_like(k) for k in kls]
    return [(1 - mix) + mix * k / mean for k in kls]
