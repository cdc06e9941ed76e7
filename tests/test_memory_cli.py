"""`bakehouse remember | memories | forget | compose | feeds` through click's CliRunner."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agent.cli import cli
from memory import MemoryStore

RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>Gazette</title>
<item><title>Rail strike in Dunmarrow ends after 19 days.</title><guid>h03</guid>
<pubDate>Wed, 04 Nov 2026 08:00:00 GMT</pubDate></item>
<item><title>The Quillon Institute unveils the Kelpcell.</title><guid>h02</guid>
<pubDate>Tue, 03 Nov 2026 08:00:00 GMT</pubDate></item>
</channel></rss>"""


@pytest.fixture
def run(home):
    """Invoke the CLI with the test's data home (from BAKEHOUSE_HOME); returns the Result."""
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return run


def test_remember_list_forget(run, home):
    assert run("remember", "Always answer in French.", "--kind", "instruction").output == (
        "Remembered #1 (instruction, tenant 'default')\n"
    )
    assert run("remember", "always answer in french").output == "Already remembered as #1 (instruction, pending)\n"
    run("remember", "-t", "alice", "Alice's cat is called Miso.")
    out = run("remember", "-t", "alice", "Alice's cat is called Tofu.", "--supersedes", "2").output
    assert out == "Remembered #3 (fact, tenant 'alice'), superseding #2\n"

    lines = run("memories", "-t", "alice").output.splitlines()
    assert lines[0].split() == ["id", "kind", "status", "date", "text"]
    assert lines[1].split()[:3] == ["3", "fact", "pending"]
    assert lines[2].split()[:3] == ["2", "fact", "superseded>#3"]

    assert run("forget", "3", "--reason", "user asked").output == "Forgot #3\n"
    assert run("memories", "-t", "alice", "--status", "forgotten", "--json").output.count('"id": 3') == 1
    with MemoryStore.in_home(home) as store:  # the CLI wrote to home / "bakehouse.db"
        assert store.history(3)[-1].actor == "cli"
        assert store.history(3)[-1].detail["reason"] == "user asked"


def test_memories_json_is_the_full_record(run):
    run("remember", "-t", "alice", "--kind", "persona", "You are Ada.")
    (m,) = json.loads(run("memories", "-t", "alice", "--json").output)
    assert (m["id"], m["tenant"], m["kind"], m["text"], m["status"], m["source"]) == (
        1, "alice", "persona", "You are Ada.", "pending", "cli")
    assert m["valid_to"] is None and len(m["content_hash"]) == 64


def test_forget_reports_adapters_needing_a_rebake(run, home):
    run("remember", "secret")
    with MemoryStore.in_home(home) as store:
        store.record_bake("default", "v1", memory_ids=[1], prompt_hash="h")
    out = run("forget", "1").output
    assert out == "Forgot #1\nAdapter versions holding it, now needing a rebake: v1\n"


def test_compose_prints_text_and_a_summary(run):
    run("remember", "--kind", "instruction", "Always begin every answer with 'Ahoy'.")
    run("remember", "--kind", "persona", "You are Ada, the ship's cook.")
    r = run("compose")
    assert r.stdout == (
        "Persona:\n- You are Ada, the ship's cook.\n\n"
        "Instructions from the user:\n- Always begin every answer with 'Ahoy'.\n"
    )
    assert r.stderr.startswith("[2 memories, ~") and "0 left out" in r.stderr
    r = run("compose", "--budget", "12")
    assert "1 left out: #1" in r.stderr and "Ahoy" not in r.stdout
    data = json.loads(run("compose", "--json").output)
    assert data["memory_ids"] == [2, 1] and len(data["hash"]) == 64


def test_feeds_add_poll_list(run, tmp_path):
    path = tmp_path / "news.rss"
    path.write_text(RSS)
    out = run("feeds", "add", str(path), "--tenant", "alice").output
    assert out == f"Added feed #1 for tenant 'alice': {path}\n"
    assert run("feeds", "add", str(path), "-t", "alice").output.startswith("Feed already added #1")
    assert run("feeds", "poll").output == f"#1 [alice] {path}: 2 new, 0 already stored\n"
    assert run("feeds", "poll").output == f"#1 [alice] {path}: 0 new, 2 already stored\n"
    lines = run("feeds", "list").output.splitlines()
    assert lines[1].split()[:3] == ["1", "alice", "2"] and lines[1].endswith(str(path))
    (listed,) = json.loads(run("feeds", "list", "--json").output)
    assert (listed["id"], listed["entries"], listed["title"], listed["last_error"]) == (1, 2, "Gazette", None)
    assert "- 2026-11-04: \"Rail strike in Dunmarrow ends after 19 days.\"" in run("compose", "-t", "alice").stdout

    path.write_text("<html>not a feed</html>")
    r = run("feeds", "poll", ok=False)
    assert r.exit_code == 1
    assert "error: not an RSS or Atom feed" in r.output
    assert r.output.rstrip().endswith("Error: 1 of 1 feeds failed")
    assert "last error: not an RSS or Atom feed" in run("feeds", "list").output
    assert len(json.loads(run("memories", "-t", "alice", "--json").output)) == 2


def test_empty_states(run):
    assert run("feeds", "list").output == "no feeds (bakehouse feeds add URL_OR_PATH)\n"
    assert run("feeds", "poll").output == "no feeds (bakehouse feeds add URL_OR_PATH)\n"
    run("remember", "x")
    assert run("memories", "--status", "baked").output == "no memories for tenant 'default'\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["forget", "42"], "Error: No memory with id 42"),
        (["memories", "-t", "nobody"], "Error: No tenant named 'nobody'"),
        (["compose", "-t", "nobody"], "Error: No tenant named 'nobody'"),
        (["compose", "--budget", "-5"], "Error: token budget must be >= 0, got -5"),
        (["remember", "   "], "Error: a memory needs a non-empty text"),
        (["remember", "-t", "bad/name", "x"], "Error: invalid tenant name 'bad/name'"),
        (["remember", "x", "--supersedes", "1"], "Error: memory 1 already says that"),
        (["remember", "-t", "bob", "y", "--supersedes", "1"], "Error: memory 1 is not a memory of tenant 'bob'"),
        (["feeds", "add", "/no/such/file.xml"], "Error: feed file not found: /no/such/file.xml"),
        (["feeds", "poll", "--feed", "9"], "Error: No feed with id 9"),
    ],
)
def test_errors_are_one_line_with_a_nonzero_exit(run, args, message):
    run("remember", "x")
    r = run(*args, ok=False)
    assert r.exit_code != 0
    (line,) = r.output.strip().splitlines()
    assert line.startswith(message)


def test_home_option_picks_the_db(run, tmp_path):
    other = tmp_path / "elsewhere"
    run("remember", "--home", str(other), "only here")
    assert (other / "bakehouse.db").is_file()
    assert run("memories", "--home", str(other)).output.count("only here") == 1
    assert "only here" not in run("memories", ok=False).output
