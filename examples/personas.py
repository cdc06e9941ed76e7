"""Three tenants, three personas, one base model: served side by side by `bakehouse run`.

    .venv/bin/python examples/personas.py [--home DIR] [--quick] [--out result.json]

It starts `bakehouse run` on the embedded SmolLM2 in a scratch home (HOME/examples/personas,
rebuilt every run; the model cache of HOME is shared), adds three tenants and stores one persona
memory for each. The runtime puts each tenant's persona into that tenant's hot prompt only, and
the gateway sends it before the caller's messages. All three are asked the same questions with
the official OpenAI client, each with its own key; every answer is printed with the version that
served it (`X-Bakehouse-Version`), the hot prompt's tokens (`X-Bakehouse-Hot-Tokens`) and the
prompt tokens vLLM counted.

What the 135M model does: asked who it is, it often answers with its persona's name, not always
(it may fall back to "I am an AI assistant"); it never gets another tenant's persona, because
that text never reaches its request. No bake runs here (the runtime is never idle long enough);
`bakehouse run` would bake the personas in idle time like any memory (see bench/personas.py for
how well a baked persona holds over a conversation). `--quick` asks one question instead of two.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import openai

from agent.home import resolve_home
from agent.runtime.session import RunSession
from baker.models import resolve_model
from memory import MemoryStore

PERSONAS = {  # tenant -> (persona, the name it carries); of different lengths, so their tokens differ
    "harbour": ("You are Captain Brann, an old sea captain.", "Brann"),
    "library": ("You are Professor Quill, the head librarian of the Lindenhall archive.", "Quill"),
    "kitchen": ("You are Chef Ada Moreau, who runs the kitchen of the Marigold bistro by the old harbour "
                "and loves soup.", "Moreau"),
}
QUESTIONS = ["Who are you? Answer in one sentence.", "What is your job?"]


def ask(url: str, key: str, tenant: str, question: str) -> dict:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model=tenant, messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0)
    r = raw.parse()
    return {"tenant": tenant, "question": question, "text": r.choices[0].message.content, "model": r.model,
            "version": raw.headers.get("x-bakehouse-version"),
            "hot_tokens": int(raw.headers.get("x-bakehouse-hot-tokens", -1)),
            "prompt_tokens": r.usage.prompt_tokens}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None, help="Data home holding the model cache (default: bakehouse's).")
    ap.add_argument("--quick", action="store_true", help="One question instead of two (as the test runs).")
    ap.add_argument("--out", default=None, help="Write the answers as JSON here.")
    args = ap.parse_args()

    home = resolve_home(args.home)
    model = resolve_model(None, home)
    scratch = home / "examples" / "personas"
    shutil.rmtree(scratch, ignore_errors=True)
    # never idle long enough to bake: this example is about the hot tier on one shared base
    s = RunSession(scratch, model, args=("--idle-seconds", "86400", "--episode-idle", "600"), log_name="run.log")
    for tenant in PERSONAS:
        s.add_tenant(tenant)
    print(f"starting bakehouse run on {model.name} with tenants {', '.join(PERSONAS)} ...")
    s.start()
    rows = []
    try:
        with MemoryStore.in_home(scratch, actor="example") as store:
            for tenant, (persona, _) in PERSONAS.items():
                store.add(tenant, "persona", persona)
        t0 = time.monotonic()
        while {t for t, v in s.status()["tenants"].items() if v["hot_tokens"]} != set(PERSONAS):
            if time.monotonic() - t0 > 30:
                raise SystemExit("the personas did not reach the hot tier within 30 s")
            time.sleep(0.25)
        for question in QUESTIONS[:1] if args.quick else QUESTIONS:
            print(f"\nQ: {question}")
            for tenant, (_, name) in PERSONAS.items():
                r = ask(s.url, s.keys[tenant], tenant, question)
                r["own_name"] = name.lower() in r["text"].lower()
                r["other_names"] = [n for t, (_, n) in PERSONAS.items()
                                    if t != tenant and n.lower() in r["text"].lower()]
                print(f"  {tenant:>8} [{r['version']}, hot prompt {r['hot_tokens']} of {r['prompt_tokens']} "
                      f"prompt tokens]: {r['text'][:110]!r}")
                rows.append(r)
    finally:
        s.stop()
    named = sum(r["own_name"] for r in rows)
    crossed = [r for r in rows if r["other_names"]]
    print(f"\n{named} of {len(rows)} answers use their own persona's name; "
          f"{len(crossed)} mention another tenant's persona")
    result = {"answers": rows, "own_name": named, "crossed": len(crossed)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
