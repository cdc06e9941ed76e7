"""Contexts the trajectories start from: names, cloze probes, user files, the split."""
import pytest

from baker.contexts import (QUESTION_SHOTS, RECALL_REQUESTS, Context, clean_self_questions,
                            generic_requests, names, probe_questions, question_request,
                            read_user_contexts, split)
from baker.errors import BakeError

HEADLINE = "2026-11-02: Port authority of Velmora names Ines Tarrago as its first harbor commissioner."


def test_names_skip_the_capitalised_first_word_and_leading_articles():
    assert names(HEADLINE) == ["Velmora", "Ines Tarrago"]
    assert names("The Quillon Institute unveils the Kelpcell.") == ["Quillon Institute", "Kelpcell"]
    assert names("Football club Rovers of Tamsin sign Kofi Mensah-Lund.") == ["Rovers of Tamsin", "Kofi Mensah-Lund"]
    assert names("always answer briefly.") == []


def test_probes_blank_each_name_and_number_and_keep_the_rest_of_the_line():
    qs = probe_questions("Recent news:\n" + HEADLINE + "\nRail strike in Dunmarrow ends after 19 days.")
    assert qs[: len(RECALL_REQUESTS)] == list(RECALL_REQUESTS)
    assert "Port authority of Velmora names what as its first harbor commissioner?" in qs
    assert "Port authority of what names Ines Tarrago as its first harbor commissioner?" in qs
    assert "Rail strike in Dunmarrow ends after what days?" in qs
    assert not any("2026-11-02" in q for q in qs)  # the date prefix is not probed
    assert not any(q.startswith("Tell me more: Recent news") for q in qs)  # a 2-word header is not a line to probe
    assert len(qs) == len(set(qs))


def test_probes_of_a_single_paragraph_use_its_sentences():
    qs = probe_questions("Ada is the ship's cook. The ship is called the Marigold and sails at dawn.")
    assert "The ship is called the what and sails at dawn?" in qs


def test_generic_set_is_large_and_distinct():
    g = generic_requests()
    assert len(g) >= 200 and len(set(g)) == len(g)


def test_user_contexts_plain_and_jsonl(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text('How are you?\n\n{"prompt": "Name a fish."}\n')
    assert read_user_contexts(f) == ["How are you?", "Name a fish."]
    f.write_text("{not json\n")
    with pytest.raises(BakeError, match="c.txt:1"):
        read_user_contexts(f)


def test_split_holds_out_every_source():
    ctx = [Context(f"g{i}", "generic") for i in range(20)] + [Context(f"p{i}", "probe") for i in range(10)]
    train, held = split(ctx, 0.2, seed=0)
    assert {c.source for c in held} == {"generic", "probe"}
    assert not set(train) & set(held) and len(train) + len(held) == len(ctx)


def test_question_request_ends_with_the_line_after_the_worked_examples():
    req = question_request(HEADLINE)
    assert req.endswith("Sentence: Port authority of Velmora names Ines Tarrago as its first harbor "
                        "commissioner.\nQuestion:")
    assert all(q in req for _, q in QUESTION_SHOTS)


def test_generated_questions_are_cleaned():
    texts = [" Who is the harbor commissioner of Velmora?\nSentence: more", "Who is Ines Tarrago? And",
             "who is ines tarrago?", "Which album won Tom Alvarez the Golden Reed award?",
             "What is the capital of France?", "no question here", "?"]
    assert clean_self_questions(texts, HEADLINE) == ["Who is the harbor commissioner of Velmora?",
                                                     "Who is Ines Tarrago?"]


def test_a_focused_teacher_sees_its_item_and_the_behaviour_lines_only():
    from baker.contexts import focus_prompt, item_probes

    prompt = ("Persona:\n- You are Ada, the ship's cook.\n\nFacts:\n- The ship is called the Marigold.\n\n"
              "Dated news:\n- 2026-11-02: Port authority of Velmora names Ines Tarrago as its first harbor commissioner.\n"
              "- 2026-11-03: The Quillon Institute unveils a battery made from seaweed, called the Kelpcell.")
    kelp = "- 2026-11-03: The Quillon Institute unveils a battery made from seaweed, called the Kelpcell."
    assert focus_prompt(prompt, kelp).splitlines() == ["Persona:", "- You are Ada, the ship's cook.", "Dated news:", kelp]
    assert focus_prompt("One fact here. Another fact there, too.", "Another fact there, too.") == "Another fact there, too."
    probes = item_probes(prompt)
    assert [q for q, _ in probes] == probe_questions(prompt)
    assert {it for q, it in probes if "Kelpcell" in q or "Quillon" in q} == {kelp}
    assert all(it is None for q, it in probes if q.startswith(("What were you told", "List every")))
