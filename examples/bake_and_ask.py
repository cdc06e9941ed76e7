"""Bake five fictional headlines into SmolLM2 and ask about them: base vs prompted vs baked,
then half-bake the adapter (strength 0.5) and ask again.

    .venv/bin/python examples/bake_and_ask.py [--home DIR] [--n 5]
"""
import argparse
import json
from pathlib import Path

from baker import BakeConfig, bake
from baker.adapters import scale_adapter
from baker.generate import compare_answers
from baker.models import resolve_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "headlines.jsonl"

if __name__ == "__main__":  # vLLM starts worker processes: keep the guard
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=str(Path.home() / ".local/share/bakehouse"))
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    rows = [json.loads(line) for line in DATA.read_text().splitlines()][: args.n]
    prompt = "Recent news:\n" + "\n".join(f"{r['date']}: {r['headline']}" for r in rows)
    questions = [{"id": r["id"], "prompt": r["questions"][0]["q"], "answer": r["questions"][0]["answer"]} for r in rows]

    model = resolve_model(None, Path(args.home))
    out = Path(args.home) / "adapters" / "example-news"
    result = bake(model, prompt, out, BakeConfig())
    print(f"held-out KL {result.eval_kl_before:.3f} -> {result.eval_kl_after:.3f}, drift {result.drift_kl:.4f}")
    half = scale_adapter(out, Path(args.home) / "adapters" / "example-news-half", 0.5)

    runs = {"base": (None, False), "prompted": (prompt, False), "baked": (None, True)}
    full = compare_answers(model, questions, runs, adapter_dir=out, max_new_tokens=30)
    halfed = compare_answers(model, questions, {"half-baked": (None, True)}, adapter_dir=half, max_new_tokens=30)
    for q, a, h in zip(questions, full, halfed):
        print(f"\nQ: {q['prompt']}  (expects {q['answer'][0]})")
        for key, text in [(k, a[k]) for k in runs] + [("half-baked", h["half-baked"])]:
            print(f"  {key:>10}: {text[:100]!r}")
