"""Long run: `bakehouse run` with one tenant fed a news feed that keeps growing, for 45 minutes,
asked about everything it was told every few minutes. Two arms, chosen by --hot-tier (passed to
`bakehouse run`): `retrieval` puts only the memories relevant to each question in the system
prompt, `static` puts every memory the served weights do not hold, up to --hot-budget tokens.

The tenant's feed is a local RSS 2.0 file (registered with `bakehouse feeds add --every`) that
grows by --per-delivery headlines every --every seconds: the 20 of shared/data/headlines.jsonl,
then bench/data/longrun_headlines.jsonl. A headline that updates an earlier one ("supersedes") is
stored with `bakehouse remember --supersedes ID` instead, so the old memory is marked superseded;
from then on the earlier headline's question is scored against the update's answer.

Every --probe-minutes (and right after the first delivery) one question per delivered headline
goes through the gateway with the openai client (temperature 0, 40 tokens). Per probe, printed
and kept in the timeline:
- right: answers holding one of the question's keywords, as a share of the delivered headlines
  (of a fixed sample of them with --max-questions: a probe costs seconds per question on a CPU);
- prompt tokens per question (usage.prompt_tokens) and hot memories per question
  (X-Bakehouse-Hot-Memories, the memory ids put in that request's prompt);
- held: live memories the served version (X-Bakehouse-Version) holds in its weights;
- hit rate: questions whose own memory is in the request's prompt, over the questions whose
  memory the served version does not hold;
- out of service: live memories neither held nor retrievable (the runtime's status file);
- live memories (episode summaries included) and bakes finished / published;
- episodes: besides the one-shot questions, each probe holds one short conversation in which the
  user states something of their own (CHATS; `bakehouse run --episode-idle 1`, so episodes close
  and are summarised during the run): conversations recorded, summaries stored, summaries of
  conversations in which the user only asked (target 0), and the share of summaries grounded in
  what the user said (agent.runtime.episodes.grounded; target >= 0.9).

Targets (--compare, the retrieval arm against the static one):
- right at the end >= right at the first probe, both as a share of the delivered headlines;
- 0 memories out of service at every probe;
- prompt tokens per question at the end <= 0.3x the static arm's, and flat while memories keep
  coming (the last probe <= 1.1x the probe at half time);
- hit rate >= 0.9 over the whole run.

Writes bench/out/longrun-<arm>.json (config, timeline, summary; after every probe) and
bench/out/longrun-<arm>.png; --compare writes bench/out/longrun-compare.png. One JSON line last.

    python bench/longrun.py --hot-tier retrieval            # 45 minutes
    python bench/longrun.py --hot-tier static
    python bench/longrun.py --compare bench/out/longrun-retrieval.json bench/out/longrun-static.json
    python bench/longrun.py --hot-tier retrieval --quick    # 6 minutes, one update: a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.episodes import CONVERSATION_HEADER  # noqa: E402
from serving.hot import HOT_MEMORIES_HEADER, HOT_TOKENS_HEADER, VERSION_HEADER  # noqa: E402  the answer's headers

SHARED = ROOT.parent / "shared" / "data" / "headlines.jsonl"
LONGRUN = ROOT / "bench" / "data" / "longrun_headlines.jsonl"
OUT_DIR = ROOT / "bench" / "out"
TENANT = "news"

# what a user of the news assistant tells it about themselves, one conversation per probe
CHATS = [
    ["My locker code is 7734. Please remember my locker code.", "What is in the news today?"],
    ["I live in Dunmere and I work night shifts at the harbour.", "Anything new about Velmora?"],
    ["My sister Ines is visiting on Friday. She is allergic to peanuts.", "Thanks!"],
    ["Remember that my train leaves at 6:40 from platform 9.", "Is there a rail strike?"],
    ["My dog is called Brutus and he is eleven years old.", "Any news about dogs?"],
    ["I prefer short answers, and I read the news at 7 every morning.", "Good morning!"],
    ["My new phone number ends in 4471.", "Can you remember that?"],
    ["I am training for the Orlen Valley Marathon in March.", "Who won it last year?"],
    ["My daughter Mila starts school in Tessaly next week.", "Hello again."],
    ["I sold my old car, a green Kestrel 300.", "What is the latest news?"],
]
EPISODE_GROUNDED_MIN = 0.9
TOKENS_VS_STATIC_MAX = 0.3  # retrieval's prompt tokens per question at the end, x the static arm's
TOKENS_GROWTH_MAX = 1.1  # last probe's prompt tokens, x the probe's at half time
HIT_RATE_MIN = 0.9
INGEST_TIMEOUT_S = 90.0  # a probe waits this long for delivered headlines to reach the store
SETTLE_S = 1.0  # then this long for the hot tier (synced every 0.25 s) to reach the gateway


# -- headlines and the feed ---------------------------------------------------------------------

def load_headlines(*paths: Path) -> list[dict]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


def quick_order(heads: list[dict], lead: int = 6, gap: int = 3) -> list[dict]:
    """For --quick: `lead` plain headlines, the first updated one, `gap` plain ones, its update,
    then the rest; so a few minutes of deliveries include one update."""
    upd = next(h for h in heads if h.get("supersedes"))
    orig = next(h for h in heads if h["id"] == upd["supersedes"])
    rest = [h for h in heads if h is not orig and h is not upd]  # in order: every update after its original
    return rest[:lead] + [orig] + rest[lead:lead + gap] + [upd] + rest[lead + gap:]


def rss_document(items: list[dict], title: str = "bakehouse long-run news") -> bytes:
    """An RSS 2.0 channel, newest item first: title = headline, guid = id, pubDate = date."""
    rss = ET.Element("rss", version="2.0")
    channel = ET.SubElement(rss, "channel")
    ET.SubElement(channel, "title").text = title
    ET.SubElement(channel, "link").text = "http://localhost/longrun"
    ET.SubElement(channel, "description").text = "Fictional headlines for bench/longrun.py"
    for h in reversed(items):
        item = ET.SubElement(channel, "item")
        ET.SubElement(item, "title").text = h["headline"]
        ET.SubElement(item, "guid", isPermaLink="false").text = h["id"]
        day = datetime.fromisoformat(h["date"]).replace(hour=8, tzinfo=timezone.utc)
        ET.SubElement(item, "pubDate").text = format_datetime(day)
    return ET.tostring(rss, encoding="utf-8", xml_declaration=True)


def write_rss(path: Path, items: list[dict]) -> Path:
    """Replace the feed file whole, so a poll never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(rss_document(items))
    os.replace(tmp, path)
    return path


# -- scoring -----------------------------------------------------------------------------------

def normalise(text: str) -> str:
    """Lower case, ISO dates dropped, words only: a memory's text matches its headline even when
    stored with the date or without the final full stop."""
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}\b", " ", text.lower())
    return " ".join(re.findall(r"[a-z0-9]+", text))


def match_memories(heads: list[dict], memories: list[dict]) -> dict[str, int]:
    """Headline id -> id of its memory ({"id", "text"}): the same normalised text, else a memory
    whose text contains the headline's; the newest wins."""
    norms = sorted(((m["id"], normalise(m["text"])) for m in memories), reverse=True)
    out = {}
    for h in heads:
        want = normalise(h["headline"])
        mid = next((i for i, t in norms if t == want), None)
        if mid is None:
            mid = next((i for i, t in norms if want and want in t), None)
        if mid is not None:
            out[h["id"]] = mid
    return out


def successors(delivered: list[dict]) -> dict[str, str]:
    """Headline id -> id of the newest delivered headline that updates it (through a chain)."""
    ids = {h["id"] for h in delivered}
    nxt = {h["supersedes"]: h["id"] for h in delivered if h.get("supersedes") in ids}
    out = {}
    for hid in nxt:
        last = hid
        while last in nxt:
            last = nxt[last]
        out[hid] = last
    return out


def probe_questions(delivered: list[dict]) -> list[dict]:
    """One question per delivered headline. `subject`: the headline whose answer counts, the
    latest update of it when one was delivered."""
    by_id, succ = {h["id"]: h for h in delivered}, successors(delivered)
    out = []
    for h in delivered:
        subject = by_id[succ.get(h["id"], h["id"])]
        out.append({"id": h["id"], "q": h["questions"][0]["q"], "subject": subject["id"],
                    "answer": subject["questions"][0]["answer"], **({"supersedes": h["supersedes"]}
                                                                   if h.get("supersedes") else {})})
    return out


def sample_questions(questions: list[dict], n: int | None) -> list[dict]:
    """`n` of a probe's questions (None or 0: all): the newest quarter and every question about an
    update (more than `n` when those alone are more), the rest evenly spaced over the older ones."""
    if not n or len(questions) <= n:
        return questions
    newest = set(range(len(questions) - max(1, n // 4), len(questions)))
    keep = newest | {i for i, q in enumerate(questions) if q["subject"] != q["id"] or "supersedes" in q}
    rest = [i for i in range(len(questions)) if i not in keep]
    room = min(n - len(keep), len(rest))
    if room > 0:
        step = (len(rest) - 1) / max(1, room - 1)
        keep |= {rest[round(j * step)] for j in range(room)}
    return [q for i, q in enumerate(questions) if i in keep]


def is_right(text: str | None, answers: list[str]) -> bool:
    return bool(text) and any(a.lower() in text.lower() for a in answers)


def hot_ids(header: str | None) -> list[int] | None:
    """X-Bakehouse-Hot-Memories ("12,15,31") as ids; None when the gateway did not send it."""
    if header is None:
        return None
    return [int(x) for x in header.replace(" ", "").split(",") if x]


def out_of_service(status: dict, tenant: str) -> int | None:
    """Memories neither held nor retrievable, from HOME/runtime/status.json (a list of ids or a
    count; "left_out" where "out_of_service" is absent); 0 for a tenant the served weights hold
    entirely (the runtime lists only tenants with memories left to the prompt); None when the
    file does not say."""
    if not isinstance((status or {}).get("hot"), dict):
        return None
    hot = status["hot"].get(tenant)
    if hot is None:
        return 0
    value = hot.get("out_of_service", hot.get("left_out"))
    if value is None:
        return None
    return len(value) if isinstance(value, (list, tuple)) else int(value)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def score_rows(rows: list[dict], memory_of: dict[str, int], holds: dict[int, set[str]]) -> None:
    """Add to each answered question: its subject's memory, whether the version that served it
    holds that memory, and whether the memory was in its prompt (None: held, or not known)."""
    for r in rows:
        r["memory"] = memory_of.get(r["subject"])
        r["held"] = r["memory"] is not None and r.get("version") in holds.get(r["memory"], ())
        r["hit"] = (None if r.get("failed") or r["held"] or r["memory"] is None or r.get("hot_ids") is None
                    else r["memory"] in r["hot_ids"])


def probe_figures(rows: list[dict], *, minute: float, delivered: int, store: dict, oos: int | None) -> dict:
    """One timeline entry from the scored answers of a probe and the store's figures."""
    ok = [r for r in rows if not r.get("failed")]
    right = sum(bool(r.get("right")) for r in ok)
    known = [r for r in ok if r["hit"] is not None]
    hits = sum(r["hit"] for r in known)
    return {
        "minute": round(minute, 2), "delivered": delivered, "asked": len(rows), "failed": len(rows) - len(ok),
        "right": right, "right_share": right / len(rows) if rows else None,  # all delivered, unless sampled
        "prompt_tokens": _mean(r["prompt_tokens"] for r in ok),
        "hot_memories": _mean(len(r["hot_ids"]) for r in ok if r.get("hot_ids") is not None),
        "held": store["held"], "hits": hits, "unheld": len(known),
        "hit_rate": hits / len(known) if known else None,
        "out_of_service": oos, "live": store["live"],
        "bakes_finished": store["bakes_finished"], "bakes_published": store["bakes_published"],
        "version": store["version"], "wrong": [r["id"] for r in rows if not r.get("right")],
    }


def probe_line(p: dict) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    return (f"[{p['minute']:5.1f} min] probe: {p['asked']} asked of {p['delivered']} delivered, right {p['right']} "
            f"({f(p['right_share'], '.2f')})  {f(p['prompt_tokens'], '.0f')} prompt tok/q  "
            f"hot {f(p['hot_memories'], '.1f')}/q  held {p['held']}  hit {f(p['hit_rate'], '.2f')} "
            f"({p['hits']}/{p['unheld']})  out of service {f(p['out_of_service'], 'd')}  live {p['live']}  "
            f"bakes {p['bakes_finished']}/{p['bakes_published']}  {p['version']}"
            + (f"  {p['probe_s']:.0f} s" if p.get("probe_s") is not None else "")
            + (f"  FAILED {p['failed']}" if p["failed"] else ""))


def summary(timeline: list[dict]) -> dict:
    """The run's figures for the targets: first and last probe, worst out of service, token
    growth over the second half, hit rate over all probes."""
    if not timeline:
        return {}
    first, last = timeline[0], timeline[-1]
    mid = min(timeline, key=lambda p: abs(p["minute"] - last["minute"] / 2))
    oos = [p["out_of_service"] for p in timeline if p["out_of_service"] is not None]
    unheld = sum(p["unheld"] for p in timeline)
    growth = (last["prompt_tokens"] / mid["prompt_tokens"]
              if last["prompt_tokens"] is not None and mid["prompt_tokens"] else None)
    return {
        "probes": len(timeline), "minutes": last["minute"], "delivered": last["delivered"],
        "right_first": first["right_share"], "right_last": last["right_share"],
        "out_of_service_max": max(oos) if oos else None,
        "out_of_service_unknown": len(timeline) - len(oos),
        "prompt_tokens_first": first["prompt_tokens"], "prompt_tokens_mid": mid["prompt_tokens"],
        "prompt_tokens_last": last["prompt_tokens"], "tokens_growth": growth,
        "hot_memories_last": last["hot_memories"],
        "hit_rate": sum(p["hits"] for p in timeline) / unheld if unheld else None,
        "held_last": last["held"], "live_last": last["live"],
        "bakes_finished": last["bakes_finished"], "bakes_published": last["bakes_published"],
        "failed": sum(p["failed"] for p in timeline),
    }


def episode_figures(home: Path, tenant: str) -> dict:
    """What the episodes of the run became: conversations, summaries, summaries of conversations
    whose user only asked (every user turn a question), and the share of summaries grounded in
    the user's turns."""
    from agent.runtime.episodes import grounded
    from memory import MemoryStore

    with MemoryStore.in_home(home, actor="bench") as store:
        if tenant not in store.tenants():
            return {}
        eps = store.episodes(tenant)
        summaries = {e.id: store.get(e.summary_memory_id) for e in eps if e.summary_memory_id is not None}
    said = {e.id: [m["content"] for m in e.messages if m.get("role") == "user"] for e in eps}
    asked_only = {e.id for e in eps if said[e.id] and all(t.rstrip().endswith("?") for t in said[e.id])}
    ok = {i: grounded(m.text, said[i])[0] for i, m in summaries.items()}
    return {
        "conversations": len(eps), "closed": sum(e.status == "closed" for e in eps),
        "summaries": len(summaries), "summaries_of_questions_only": sum(i in asked_only for i in summaries),
        "conversations_questions_only": len(asked_only),
        "grounded": sum(ok.values()), "grounded_share": sum(ok.values()) / len(ok) if ok else None,
        "texts": [m.text for m in summaries.values()],
    }


def _target(value, ok_if, text: str) -> dict:
    return {"value": value, "target": text, "ok": None if value is None else bool(ok_if(value))}


def compare(a: dict, b: dict) -> dict:
    """Two runs' results side by side, and the targets checked on the retrieval arm (the arm
    that is not static; B if neither or both are) against the other as the static reference."""
    arms = [a, b]
    ref = next((x for x in (b, a) if x["config"].get("hot_tier") == "static"), b)
    arm = a if ref is b else b
    s, r = summary(arm["timeline"]), summary(ref["timeline"])
    ratio = (s["prompt_tokens_last"] / r["prompt_tokens_last"]
             if s.get("prompt_tokens_last") is not None and r.get("prompt_tokens_last") else None)
    oos_ok = s.get("out_of_service_unknown") == 0 and s.get("out_of_service_max") is not None
    targets = {
        "right_kept": _target(None if s.get("right_last") is None or s.get("right_first") is None
                              else s["right_last"] - s["right_first"], lambda d: d >= 0,
                              "right (share of delivered), last probe - first >= 0"),
        "no_out_of_service": _target(s.get("out_of_service_max") if oos_ok else None, lambda v: v == 0,
                                     "0 out of service at every probe"),
        "tokens_vs_static": _target(ratio, lambda v: v <= TOKENS_VS_STATIC_MAX,
                                    f"prompt tokens/question at the end <= {TOKENS_VS_STATIC_MAX}x static's"),
        "tokens_flat": _target(s.get("tokens_growth"), lambda v: v <= TOKENS_GROWTH_MAX,
                               f"prompt tokens/question, last probe <= {TOKENS_GROWTH_MAX}x half time's"),
        "hit_rate": _target(s.get("hit_rate"), lambda v: v >= HIT_RATE_MIN, f"hit rate >= {HIT_RATE_MIN}"),
    }
    e = arm.get("episodes") or {}
    if e:
        targets["episodes_of_questions"] = _target(e.get("summaries_of_questions_only"), lambda v: v == 0,
                                                   "0 summaries of conversations whose user only asked")
        targets["episodes_grounded"] = _target(e.get("grounded_share"), lambda v: v >= EPISODE_GROUNDED_MIN,
                                               f"summaries grounded in the user's turns >= {EPISODE_GROUNDED_MIN}")
    return {"arms": [_arm_name(x) for x in arms], "summaries": [summary(x["timeline"]) for x in arms],
            "checked": _arm_name(arm), "reference": _arm_name(ref), "targets": targets,
            "met": all(t["ok"] for t in targets.values())}


def _arm_name(result: dict) -> str:
    return result["config"].get("hot_tier") or "?"


COMPARE_ROWS = [  # label, summary key, format
    ("probes", "probes", "d"), ("minutes", "minutes", ".1f"), ("delivered", "delivered", "d"),
    ("right, first probe", "right_first", ".2f"), ("right, last probe", "right_last", ".2f"),
    ("out of service, worst", "out_of_service_max", "d"),
    ("prompt tokens/q, first", "prompt_tokens_first", ".0f"),
    ("prompt tokens/q, half time", "prompt_tokens_mid", ".0f"),
    ("prompt tokens/q, last", "prompt_tokens_last", ".0f"),
    ("hot memories/q, last", "hot_memories_last", ".1f"), ("hit rate", "hit_rate", ".2f"),
    ("held, last", "held_last", "d"), ("live memories, last", "live_last", "d"),
    ("bakes finished", "bakes_finished", "d"), ("bakes published", "bakes_published", "d"),
    ("failed requests", "failed", "d"),
]


def format_compare(c: dict) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    (na, nb), (sa, sb) = c["arms"], c["summaries"]
    lines = [f"{'':28s} {na:>12s} {nb:>12s}"]
    lines += [f"{label:28s} {f(sa.get(k), spec):>12s} {f(sb.get(k), spec):>12s}" for label, k, spec in COMPARE_ROWS]
    lines.append(f"targets, {c['checked']} arm (reference: {c['reference']}):")
    for t in c["targets"].values():
        verdict = "unknown" if t["ok"] is None else "ok" if t["ok"] else "MISSED"
        lines.append(f"  {t['target']:62s} {f(t['value'], '.2f'):>8s}  {verdict}")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------

PANELS = [  # title, timeline key
    ("right (share of delivered)", "right_share"), ("prompt tokens per question", "prompt_tokens"),
    ("held by the weights", "held"), ("hit rate", "hit_rate"), ("out of service", "out_of_service"),
    ("live memories", "live"),
]
SHARES = ("right_share", "hit_rate")


def plot(runs: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One panel per figure over minutes; one line per run (arm name -> timeline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for ax, (name, key) in zip(axes.flat, PANELS):
        for arm, timeline in runs.items():
            pts = [(p["minute"], p[key]) for p in timeline if p.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=arm)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(*((0, 1.05) if key in SHARES else (0, None)))
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run -----------------------------------------------------------------------------------

def bakehouse(home: Path, *args: str) -> str:
    """One `bakehouse` CLI command against the run's home; its stdout."""
    r = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--home", str(home)],
                       capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if r.returncode:
        raise RuntimeError(f"bakehouse {shlex.join(args)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def cli_has(command: list[str], flag: str) -> bool:
    r = subprocess.run([sys.executable, "-m", "agent.cli", *command, "--help"], capture_output=True, text=True)
    return flag in r.stdout


def read_store(home: Path, tenant: str, version: str | None) -> dict:
    """The tenant's memories (with the versions holding each), live and held counts, bakes."""
    from memory import STATUSES, MemoryStore

    with MemoryStore.in_home(home, actor="bench") as store:
        mems = store.memories(tenant, status=STATUSES)
        jobs = store.jobs.list(tenant)
    live = [m for m in mems if m.valid]
    return {
        "memories": [{"id": m.id, "text": m.text, "valid": m.valid, "versions": set(m.adapter_versions)}
                     for m in mems],
        "live": len(live), "held": sum(version in m.adapter_versions for m in live),
        "bakes_finished": sum(j.state in ("done", "rejected", "failed") for j in jobs),
        "bakes_published": sum(j.state == "done" for j in jobs), "version": version or "base",
    }


def read_status(home: Path) -> dict:
    try:
        return json.loads((home / "runtime" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


class Feeder:
    """The tenant's news: a local RSS file that grows; an update is remembered as superseding."""

    def __init__(self, home: Path, tenant: str, supersede: bool):
        self.home, self.tenant, self.supersede = home, tenant, supersede
        self.path = home / f"{tenant}-news.xml"
        self.in_feed: list[dict] = []
        self.delivered: list[dict] = []

    def register(self, every_minutes: float) -> None:
        write_rss(self.path, [])
        bakehouse(self.home, "feeds", "add", str(self.path), "--tenant", self.tenant, "--every", str(every_minutes))

    def deliver(self, batch: list[dict], by_id: dict[str, dict]) -> list[str]:
        """Plain headlines into the feed; then updates, through `remember --supersedes` once the
        feed has stored what they update. Notes on the updates."""
        updates = [h for h in batch if self.supersede and h.get("supersedes") in by_id]
        self.in_feed += [h for h in batch if h not in updates]
        write_rss(self.path, self.in_feed)
        notes = []
        for h in updates:
            old = by_id[h["supersedes"]]
            old_id = self._memory_of(old)
            if old_id is None:
                notes.append(f"{h['id']}: no memory of {old['id']} to supersede, fed as news")
                self.in_feed.append(h)
                write_rss(self.path, self.in_feed)
                continue
            out = bakehouse(self.home, "remember", "--tenant", self.tenant, "--kind", "headline",
                            "--source", "longrun", "--supersedes", str(old_id), h["headline"])
            notes.append(f"{h['id']} supersedes {old['id']}: {out.strip()}")
        self.delivered += batch
        return notes

    def _memory_of(self, head: dict, timeout: float = 60.0) -> int | None:
        """The live memory of a delivered headline, once the feed poll has stored it."""
        deadline = time.monotonic() + timeout
        while True:
            live = [m for m in read_store(self.home, self.tenant, None)["memories"] if m["valid"]]
            mid = match_memories([head], live).get(head["id"])
            if mid is not None or time.monotonic() > deadline:
                return mid
            time.sleep(2)


class Prober:
    """One question per delivered headline through the gateway, with the openai client."""

    def __init__(self, url: str, key: str, tenant: str, home: Path):
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        self.tenant, self.home, self.probes = tenant, home, 0

    def ask(self, question: str) -> dict:
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.tenant, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=40)
            resp = raw.parse()
        except Exception as e:  # noqa: BLE001  counted, the run goes on
            return {"failed": f"{type(e).__name__}: {e}"}
        h = raw.headers
        return {"text": resp.choices[0].message.content or "", "prompt_tokens": resp.usage.prompt_tokens,
                "version": h.get(VERSION_HEADER), "hot_tokens": h.get(HOT_TOKENS_HEADER),
                "hot_ids": hot_ids(h.get(HOT_MEMORIES_HEADER))}

    def converse(self, n: int) -> None:
        """CHATS[n]: the user states something, then says or asks one more thing, in one conversation."""
        messages = []
        for text in CHATS[n % len(CHATS)]:
            messages.append({"role": "user", "content": text})
            try:
                resp = self.client.chat.completions.create(
                    model=self.tenant, messages=messages, temperature=0, max_tokens=40,
                    extra_headers={CONVERSATION_HEADER: f"longrun-chat-{n}"})
            except Exception as e:  # noqa: BLE001  the run goes on
                print(f"  conversation {n} failed: {type(e).__name__}: {e}")
                return
            messages.append({"role": "assistant", "content": resp.choices[0].message.content or ""})

    def wait_ingested(self, delivered: list[dict]) -> tuple[float, list[str]]:
        """Until every delivered headline is a memory in the store: seconds waited, ids missing."""
        t = time.monotonic()
        while True:
            mems = read_store(self.home, self.tenant, None)["memories"]
            missing = [h["id"] for h in delivered if h["id"] not in match_memories([h], mems)]
            if not missing or time.monotonic() - t > INGEST_TIMEOUT_S:
                return time.monotonic() - t, missing
            time.sleep(1)

    def probe(self, delivered: list[dict], minute: float, max_questions: int | None = None) -> tuple[dict, list[dict]]:
        waited, missing = self.wait_ingested(delivered)
        time.sleep(SETTLE_S)
        t = time.monotonic()
        rows = []
        for q in sample_questions(probe_questions(delivered), max_questions):
            r = {**q, **self.ask(q["q"])}
            r["right"] = not r.get("failed") and is_right(r["text"], q["answer"])
            rows.append(r)
            if r.get("failed"):
                print(f"  request failed: {r['failed']}")
        status = read_status(self.home)
        versions = [r["version"] for r in rows if r.get("version")]
        version = versions[-1] if versions else ((status.get("hot") or {}).get(self.tenant) or {}).get("version")
        store = read_store(self.home, self.tenant, version)
        score_rows(rows, match_memories(delivered, store["memories"]),
                   {m["id"]: m["versions"] for m in store["memories"]})
        p = probe_figures(rows, minute=minute, delivered=len(delivered), store=store,
                          oos=out_of_service(status, self.tenant))
        p.update(ingest_wait_s=round(waited, 1), not_ingested=missing, probe_s=round(time.monotonic() - t, 1))
        self.converse(self.probes)
        self.probes += 1
        p["episodes"] = {k: v for k, v in episode_figures(self.home, self.tenant).items() if k != "texts"}
        return p, rows


def runtime_args(args) -> list[str]:
    """The `bakehouse run` options of an arm."""
    out = ["--hot-tier", args.hot_tier, "--idle-seconds", str(args.idle_seconds),
           "--hot-budget", str(args.hot_budget), "--feed-minutes", str(args.feed_every),
           "--episode-idle", str(args.episode_idle)]
    if args.hot_top_k is not None:
        out += ["--hot-top-k", str(args.hot_top_k)]
    return out + shlex.split(args.run_args)


def drive(s, feeder: Feeder, prober: Prober, heads: list[dict], args, record) -> None:
    """--per-delivery headlines every --every seconds; a probe right after the first delivery,
    then every --probe-minutes, and the last one at the end of --minutes. A delivery that falls
    due during a probe goes out after it."""
    by_id = {h["id"]: h for h in heads}
    t0 = time.monotonic()
    minute = lambda: (time.monotonic() - t0) / 60  # noqa: E731
    next_delivery, next_probe, queue, probes = 0.0, None, list(heads), 0
    while minute() < args.minutes:
        if s.proc.poll() is not None:
            raise RuntimeError(f"bakehouse run exited with code {s.proc.returncode}; see {s.log_path}")
        now = time.monotonic() - t0
        if queue and now >= next_delivery:
            batch, queue = queue[:args.per_delivery], queue[args.per_delivery:]
            notes = feeder.deliver(batch, by_id)
            print(f"[{minute():5.1f} min] delivered {', '.join(h['id'] for h in batch)} "
                  f"({len(feeder.delivered)} in all)" + "".join(f"\n    {n}" for n in notes))
            next_delivery += args.every
            next_probe = 0.0 if next_probe is None else next_probe
        elif next_probe is not None and now >= next_probe:
            record(*prober.probe(feeder.delivered, minute(), args.max_questions))
            probes += 1
            next_probe = probes * args.probe_minutes * 60
        else:
            due = [t for t in (next_delivery if queue else None, next_probe) if t is not None]
            time.sleep(max(0.2, min(min(due, default=now + 5) - now, 5)))
    record(*prober.probe(feeder.delivered, minute(), args.max_questions))


def run(args) -> dict:
    from agent.home import resolve_home
    from agent.runtime.session import RunSession
    from baker.models import resolve_model

    if not cli_has(["run"], "--hot-tier"):
        raise SystemExit("this bakehouse's `run` has no --hot-tier option yet")
    heads = load_headlines(SHARED, LONGRUN)
    heads = quick_order(heads) if args.quick else heads
    model = resolve_model(args.model, resolve_home(None))
    home = Path(args.home or tempfile.mkdtemp(prefix=f"bakehouse-longrun-{args.hot_tier}-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    run_args = runtime_args(args)
    supersede = cli_has(["remember"], "--supersedes")
    name = f"longrun-{args.hot_tier}" + ("-quick" if args.quick else "")
    out_json, out_png = OUT_DIR / f"{name}.json", OUT_DIR / f"{name}.png"
    config = {"hot_tier": args.hot_tier, "hot_top_k": args.hot_top_k, "hot_budget": args.hot_budget,
              "minutes": args.minutes, "every_s": args.every, "per_delivery": args.per_delivery,
              "probe_minutes": args.probe_minutes, "max_questions": args.max_questions,
              "feed_every_min": args.feed_every, "quick": args.quick, "run_args": run_args, "model": str(model),
              "home": str(home), "supersede_via_cli": supersede, "headlines": len(heads)}
    print(f"long run, {args.hot_tier} arm: home {home}; bakehouse run {shlex.join(run_args)}")
    print(f"{args.per_delivery} headlines every {args.every:g} s for {args.minutes:g} min, "
          f"a probe every {args.probe_minutes:g} min ({len(heads)} headlines available)")

    s = RunSession(home, model, port=args.port, args=tuple(run_args))
    key = s.add_tenant(TENANT)
    feeder = Feeder(home, TENANT, supersede)
    feeder.register(args.feed_every)
    result = {"config": config, "timeline": [], "log": str(s.log_path)}

    def save(rows=None):  # after every probe: a crash late in the run keeps what was measured
        result["summary"] = summary(result["timeline"])
        if rows is not None:
            keys = ("id", "subject", "text", "right", "version", "prompt_tokens", "memory", "held", "hit", "failed")
            result["last_answers"] = [{k: r.get(k) for k in keys} for r in rows]
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2, default=str))

    def record(p, rows):
        result["timeline"].append(p)
        print(probe_line(p))
        save(rows)

    try:
        s.start(timeout=args.start_timeout)
        drive(s, feeder, Prober(s.url, key, TENANT, home), heads, args, record)
        time.sleep(args.episode_idle * 60 + 30)  # the last conversations close and are summarised
        result["episodes"] = episode_figures(home, TENANT)
        e = result["episodes"]
        print(f"episodes: {e.get('conversations')} conversations, {e.get('summaries')} summaries, "
              f"{e.get('summaries_of_questions_only')} of them of questions only, grounded {e.get('grounded_share')}")
    finally:
        s.stop()
    try:
        result["png"] = str(plot({args.hot_tier: result["timeline"]}, out_png,
                                 f"bakehouse long run: {args.hot_tier} arm"))
    except ImportError as e:
        print(f"no plot ({e}): pip install matplotlib")
    save()
    result["json"] = str(out_json)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hot-tier", choices=("retrieval", "static"), help="The arm: `bakehouse run --hot-tier`.")
    ap.add_argument("--hot-top-k", type=int, default=None, help="`bakehouse run --hot-top-k` (default: its own).")
    ap.add_argument("--hot-budget", type=int, default=500, help="`bakehouse run --hot-budget`.")
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="`bakehouse run --idle-seconds`.")
    ap.add_argument("--episode-idle", type=float, default=1.0,
                    help="`bakehouse run --episode-idle` (minutes): episodes close and are summarised in the run.")
    ap.add_argument("--run-args", default="", help="More `bakehouse run` options, as one string.")
    ap.add_argument("--minutes", type=float, default=None, help="Length of the run (default 45; --quick 6).")
    ap.add_argument("--every", type=float, default=None, help="Seconds between deliveries (default 150; --quick 60).")
    ap.add_argument("--per-delivery", type=int, default=None, help="Headlines per delivery (default 4; --quick 2).")
    ap.add_argument("--probe-minutes", type=float, default=None, help="Minutes between probes (default 5; --quick 2).")
    ap.add_argument("--max-questions", type=int, default=None,
                    help="At most this many questions per probe, a fixed sample (default: one per delivered headline).")
    ap.add_argument("--feed-every", type=float, default=0.25,
                    help="Minutes between feed polls (the feed's --every and `run --feed-minutes`).")
    ap.add_argument("--start-timeout", type=float, default=900.0,
                    help="Seconds `bakehouse run` may take to be ready (vLLM restarts a start slower than 300 s).")
    ap.add_argument("--port", type=int, default=None, help="Gateway port (default: a free one).")
    ap.add_argument("--home", default=None, help="The run's data home (default: a fresh temp dir).")
    ap.add_argument("--model", default=None, help="Base model dir (default: the embedded SmolLM2).")
    ap.add_argument("--quick", action="store_true", help="6 minutes, 2 headlines a minute, one update: a smoke test.")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="Print two runs side by side.")
    args = ap.parse_args()

    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        c = compare(a, b)
        print(format_compare(c))
        try:
            c["png"] = str(plot({_arm_name(a): a["timeline"], _arm_name(b): b["timeline"]},
                                OUT_DIR / "longrun-compare.png", "bakehouse long run: arms compared"))
        except ImportError as e:
            print(f"no plot ({e}): pip install matplotlib")
        print(json.dumps(c, default=str))
        return
    if not args.hot_tier:
        ap.error("--hot-tier is required (or --compare A.json B.json)")
    quick = args.quick
    args.minutes = args.minutes or (6.0 if quick else 45.0)
    args.every = args.every or (60.0 if quick else 150.0)
    args.per_delivery = args.per_delivery or (2 if quick else 4)
    args.probe_minutes = args.probe_minutes or (2.0 if quick else 5.0)
    result = run(args)
    print(json.dumps({"arm": args.hot_tier, **result["summary"], "json": result["json"], "png": result.get("png")},
                     default=str))


if __name__ == "__main__":
    main()
