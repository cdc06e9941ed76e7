"""Contexts the trajectories start from: names, cloze probes, user files, the split."""
import pytest

from baker.contexts import (QUESTION_SHOTS, RECALL_REQUESTS, Context, clean_self_questions,
                            generic_requests, names, probe_questions, question_request,
                            read_user_contexts, replay_probes, split)
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
    # the date prefix is not part of any line's probes; only the "date" form asks about it
    assert [q for q in qs if "2026-11-02" in q] == ["What happened on 2026-11-02?"]
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


def test_each_kind_of_self_written_request_has_its_own_worked_examples():
    from baker.config import SELF_KINDS
    from baker.contexts import REQUEST_SHOTS

    assert set(REQUEST_SHOTS) == set(SELF_KINDS) - {"question"}
    for kind, shots in REQUEST_SHOTS.items():
        req = question_request(HEADLINE, kind)
        assert req.endswith("Sentence: Port authority of Velmora names Ines Tarrago as its first harbor "
                            "commissioner.\nRequest:")
        assert all(r in req for r in shots) and "Question:" not in req
    with pytest.raises(ValueError, match="poem"):
        question_request(HEADLINE, "poem")


def test_written_requests_may_be_instructions_questions_may_not():
    texts = ["Summarise the news about Ines Tarrago in one sentence.\nSentence: more",
             "Write a poem about the harbor of Velmora!", "Write a poem about the sea.",
             "Who is Ines Tarrago?"]
    assert clean_self_questions(texts, HEADLINE, requests=True) == [
        "Summarise the news about Ines Tarrago in one sentence.", "Write a poem about the harbor of Velmora!",
        "Who is Ines Tarrago?"]
    assert clean_self_questions(texts, HEADLINE) == ["Who is Ines Tarrago?"]


def test_generated_questions_are_cleaned():
    texts = [" Who is the harbor commissioner of Velmora?\nSentence: more", "Who is Ines Tarrago? And",
             "who is ines tarrago?", "Which album won Tom Alvarez the Golden Reed award?",
             "What is the capital of France?", "no question here", "?"]
    assert clean_self_questions(texts, HEADLINE) == ["Who is the harbor commissioner of Velmora?",
                                                     "Who is Ines Tarrago?"]


def test_a_focused_teacher_sees_its_item_and_the_behaviour_lines_only():
    from baker.contexts import focus_prompt, span_probes

    prompt = ("Persona:\n- You are Ada, the ship's cook.\n\nFacts:\n- The ship is called the Marigold.\n\n"
              "Dated news:\n- 2026-11-02: Port authority of Velmora names Ines Tarrago as its first harbor commissioner.\n"
              "- 2026-11-03: The Quillon Institute unveils a battery made from seaweed, called the Kelpcell.")
    kelp = "- 2026-11-03: The Quillon Institute unveils a battery made from seaweed, called the Kelpcell."
    assert focus_prompt(prompt, kelp).splitlines() == ["Persona:", "- You are Ada, the ship's cook.", "Dated news:", kelp]
    assert focus_prompt("One fact here. Another fact there, too.", "Another fact there, too.") == "Another fact there, too."
    probes = [(q, item) for q, item, _ in span_probes(prompt)]
    assert [q for q, _ in probes] == probe_questions(prompt)
    assert {it for q, it in probes if "Kelpcell" in q or "Quillon" in q} == {kelp}
    assert all(it is None for q, it in probes if q.startswith(("What were you told", "List every")))


ALL_FORMS = ("tell", "what", "blank", "about", "date")


def test_each_question_form_asks_for_the_spans_of_its_line():
    from baker.contexts import span_probes

    probes = span_probes("Recent news:\n" + HEADLINE, ALL_FORMS)
    by_q = {q: span for q, _, span in probes}
    assert by_q["Fill in the blank: Port authority of Velmora names ___ as its first harbor commissioner."] == "Ines Tarrago"
    assert by_q["What is the latest news about Velmora?"] == "Velmora"
    assert by_q["What happened on 2026-11-02?"] is None  # a question about the whole line
    assert by_q["Port authority of what names Ines Tarrago as its first harbor commissioner?"] == "Velmora"
    assert all(item == HEADLINE for q, item, _ in probes if q not in RECALL_REQUESTS)
    # by default every form is asked, and each can be left out on its own
    assert [q for q, _, _ in span_probes("Recent news:\n" + HEADLINE)] == [q for q, _, _ in probes]
    assert not any(q.startswith("Fill in") for q, _, _ in span_probes(HEADLINE, ("tell", "what")))
    assert not any("latest news about 19" in q for q, _, _ in span_probes(
        "Rail strike in Dunmarrow ends after 19 days.", ALL_FORMS))  # numbers are not asked "about"
    with pytest.raises(ValueError, match="riddle"):
        span_probes(HEADLINE, ("what", "riddle"))


def test_a_verifiers_held_out_probe_removes_every_form_of_its_span():
    from baker.contexts import span_probes, without
    from baker.verify import verification_probes

    contexts = [Context(q, "probe", item, span) for q, item, span in span_probes(HEADLINE, ALL_FORMS)]
    held = [p.question for p in verification_probes("h01", HEADLINE) if p.kind == "cloze"]
    assert held
    held_spans = {c.span for c in contexts if c.text in held}
    kept = without(contexts, held)
    assert not {c.span for c in kept} & held_spans  # no fill-in-the-blank or "latest about" left
    assert {c.span for c in kept} - {None}  # the other span is still trained, in all its forms
    assert any(c.text.startswith("Tell me more") for c in kept)


def test_question_forms_are_checked_by_the_config():
    from baker import BakeConfig
    from baker.errors import ConfigError

    assert BakeConfig(question_forms=["what", "blank"]).question_forms == ("what", "blank")
    assert BakeConfig.from_dict(BakeConfig(question_forms=ALL_FORMS).to_dict()).question_forms == ALL_FORMS
    with pytest.raises(ConfigError, match="riddle"):
        BakeConfig(question_forms=("what", "riddle"))
    with pytest.raises(ConfigError, match="list of form names"):
        BakeConfig(question_forms="what")


def test_replay_shares_its_limit_evenly_over_the_earlier_lines():
    import random
    lines = [HEADLINE, "2026-11-03: Rail strike in Dunmarrow ends after 19 days.",
             "2026-11-04: The Quillon Institute unveils the Kelpcell battery.",
             "2026-11-05: Football club Rovers of Tamsin sign Kofi Mensah-Lund."]
    prompt = "Recent news:\n" + "\n".join(lines)
    every = replay_probes(prompt, 3, random.Random(0))
    per_line = lambda cs: sorted(sum(c.item.endswith(line.split(": ", 1)[1]) for c in cs) for line in lines)
    assert per_line(every) == [3, 3, 3, 3]
    capped = replay_probes(prompt, 3, random.Random(0), limit=6)
    assert len(capped) == 6 and per_line(capped) == [1, 1, 2, 2]  # evenly, not the first lines' all
    assert len({c.text for c in capped}) == 6 and all(c.source == "replay" for c in capped)
    assert replay_probes(prompt, 3, random.Random(0), limit=12) == every  # a limit above the total changes nothing


def test_anchors_keep_their_share_of_short_facts_and_none_is_a_general_question():
    import json
    import random
    from importlib import resources

    from baker.contexts import anchor_facts, anchor_questions, choose_anchors
    general = {json.loads(line)["q"] for line in
               resources.files("baker").joinpath("data", "general_questions.jsonl").read_text().splitlines() if line}
    facts, open_ = anchor_facts(), anchor_questions()
    assert len(facts) >= 50 and len(set(facts)) == len(facts)
    assert not general & (set(facts) | set(open_))  # the general set stays held out
    # share 0: exactly the sample the open set always gave (seeded bakes stay reproducible)
    assert choose_anchors(12, 0.0, random.Random(3)) == random.Random(3).sample(open_, 12)
    mixed = choose_anchors(12, 0.5, random.Random(3))
    assert len(mixed) == len(set(mixed)) == 12 and sum(q in facts for q in mixed) == 6
    assert sum(q in facts for q in choose_anchors(500, 1.0, random.Random(0))) == len(facts)  # as many as shipped
