"""One bake job in its own process: bake a layer, stack it, verify it. Publishes nothing.

    python -m agent.runtime.worker SPEC.json

SPEC (written by the runtime, agent/runtime/bakes.py):
    {"model_dir", "out_dir", "parent": adapter dir or null, "config": {BakeConfig fields},
     "memories": [{"id", "kind", "text", "valid_from"}],   # to bake and graduate
     "recheck": [{"id", "kind", "text", "valid_from"}],     # graduated earlier: must still hold
     "forgotten": [{"id", "text", "instead"?}],             # must no longer be recalled (superseded:
                                                            #   "instead" is the update; only what changed)
     "rule": graduation rule (baker.verify.RULES), default "any"}

It writes OUT_DIR/result.json (the candidate adapter, per-memory outcomes, bake figures) or
OUT_DIR/error.json with the reason, and exits 0 / 1. The runtime decides what to publish.

The process leads its own process group (the runtime pauses and kills it as a group, vLLM's
engine processes included) and dies with the runtime: a thread watches the parent and kills the
group the moment it is gone, so a `kill -9` of the runtime leaves no bake running.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

RESULT, ERROR = "result.json", "error.json"


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Kill this process group when `parent` is gone (re-parented: getppid changes)."""

    def run():
        while True:
            if os.getppid() != parent:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            time.sleep(interval)

    threading.Thread(target=run, name="watch-parent", daemon=True).start()


def bake_prompt(memories: list[dict]) -> str:
    """The memories laid out as the hot tier lays them out (memory.compose), with no budget."""
    from memory.compose import Item, render

    items = [Item(m["id"], m["kind"], m["text"], m.get("valid_from") or "") for m in memories]
    items.sort(key=lambda it: it.valid_from, reverse=True)
    return render(items, budget_tokens=10**9).text


def run(spec: dict) -> dict:
    from baker import BakeConfig, bake
    from baker.verify import verification_probes, verify
    from baker.adapters import stack_adapters

    out = Path(spec["out_dir"])
    t0 = time.perf_counter()
    memories = spec["memories"]
    probes = {m["id"]: verification_probes(m["id"], m["text"]) for m in memories + spec["recheck"]}
    # the verifier's probes, of the new memories and of the earlier ones it rechecks: never trained on
    held_out = [p.question for m in memories + spec["recheck"] for p in probes[m["id"]]]
    config = BakeConfig.from_dict(spec.get("config") or {})
    replay = bake_prompt(spec["recheck"]) if spec.get("parent") and spec["recheck"] else None
    rounds = int(spec.get("pursuit_rounds", 1))
    if rounds > 1:  # Prompt Pursuit: the rounds, each on the stack below it, stacked into one layer
        from baker.pursuit import pursue

        result = pursue(spec["model_dir"], bake_prompt(memories), out / "layer", rounds, config, progress=True,
                        parent=spec.get("parent"), exclude_contexts=held_out, replay_prompt=replay)[-1]
    else:
        result = bake(spec["model_dir"], bake_prompt(memories), out / "layer", config, progress=True,
                      parent=spec.get("parent"), exclude_contexts=held_out, replay_prompt=replay)
    t_bake = time.perf_counter() - t0
    candidate = out / "layer"
    if spec.get("parent"):
        candidate = stack_adapters([spec["parent"], out / "layer"], out / "stack")
    forgotten = [(m["id"], m["text"], m.get("instead")) for m in spec["forgotten"]]
    report = verify(spec["model_dir"], candidate,
                    [(m["id"], m["text"]) for m in memories + spec["recheck"]],
                    probes=[p for ps in probes.values() for p in ps], forgotten=forgotten,
                    prompt=bake_prompt(memories), rule=spec.get("rule", "any"),
                    sampler=spec.get("sampler", "auto"))
    m = result.metrics
    return {
        "candidate": str(candidate),
        "layer": str(out / "layer"),
        "verify": report.to_dict(),
        "bake": {k: m[k] for k in ("eval_kl_before", "eval_kl_after", "drift_kl", "prompt_tokens", "prompt_sha256",
                                   "epochs", "timings") if k in m},
        "timings": {"bake": t_bake, "verify": report.seconds, "total": time.perf_counter() - t0},
    }


def main(argv: list[str]) -> int:
    spec_path = Path(argv[1])
    spec = json.loads(spec_path.read_text())
    out = Path(spec["out_dir"])
    watch_parent(spec.get("parent_pid") or os.getppid())
    try:
        result = run(spec)
    except BaseException as e:  # noqa: BLE001  the runtime records why, whatever it was
        (out / ERROR).write_text(json.dumps({"error": f"{type(e).__name__}: {e}",
                                             "traceback": traceback.format_exc()[-4000:]}))
        return 1
    tmp = out / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, out / RESULT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
