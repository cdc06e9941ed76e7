"""The naive reference bake loop, written the way research code usually is: trajectories sampled
one at a time with transformers `generate`, one sample per forward/backward (gradients accumulated
to the bake's batch size, same lr schedule and clipping), float32, and the teacher's logits
recomputed (full prompt, full vocabulary, every position) for every step of every epoch.
Same objective, contexts, LoRA config and held-out evaluation as `baker.bake`; used only by
bench/bake.py as the baseline."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from baker.chat import chat_ids, stop_ids
from baker.config import BakeConfig
from baker.baking import tokens_per_batch, warmup_cosine
from baker.kl import mean_kl
from baker.models import load_model


def naive_bake(model_dir, prompt: str, train_contexts: list[str], heldout: dict, config: BakeConfig,
               target_kl: float, budget_s: float, max_epochs: int, log=print) -> dict:
    """Train until held-out KL <= target_kl, max_epochs or budget_s (eval time not counted)."""
    torch.manual_seed(config.seed)
    model, tok = load_model(model_dir)
    stops = sorted(stop_ids(tok))
    t0, clock = time.perf_counter(), 0.0

    # sample: one trajectory at a time
    trajs = []
    for ctx in train_contexts:
        ids = torch.tensor([chat_ids(tok, ctx, prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=config.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=config.max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
        gen = out[0, ids.shape[1]:].tolist()
        trajs.append((ctx, gen))
    sample_s = time.perf_counter() - t0
    clock += sample_s

    from peft import LoraConfig, get_peft_model

    student = get_peft_model(model, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                               target_modules=list(config.target_modules)))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    # the bake's optimisation (warm-up + cosine over config.epochs, clipping), so that the two
    # differ only in how the work is done; a constant 3e-3 never got below 0.29 here
    steps_per_epoch = math.ceil(len(trajs) / config.batch_size)
    batch_tokens = tokens_per_batch([g for _, g in trajs], config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps_per_epoch * config.epochs))
    history = []
    for epoch in range(1, max_epochs + 1):
        t = time.perf_counter()
        student.train()
        for i, (ctx, gen) in enumerate(trajs, 1):
            if not gen:
                continue
            t_ids = chat_ids(tok, ctx, prompt) + gen
            s_ids = chat_ids(tok, ctx) + gen
            n = len(gen)
            with torch.no_grad(), student.disable_adapter():  # teacher, recomputed every time
                t_logits = student(input_ids=torch.tensor([t_ids])).logits[0, -n - 1 : -1]
            s_logits = student(input_ids=torch.tensor([s_ids])).logits[0, -n - 1 : -1]
            loss = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1),
                            log_target=True, reduction="sum")
            (loss / batch_tokens).backward()  # one sample at a time, the bake's token weighting
            if i % config.batch_size == 0 or i == len(trajs):
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad()
        clock += time.perf_counter() - t
        student.eval()
        kl = mean_kl(student, heldout["contexts"], heldout["gens"], heldout["teacher"], tok.pad_token_id, "float32")
        history.append({"epoch": epoch, "heldout_kl": kl, "elapsed_s": clock})
        log(f"naive epoch {epoch}: held-out KL {kl:.4f} at {clock:.0f}s")
        if kl <= target_kl or clock > budget_s:
            break
    reached = history[-1]["heldout_kl"] <= target_kl
    return {"seconds": clock, "sampling_s": sample_s, "epochs": history, "reached_target": reached,
            "heldout_kl": history[-1]["heldout_kl"], "trajectories": len(trajs)}
