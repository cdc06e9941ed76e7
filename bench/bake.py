"""Bake benchmark: all 20 fictional headlines of shared/data/headlines.jsonl as one prompt.

Prints (and writes bench/out/bake.json): eval KL before/after, drift KL, the KL floor of a
reordered prompt (see `reorder_floor`), headline recall for the base / prompted (all 20) /
focused (each question's own headline alone as the prompt) / baked model (keyword match, greedy,
no prompt for base and baked), retention (of the shipped general questions the base answers
right, the share the baked model still answers right), wall time per phase, trained tokens/s,
peak RSS; then the same bake by the naive reference loop (bench/naive.py) run to the same held-out KL,
and the time ratio.

    python bench/bake.py                      # full run (the naive loop takes a while)
    python bench/bake.py --naive-budget-min 0 # skip the naive loop
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "headlines.jsonl"
# 60 more questions about the same headlines (three per headline, asking for other parts of it),
# written for this bench: 20 questions move by +-0.1 between seeds of one setting.
MORE = ROOT / "bench" / "data" / "headline_questions.jsonl"

TARGETS = {"kl_ratio_max": 0.10, "recall_ratio_min": 0.9, "bake_seconds_max": 300, "speedup_min": 5.0,
           "retention_min": 0.95}


def headlines_prompt(rows: list[dict]) -> str:
    return "Recent news:\n" + "\n".join(f"{r['date']}: {r['headline']}" for r in rows)


def questions_of(rows: list[dict], tag: str = "") -> list[dict]:
    """One {"id", "prompt", "answer"} per question: id "h01.0" (or "h01.m0" with tag "m")."""
    return [{"id": f"{r['id']}.{tag}{i}", "prompt": q["q"], "answer": q["answer"]}
            for r in rows for i, q in enumerate(r["questions"])]


def recall(questions: list[dict], answers: list[dict], key: str) -> float:
    """Share of the questions whose answer under `key` contains one of their keywords."""
    by_id = {a["id"]: a[key].lower() for a in answers}
    hits = sum(any(k.lower() in by_id[q["id"]] for k in q["answer"]) for q in questions)
    return hits / len(questions)


def peak_rss_mib() -> dict:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(me, 1), "largest_child": round(kids, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=str(ROOT / "bench" / "out" / "home"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=None, help="BakeConfig JSON overrides")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--more-questions", default=str(MORE),
                    help="more questions about the headlines (JSONL: id, questions); '' for none")
    ap.add_argument("--naive-budget-min", type=float, default=40.0, help="0 skips the naive loop")
    ap.add_argument("--seeds", type=int, default=1,
                    help="bake this many seeds (config seed, +1, ...) and report their spread; "
                         "the naive loop runs against the first")
    ap.add_argument("--pursuit-rounds", type=int, default=1,
                    help="bake by Prompt Pursuit (baker.pursuit): this many layers of the same prompt, "
                         "each on the stack so far; the KL figures are the first round's")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "bake.json"))
    args = ap.parse_args()

    from baker import BakeConfig
    from baker.models import resolve_model

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    prompt = headlines_prompt(rows)
    model_dir = resolve_model(args.model, Path(args.home))
    config = BakeConfig.from_dict(json.loads(args.config)) if args.config else BakeConfig()
    out_dir = Path(args.home) / "adapters" / "bench-headlines"

    seeds = [config.seed + i for i in range(args.seeds)]
    more = [json.loads(line) for line in Path(args.more_questions).read_text().splitlines()
            if line.strip()] if args.more_questions else []
    runs = [bake_and_measure(model_dir, rows, prompt, config.replace(seed=s), out_dir, more, args.pursuit_rounds)
            for s in seeds]
    reports = [r for r, _, _ in runs]
    report, m, trajs = runs[0]  # the naive loop runs against the first seed's bake
    if len(seeds) > 1:  # the 20-question recall moves by +-0.1 between seeds: report the spread
        keys = ("kl_ratio", "recall_ratio", "recall_more_ratio", "recall_all_ratio", "recall_all_vs_focused",
                "retention_fraction", "drift_kl", "bake_seconds", "kl_floor_ratio")
        report["seeds"] = [{"seed": s, **{k: r[k] for k in keys}, "recall": r["recall"], "recall_more": r["recall_more"],
                            "recall_all": r["recall_all"]}
                           for s, r in zip(seeds, reports)]
        report["over_seeds"] = {k: {"mean": sum(r[k] or 0 for r in reports) / len(reports),
                                    "min": min(r[k] or 0 for r in reports), "max": max(r[k] or 0 for r in reports)}
                                for k in keys}
        print(json.dumps({"seeds": report["seeds"], "over_seeds": report["over_seeds"]}, indent=1))
    bake_s = report["bake_seconds"]

    if args.naive_budget_min > 0:
        report["naive"] = run_naive(model_dir, prompt, trajs, config, m, args.naive_budget_min)
        report["speedup"] = report["naive"]["seconds"] / bake_s
        report["speedup_is_lower_bound"] = not report["naive"]["reached_target"]
        print(json.dumps({"naive": {k: v for k, v in report["naive"].items() if k != "epochs"},
                          "speedup": report["speedup"],
                          "speedup_is_lower_bound": report["speedup_is_lower_bound"]}, indent=1))

    report["targets"] = TARGETS
    over = report.get("over_seeds", {})  # several seeds: quality on the mean, time on the slowest
    report["meets"] = {
        "kl_ratio": over.get("kl_ratio", {}).get("mean", report["kl_ratio"]) <= TARGETS["kl_ratio_max"],
        "recall_ratio": over.get("recall_ratio", {}).get("mean", report["recall_ratio"] or 0) >= TARGETS["recall_ratio_min"],
        "bake_seconds": over.get("bake_seconds", {}).get("max", bake_s) <= TARGETS["bake_seconds_max"],
        "retention": over.get("retention_fraction", {}).get("mean", report["retention_fraction"] or 0)
        >= TARGETS["retention_min"],
        "speedup": report.get("speedup", 0) >= TARGETS["speedup_min"] if "speedup" in report else None,
    }
    print(json.dumps({"meets": report["meets"]}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def bake_and_measure(model_dir, rows, prompt, config, out_dir, more: list[dict] = (),
                     pursuit_rounds: int = 1) -> tuple[dict, dict, list[dict]]:
    """One bake of the headlines prompt and everything measured on it: (report, the bake's
    metrics, its trajectories), the last two for the naive loop. With `pursuit_rounds` > 1 the bake
    is a Prompt Pursuit and `out_dir` its stack; the bake's metrics are then its first round's."""
    from baker import bake
    from baker.baking import TRAJECTORIES_FILE
    from baker.generate import ask_runs
    from baker.pursuit import pursue
    from baker.verify import answer_matches, general_questions

    t = time.perf_counter()
    if pursuit_rounds > 1:
        results = pursue(model_dir, prompt, out_dir, pursuit_rounds, config, force=True)
        first_dir = out_dir / "layers" / "round-1"
    else:
        results, first_dir = [bake(model_dir, prompt, out_dir, config, force=True)], out_dir
    bake_s = time.perf_counter() - t
    m = results[0].metrics
    rss = peak_rss_mib()

    questions, extra = questions_of(rows), questions_of(more, "m")
    asked = questions + extra
    gq = general_questions()
    texts = [q["prompt"] for q in asked] + [g["q"] for g in gq]
    runs = {"base": (None, False, texts), "prompted": (prompt, False, texts[:len(asked)]),
            "baked": (None, True, texts)}
    # the focused teacher: each question with its own headline alone as the prompt
    by_headline = {r["id"]: [q for q in asked if q["id"].split(".")[0] == r["id"]] for r in rows}
    runs |= {f"focus:{r['id']}": (headlines_prompt([r]), False, [q["prompt"] for q in by_headline[r["id"]]])
             for r in rows}
    got, _ = ask_runs(model_dir, runs, adapter_dir=out_dir, max_new_tokens=30)
    answers = [{"id": q["id"], "prompt": q["prompt"], **{k: got[k][i] for k in ("base", "prompted", "baked")}}
               for i, q in enumerate(asked)]
    focused = {q["id"]: a for r in rows for q, a in zip(by_headline[r["id"]], got[f"focus:{r['id']}"])}
    for a in answers:
        a["focused"] = focused[a["id"]]
    keys = ("base", "prompted", "focused", "baked")
    rec = {k: recall(questions, answers, k) for k in keys}
    rec_more = {k: recall(extra, answers, k) for k in keys} if extra else None
    n = len(asked)
    base_right = [g["id"] for j, g in enumerate(gq) if answer_matches(got["base"][n + j], g["answer"])]
    baked_right = {g["id"] for j, g in enumerate(gq) if answer_matches(got["baked"][n + j], g["answer"])}
    retention = {"asked": len(gq), "base_right": len(base_right), "kept": sum(i in baked_right for i in base_right),
                 "lost": [i for i in base_right if i not in baked_right]}
    retention["kept_fraction"] = retention["kept"] / len(base_right) if base_right else None
    # Leakage check: the bake never sees the bench's questions, but the questions the model writes
    # about each headline can coincide with them; count the verbatim (case-insensitive) repeats.
    trajs = [json.loads(line) for line in (first_dir / TRAJECTORIES_FILE).read_text().splitlines()]
    seen = {t["context"].strip().lower() for t in trajs}
    leaked = sorted(q["id"] for q in questions + extra if q["prompt"].strip().lower() in seen)

    floor = reorder_floor(model_dir, rows, [t for t in trajs if t["split"] == "heldout"], m["config"])

    report = {
        "model": str(model_dir), "prompt_tokens": m["prompt_tokens"], "config": m["config"],
        "eval_kl_before": m["eval_kl_before"], "eval_kl_after": m["eval_kl_after"],
        "kl_ratio": m["eval_kl_after"] / m["eval_kl_before"], "drift_kl": m["drift_kl"],
        "kl_floor_reordered": floor, "kl_floor_ratio": floor / m["eval_kl_before"],
        "eval_kl_by_source": m.get("eval_kl_by_source"),
        "recall": rec, "recall_ratio": rec["baked"] / rec["prompted"] if rec["prompted"] else None,
        "bench_questions_among_contexts": leaked,
        "recall_baked_without_those": recall([q for q in questions if q["id"] not in leaked], answers, "baked")
        if len(leaked) < len(questions) else None,
        "recall_all": (all_ := {k: round(rec[k] * len(questions) + (rec_more[k] * len(extra) if extra else 0))
                                for k in keys}),
        "recall_all_of": len(asked),
        "recall_all_ratio": all_["baked"] / all_["prompted"] if all_["prompted"] else None,
        "recall_all_vs_focused": all_["baked"] / all_["focused"] if all_["focused"] else None,
        "retention": retention, "retention_fraction": retention["kept_fraction"],
        "recall_more": rec_more,
        "recall_more_ratio": rec_more["baked"] / rec_more["prompted"] if rec_more and rec_more["prompted"] else None,
        "bake_seconds": bake_s, "phases_s": m["timings"], "compiled": m.get("compiled"),
        "pursuit_rounds": [{k: r.metrics[k] for k in ("eval_kl_before", "eval_kl_after", "drift_kl")}
                           for r in results] if pursuit_rounds > 1 else None,
        "epochs": m["epochs"], "trajectories": m["trajectories"], "tokens": m["tokens"],
        "trained_tokens_per_second": m["trained_tokens_per_second"], "peak_rss_mib": rss,
        "answers": answers,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("answers", "config", "epochs")}, indent=1))
    return report, m, trajs


def reorder_floor(model_dir, rows, held: list[dict], config: dict, seed: int = 1) -> float:
    """KL(teacher || teacher with the same headlines in another order) on the bake's held-out
    trajectories, in nats/token: how far the prompted model moves when its prompt is rewritten
    without changing a single fact. It puts `eval_kl_after` in scale: to get below it, a baked model
    would have to reproduce how this particular wording of the prompt moves the model, beyond what
    the prompt says."""
    import random

    import torch

    from baker.chat import chat_ids
    from baker.kl import kl_per_position, sequence_logprobs
    from baker.models import load_model

    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    model, tok = load_model(model_dir, dtype=getattr(torch, config["compute_dtype"]), attn_implementation="eager")
    gens = [t["gen"] for t in held]
    lp = [sequence_logprobs(model, [chat_ids(tok, t["context"], p) for t in held], gens, tok.pad_token_id,
                            dtype=config["compute_dtype"], store="float32")
          for p in (headlines_prompt(rows), headlines_prompt(shuffled))]
    return float(kl_per_position(torch.cat(lp[1]), torch.cat(lp[0])).mean())


def run_naive(model_dir, prompt, trajs: list[dict], config, m, budget_min) -> dict:
    """Same contexts and held-out set as the bake; the naive loop samples its own trajectories."""
    import torch  # noqa: F401

    from baker.chat import chat_ids
    from baker.kl import sequence_logprobs
    from baker.models import load_model
    from naive import naive_bake

    train_ctx = [t["context"] for t in trajs if t["split"] == "train"]
    held = [t for t in trajs if t["split"] == "heldout"]
    model, tok = load_model(model_dir)
    teacher = sequence_logprobs(model, [chat_ids(tok, t["context"], prompt) for t in held],
                                [t["gen"] for t in held], tok.pad_token_id, dtype="float32", store="float32")
    heldout = {"contexts": [chat_ids(tok, t["context"]) for t in held], "gens": [t["gen"] for t in held],
               "teacher": teacher}
    del model
    return naive_bake(model_dir, prompt, train_ctx, heldout, config, target_kl=m["eval_kl_after"],
                      budget_s=budget_min * 60, max_epochs=config.epochs * 4)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
