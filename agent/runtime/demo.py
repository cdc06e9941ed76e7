"""`bakehouse demo`: the learning loop on the embedded model, shown end to end.

It starts `bakehouse run` in a fresh demo home (the model cache is shared), stores four fictional
headlines, asks about them (answered from the hot tier, and what that cost in prompt tokens),
waits for the idle bake and its verification, and asks again (answered from the weights where
they graduated)."""
from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from memory import MemoryStore

from .session import RunSession

TENANT = "demo"


def load_demo() -> dict:
    return json.loads(resources.files("agent").joinpath("data/demo.json").read_text())


def _hit(answer: str, expected: list[str]) -> bool:
    return any(e.lower() in answer.lower() for e in expected)


def run_demo(home: Path, model_dir: Path, echo: Callable[[str], None] = print, epochs: int | None = None,
             timeout: float = 3600.0) -> dict:
    demo = load_demo()
    dhome = Path(home) / "demo"
    if dhome.exists():
        shutil.rmtree(dhome)  # the demo's own scratch home, rebuilt every run
    args = ["--idle-seconds", "3", "--max-tries", "1", "--feed-minutes", "1440"]
    if epochs:
        args += ["--epochs", str(epochs)]
    s = RunSession(dhome, model_dir, args=tuple(args), log_name="run.log")
    t0 = time.monotonic()
    s.add_tenant(TENANT)
    echo(f"starting bakehouse run (vLLM + gateway + scheduler) on {model_dir.name} ...")
    s.start()
    timings = {"start": time.monotonic() - t0}
    try:
        with MemoryStore.in_home(dhome, actor="demo") as store:
            for h in demo["headlines"]:
                store.add(TENANT, "headline", h["text"], published_at=h["date"], source="demo")
        echo(f"stored {len(demo['headlines'])} headlines; asking about them at once (hot tier):")
        time.sleep(1.0)  # the hot tier is written within 0.25 s and read by the gateway within 0.25 s
        before = _ask(s, demo, echo)
        t_bake = time.monotonic()
        echo("waiting for the idle bake (bake a layer -> verify each headline without the prompt -> publish) ...")
        last = {"phase": None}

        def progress(st):
            t = st["tenants"].get(TENANT) or {}
            phase = ", ".join(f"job {j['id']} {j['state']}" for j in t.get("jobs", [])) or None
            if phase and phase != last["phase"]:
                echo(f"  [{time.monotonic() - t_bake:5.0f} s] {phase}")
                last["phase"] = phase

        st = s.wait_for_bakes(TENANT, timeout, progress)
        timings["bake_to_served"] = time.monotonic() - t_bake
        echo(f"  [{timings['bake_to_served']:5.0f} s] {s.bake_outcome(TENANT, st)}")
        time.sleep(1.0)
        echo("asking again:")
        after = _ask(s, demo, echo)
    finally:
        s.stop()
    with MemoryStore.in_home(dhome) as store:
        graduated = [m.text for m in store.memories(TENANT) if m.status == "baked"]
    n = len(demo["questions"])
    summary = {
        "graduated": graduated,
        "correct_before": sum(r["hit"] for r in before), "correct_after": sum(r["hit"] for r in after),
        "prompt_tokens_before": sum(r["prompt_tokens"] for r in before) / n,
        "prompt_tokens_after": sum(r["prompt_tokens"] for r in after) / n,
        "timings": timings,
    }
    echo(f"\ngraduated into the weights: {len(graduated)} of {len(demo['headlines'])} headlines")
    for text in graduated:
        echo(f"  - {text}")
    echo(f"correct: {summary['correct_before']}/{n} from the hot tier, {summary['correct_after']}/{n} after the bake")
    echo(f"prompt tokens per question: {summary['prompt_tokens_before']:.0f} before, "
         f"{summary['prompt_tokens_after']:.0f} after")
    echo(f"time: runtime start {timings['start']:.0f} s, idle bake to served {timings['bake_to_served']:.0f} s "
         f"(logs: {dhome / 'runtime' / 'logs'})")
    return summary


def _ask(s: RunSession, demo: dict, echo) -> list[dict]:
    rows = []
    for q in demo["questions"]:
        r = s.chat(TENANT, q["prompt"])
        r["hit"] = _hit(r["text"], q["answer"])
        echo(f"  {'✓' if r['hit'] else '✗'} {q['prompt']}  -> {r['text'][:90]!r}  "
             f"[{r['model']}, {r['prompt_tokens']} prompt tokens]")
        rows.append(r)
    return rows
