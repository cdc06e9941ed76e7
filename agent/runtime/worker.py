"""The bake worker: bake a layer, stack it, verify it. Publishes nothing.

    python -m agent.runtime.worker --serve     # warm: jobs from stdin, one at a time
    python -m agent.runtime.worker SPEC.json   # one job

Warm, it keeps the base model loaded between jobs (baker.warm.WarmBase) and reads one JSON line
per job from stdin: {"spec": SPEC.json, "engine": {"url", "key", "model", "priority", "max_len"} or null}.
With "engine", sampling and verification go through that vLLM server (the runtime's serving
engine, bake requests at a lower priority than users'), so a bake starts no vLLM of its own. Its
key arrives on the pipe, never on disk. End of input ends the worker.

SPEC (written by the runtime, agent/runtime/bakes.py):
    {"model_dir", "out_dir", "parent": adapter dir or null, "config": {BakeConfig fields},
     "memories": [{"id", "kind", "text", "valid_from"}],   # to bake and graduate
     "recheck": [{"id", "kind", "text", "valid_from"}],     # graduated earlier: must still hold
     "forgotten": [{"id", "text", "instead"?}],             # must no longer be recalled (superseded:
                                                            #   "instead" is the update; only what changed)
     "rule": graduation rule (baker.verify.RULES), default "any",
     "hot": {"systems": {id: [the hot tier's system prompt for each of its verification probes]},
             "scores": {id: hits measured before}, "served_adapter": the served stack or null}}
                                                            # rule "hot": what the weights must match

Each job writes OUT_DIR/result.json (the candidate adapter, per-memory outcomes, bake figures) or
OUT_DIR/error.json with the reason, each whole or not at all. The runtime decides what to publish.

The process leads its own process group (the runtime pauses and kills it as a group, the vLLM
engine processes of a bake that samples on its own included) and dies with the runtime: a thread
watches the parent and kills the group the moment it is gone, so a `kill -9` of the runtime
leaves no bake running.
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


def hot_scores(spec: dict, probes: dict) -> dict:
    """The served model's answers to the probes of the memories spec["hot"]["systems"] names, each
    with the system prompt the hot tier gives that question: {memory id: {"hits", "asked", ...}}."""
    from baker.verify import reference_hits

    hot = spec.get("hot") or {}
    todo = [(probes[int(k)], systems) for k, systems in (hot.get("systems") or {}).items() if int(k) in probes]
    if not todo:
        return {}
    return reference_hits(spec["model_dir"], hot.get("served_adapter"), [p for ps, _ in todo for p in ps],
                          [s for ps, systems in todo for s in systems], sampler=spec.get("sampler", "auto"))


def run(spec: dict, base=None) -> dict:
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
                        parent=spec.get("parent"), exclude_contexts=held_out, replay_prompt=replay, base=base)[-1]
    else:
        result = bake(spec["model_dir"], bake_prompt(memories), out / "layer", config, progress=True,
                      parent=spec.get("parent"), exclude_contexts=held_out, replay_prompt=replay, base=base)
    t_bake = time.perf_counter() - t0
    candidate = out / "layer"
    if spec.get("parent"):
        candidate = stack_adapters([spec["parent"], out / "layer"], out / "stack")
    forgotten = [(m["id"], m["text"], m.get("instead")) for m in spec["forgotten"]]
    measured = hot_scores(spec, probes)
    reference = {int(k): v for k, v in ((spec.get("hot") or {}).get("scores") or {}).items()}
    reference.update({i: r["hits"] for i, r in measured.items()})
    report = verify(spec["model_dir"], candidate,
                    [(m["id"], m["text"]) for m in memories + spec["recheck"]],
                    probes=[p for ps in probes.values() for p in ps], forgotten=forgotten,
                    prompt=bake_prompt(memories), rule=spec.get("rule", "any"),
                    sampler=spec.get("sampler", "auto"), hot_reference=reference)
    m = result.metrics
    return {
        "candidate": str(candidate),
        "hot_scores": measured,
        "layer": str(out / "layer"),
        "verify": report.to_dict(),
        "bake": {k: m[k] for k in ("eval_kl_before", "eval_kl_after", "drift_kl", "prompt_tokens", "prompt_sha256",
                                   "epochs", "steps", "timings") if k in m},
        "timings": {"bake": t_bake, "verify": report.seconds, "total": time.perf_counter() - t0},
    }


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def run_job(spec_path: Path, base=None, engine: dict | None = None) -> int:
    """One job: its result or its error written into its out_dir; 0 / 1."""
    from baker.sampling import use_engine

    use_engine(engine)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    t0 = time.perf_counter()
    try:
        result = run(spec, base)
    except BaseException as e:  # noqa: BLE001  the runtime records why, whatever it was
        _write(out / ERROR, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]})
        if not isinstance(e, Exception):
            raise
        return 1
    finally:
        print(f"job {spec_path} ended after {time.perf_counter() - t0:.1f} s", flush=True)
    result["worker"] = {"pid": os.getpid(), "bakes": base.bakes if base else 1, "loads": base.loads if base else 1}
    _write(out / RESULT, result)
    return 0


def serve(lines) -> int:
    """Jobs from `lines` (stdin), one at a time, on one warm base."""
    from baker.warm import WarmBase

    base = WarmBase()
    for line in lines:
        if not line.strip():
            continue
        msg = json.loads(line)
        run_job(Path(msg["spec"]), base, msg.get("engine"))
    return 0


def main(argv: list[str]) -> int:
    watch_parent(int(os.environ.get("BAKEHOUSE_PARENT_PID") or os.getppid()))
    if argv[1:] == ["--serve"]:
        return serve(sys.stdin)
    return run_job(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
