"""Which graduation rule keeps accuracy: bakes as the runtime bakes them, judged by each rule.

A memory graduates (leaves the hot tier) when the verifier's probes say the weights hold it. This
bench bakes groups of shared headlines exactly as the runtime's worker does (held-out probes,
`agent.runtime.worker`), then asks each headline's own question twice: from the hot tier (the
runtime's, per request: the group's memories retrieved for that question, no adapter) and from
the weights (the adapter, no prompt). Rule "hot" compares the weights' hits on each memory's
verification probes with the base's hits on them with the hot tier each probe would get. Every
rule in `baker.verify.RULES` is applied to the same verifier rows, so one run compares them all:

- graduated: the memories the rule lets leave the prompt;
- precision: of those, how many the weights answer right;
- accuracy after: weights for the graduated, the hot tier for the rest, against hot-only accuracy
  (the runtime's target: not lower).

    python bench/graduation.py [--seeds 0 1 2] [--group 4] [--groups 3]

Prints the table and writes bench/out/graduation.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.home import resolve_home  # noqa: E402
from baker.generate import ask_runs  # noqa: E402
from baker.models import resolve_model  # noqa: E402
from baker.verify import RULES, answer_matches, graduates, reference_hits, verification_probes  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "headlines.jsonl"
OUT = ROOT / "bench" / "out" / "graduation.json"


def bake_group(model: Path, work: Path, memories: list[dict], seed: int, epochs: int | None,
               parent: str | None = None, config: dict | None = None, recheck: list[dict] | None = None) -> dict:
    """One worker bake, as the runtime runs it (a fresh layer on the base, or on `parent`, then
    stacked onto it; `recheck`: the memories the parent holds): its result.json."""
    work.mkdir(parents=True, exist_ok=True)
    config = (config or {}) | {"seed": seed} | ({"epochs": epochs} if epochs else {})
    spec = {"model_dir": str(model), "out_dir": str(work), "parent": parent, "config": config,
            "memories": memories, "recheck": recheck or [], "forgotten": []}
    (work / "spec.json").write_text(json.dumps(spec))
    with open(work / "worker.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "agent.runtime.worker", str(work / "spec.json")],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"worker failed ({rc}): {(work / 'error.json').read_text()[:2000]}")
    return json.loads((work / "result.json").read_text())


class HotTier:
    """The runtime's per-request hot tier (memory.retrieval) over one group's memories."""

    def __init__(self, work: Path, memories: list[dict]):
        import tempfile

        from memory import MemoryStore

        self.store = MemoryStore(Path(tempfile.mkdtemp(prefix="graduation-", dir=work)) / "m.db", actor="bench")
        self.ids = {m["id"]: self.store.add("bench", "headline", m["text"], published_at=m["valid_from"]).id
                    for m in memories}

    def system(self, question: str) -> str | None:
        from memory.retrieval import retrieve

        return retrieve(self.store, "bench", [{"role": "user", "content": question}]).text or None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--group", type=int, default=4, help="Headlines per bake.")
    ap.add_argument("--groups", type=int, default=3, help="Bakes per seed (consecutive headlines).")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    heads = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
    rows: list[dict] = []
    out = {"seeds": args.seeds, "group": args.group, "groups": args.groups, "rows": rows}
    for seed in args.seeds:
        for g in range(args.groups):
            group = heads[g * args.group:(g + 1) * args.group]
            memories = [{"id": h["id"], "kind": "headline", "text": h["headline"], "valid_from": h["date"]}
                        for h in group]
            t0 = time.perf_counter()
            result = bake_group(model, home / "bench-graduation" / f"s{seed}-g{g}", memories, seed, args.epochs)
            questions = [q for h in group for q in h["questions"]]
            hot = HotTier(home / "bench-graduation", memories)
            runs = {"hot": ([hot.system(q["q"]) for q in questions], False, [q["q"] for q in questions]),
                    "weights": (None, True, [q["q"] for q in questions])}
            answers, _ = ask_runs(model, runs, result["candidate"], max_new_tokens=30)
            probes = [p for m in memories for p in verification_probes(m["id"], m["text"])]
            hot_ref = reference_hits(model, None, probes, [hot.system(p.question) for p in probes])
            items = {r["item_id"]: r for r in result["verify"]["items"]}
            j = 0
            for h in group:
                item = items[h["id"]]
                for q in h["questions"]:
                    rows.append({"seed": seed, "group": g, "id": h["id"], "question": q["q"],
                                 "hot_right": answer_matches(answers["hot"][j], q["answer"]),
                                 "weights_right": answer_matches(answers["weights"][j], q["answer"]),
                                 "hot": answers["hot"][j], "weights": answers["weights"][j],
                                 "hits": item["hits"], "asked": item["asked"],
                                 "prompted_hits": item["prompted_hits"], "hot_hits": hot_ref[h["id"]]["hits"],
                                 "general_kept": (result["verify"]["general"] or {}).get("kept_fraction")})
                    j += 1
            print(f"seed {seed} group {g}: {time.perf_counter() - t0:.0f} s, "
                  f"general kept {rows[-1]['general_kept']:.2f}", flush=True)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(out, indent=2))

    hot = sum(r["hot_right"] for r in rows)
    out["hot_right"] = hot
    out["questions"] = len(rows)
    out["rules"] = {}
    for rule in RULES:
        grad = [r for r in rows if graduates(rule, r["hits"], r["asked"], r["prompted_hits"], r["hot_hits"])]
        after = sum(r["weights_right"] if r in grad else r["hot_right"] for r in rows)
        per_seed = {s: sum(r["weights_right"] if r in grad else r["hot_right"] for r in rows if r["seed"] == s)
                    - sum(r["hot_right"] for r in rows if r["seed"] == s) for s in args.seeds}
        out["rules"][rule] = {"graduated": len(grad), "precision": sum(r["weights_right"] for r in grad),
                              "accuracy_after": after, "after_minus_hot_per_seed": per_seed}
    OUT.write_text(json.dumps(out, indent=2))
    print(f"{len(rows)} questions, hot tier right {hot}")
    print(f"{'rule':<10} {'graduated':>9} {'weights right':>13} {'after':>6}  after-hot per seed")
    for rule, v in out["rules"].items():
        print(f"{rule:<10} {v['graduated']:>9} {v['precision']:>13} {v['accuracy_after']:>6}  "
              f"{list(v['after_minus_hot_per_seed'].values())}")


if __name__ == "__main__":
    main()
