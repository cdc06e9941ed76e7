"""The verifier's behaviour check (`baker.behaviour`) on the adapters the instruction and persona
benches baked: per memory, KL to the prompted model on unrelated requests, of the base and of the
adapter, their ratio, and whether it passes (ratio <= baker.behaviour.MAX_RATIO) — that is,
whether the runtime would now graduate it.

    python bench/behaviour.py [--home DIR]    # after bench/instructions.py and bench/personas.py

Prints a table and writes bench/out/behaviour.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "behaviour.json"
BENCHES = ("bench-instructions", "bench-personas")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from agent.home import resolve_home
    from baker.behaviour import MAX_RATIO, check_behaviours
    from baker.models import resolve_model

    home = resolve_home(args.home)
    model = resolve_model(args.model, home)
    rows = []
    for bench in BENCHES:
        for d in sorted((home / bench).glob("*/")):
            if not (d / "spec.json").is_file() or not (d / "layer" / "adapter_model.safetensors").is_file():
                continue
            spec = json.loads((d / "spec.json").read_text())
            items = [(m["id"], m["text"]) for m in spec["memories"]]
            for item_id, r in check_behaviours(model, d / "layer", items).items():
                rows.append({"bench": bench, "name": d.name, "text": dict(items)[item_id], **r.to_dict()})
                print(f"{d.name:<6} base {r.kl_base:.3f}  baked {r.kl_baked:.3f}  ratio {r.ratio:.2f}  "
                      f"{'passes' if r.passed else 'fails '}  {dict(items)[item_id]}", flush=True)
    if not rows:
        raise SystemExit(f"no baked instruction or persona under {home}: run bench/instructions.py or bench/personas.py")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"max_ratio": MAX_RATIO, "rows": rows}, indent=2))
    print(f"{sum(r['passed'] for r in rows)} of {len(rows)} pass; wrote {OUT}")


if __name__ == "__main__":
    main()
