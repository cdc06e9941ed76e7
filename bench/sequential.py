"""Sequential baking, the runtime's path: rounds of headlines, each a new layer on the last.

The 20 shared headlines in rounds of 5. Each round is one worker bake (`agent.runtime.worker`,
exactly as `bakehouse run` bakes: held-out verification probes, the layer baked on top of the
served stack, then stacked exactly onto it). After every round the stack so far is asked, with no
prompt, every question of every round baked so far (the shared question and the bench's three more
per headline: 20 a round), and the verifier's general set shows what it kept of the base's general
knowledge. Then one consolidated rebake: all 20 headlines in one layer on the base.

The figure that counts: round 1's recall after the last round (and from the consolidated rebake)
against its recall right after round 1 (target >= 0.8).

Each later round passes the memories of the rounds before it as the worker's `recheck` (as the
runtime passes the memories its served stack holds); with `--replay N ...` the run is an A/B of
`BakeConfig.replay` (questions about those memories trained again): round 1, with nothing to replay,
is baked once per seed and shared by every arm.

    python bench/sequential.py [--rounds 4] [--per-round 5] [--seeds 0] [--replay 0 4]

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


def right_per_group(model: Path, adapter: str | None, groups: list[list[dict]],
                    prompts: list[str | None] | None = None) -> list[int]:
    """How many questions of each group the model answers right, each group with its own system
    prompt (`prompts`; none by default); one engine for all of them."""
    prompts = prompts or [None] * len(groups)
    runs = {str(k): (p, adapter is not None, [q["q"] for q in g]) for k, (g, p) in enumerate(zip(groups, prompts))}
    answers, _ = ask_runs(model, runs, adapter, max_new_tokens=30)
    return [sum(answer_matches(a, q["answer"]) for a, q in zip(answers[str(k)], g)) for k, g in enumerate(groups)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--replay", type=int, nargs="+", default=None, help="arms: BakeConfig.replay values")
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
    arms = [None] if args.replay is None else args.replay
    out: dict = {"rounds": args.rounds, "per_round": args.per_round, "seeds": args.seeds, "config": config,
                 "runs": [], "target_round1_kept_min": TARGET}
    # each round's own hot tier (its 5 headlines as the prompt, no adapter): what the weights replace
    out["hot"] = right_per_group(model, None, [questions(g, more) for g in groups], [bake_prompt(m) for m in mems])
    out["asked_per_round"] = [len(questions(g, more)) for g in groups]

    def save():
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(out, indent=2))

    for seed in args.seeds:
        work = home / "bench-sequential" / f"s{seed}"
        t0 = time.perf_counter()
        first = bake_group(model, work / "r0", mems[0], seed, None, config=config)
        first_s = round(time.perf_counter() - t0)
        first_right = right_per_group(model, first["candidate"], [questions(groups[0], more)])[0]
        first_kept = (first["verify"]["general"] or {}).get("kept_fraction")
        for arm in arms:
            cfg = config | ({} if arm is None else {"replay": arm})
            run = {"seed": seed, "replay": cfg.get("replay", 0), "bake_s": [first_s], "after_round": [[first_right]],
                   "general_kept": [first_kept]}
            out["runs"].append(run)
            parent = first["candidate"]
            for k in range(1, args.rounds):
                t0 = time.perf_counter()
                result = bake_group(model, work / f"replay{run['replay']}" / f"r{k}", mems[k], seed, None, parent=parent,
                                    config=cfg, recheck=[m for ms in mems[:k] for m in ms])
                run["bake_s"].append(round(time.perf_counter() - t0))
                parent = result["candidate"]
                run["after_round"].append(right_per_group(model, parent, [questions(g, more) for g in groups[:k + 1]]))
                run["general_kept"].append((result["verify"]["general"] or {}).get("kept_fraction"))
                print(f"seed {seed} replay {run['replay']} round {k + 1}: {run['bake_s'][-1]} s; right per round "
                      f"{run['after_round'][-1]} (hot {out['hot'][:k + 1]}); general kept {run['general_kept'][-1]}",
                      flush=True)
                save()
            run["round1_kept"] = run["after_round"][-1][0] / first_right if first_right else None
            save()
        if not args.no_consolidated:
            t0 = time.perf_counter()
            result = bake_group(model, work / "consolidated", [m for ms in mems for m in ms], seed, None, config=config)
            c = {"seed": seed, "bake_s": round(time.perf_counter() - t0),
                 "right_per_round": right_per_group(model, result["candidate"], [questions(g, more) for g in groups]),
                 "general_kept": (result["verify"]["general"] or {}).get("kept_fraction")}
            c["round1_kept"] = c["right_per_round"][0] / first_right if first_right else None
            out.setdefault("consolidated", []).append(c)
            save()
    print(f"\nasked per round {out['asked_per_round']}; hot tier right {out['hot']}")
    for run in out["runs"]:
        print(f"seed {run['seed']} replay {run['replay']}: right per round after each round {run['after_round']}; "
              f"general kept {run['general_kept']}; round 1 kept {run['round1_kept']}; bakes {run['bake_s']} s")
    for c in out.get("consolidated", []):
        print(f"seed {c['seed']} consolidated rebake: {c['right_per_round']}, round 1 kept {c['round1_kept']}, "
              f"general kept {c['general_kept']}, {c['bake_s']} s")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
