"""The paper's other results (Bhargava et al. 2024), measured on SmolLM2-135M with headlines.

One bake of the first --headlines shared headlines, then:
  - half-baking by strength: the adapter scaled by 0 / 0.25 / 0.5 / 0.75 / 1 / 1.5
    (`baker.adapters.scale_adapter`, `bakehouse scale`), and by the epoch checkpoints of the bake
    (the half-baked models): recall (no prompt) and held-out KL against the prompted teacher.
    The paper: both move monotonically from the base to the baked model;
  - re-prompting: the baked model with the prompt again, against the prompted base (the paper:
    at least as good);
  - Prompt Pursuit (`baker.pursuit.pursue`): 3 rounds, each baked on top of the last with the
    same prompt; recall and KL after each round (the paper: the prompt's effect amplified).
Recall is over the shared question and the bench's three more per headline (keyword match,
greedy, 30 tokens); KL is token-averaged over the bake's held-out trajectories, teacher = base +
the whole prompt.

    python bench/paper.py [--headlines 5] [--seed 0]     # ~35 min on 2 cores

Prints a table and writes bench/out/paper.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bake import DATA, MORE, headlines_prompt, questions_of, recall  # noqa: E402

OUT = ROOT / "bench" / "out" / "paper.json"
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def heldout_kl(model_dir: Path, prompt: str, trajectories: list[dict], adapters: dict[str, Path | None]) -> dict:
    """KL(base + prompt || model without the prompt) per named adapter (None: the base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from baker.chat import chat_ids
    from baker.kl import mean_kl, sequence_logprobs
    from baker.models import load_model

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id
    base, _ = load_model(model_dir, dtype=torch.float32)
    base.eval()
    gens = [t["gen"] for t in trajectories]
    teacher = sequence_logprobs(base, [chat_ids(tok, t["context"], prompt) for t in trajectories], gens, pad,
                                store="float32")
    student_ctx = [chat_ids(tok, t["context"], None) for t in trajectories]
    out = {}
    for name, path in adapters.items():
        if path is None:
            model = base
        else:
            model = PeftModel.from_pretrained(base, str(path))
            model.eval()
        out[name] = round(mean_kl(model, student_ctx, gens, teacher, pad, "float32"), 4)
        if path is not None:
            base = model.unload()  # the base without the adapter, for the next one
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--headlines", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="Prompt Pursuit rounds")
    args = ap.parse_args()

    from agent.home import resolve_home
    from baker import BakeConfig
    from baker.adapters import scale_adapter, stack_adapters
    from baker.baking import TRAJECTORIES_FILE
    from baker.generate import ask_runs
    from baker.models import resolve_model
    from baker.pursuit import pursue

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][: args.headlines]
    ids = {r["id"] for r in rows}
    more = [json.loads(line) for line in MORE.read_text().splitlines() if line.strip()]
    qs = questions_of(rows) + questions_of([m for m in more if m["id"] in ids], "m")
    prompt = headlines_prompt(rows)
    work = home / "bench-paper" / f"s{args.seed}"
    config = BakeConfig(seed=args.seed)
    res: dict = {"headlines": len(rows), "questions": len(qs), "seed": args.seed}

    # Prompt Pursuit's first round is the plain bake: its checkpoints are the half-baked models
    t0 = time.perf_counter()
    rounds = pursue(model, prompt, work / "pursuit", rounds=args.rounds, config=config, progress=False, force=True)
    res["pursuit_s"] = round(time.perf_counter() - t0)
    baked = work / "pursuit" / "layers" / "round-1"
    layers = [work / "pursuit" / "layers" / f"round-{k}" for k in range(1, len(rounds) + 1)]
    held = [json.loads(line) for line in (baked / TRAJECTORIES_FILE).read_text().splitlines()]
    held = [t for t in held if t["split"] == "heldout"]
    epochs = sorted(int(p.name.split("-")[1]) for p in (baked / "checkpoints").glob("epoch-*"))
    pick = sorted({epochs[0], epochs[len(epochs) // 4], epochs[len(epochs) // 2], epochs[-1]})
    scaled = {f"scale {s}": scale_adapter(baked, work / f"scale-{s}", s, force=True) for s in SCALES}
    checkpoints = {f"epoch {e}": baked / "checkpoints" / f"epoch-{e}" for e in pick}
    pursued = {"pursuit 1": layers[0]}
    pursued |= {f"pursuit {k}": stack_adapters(layers[:k], work / f"pursuit-stack-{k}", force=True)
                for k in range(2, len(layers) + 1)}

    texts = [q["prompt"] for q in qs]
    models = {**scaled, **checkpoints, **pursued}
    answers = {}
    for name, path in models.items():  # one adapter an engine: ask_runs serves one adapter at a time
        got, _ = ask_runs(model, {"a": (None, True, texts)}, path, max_new_tokens=30)
        answers[name] = got["a"]
    got, _ = ask_runs(model, {"base": (None, False, texts), "prompted": (prompt, False, texts),
                              "reprompted": (prompt, True, texts)}, baked, max_new_tokens=30)
    answers |= got
    rows_out = [{"id": q["id"], **{k: v[i] for k, v in answers.items()}} for i, q in enumerate(qs)]
    res["recall"] = {k: round(recall(qs, rows_out, k) * len(qs)) for k in answers}
    res["kl"] = heldout_kl(model, prompt, held, {"base": None, **models})
    res["answers"] = rows_out
    res["bake_kl"] = [{"before": r.metrics["eval_kl_before"], "after": r.metrics["eval_kl_after"]} for r in rounds]

    def monotone(names: list[str], key: str, up: bool) -> bool:
        vals = [res[key][n] for n in names]
        return all((b >= a) if up else (b <= a) for a, b in zip(vals, vals[1:]))

    strength = [f"scale {s}" for s in SCALES if s <= 1.0]
    res["checks"] = {
        "scale: recall rises 0 -> 1": monotone(strength, "recall", True),
        "scale: KL falls 0 -> 1": monotone(strength, "kl", False),
        "epochs: KL falls": monotone(list(checkpoints), "kl", False),
        "re-prompted >= prompted": res["recall"]["reprompted"] >= res["recall"]["prompted"],
        "pursuit: recall does not fall": monotone(list(pursued), "recall", True),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"{len(qs)} questions; pursuit ({args.rounds} bakes) {res['pursuit_s']} s")
    print(f"{'model':<14} {'recall':>6} {'KL':>8}")
    for name in ["base", *models, "prompted", "reprompted"]:
        print(f"{name:<14} {res['recall'][name]:>6} {res['kl'].get(name, float('nan')):>8}")
    for k, ok in res["checks"].items():
        print(f"  {'yes' if ok else 'NO '}  {k}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
