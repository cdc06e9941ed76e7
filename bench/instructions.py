"""Instructions learned into the weights: compliance of base, prompted (hot tier) and baked.

Each instruction of shared/data/instructions.jsonl is baked as the runtime's worker bakes an
`instruction` memory (`bench/graduation.py`'s `bake_group`: `agent.runtime.worker`, BakeConfig
defaults, held-out probes, the verifier's verdict). Then the same questions (the first --questions
of the shipped general set, none of them trained on) are asked three ways, greedy:

- base:     no prompt, no adapter;
- prompted: the instruction as the hot tier sends it, no adapter;
- baked:    the adapter, no prompt.

Each answer is checked by the instruction's own automatic check (starts_with, ends_with,
no_uppercase, contains, max_words). Prints compliance per instruction and whether the verifier
let it graduate; writes bench/out/instructions.json.

    python bench/instructions.py [--questions 16] [--only i01 i04]
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
from baker.generate import ask_runs  # noqa: E402
from baker.models import resolve_model  # noqa: E402
from baker.verify import general_questions, graduates  # noqa: E402
from graduation import bake_group  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "instructions.jsonl"
OUT = ROOT / "bench" / "out" / "instructions.json"


def complies(answer: str, check: dict) -> bool:
    a = answer.strip()
    low = a.lower()
    ok = True
    if "starts_with" in check:
        ok &= low.lstrip("\"'*- ").startswith(check["starts_with"])
    if "ends_with" in check:
        ok &= low.rstrip(" .!\"'").endswith(check["ends_with"])
    if check.get("no_uppercase"):
        ok &= a == low
    if "contains" in check:
        ok &= check["contains"] in low
    if "max_words" in check:
        ok &= len(re.findall(r"\S+", a)) <= check["max_words"]
    return bool(ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--only", nargs="*", default=None, help="instruction ids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    if args.only:
        rows = [r for r in rows if r["id"] in args.only]
    qs = [g["q"] for g in general_questions()[: args.questions]]
    out = {"questions": len(qs), "seed": args.seed, "instructions": []}
    t_all = time.perf_counter()
    for i, r in enumerate(rows):
        memories = [{"id": i + 1, "kind": "instruction", "text": r["instruction"], "valid_from": "2026-12-01"}]
        t0 = time.perf_counter()
        result = bake_group(model, home / "bench-instructions" / r["id"], memories, args.seed, None)
        t_bake = time.perf_counter() - t0
        (item,) = result["verify"]["items"]
        got, _ = ask_runs(model, {"base": (None, False, qs), "prompted": (bake_prompt(memories), False, qs),
                                  "baked": (None, True, qs)}, result["candidate"], max_new_tokens=args.max_new_tokens)
        ok = {k: [complies(a, r["check"]) for a in v] for k, v in got.items()}
        row = {"id": r["id"], "instruction": r["instruction"], "check": r["check"],
               "compliance": {k: sum(v) for k, v in ok.items()},
               "graduated": graduates("majority", item["hits"], item["asked"], item["prompted_hits"]),
               "probes_asked": item["asked"], "bake_s": round(t_bake),
               "bake": {k: result["bake"].get(k) for k in ("eval_kl_before", "eval_kl_after", "drift_kl")},
               "answers": [{"q": q, **{k: {"answer": got[k][j], "ok": ok[k][j]} for k in got}} for j, q in enumerate(qs)]}
        out["instructions"].append(row)
        print(f"{r['id']}: base {row['compliance']['base']}/{len(qs)}, prompted {row['compliance']['prompted']}/{len(qs)}, "
              f"baked {row['compliance']['baked']}/{len(qs)}; graduated {row['graduated']} "
              f"({item['asked']} probes); bake {t_bake:.0f} s", flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(out, indent=2))
    out["seconds"] = round(time.perf_counter() - t_all)
    out["total"] = {k: sum(r["compliance"][k] for r in out["instructions"]) for k in ("base", "prompted", "baked")}
    out["of"] = len(qs) * len(out["instructions"])
    OUT.write_text(json.dumps(out, indent=2))
    print(f"\ncompliance of {out['of']} answers: base {out['total']['base']}, prompted {out['total']['prompted']}, "
          f"baked {out['total']['baked']} ({out['seconds']} s)")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
