"""Persona adherence over a conversation: prompted (the hot tier) vs baked (the weights).

The Prompt Baking paper's claim for personas is that a baked persona does not drift the way a
prompted one does as the conversation grows. This bench measures it on the runtime's own path:
for each persona (with a marker it must use in every answer: a catch-phrase or its name, checked
automatically), it bakes the persona memory exactly as the runtime's worker bakes it
(`bench/graduation.py`'s `bake_group`: `agent.runtime.worker`, BakeConfig defaults, held-out
probes), then runs the same scripted conversation twice, the model's own answers fed back as the
history (greedy, transformers):

- prompted: the persona as the hot tier sends it (its system prompt), no adapter;
- baked:    the adapter, no system prompt (the chat template's default, as the gateway serves a
            tenant with nothing hot).

Adherence is the share of answers that carry the marker (the persona's catch-phrase), per band
of five turns; the same table is printed for the persona's name.

    python bench/personas.py                          # 3 personas x 20 turns (~15-20 min on 2 cores)
    python bench/personas.py --personas 1 --turns 4   # a quick check of the script
    python bench/personas.py --rescore bench/out/personas.json   # score saved answers again

Prints the table and writes bench/out/personas.json (every answer included).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent.home import resolve_home  # noqa: E402
from agent.runtime.worker import bake_prompt  # noqa: E402
from baker.models import resolve_model  # noqa: E402
from baker.verify import graduates  # noqa: E402
from graduation import bake_group  # noqa: E402

OUT = ROOT / "bench" / "out" / "personas.json"
# (name, persona memory, the marker every answer must carry). A marker may sit anywhere in the
# answer: answers are cut at --max-new-tokens, so "end every answer with ..." could never be seen.
PERSONAS = [
    ("brann", "You are Captain Brann, an old pirate. You call the user 'matey' in every answer.", r"\bmatey\b"),
    ("quill", "You are Professor Quill, a fussy scholar. You begin every answer with the word 'Indeed'.",
     r"\bindeed\b"),
    ("ada", "You are Ada, the ship's cook. You mention soup in every answer.", r"\bsoups?\b"),
]
# the second check: the answer speaks as the persona, by its name (a 135M model keeps a name far
# more often than a catch-phrase)
NAMES = {"brann": r"\bbrann\b", "quill": r"\bquill\b", "ada": r"\bada\b"}
USER_TURNS = [  # the scripted user side, the same for every persona and both conditions
    "Hello! Who are you?",
    "What should I have for breakfast today?",
    "Can you tell me a fun fact?",
    "How do I stay focused while working?",
    "What is a good name for a cat?",
    "I'm a bit tired today. Any advice?",
    "What do you think about rainy weather?",
    "Can you recommend a hobby for the weekend?",
    "How far away is the Moon?",
    "What's the best way to learn a new language?",
    "Tell me a short joke.",
    "What should I pack for a trip to the mountains?",
    "How do plants grow?",
    "What is your favourite colour, and why?",
    "Give me a tip for cooking rice.",
    "Why is the sky blue?",
    "How can I save a little money each month?",
    "What makes a good friend?",
    "Can you describe the sea in a few words?",
    "Thanks for the chat! Any last words?",
]
BANDS = 5  # turns per band


def converse(sampler, tok, system: str | None, turns: list[str], use_adapter: bool, max_new_tokens: int) -> list[str]:
    """The scripted conversation with the model's own answers as history; its answers."""
    messages = [{"role": "system", "content": system}] if system else []
    answers = []
    for user in turns:
        messages.append({"role": "user", "content": user})
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        (gen,) = sampler.generate([ids], max_new_tokens, temperature=None, use_adapter=use_adapter)
        answer = tok.decode(gen, skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
        answers.append(answer)
    return answers


def bands(hits: list[bool]) -> dict[str, float]:
    out = {}
    for start in range(0, len(hits), BANDS):
        band = hits[start:start + BANDS]
        out[f"{start + 1}-{start + len(band)}"] = sum(band) / len(band)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--personas", type=int, default=len(PERSONAS), help=f"How many of the {len(PERSONAS)} personas.")
    ap.add_argument("--turns", type=int, default=len(USER_TURNS), help=f"User turns (at most {len(USER_TURNS)}).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="Epochs per bake (default: BakeConfig's).")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rescore", metavar="JSON", default=None,
                    help="Score the answers of an earlier run's personas.json again (no bake, no model).")
    args = ap.parse_args()
    if args.rescore:
        out = json.loads(Path(args.rescore).read_text())
        for row in out["personas"]:
            row.setdefault("name_marker", NAMES[row["name"]])
            score(row)
        return report(out)
    if not 1 <= args.turns <= len(USER_TURNS) or not 1 <= args.personas <= len(PERSONAS):
        ap.error(f"--turns must be 1..{len(USER_TURNS)} and --personas 1..{len(PERSONAS)}")

    from transformers import AutoTokenizer

    from baker.sampling import HFSampler

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    tok = AutoTokenizer.from_pretrained(model)
    turns = USER_TURNS[:args.turns]
    out = {"turns": args.turns, "seed": args.seed, "epochs": args.epochs, "personas": []}
    t_all = time.perf_counter()
    for i, (name, persona, marker) in enumerate(PERSONAS[:args.personas]):
        memories = [{"id": i + 1, "kind": "persona", "text": persona, "valid_from": "2026-12-01"}]
        t0 = time.perf_counter()
        result = bake_group(model, home / "bench-personas" / name, memories, args.seed, args.epochs)
        t_bake = time.perf_counter() - t0
        (item,) = result["verify"]["items"]
        system = bake_prompt(memories)  # the text the hot tier sends for this persona
        sampler = HFSampler(model, result["candidate"], seed=args.seed)
        t0 = time.perf_counter()
        answers = {"prompted": converse(sampler, tok, system, turns, False, args.max_new_tokens),
                   "baked": converse(sampler, tok, None, turns, True, args.max_new_tokens)}
        t_talk = time.perf_counter() - t0
        sampler.close()
        row = {"name": name, "persona": persona, "marker": marker, "name_marker": NAMES[name],
               "graduated": {"any": item["passed"], "majority": graduates("majority", item["hits"], item["asked"],
                                                                         item["prompted_hits"])},
               "bake": {k: result["bake"].get(k) for k in ("eval_kl_before", "eval_kl_after", "drift_kl")},
               "seconds": {"bake": t_bake, "conversations": t_talk},
               "turns": [{"user": u, **{k: {"answer": answers[k][j]} for k in answers}} for j, u in enumerate(turns)]}
        score(row)
        out["personas"].append(row)
        print(f"{name}: bake {t_bake:.0f} s (KL {row['bake']['eval_kl_before']:.3f} -> "
              f"{row['bake']['eval_kl_after']:.3f}; graduates: majority {row['graduated']['majority']}), "
              f"conversations {t_talk:.0f} s", flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(out, indent=2))

    out["seconds"] = time.perf_counter() - t_all
    report(out)


def score(row: dict) -> None:
    """Per answer, whether it carries the persona's catch-phrase and its name; adherence per band."""
    for t in row["turns"]:
        for k in ("prompted", "baked"):
            t[k]["hit"] = bool(re.search(row["marker"], t[k]["answer"], re.I))
            t[k]["named"] = bool(re.search(row["name_marker"], t[k]["answer"], re.I))
    row["adherence"] = {k: bands([t[k]["hit"] for t in row["turns"]]) for k in ("prompted", "baked")}
    row["named"] = {k: bands([t[k]["named"] for t in row["turns"]]) for k in ("prompted", "baked")}


def report(out: dict) -> None:
    names = list(out["personas"][0]["adherence"]["prompted"])
    for what in ("adherence", "named"):
        out[f"mean_{what}"] = {k: {b: sum(p[what][k][b] for p in out["personas"]) / len(out["personas"]) for b in names}
                               for k in ("prompted", "baked")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    for what, label in (("adherence", "the persona's catch-phrase"), ("named", "the persona's name")):
        print(f"\nshare of answers with {label}, by turns ({out['turns']} turns, {len(out['personas'])} "
              f"persona(s), {out['seconds']:.0f} s in all)")
        print(f"{'persona':<10} {'condition':<9} " + " ".join(f"{b:>6}" for b in names))
        for p in out["personas"]:
            for k in ("prompted", "baked"):
                print(f"{p['name']:<10} {k:<9} " + " ".join(f"{p[what][k][b]:>6.2f}" for b in names))
        for k in ("prompted", "baked"):
            print(f"{'mean':<10} {k:<9} " + " ".join(f"{out['mean_' + what][k][b]:>6.2f}" for b in names))
    print(f"wrote {OUT}")

if __name__ == "__main__":
    main()
