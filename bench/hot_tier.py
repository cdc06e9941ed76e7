"""The hot tier's answers, no bake: the 80 questions about bench/bake.py's 20 headlines, asked of the
base model with each hot tier as the system prompt (greedy, 30 new tokens, keyword match).

Arms:
- `whole (bench layout)`: all 20 headlines in bench/bake.py's layout (its "prompted" figure);
- `static`: all 20 as the runtime's static tier lays them out (`--hot-tier static`);
- `retrieved k=N`: the runtime's retrieval tier (`--hot-tier retrieval --hot-top-k N`): per
  question, the headlines FTS5 bm25 ranks first for it (memory.retrieval);
- `focused`: each question with only its own headline (the ceiling to aim at);
- with `--unquoted`, `retrieved k=N unquoted`: the same retrieval laid out as before feed items
  were quoted as data ("Dated news:", no quotes), the A/B of that layout.

Per arm: right answers of 80, prompt tokens per question (the system prompt, in the model's
tokens), and for the retrieval arms the hit rate (the question's own headline among those
retrieved). Target: the retrieved tier answers at least what the whole prompt answers.

    python bench/hot_tier.py [--top-k 1 3 5]        # writes bench/out/hot_tier.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bake import DATA, MORE, headlines_prompt, questions_of  # noqa: E402


@contextlib.contextmanager
def unquoted():
    """memory.compose's layout before feed items were quoted as data."""
    from memory import compose

    header, quoted = compose.SECTIONS["headline"], compose.QUOTED
    compose.SECTIONS["headline"], compose.QUOTED = "Dated news", set()
    try:
        yield
    finally:
        compose.SECTIONS["headline"], compose.QUOTED = header, quoted


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=str(ROOT / "bench" / "out" / "home"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--top-k", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "hot_tier.json"))
    ap.add_argument("--unquoted", action="store_true", help="Also each retrieval arm in the unquoted layout.")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from baker.generate import ask_runs
    from baker.models import resolve_model
    from memory import MemoryStore
    from memory.retrieval import retrieve

    rows = [json.loads(line) for line in Path(DATA).read_text().splitlines() if line.strip()]
    more = [json.loads(line) for line in Path(MORE).read_text().splitlines() if line.strip()]
    questions = questions_of(rows) + questions_of(more, "m")
    model_dir = resolve_model(args.model, Path(args.home))
    tok = AutoTokenizer.from_pretrained(model_dir)
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731

    store = MemoryStore(Path(tempfile.mkdtemp(prefix="bakehouse-hot-tier-")) / "m.db")
    ids = {r["id"]: store.add("bench", "headline", r["headline"], published_at=r["date"]).id for r in rows}
    own = {q["id"]: ids[q["id"].split(".")[0]] for q in questions}
    by_row = {r["id"]: r for r in rows}

    # arm -> question id -> (system prompt, memory ids in it)
    static = store.compose("bench", budget_tokens=100_000, count_tokens=count)
    arms: dict[str, dict[str, tuple[str, tuple]]] = {
        "whole (bench layout)": {q["id"]: (headlines_prompt(rows), tuple(ids.values())) for q in questions},
        "static": {q["id"]: (static.text, static.memory_ids) for q in questions},
        "focused": {q["id"]: (headlines_prompt([by_row[q["id"].split(".")[0]]]), (own[q["id"]],)) for q in questions},
    }
    for k in args.top_k:
        got = {q["id"]: retrieve(store, "bench", [{"role": "user", "content": q["prompt"]}], top_k=k,
                                 budget_tokens=1500, count_tokens=count) for q in questions}
        arms[f"retrieved k={k}"] = {i: (p.text, p.memory_ids) for i, p in got.items()}
        if args.unquoted:
            with unquoted():
                got = {q["id"]: retrieve(store, "bench", [{"role": "user", "content": q["prompt"]}], top_k=k,
                                         budget_tokens=1500, count_tokens=count) for q in questions}
            arms[f"retrieved k={k} unquoted"] = {i: (p.text, p.memory_ids) for i, p in got.items()}

    # one engine for everything: questions that share a system prompt form one run
    runs, where = {}, {}
    for arm, per_q in arms.items():
        groups = defaultdict(list)
        for q in questions:
            groups[per_q[q["id"]][0]].append(q)
        for n, (system, qs) in enumerate(groups.items()):
            runs[f"{arm}#{n}"] = (system or None, False, [q["prompt"] for q in qs])
            where |= {(arm, q["id"]): (f"{arm}#{n}", i) for i, q in enumerate(qs)}
    answers, sampler = ask_runs(model_dir, runs, max_new_tokens=30)

    report = {"model": str(model_dir), "sampler": sampler, "questions": len(questions), "arms": {}}
    for arm, per_q in arms.items():
        right = hits = tokens = 0
        for q in questions:
            run, i = where[(arm, q["id"])]
            text = answers[run][i].lower()
            right += any(k.lower() in text for k in q["answer"])
            hits += own[q["id"]] in per_q[q["id"]][1]
            tokens += count(per_q[q["id"]][0])
        report["arms"][arm] = {"right": right, "hit_rate": round(hits / len(questions), 3),
                               "prompt_tokens_per_question": round(tokens / len(questions), 1)}
        print(f"{arm:>22}: {right:>2} of {len(questions)} right, hit rate {hits / len(questions):.2f}, "
              f"{tokens / len(questions):.0f} prompt tokens per question")
    whole = report["arms"]["whole (bench layout)"]["right"]
    report["meets"] = {arm: r["right"] >= whole for arm, r in report["arms"].items() if arm.startswith("retrieved")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
