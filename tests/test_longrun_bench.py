"""bench/longrun.py without a model: its headlines, the RSS it writes, and the scoring, summary
and comparison of a synthetic timeline."""
from __future__ import annotations

import importlib.util
import json
from datetime import date
from pathlib import Path

import feedparser
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_longrun", ROOT / "bench" / "longrun.py")
longrun = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(longrun)

LONGRUN = longrun.load_headlines(longrun.LONGRUN)


def head(hid, text, q="?", answer=("x",), day="2026-11-22", supersedes=None):
    h = {"id": hid, "date": day, "headline": text, "questions": [{"q": q, "answer": list(answer)}]}
    if supersedes:
        h["supersedes"] = supersedes
    return h


# -- the headlines -----------------------------------------------------------------------------

def test_longrun_headlines_are_new_dated_and_answerable():
    assert len(LONGRUN) >= 64
    ids = [h["id"] for h in LONGRUN]
    assert len(set(ids)) == len(ids)
    days = [date.fromisoformat(h["date"]) for h in LONGRUN]
    assert days == sorted(days) and len(set(days)) == len(days)
    if longrun.SHARED.is_file():
        shared = longrun.load_headlines(longrun.SHARED)
        assert days[0] > max(date.fromisoformat(h["date"]) for h in shared)
        assert not {h["headline"] for h in shared} & {h["headline"] for h in LONGRUN}
    for h in LONGRUN:
        (q,) = h["questions"]
        assert any(a.lower() in h["headline"].lower() for a in q["answer"]), h["id"]
        assert not any(a.lower() in q["q"].lower() for a in q["answer"]), h["id"]  # not given away


def test_updates_supersede_an_earlier_headline_with_a_different_answer():
    by_id = {h["id"]: h for h in LONGRUN}
    updates = [h for h in LONGRUN if h.get("supersedes")]
    assert len(updates) >= 6
    for u in updates:
        old = by_id[u["supersedes"]]
        assert old["id"] < u["id"] and not old.get("supersedes")
        assert "latest" in u["questions"][0]["q"]
        new_answers = " ".join(u["questions"][0]["answer"]).lower()
        assert not any(a.lower() in new_answers for a in old["questions"][0]["answer"]), u["id"]
        assert not any(a.lower() in u["headline"].lower() for a in old["questions"][0]["answer"]), u["id"]


def test_quick_order_delivers_an_update_within_six_deliveries_of_two():
    heads = longrun.load_headlines(longrun.LONGRUN)
    order = longrun.quick_order(heads)
    assert sorted(h["id"] for h in order) == sorted(h["id"] for h in heads)
    first = [h["id"] for h in order[:12]]
    upd = next(h for h in order[:12] if h.get("supersedes"))
    assert first.index(upd["supersedes"]) < first.index(upd["id"])


# -- the feed ----------------------------------------------------------------------------------

def test_rss_parses_back_with_titles_guids_and_dates(tmp_path):
    items = LONGRUN[:5] + [head("X1", "Tom & Jerry's <odd> headline.", day="2027-03-01")]
    path = longrun.write_rss(tmp_path / "news.xml", items)
    d = feedparser.parse(path.read_bytes())
    assert not d.bozo and d.version == "rss20"
    assert [e.title for e in d.entries] == [h["headline"] for h in reversed(items)]
    assert [e.id for e in d.entries] == [h["id"] for h in reversed(items)]
    assert [e.published_parsed[:3] for e in d.entries] == [
        tuple(int(x) for x in h["date"].split("-")) for h in reversed(items)]
    assert not list(tmp_path.glob("*.tmp"))


def test_rss_reads_as_the_runtime_reads_it(tmp_path):
    from memory import feeds

    items = LONGRUN[:3]
    parsed = feeds.parse(longrun.write_rss(tmp_path / "news.xml", items).read_bytes())
    assert {e.text for e in parsed.entries} == {h["headline"] for h in items}
    assert {e.published_at[:10] for e in parsed.entries} == {h["date"] for h in items}
    assert feeds.parse(longrun.write_rss(tmp_path / "empty.xml", []).read_bytes()).entries == []


# -- scoring -----------------------------------------------------------------------------------

def test_memories_match_their_headline_by_normalised_text():
    heads = [head("a", "The Orla Island ferry is named the Bluewren."), head("b", "Kestine-1 launches."),
             head("c", "Not stored yet.")]
    mems = [{"id": 1, "text": "2026-11-22: The Orla Island ferry is named the Bluewren"},
            {"id": 2, "text": "kestine-1 launches"},
            {"id": 3, "text": "News: Kestine-1 launches. More to follow."}]
    assert longrun.match_memories(heads, mems) == {"a": 1, "b": 2}
    assert longrun.match_memories(heads[1:2], mems[2:]) == {"b": 3}


def test_an_update_moves_the_earlier_question_to_the_new_answer():
    old = head("L1", "The ferry is named the Bluewren.", "What is the ferry's name?", ["Bluewren"])
    other = head("L2", "Something else.", "What else?", ["else"])
    new = head("L3", "The ferry is renamed the Sea Thistle.", "What is the ferry's latest name?", ["Thistle"],
               supersedes="L1")
    before = longrun.probe_questions([old, other])
    assert [(q["id"], q["subject"], q["answer"]) for q in before] == [("L1", "L1", ["Bluewren"]),
                                                                      ("L2", "L2", ["else"])]
    after = longrun.probe_questions([old, other, new])
    assert [(q["id"], q["subject"], q["answer"]) for q in after] == [
        ("L1", "L3", ["Thistle"]), ("L2", "L2", ["else"]), ("L3", "L3", ["Thistle"])]
    newer = head("L4", "The ferry is renamed the Gull.", "Latest?", ["Gull"], supersedes="L3")
    assert longrun.successors([old, new, newer]) == {"L1": "L4", "L3": "L4"}


def test_a_sample_of_questions_keeps_the_newest_and_the_updates():
    heads = longrun.load_headlines(longrun.LONGRUN)[:40]
    qs = longrun.probe_questions(heads)
    assert longrun.sample_questions(qs, None) == qs and longrun.sample_questions(qs, 50) == qs
    sample = longrun.sample_questions(qs, 20)
    ids = [q["id"] for q in sample]
    assert len(sample) == 20 and ids == sorted(ids)
    assert set(ids) >= {"L036", "L037", "L038", "L039", "L040"}  # the newest quarter
    assert set(ids) >= {"L003", "L022", "L007", "L028", "L008", "L034", "L012", "L038"}  # updates, both sides
    assert ids[0] == "L001" and longrun.sample_questions(qs, 20) == sample


@pytest.mark.parametrize("text, answers, right", [
    ("The ferry is the Sea Thistle.", ["Thistle"], True),
    ("It lasted NINETEEN days", ["19", "nineteen"], True),
    ("I don't know.", ["Thistle"], False),
    (None, ["x"], False),
])
def test_is_right(text, answers, right):
    assert longrun.is_right(text, answers) is right


def test_headers_and_status_file():
    assert longrun.hot_ids("3, 12,40") == [3, 12, 40]
    assert longrun.hot_ids("") == []
    assert longrun.hot_ids(None) is None
    st = {"hot": {"news": {"out_of_service": [4, 5], "left_out": [1]}, "old": {"left_out": [1, 2, 3]},
                  "n": {"out_of_service": 2}}}
    assert longrun.out_of_service(st, "news") == 2
    assert longrun.out_of_service(st, "old") == 3
    assert longrun.out_of_service(st, "n") == 2
    assert longrun.out_of_service(st, "all_held") == 0  # listed only with memories left to the prompt
    assert longrun.out_of_service({}, "news") is None
    assert longrun.out_of_service({"hot": None}, "news") is None


def row(hid, right, version, hot, tokens=100, subject=None):
    return {"id": hid, "subject": subject or hid, "right": right, "version": version, "hot_ids": hot,
            "prompt_tokens": tokens}


def test_a_probe_counts_held_hits_and_out_of_service():
    memory_of = {"a": 1, "b": 2, "c": 3, "d": 4}
    holds = {1: {"news@v1"}, 2: set(), 3: {"news@v1"}}
    rows = [row("a", True, "news@v1", [2]), row("b", True, "news@v1", [2], tokens=140),
            row("c", False, "base", [2]), row("d", False, "news@v1", []),
            {"id": "e", "subject": "e", "failed": "APIConnectionError"}]
    longrun.score_rows(rows, memory_of, holds)
    assert [r["held"] for r in rows] == [True, False, False, False, False]
    assert [r["hit"] for r in rows] == [None, True, False, False, None]
    store = {"held": 2, "live": 9, "bakes_finished": 2, "bakes_published": 1, "version": "news@v1"}
    p = longrun.probe_figures(rows, minute=5.0, delivered=5, store=store, oos=0)
    assert (p["asked"], p["failed"], p["right"], p["right_share"]) == (5, 1, 2, 0.4)
    assert p["prompt_tokens"] == 110 and p["hot_memories"] == 0.75
    assert (p["hits"], p["unheld"], p["hit_rate"]) == (1, 3, 1 / 3)
    assert p["wrong"] == ["c", "d", "e"]
    assert "out of service 0" in longrun.probe_line(p)


def timeline(tokens, right, oos, hits=(9, 10), step=5.0):
    return [{"minute": i * step, "delivered": 4 * (i + 1), "right": 0, "right_share": r, "prompt_tokens": t,
             "hot_memories": 5.0, "held": i, "hits": hits[0], "unheld": hits[1], "hit_rate": hits[0] / hits[1],
             "out_of_service": o, "live": 4 * (i + 1), "bakes_finished": i, "bakes_published": i, "failed": 0}
            for i, (t, r, o) in enumerate(zip(tokens, right, oos))]


def test_summary_of_a_timeline():
    s = longrun.summary(timeline([80, 150, 160, 158, 165], [0.5, 0.6, 0.6, 0.55, 0.7], [0, 0, None, 0, 0]))
    assert (s["probes"], s["minutes"], s["delivered"]) == (5, 20.0, 20)
    assert (s["right_first"], s["right_last"]) == (0.5, 0.7)
    assert (s["out_of_service_max"], s["out_of_service_unknown"]) == (0, 1)
    assert s["prompt_tokens_mid"] == 160 and s["tokens_growth"] == pytest.approx(165 / 160)
    assert s["hit_rate"] == 0.9
    assert longrun.summary([]) == {}


def arm(tier, tl):
    return {"config": {"hot_tier": tier}, "timeline": tl}


def test_compare_meets_the_targets():
    retrieval = arm("retrieval", timeline([60, 100, 102, 101, 103], [0.5, 0.6, 0.6, 0.6, 0.6], [0] * 5))
    static = arm("static", timeline([120, 480, 500, 500, 500], [0.5, 0.4, 0.3, 0.3, 0.3], [0, 0, 8, 20, 40]))
    c = longrun.compare(static, retrieval)  # either order: the static arm is the reference
    assert (c["checked"], c["reference"], c["arms"]) == ("retrieval", "static", ["static", "retrieval"])
    assert c["targets"]["tokens_vs_static"]["value"] == pytest.approx(103 / 500)
    assert all(t["ok"] for t in c["targets"].values()) and c["met"]
    text = longrun.format_compare(c)
    assert "MISSED" not in text and "hit rate" in text
    json.dumps(c, default=str)


def test_compare_names_each_missed_target():
    retrieval = arm("retrieval", timeline([60, 100, 200, 300, 400], [0.6, 0.5, 0.5, 0.5, 0.4], [0, 1, 0, 0, 0],
                                          hits=(5, 10)))
    static = arm("static", timeline([120, 480, 500, 500, 500], [0.5] * 5, [0] * 5))
    c = longrun.compare(retrieval, static)
    assert {k for k, t in c["targets"].items() if not t["ok"]} == {
        "right_kept", "no_out_of_service", "tokens_vs_static", "tokens_flat", "hit_rate"}
    assert not c["met"] and longrun.format_compare(c).count("MISSED") == 5


def test_compare_an_unknown_out_of_service_is_not_met():
    retrieval = arm("retrieval", timeline([60, 100, 100], [0.5] * 3, [None, 0, 0]))
    c = longrun.compare(retrieval, arm("static", timeline([400, 500, 500], [0.5] * 3, [0] * 3)))
    assert c["targets"]["no_out_of_service"]["ok"] is None and not c["met"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    tl = timeline([60, 100, 102], [0.5, 0.6, 0.6], [0, None, 0])
    path = longrun.plot({"retrieval": tl, "static": tl}, tmp_path / "out" / "x.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_feeder_feeds_news_and_supersedes_through_the_cli(tmp_path):
    """Through the real `bakehouse feeds add` / `remember --supersedes` (no runtime: the test polls)."""
    from memory import MemoryStore, feeds

    old = head("L1", "The Orla Island ferry is named the Bluewren.", day="2026-11-22")
    plain = head("L2", "Cyclist Maelle Dukovac wins the Tour of Esterby.", day="2026-11-23")
    new = head("L3", "The Orla Island ferry is renamed the Sea Thistle.", day="2026-11-24", supersedes="L1")
    by_id = {h["id"]: h for h in (old, plain, new)}
    f = longrun.Feeder(tmp_path, "news", supersede=True)
    f.register(0.25)
    assert f.deliver([old, plain], by_id) == []
    with MemoryStore.in_home(tmp_path) as store:
        (r,) = feeds.poll(store, tenant="news")
        assert r.new == 2 and feeds.list_feeds(store, "news")[0].every_minutes == 0.25
    (note,) = f.deliver([new], by_id)
    assert "L3 supersedes L1" in note
    assert [h["headline"] for h in f.in_feed] == [old["headline"], plain["headline"]]  # not in the feed
    st = longrun.read_store(tmp_path, "news", None)
    ids = longrun.match_memories([old, plain, new], st["memories"])
    valid = {m["id"]: m["valid"] for m in st["memories"]}
    assert (valid[ids["L1"]], valid[ids["L2"]], valid[ids["L3"]]) == (False, True, True)
    assert st["live"] == 2 and st["held"] == 0 and st["version"] == "base"
