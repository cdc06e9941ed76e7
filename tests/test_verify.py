"""baker.verify: probes about a memory the bake does not train on, answer matching, the report."""
import json

import pytest
import torch

from baker import Probe, VerifyReport, verification_probes, verify
from baker.contexts import probe_questions
from baker.sampling import vllm_available
from baker.verify import answer_matches, general_questions, number_words, what_changed

HEADLINE = "2026-11-02: Port authority of Velmora names Ines Tarrago as its first harbor commissioner."
STRIKE = "Rail strike in Dunmarrow ends after 19 days with a 7 percent wage deal."
COMET = "Astronomers at Cerro Palida discover a comet named Vashti-4 heading toward Jupiter."


def test_probes_ask_for_the_names_and_numbers_in_both_forms():
    ps = verification_probes("h01", HEADLINE)
    assert all(isinstance(p, Probe) and p.item_id == "h01" for p in ps)
    cloze = [p for p in ps if p.kind == "cloze"]
    complete = [p for p in ps if p.kind == "complete"]
    assert len(cloze) == 1 and complete  # 2 spans: one cloze held out, the other left to training
    asked = {e for p in ps for e in p.expected}
    assert {"Velmora", "Ines Tarrago"} <= asked and "Port" not in asked  # not the sentence start
    assert "Complete this sentence: Port authority of Velmora names" in {p.question for p in complete}
    assert not any("2026" in p.question for p in ps)  # the date prefix is not probed
    for p in ps:  # no probe gives its answer away
        assert not answer_matches(p.question, p.expected)


def test_cloze_probes_are_exactly_the_bakes_and_at_most_half_of_them():
    for text in (HEADLINE, STRIKE, COMET, "Composer Mireille Okafor wins the Halvorsen Prize for her opera The Salt Road."):
        trained = probe_questions(text, ("what",))[2:]  # the cloze probes, after the two recall requests
        cloze = [p.question for p in verification_probes("x", text) if p.kind == "cloze"]
        assert cloze and set(cloze) <= set(probe_questions(text))
        assert len(set(trained) - set(cloze)) >= 1  # training still sees some cloze probes


def test_a_held_out_name_holds_out_the_numbers_inside_it_too():
    # "Vashti-what" trained would teach the held-out "Vashti-4": both go or neither
    qs = {p.question for p in verification_probes("c", COMET) if p.kind == "cloze"}
    a = "Astronomers at Cerro Palida discover a comet named what heading toward Jupiter?"
    b = "Astronomers at Cerro Palida discover a comet named Vashti-what heading toward Jupiter?"
    assert (a in qs) == (b in qs)


def test_probes_are_deterministic_and_capped():
    a = verification_probes("s", STRIKE)
    assert a == verification_probes("s", STRIKE)
    # pinned: the choice is a hash of text and span, the same on every run and machine
    assert [p.question for p in a if p.kind == "cloze"] == [
        "Rail strike in Dunmarrow ends after 19 days with a what percent wage deal?"]
    assert len(a) == 4 and len(verification_probes("s", STRIKE, max_probes=2)) == 2
    assert verification_probes("s", STRIKE, max_probes=0) == []


def test_instructions_and_lines_without_spans_have_no_probes():
    for text in ("Always answer in French.", "Never mention the weather.", "be brief and kind to users",
                 "Short note.", ""):
        assert verification_probes("i", text) == []


def test_answer_matching_ignores_case_punctuation_and_accepts_number_forms():
    assert answer_matches("The commissioner is INES TARRAGO.", ["Ines Tarrago"])
    assert answer_matches("ines   tarrago's appointment", ["Ines Tarrago"])
    assert answer_matches("Kofi Mensah Lund signed", ["Kofi Mensah-Lund"])
    assert answer_matches("Velmóra", ["Velmora"])
    assert not answer_matches("Ines", ["Ines Tarrago"])
    assert not answer_matches("it lasted 17 days", ["7"])  # whole words only
    assert answer_matches("a 7% deal", ["7"])
    (p,) = [p for p in verification_probes("s", STRIKE, max_probes=4) if "ends after" in p.question
            and p.kind == "complete" and "19" in p.expected]
    assert answer_matches("It ended after nineteen days.", p.expected)
    assert answer_matches("on the 19th day", p.expected)
    flood = verification_probes("f", "The river Sallow floods the town of Bramcote, forcing 3,000 people to evacuate.")
    (n,) = [p for p in flood if "3,000" in p.expected]
    assert all(answer_matches(a, n.expected) for a in ("3,000 people", "3000 people", "three thousand people"))
    assert number_words(19) == "nineteen" and number_words(42) == "forty-two" and number_words(123) is None


def test_general_questions_are_many_distinct_and_do_not_give_their_answers_away():
    gq = general_questions()
    assert len(gq) >= 50 and len({g["id"] for g in gq}) == len(gq)
    for g in gq:
        assert g["q"] and g["answer"] and not answer_matches(g["q"], g["answer"]), g


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from baker.models import load_model

    torch.manual_seed(3)
    model, _ = load_model(tiny_model_dir)
    out = tmp_path_factory.mktemp("verify-adapter")
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                     target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


FERRY = "The ferry to Orla Island is named the Marigold."
FERRY_RENAMED = "The ferry to Orla Island is renamed the Wild Marigold."


def test_a_superseded_memory_is_checked_only_for_what_its_update_changed():
    probes = verification_probes("m", FERRY)
    assert probes and what_changed(probes, FERRY_RENAMED) == []  # every span said again
    moved = what_changed(verification_probes("k", "The Orla Island lighthouse keeper is Bertil Sand."),
                         "The Orla Island lighthouse keeper is Maja Holt.")
    assert moved and all(any("bertil" in e.lower() or "sand" in e.lower() for e in p.expected) for p in moved)
    assert what_changed(probes, "Something else entirely.") == probes


def test_report_shape_on_the_tiny_model(tiny_model_dir, tiny_adapter):
    items = [("h01", HEADLINE), ("i1", "Always answer in French.")]
    rep = verify(tiny_model_dir, tiny_adapter, items, forgotten=[("s", STRIKE), ("m", FERRY, FERRY_RENAMED)],
                 prompt=HEADLINE, sampler="hf", max_new_tokens=4)
    assert isinstance(rep, VerifyReport) and rep.sampler == "hf" and rep.seconds > 0
    h, i = rep.items
    assert h.item_id == "h01" and h.verifiable and h.asked == len(verification_probes("h01", HEADLINE))
    assert h.passed == (h.hits >= 1) and h.prompted_hits is not None
    assert set(h.answers[0]) >= {"question", "expected", "baked", "hit", "base", "base_hit", "prompted"}
    assert h.hits == sum(a["hit"] for a in h.answers)
    # an instruction has no span to ask about: the behaviour check alone decides
    assert i.asked == 0 and i.verifiable and i.behaviour is not None and i.passed == i.behaviour["passed"]
    assert h.behaviour is None  # a headline is knowledge only
    f, m = rep.forgotten
    assert f.item_id == "s" and f.asked == 4
    assert f.recalled == any(a["hit"] and not a["base_hit"] for a in f.answers)  # not what the base knows anyway
    # superseded by an update that says all its names again: nothing to unlearn, nothing asked
    assert (m.item_id, m.asked, m.recalled, m.verifiable) == ("m", 0, False, False)
    g = rep.general
    assert g["asked"] == len(general_questions())
    assert set(g) == {"asked", "base_right", "kept", "kept_fraction", "changed"}
    assert g["kept"] == g["base_right"] - len(g["changed"])
    json.dumps(rep.to_dict())  # plain data


def test_given_probes_replace_the_computed_ones_and_no_adapter_means_the_base(tiny_model_dir):
    mine = [Probe("h01", "Who runs the port of Velmora?", ("Ines Tarrago",))]
    rep = verify(tiny_model_dir, None, [("h01", HEADLINE), ("s", STRIKE)], probes=mine,
                 general=False, sampler="hf", max_new_tokens=4)
    assert rep.general is None and rep.items[0].asked == 1 and rep.items[1].asked == 4
    assert [a["question"] for a in rep.items[0].answers] == ["Who runs the port of Velmora?"]
    assert all(a["baked"] == a["base"] for r in rep.items for a in r.answers)
    assert rep.items[0].prompted_hits is None


@pytest.mark.slow
def test_verify_tells_knowing_from_not_knowing_on_the_real_model(smollm2_dir, headlines, tmp_path):
    """Positive control: the prompted model answers the probes. Negative: a zero-init adapter
    (= the base) knows nothing of fictional headlines, so every item fails."""
    from peft import LoraConfig, get_peft_model

    from baker.models import load_model

    model, _ = load_model(smollm2_dir)
    adapter = tmp_path / "zero"
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    items = [(h["id"], h["headline"]) for h in headlines[:6]]
    rep = verify(smollm2_dir, adapter, items, prompt="\n".join(t for _, t in items), general=False,
                 sampler="vllm" if vllm_available() else "hf")
    assert sum(r.prompted_hits for r in rep.items) >= 3
    assert sum(r.base_hits for r in rep.items) == 0
    assert all(r.verifiable and r.hits == 0 and not r.passed for r in rep.items)


def test_graduation_rules():
    from baker.verify import RULES, graduates

    assert set(RULES) == {"any", "majority", "prompted", "strict", "hot"}
    assert not any(graduates(r, 0, 4, 0) for r in RULES)  # no hit never graduates
    assert not any(graduates(r, 1, 0, None) for r in RULES)  # nothing asked: nothing known
    assert graduates("any", 1, 4, 3) and not graduates("majority", 1, 4, 3) and not graduates("prompted", 1, 4, 3)
    assert graduates("majority", 3, 4, 4) and not graduates("strict", 3, 4, 4) and graduates("strict", 3, 4, 3)
    assert not graduates("majority", 1, 2, None) and graduates("prompted", 1, 2, 1)
    assert graduates("prompted", 1, 4, None) and not graduates("strict", 1, 4, None)  # no reference
    # hot: as well as the served model with its hot tier, and one hit at least; majority without
    assert graduates("hot", 1, 4, hot_hits=1) and graduates("hot", 2, 4, hot_hits=0) and not graduates("hot", 0, 4, hot_hits=0)
    assert not graduates("hot", 2, 4, hot_hits=3) and not graduates("hot", 2, 4) and graduates("hot", 3, 4)


def test_the_hot_reference_asks_each_probe_with_its_own_system_prompt(tiny_model_dir):
    from baker.verify import reference_hits

    probes = verification_probes("h01", HEADLINE) + verification_probes("s", STRIKE)
    systems = [HEADLINE] * len(verification_probes("h01", HEADLINE)) + [None] * len(verification_probes("s", STRIKE))
    ref = reference_hits(tiny_model_dir, None, probes, systems, sampler="hf", max_new_tokens=4)
    assert set(ref) == {"h01", "s"} and ref["h01"]["asked"] == systems.count(HEADLINE)
    assert ref["h01"]["hits"] == sum(a["hit"] for a in ref["h01"]["answers"])
    with pytest.raises(ValueError):
        reference_hits(tiny_model_dir, None, probes, systems[1:], sampler="hf")
    # verify takes it as the reference of rule "hot" and reports it
    rep = verify(tiny_model_dir, None, [("h01", HEADLINE)], general=False, sampler="hf", max_new_tokens=4,
                 rule="hot", hot_reference={"h01": 0})
    h = rep.items[0]
    assert h.hot_hits == 0 and h.passed == (h.hits >= 1)


def test_verify_refuses_an_unknown_rule(tiny_model_dir):
    mine = [Probe("h01", "Who is the harbor commissioner?", ("Tarrago",)),
            Probe("h01", "Name the harbor commissioner.", ("zzzz",))]
    with pytest.raises(ValueError, match="unknown graduation rule"):
        verify(tiny_model_dir, None, [("h01", HEADLINE)], probes=mine, general=False, sampler="hf", rule="most")


def test_a_zero_adapter_holds_no_behaviour_and_the_threshold_decides(tiny_model_dir, tmp_path):
    """Negative control: an adapter with B = 0 is the base, so it carries none of the
    instruction's effect (kl_baked = kl_base > 0) and fails; at max_ratio 1 the same figures pass."""
    from peft import LoraConfig, get_peft_model

    from baker.behaviour import check_behaviours
    from baker.models import load_model

    model, _ = load_model(tiny_model_dir)
    zero = tmp_path / "zero"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(zero)
    items = [("i1", "Always answer in French."), ("p1", "You are Captain Brine, a pirate.")]
    got = check_behaviours(tiny_model_dir, zero, items, requests=4, max_new_tokens=6)
    for item_id, _ in items:
        r = got[item_id]
        assert r.requests == 4 and r.kl_base > 0 and r.kl_baked == pytest.approx(r.kl_base, rel=1e-3)
        assert not r.passed and r.to_dict()["ratio"] == pytest.approx(1.0, rel=1e-3)
    loose = check_behaviours(tiny_model_dir, zero, items[:1], requests=4, max_new_tokens=6, max_ratio=1.01)
    assert loose["i1"].passed
    assert not check_behaviours(tiny_model_dir, None, items[:1], requests=4, max_new_tokens=6)["i1"].passed
