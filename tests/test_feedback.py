"""Instructions learned from feedback: the rule in a comment, the queue reader, the CLI."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.runtime.feedback import FeedbackReader, rule_from_comment
from memory import MemoryStore
from serving.feedback import append_feedback


@pytest.mark.parametrize("comment, rule", [
    ("From now on answer in one sentence", "Answer in one sentence."),
    ("please always reply in French!", "Always reply in French."),
    ("In future, don't use emojis.", "Don't use emojis."),
    ("Call me Sam", "Call me Sam."),
    ("That answer was wrong.", None),
    ("Why so long?", None),
    ("Use", None),
    ("Be brief. Also you were rude earlier.", None),  # two sentences: no single rule
    ("Always " + "very " * 60 + "short", None),
    ("", None), (None, None),
])
def test_a_rule_is_a_single_short_imperative(comment, rule):
    assert rule_from_comment(comment) == rule


def test_the_reader_learns_each_rule_once_and_keeps_its_place(home):
    store = MemoryStore.in_home(home, actor="test")
    try:
        append_feedback(home, "alice", {"comment": "From now on answer in one sentence.", "rating": -1,
                                        "conversation_id": "c1"})
        append_feedback(home, "alice", {"comment": "Nice one", "rating": 1, "conversation_id": "c1"})
        append_feedback(home, "bob", {"comment": "Always answer in French", "rating": None, "conversation_id": None})
        reader = FeedbackReader(store, home)
        learned = reader.poll()
        assert [(m.tenant, m.kind, m.text) for m in learned] == [
            ("alice", "instruction", "Answer in one sentence."), ("bob", "instruction", "Always answer in French.")]
        assert learned[0].meta["conversation_id"] == "c1" and learned[0].source == "feedback"
        assert reader.poll() == [] and FeedbackReader(store, home).poll() == []  # the offset is kept
        append_feedback(home, "alice", {"comment": "answer in one sentence", "rating": None, "conversation_id": None})
        assert reader.poll() == []  # the same rule again: already an instruction
        assert [m.text for m in store.memories("alice")] == ["Answer in one sentence."]
        assert "Answer in one sentence." in store.compose("alice").text  # in the hot tier
    finally:
        store.close()


def test_bakehouse_feedback(tmp_path):
    home = ["--home", str(tmp_path / "home")]
    r = CliRunner().invoke(cli, ["feedback", "--tenant", "alice", "From now on answer in one sentence.", *home])
    assert r.exit_code == 0 and "Learned instruction #1 for tenant 'alice': Answer in one sentence." in r.output
    r = CliRunner().invoke(cli, ["feedback", "--tenant", "alice", "It was fine", "--rating", "1", *home])
    assert r.exit_code == 0 and "nothing learned" in r.output
    r = CliRunner().invoke(cli, ["feedback", "x", "--rating", "7", *home])
    assert r.exit_code == 2
