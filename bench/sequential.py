"""Sequential baking, the runtime's path: rounds of headlines, each a new layer on the last.

The 20 shared headlines in rounds of 5. Each round is one worker bake (`agent.runtime.worker`,
exactly as `bakehouse run` bakes: held-out verification probes, the layer baked on top of the
served stack, then stacked exactly onto it). After every round the stack so far is asked, with no
prompt, every question of every round baked so far (the shared question and the bench's three more
per headline: 20 a round), and the verifier's general set shows what it kept of the base's general
knowledge. Then one consolidated rebake: all 20 headlines in one layer on the base.

The figure that counts: round 1's recall after the last round (and from the consolidated rebake)
against its recall right after round 1 (target >= 0.8).

    python bench/sequential.py [--rounds 4] [--per-round 5] [--seed 0]

Prints a table and writes bench/out/sequential.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.home import resolve_home  # noqa: E402
from agent.runtime.worker import bake_prompt  # noqa: E402
from baker.generate import ask_runs  # noqa: E402
from baker.models import resolve_model  # noqa: E402
from baker.verify import answer_matches  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from graduation import SHARED, bake_group  # noqa: E402

MORE = ROOT / "bench" / "data" / "headline_questions.jsonl"
OUT = ROOT / "bench" / "out" / "sequential.json"
TARGET = 0.8


def questions(group: list[dict], more: dict[str, list[dict]]) -> list[dict]:
    return [q for h in group for q in h["questions"] + more.get(h["id"], [])]


def right(model: Path, adapter: str | None, qs: list[dict], prompt: str | None = None) -> int:
    answers, _ = ask_runs(model, {"a": (prompt, adapter is not None, [q["q"] for q in qs])}, adapter,
                          max_new_tokens=30)
    return sum(answer_matches(a, q["answer"]) for a, q in zip(answers["a"], qs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="BakeConfig JSON overrides for every bake")
    ap.add_argument("--no-consolidated", action="store_true")
    args = ap.parse_args()

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    heads = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
    more = {r["id"]: r["questions"] for r in (json.loads(line) for line in MORE.read_text().splitlines() if line.strip())}
    groups = [heads[k * args.per_round:(k + 1) * args.per_round] for k in range(args.rounds)]
    mems = [[{"id": h["id"], "kind": "headline", "text": h["headline"], "valid_from": h["date"]} for h in g]
            for g in groups]
    config = json.loads(args.config)
    work = home / "bench-sequential" / f"s{args.seed}"
    out: dict = {"rounds": args.rounds, "per_round": args.per_round, "seed": args.seed, "config": config,
                 "hot": [], "after_round": [], "general_kept": [], "bake_s": []}
    # each round's own hot tier (its 5 headlines as the prompt, no adapter): what the weights replace
    out["hot"] = [right(model, None, questions(g, more), bake_prompt(m)) for g, m in zip(groups, mems)]
    out["asked_per_round"] = [len(questions(g, more)) for g in groups]
    parent = None
    for k in range(args.rounds):
        t0 = time.perf_counter()
        result = bake_group(model, work / f"r{k}", mems[k], args.seed, None, parent=parent, config=config)
        out["bake_s"].append(round(time.perf_counter() - t0))
        parent = result["candidate"]
        out["after_round"].append([right(model, parent, questions(groups[j], more)) for j in range(k + 1)])
        out["general_kept"].append((result["verify"]["general"] or {}).get("kept_fraction"))
        print(f"round {k + 1}: {out['bake_s'][-1]} s; right per round so far {out['after_round'][-1]} "
              f"(hot {out['hot'][:k + 1]}); general kept {out['general_kept'][-1]}", flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(out, indent=2))
    first = out["after_round"][0][0]
    out["round1_kept"] = out["after_round"][-1][0] / first if first else None
    if not args.no_consolidated:
        t0 = time.perf_counter()
        allm = [m for ms in mems for m in ms]
        result = bake_group(model, work / "consolidated", allm, args.seed, None, config=config)
        out["consolidated"] = {"bake_s": round(time.perf_counter() - t0),
                               "right_per_round": [right(model, result["candidate"], questions(g, more)) for g in groups],
                               "general_kept": (result["verify"]["general"] or {}).get("kept_fraction")}
        out["consolidated"]["round1_kept"] = out["consolidated"]["right_per_round"][0] / first if first else None
    out["target_round1_kept_min"] = TARGET
    OUT.write_text(json.dumps(out, indent=2))
    print(f"\nasked per round {out['asked_per_round']}; hot tier right {out['hot']}")
    for k, row in enumerate(out["after_round"]):
        print(f"after round {k + 1}: {row}  general kept {out['general_kept'][k]}")
    print(f"round 1 kept after round {args.rounds}: {out['round1_kept']}")
    if "consolidated" in out:
        c = out["consolidated"]
        print(f"consolidated rebake: {c['right_per_round']}, round 1 kept {c['round1_kept']}, "
              f"general kept {c['general_kept']}, {c['bake_s']} s")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
