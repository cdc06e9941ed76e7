"""News from a feed: answered from the hot tier at once, then from the weights after an idle bake.

    .venv/bin/python examples/news_feed.py [--home DIR] [--quick] [--out result.json]

It writes a small RSS file of two fictional headlines into a temporary directory, starts
`bakehouse run` on the embedded SmolLM2 in a scratch home (HOME/examples/news_feed, rebuilt every
run; the model cache of HOME is shared) and subscribes a tenant to the file. The runtime polls
it like any feed: the headlines become memories, and the gateway puts them into the tenant's
system prompt within a second, so the first answers come from the hot tier (their prompt tokens
include the headlines). When the gateway has been idle for a few seconds the runtime bakes them
into a LoRA layer, verifies each headline without the prompt and, if one graduated, serves the
new version: the second answers come from the weights, with fewer prompt tokens.

What the 135M model does: from the hot tier it answered one of the two questions right when this
was written (the telescope; the mayor's question it talked around). A headline that graduates
leaves the prompt and may or may not be answered right from the weights (the verifier's probes
passed; the question here is a different one). `--quick` bakes 2 epochs on fewer contexts,
not compiled (as the test does): the path is the same, but so small a bake rarely
graduates anything (it did not in the run the test was written with), and then the base serves
on with the same hot prompt. No network: the feed is a local file, the model is the embedded one.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from agent.home import resolve_home
from agent.runtime.session import RunSession
from baker.models import resolve_model
from memory import MemoryStore, feeds

TENANT = "reader"
HEADLINES = [  # (date, headline, question, the words a right answer contains)
    ("2026-11-05", "The Halvik Observatory names its new telescope the Starloom.",
     "What is the name of the Halvik Observatory's new telescope?", ["Starloom"]),
    ("2026-11-02", "The town of Brackenford elects Olwen Marsh as its first mayor.",
     "Who is the mayor of Brackenford?", ["Marsh"]),
]
# --quick: a small bake, not compiled (compiling costs more than it saves on a few steps)
QUICK_BAKE = {"epochs": 2, "generic_contexts": 8, "self_questions": 2, "anchors": 0, "checkpoints": False,
              "compile": False}


def write_rss(path: Path) -> Path:
    items = "".join(f"<item><title>{h}</title><guid>news-{i}</guid><pubDate>{d}T08:00:00Z</pubDate></item>"
                    for i, (d, h, _, _) in enumerate(HEADLINES))
    path.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>Local news</title>'
                    f"{items}</channel></rss>")
    return path


def ask_all(s: RunSession, label: str) -> list[dict]:
    rows = []
    print(f"\n{label}:")
    for _, _, question, expect in HEADLINES:
        r = s.chat(TENANT, question)
        r["right"] = any(e.lower() in r["text"].lower() for e in expect)
        print(f"  {'✓' if r['right'] else '✗'} {question}\n      -> {r['text'][:100]!r}  "
              f"[{r['model']}, {r['prompt_tokens']} prompt tokens]")
        rows.append({"question": question, **r})
    return rows


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None, help="Data home holding the model cache (default: bakehouse's).")
    ap.add_argument("--quick", action="store_true", help="A small bake (2 epochs, fewer contexts), as the test runs.")
    ap.add_argument("--out", default=None, help="Write what happened as JSON here.")
    args = ap.parse_args()

    home = resolve_home(args.home)
    model = resolve_model(None, home)
    scratch = home / "examples" / "news_feed"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    run_args = ["--idle-seconds", "3", "--feed-minutes", "0.1", "--max-tries", "1", "--episode-idle", "600"]
    if args.quick:
        (scratch / "bake.json").write_text(json.dumps(QUICK_BAKE))
        run_args += ["--bake-config", str(scratch / "bake.json"), "--graduation", "any", "--gate-general", "0.8"]
    s = RunSession(scratch, model, args=tuple(run_args), log_name="run.log")
    s.add_tenant(TENANT)
    print(f"starting bakehouse run on {model.name} (logs: {scratch / 'runtime' / 'logs'}) ...")
    s.start()
    try:
        rss = write_rss(Path(tempfile.mkdtemp(prefix="bakehouse-news-")) / "news.xml")
        with MemoryStore.in_home(scratch, actor="example") as store:
            feeds.add_feed(store, str(rss), tenant=TENANT, every_minutes=0.1)
        print(f"subscribed {TENANT!r} to {rss}; waiting for the runtime to poll it ...")
        t0 = time.monotonic()
        while s.status()["tenants"].get(TENANT, {}).get("hot_memories", 0) < len(HEADLINES):
            if time.monotonic() - t0 > 60:
                raise SystemExit("the feed was not polled within 60 s")
            time.sleep(0.5)
        print(f"polled after {time.monotonic() - t0:.1f} s: {len(HEADLINES)} headlines are memories")
        hot = ask_all(s, "from the hot tier (the headlines are in the system prompt)")

        print("\nwaiting for the idle bake (bake a layer -> verify each headline without the prompt -> publish) ...")
        t_bake = time.monotonic()
        st = s.wait_for_bakes(TENANT, timeout=3600)
        job = st["tenants"][TENANT]["last_bake"]
        print(f"  [{time.monotonic() - t_bake:.0f} s] {s.bake_outcome(TENANT, st)}")
        time.sleep(1.0)
        baked = ask_all(s, "after the bake (graduated headlines are answered from the weights)")
    finally:
        s.stop()
    with MemoryStore.in_home(scratch) as store:
        graduated = [m.text for m in store.memories(TENANT) if m.status == "baked"]
    print(f"\ngraduated into the weights: {graduated or 'none (they stay in the hot tier)'}")
    print(f"prompt tokens per question: {hot[0]['prompt_tokens']} from the hot tier, {baked[0]['prompt_tokens']} after")
    result = {"hot": hot, "baked": baked, "graduated": graduated, "job": job, "version": st["tenants"][TENANT]["version"],
              "bake_seconds": time.monotonic() - t_bake}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
