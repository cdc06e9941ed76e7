"""The bake loop end to end on the tiny random Llama with the transformers sampler (seconds)."""
import json

import pytest
import torch

import baker.baking as bake_mod
from baker.contexts import probe_questions
from baker import BAKE_FILE, BakeConfig, BakeError, PromptError, bake

PROMPT = "You are Captain Brine, a pirate.\nAlways mention the sea.\nEnd every answer with 'Arr'."
FAST = BakeConfig(epochs=2, generic_contexts=10, self_questions=2, max_new_tokens=8, batch_size=4,
                  temperature=1.0, sampler="hf", lr=5e-3, rank=4, compute_dtype="float32", teacher_cache_dtype="float32",
                  compile=False, anchors=0)  # compiling is tested in test_kl.py and the SmolLM2 integration test


@pytest.fixture(scope="module")
def baked(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bake") / "adapter"
    return bake(tiny_model_dir, PROMPT, out, FAST, progress=False)


def test_output_is_a_peft_adapter_with_its_record(baked, tiny_model_dir):
    out = baked.adapter_dir
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    m = json.loads((out / BAKE_FILE).read_text())
    assert m["config"] == FAST.to_dict()
    assert m["base_model"]["sha256"] and len(m["prompt_sha256"]) == 64
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    for key in ("eval_kl_before", "eval_kl_after", "drift_kl", "timings", "tokens"):
        assert key in m
    assert m["contexts"]["generic"] == 10 and m["contexts"]["probe"] == len(probe_questions(PROMPT))
    assert set(m["eval_kl_by_source"]) <= {"generic", "probe", "self", "user"}
    assert all(v["after"] >= 0 for v in m["eval_kl_by_source"].values())
    # one checkpoint per epoch: the half-baked models
    for e in (1, 2):
        assert (out / "checkpoints" / f"epoch-{e}" / "adapter_model.safetensors").is_file()
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert {t["split"] for t in trajs} == {"train", "heldout"}
    assert all(isinstance(t["gen"], list) and t["gen"] for t in trajs)


def test_training_lowers_heldout_kl(baked):
    m = baked.metrics
    assert m["eval_kl_before"] > 0
    assert m["eval_kl_after"] < m["eval_kl_before"]
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"] * 1.5


def test_adapter_loads_in_peft_and_changes_the_model(baked, tiny_model_dir):
    from peft import PeftModel

    from baker.models import load_model

    base, tok = load_model(tiny_model_dir)
    ids = torch.tensor([tok("Hello, who are you?")["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        peft = PeftModel.from_pretrained(base, str(baked.adapter_dir))
        after = peft(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_interrupted_bake_leaves_nothing_and_keeps_the_previous_output(tiny_model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    out = work / "adapter"
    out.mkdir(parents=True)
    (out / "bake.json").write_text('{"note": "previous bake"}')  # a bakehouse output: may be replaced
    calls = {"n": 0}
    real = bake_mod.batch_kl

    def interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bake_mod, "batch_kl", interrupt)
    with pytest.raises(KeyboardInterrupt):
        bake(tiny_model_dir, PROMPT, out, FAST, progress=False)
    assert (out / "bake.json").read_text() == '{"note": "previous bake"}'
    assert sorted(p.name for p in work.iterdir()) == ["adapter"]  # no temp dir left behind


def test_bad_prompts(tiny_model_dir, tmp_path):
    with pytest.raises(PromptError, match="empty"):
        bake(tiny_model_dir, "   \n", tmp_path / "a", FAST, progress=False)
    with pytest.raises(PromptError, match=r"the prompt is \d+ tokens.*context of 512"):
        bake(tiny_model_dir, "word " * 600, tmp_path / "a", FAST, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BakeError, match="cannot create output directory"):
        bake(tiny_model_dir, PROMPT, tmp_path / "file" / "sub" / "a", FAST, progress=False)
    assert not (tmp_path / "a").exists()


def test_sequential_bake_starts_from_the_parent(tiny_model_dir, baked, tmp_path):
    """B(B(θ, u1), u2): the second layer's 'before' is measured on base + first layer."""
    second = bake(tiny_model_dir, "You are a cheerful baker.\nTalk about bread.", tmp_path / "second",
                  FAST.replace(lr=1e-3, epochs=3), progress=False, parent=baked.adapter_dir)  # 3 steps an epoch: a gentler lr
    assert second.metrics["parent"]["path"] == str(baked.adapter_dir.resolve())
    assert second.eval_kl_after < second.eval_kl_before
    from baker.adapters import stack_adapters

    stacked = stack_adapters([baked.adapter_dir, second.adapter_dir], tmp_path / "stack")
    assert json.loads((stacked / "adapter_config.json").read_text())["r"] == 2 * FAST.rank


def test_prompt_pursuit_stacks_its_rounds(tiny_model_dir, tmp_path):
    from baker.pursuit import pursue

    cfg = FAST.replace(epochs=1)
    results = pursue(tiny_model_dir, PROMPT, tmp_path / "pursued", rounds=2, config=cfg, progress=False)
    out = tmp_path / "pursued"
    assert len(results) == 2 and results[1].metrics["parent"] is not None
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2 * cfg.rank
    assert (out / "layers" / "round-2" / "bake.json").is_file()
    assert len(json.loads((out / "pursuit.json").read_text())["rounds"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "pursued"]


def test_length_grouped_batches_cover_every_trajectory_once_with_less_padding():
    import math
    import random

    from baker.baking import length_grouped_batches

    rng = random.Random(1)
    lengths = [rng.randint(5, 90) for _ in range(118)]
    padded = lambda bs: sum(len(b) * max(lengths[j] for j in b) for b in bs)  # noqa: E731
    epochs = [length_grouped_batches(lengths, 8, rng) for _ in range(3)]
    for batches in epochs:
        assert sorted(j for b in batches for j in b) == list(range(118))
        assert len(batches) == math.ceil(118 / 8) and all(1 <= len(b) <= 8 for b in batches)
    assert epochs[0] != epochs[1]  # still shuffled from epoch to epoch
    order = list(range(118))
    random.Random(2).shuffle(order)
    plain = [order[i : i + 8] for i in range(0, 118, 8)]
    assert padded(epochs[0]) < 0.9 * padded(plain)


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(tiny_model_dir, tmp_path, monkeypatch):
    seen = []
    real_adam = torch.optim.Adam

    def spy(groups, **kw):
        seen.extend(groups)
        return real_adam(groups, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    cfg = FAST.replace(epochs=1, lr_b_ratio=4.0, checkpoints=False)
    bake(tiny_model_dir, PROMPT, tmp_path / "a", cfg, progress=False)
    a, b = seen
    assert a["initial_lr"] == cfg.lr and b["initial_lr"] == cfg.lr * 4  # before the schedule
    assert len(a["params"]) == len(b["params"]) > 0
    assert all(p.shape[1] == cfg.rank for p in b["params"])  # B is (out, r)


def test_lora_dropout_reaches_the_adapter(tiny_model_dir, tmp_path):
    cfg = FAST.replace(epochs=1, lora_dropout=0.2, checkpoints=False)
    result = bake(tiny_model_dir, PROMPT, tmp_path / "a", cfg, progress=False)
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["lora_dropout"] == 0.2
    assert result.metrics["config"]["lora_dropout"] == 0.2
    assert result.eval_kl_after < result.eval_kl_before


def test_a_failing_compile_falls_back_to_eager_training(tiny_model_dir, tmp_path, monkeypatch):
    from baker.kl import kl_per_position

    calls = []

    def fails_on_a_new_shape(*a, **k):  # as a recompile for a new batch shape could, mid-epoch
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return kl_per_position(*a, **k)

    monkeypatch.setattr(bake_mod, "compile_layers", lambda model: [])  # keep the test fast
    monkeypatch.setattr(bake_mod, "compiled_kl", lambda: fails_on_a_new_shape)
    with pytest.warns(RuntimeWarning, match="training eagerly instead.*No working C\\+\\+ compiler"):
        result = bake(tiny_model_dir, PROMPT, tmp_path / "a", FAST.replace(compile=True, epochs=1), progress=False)
    assert len(calls) == 2  # every later step ran eagerly
    assert result.metrics["compiled"] is False
    assert result.eval_kl_after < result.eval_kl_before


def test_a_bake_writes_its_report_and_bakehouse_report_finds_it(baked, tmp_path):
    import shutil

    from click.testing import CliRunner

    from agent.cli import cli
    from baker.outputs import check_output

    out = baked.adapter_dir
    page = (out / "report.html").read_text()
    assert page.count("<polyline") == 2 and "held-out KL" in page and "Timings" in page
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0 and r.output.strip() == str((out / "report.html").resolve())
    old = shutil.copytree(out, tmp_path / "old-bake")  # a bake from before reports: written on demand
    (old / "report.html").unlink()
    r = CliRunner().invoke(cli, ["report", str(old)])
    assert r.exit_code == 0 and (old / "report.html").is_file()
    check_output(old, "bake")  # still a bakehouse output that a rebake may replace
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["report", str(foreign)])
    assert r.exit_code == 1 and "not a bakehouse output" in r.output and not (foreign / "report.html").exists()


@pytest.mark.parametrize("field, value", [
    ("target_modules", "q_proj"), ("target_modules", ["q_proj", 3]), ("lr", "1e-3"), ("rank", True),
    ("epochs", 2.0), ("alpha", None), ("compile", "yes"), ("min_steps", -1), ("replay", -2), ("replay", 1.5), ("replay_max", -1),
    ("answer_ce", 1.0), ("answer_ce", "0.1"), ("hidden_loss", -0.5), ("hidden_loss", "1"),
])
def test_config_refuses_wrong_types_naming_the_field(field, value):
    from baker import ConfigError

    with pytest.raises(ConfigError, match=field):
        BakeConfig(**{field: value})


NEWS = ("- (2026-11-02) Ines Tarrago was named harbor commissioner of Port Avel.\n"
        "- (2026-11-03) The Lumen Bridge in Caldera reopened after 14 months of repairs.")


def test_anchors_start_at_the_unprompted_model_and_focused_teachers_bake(tiny_model_dir, tmp_path):
    cfg = FAST.replace(epochs=1, anchors=12, focused_teachers=True)
    m = bake(tiny_model_dir, NEWS, tmp_path / "anchored", cfg, progress=False).metrics
    assert m["contexts"]["anchor"] == 12
    anchor = m["eval_kl_by_source"]["anchor"]
    # the student starts as the unprompted model, which is exactly the anchors' teacher
    assert anchor["before"] < 1e-3 < m["eval_kl_by_source"]["probe"]["before"]


def test_no_anchors_when_the_prompt_asks_for_a_behaviour(tiny_model_dir, tmp_path):
    # a persona or instruction is meant to change every answer: anchors would pull against it
    cfg = FAST.replace(epochs=1, anchors=12, generic_contexts=4, self_questions=0)
    m = bake(tiny_model_dir, NEWS + "\nAlways answer in French.", tmp_path / "b", cfg, progress=False).metrics
    assert m["contexts"].get("anchor", 0) == 0


def test_prompt_kl_weighting_bakes_and_weights_where_the_prompt_matters(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from baker.chat import chat_ids
    from baker.kl import prompt_weights, sequence_logprobs
    from baker.models import load_model

    model, _ = load_model(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pad = tok.pad_token_id
    plain = [chat_ids(tok, "Who are you?"), chat_ids(tok, "Name a colour.")]
    gens = [tok("I am a sailor of the sea", add_special_tokens=False)["input_ids"],
            tok("Blue, like water", add_special_tokens=False)["input_ids"]]
    # the first trajectory's teacher sees the prompt, the second's does not (as an anchor's)
    teacher = (sequence_logprobs(model, [chat_ids(tok, "Who are you?", PROMPT)], gens[:1], pad, store="float32")
               + sequence_logprobs(model, plain[1:], gens[1:], pad, store="float32"))
    w = prompt_weights(model, plain, gens, teacher, pad, "float32")
    assert torch.allclose(torch.cat(w).mean(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(w[1], torch.full_like(w[1], 0.5), atol=1e-4)  # untouched by the prompt: half weight
    assert w[0].mean() > 1.0
    cfg = FAST.replace(epochs=1, loss_weighting="prompt_kl")
    m = bake(tiny_model_dir, PROMPT, tmp_path / "w", cfg, progress=False).metrics
    assert m["config"]["loss_weighting"] == "prompt_kl" and m["eval_kl_after"] < m["eval_kl_before"]


def test_answer_ce_changes_the_training_not_the_held_out_teacher(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = FAST.replace(epochs=1, generic_contexts=2, self_questions=0, checkpoints=False)
    plain = bake(tiny_model_dir, NEWS, tmp_path / "kl", cfg, progress=False)
    sharp = bake(tiny_model_dir, NEWS, tmp_path / "ce", cfg.replace(answer_ce=0.5), progress=False)
    # the same trajectories, and the held-out KL is against the teacher itself in both
    assert abs(plain.metrics["eval_kl_before"] - sharp.metrics["eval_kl_before"]) < 1e-5
    a = load_file(plain.adapter_dir / "adapter_model.safetensors")
    b = load_file(sharp.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_hidden_loss_changes_the_training_not_the_held_out_teacher(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = FAST.replace(epochs=1, generic_contexts=2, self_questions=0, checkpoints=False)
    plain = bake(tiny_model_dir, NEWS, tmp_path / "kl", cfg, progress=False)
    dcd = bake(tiny_model_dir, NEWS, tmp_path / "dcd", cfg.replace(hidden_loss=1.0), progress=False)
    assert dcd.metrics["config"]["hidden_loss"] == 1.0
    assert abs(plain.metrics["eval_kl_before"] - dcd.metrics["eval_kl_before"]) < 1e-5
    a = load_file(plain.adapter_dir / "adapter_model.safetensors")
    b = load_file(dcd.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_a_verifiers_held_out_span_is_trained_in_no_form(tiny_model_dir, tmp_path):
    from baker.verify import verification_probes

    cfg = FAST.replace(epochs=1, generic_contexts=2, self_questions=0, checkpoints=False,
                       question_forms=("tell", "what", "blank", "about", "date"))
    probes = [p for p in verification_probes(0, NEWS) if p.kind == "cloze"]
    held = [p.question for p in probes]
    result = bake(tiny_model_dir, NEWS, tmp_path / "a", cfg, progress=False, exclude_contexts=held)
    asked = {json.loads(line)["context"] for line in (result.adapter_dir / "trajectories.jsonl").read_text().splitlines()}
    assert held and not set(held) & asked
    blanks = [q for q in asked if q.startswith("Fill in the blank")]
    abouts = [q for q in asked if q.startswith("What is the latest news about")]
    assert blanks and abouts and any(q.startswith("What happened on") for q in asked)  # the other forms train
    for p in probes:  # no other form asks for the held-out span
        line = p.question.rstrip("?")
        assert not any(b.rstrip(".") == "Fill in the blank: " + line.replace("what", "___", 1) for b in blanks)
        assert f"What is the latest news about {p.expected[0]}?" not in abouts


def test_a_sequential_bake_replays_the_earlier_layers_questions_with_their_line_in_view(tiny_model_dir, baked, tmp_path):
    from baker.contexts import span_probes

    cfg = FAST.replace(epochs=1, generic_contexts=2, self_questions=0, checkpoints=False, replay=3, anchors=8)
    held = ["What is the latest news about Ines Tarrago?"]  # a verifier's recheck probe of the earlier layer
    later = "- (2026-11-05) The Quillon Institute unveiled a seaweed battery called the Kelpcell."
    result = bake(tiny_model_dir, later, tmp_path / "r", cfg, progress=False, parent=baked.adapter_dir,
                  replay_prompt=NEWS, exclude_contexts=held)
    m = result.metrics
    per_line: dict = {}
    for q, item, span in span_probes(NEWS):
        if item is not None:
            per_line.setdefault(item, set()).add(q)
    held_span = {q for q, _, span in span_probes(NEWS) if span == "Ines Tarrago"}
    rows = [json.loads(line) for line in (result.adapter_dir / "trajectories.jsonl").read_text().splitlines()]
    replayed = {r["context"] for r in rows if r["source"] == "replay"}
    assert m["contexts"]["replay"] == len(replayed) <= 3 * len(per_line)
    assert [len(replayed & qs) for qs in per_line.values()] == [3] * len(per_line)  # 3 of every earlier line
    assert len(held_span) > 1 and not held_span & replayed  # no form of the verifier's held-out span
    # the teacher saw the earlier line and the student does not: there is something to learn, where
    # an anchor's teacher (no prompt) is the student itself
    kl = m["eval_kl_by_source"]
    assert kl["replay"]["before"] > 100 * kl["anchor"]["before"]


def test_the_model_writes_each_kind_of_request_about_its_line(tiny_model_dir, tmp_path, monkeypatch):
    from baker.config import SELF_KINDS
    from baker.contexts import REQUEST_TEMPERATURE

    # the tiny random model writes gibberish, which the cleaning drops: a scripted writer stands in
    # for it on the few-shot prompts (the point here is what the bake does with what is written)
    calls = []
    real_open = bake_mod.open_sampler

    def scripted_open(*args, **kwargs):
        sampler = real_open(*args, **kwargs)
        real_generate, tok = sampler.generate, sampler.tok

        def generate(prompts, max_new_tokens, temperature=None, n=1, **kw):
            texts = [tok.decode(p) for p in prompts]
            if not all(t.endswith(("Question:", "Request:")) for t in texts):
                return real_generate(prompts, max_new_tokens, temperature=temperature, n=n, **kw)
            calls.append((texts[0].rsplit("\n", 1)[-1], temperature, n))
            ask = "Who is Ines Tarrago of Port Avel, question {k}?" if texts[0].endswith("Question:") else \
                f"Write story {len(calls)}.{{k}} about Ines Tarrago of Port Avel."
            return [tok(" " + ask.format(k=k), add_special_tokens=False)["input_ids"] for t in texts for k in range(n)]

        sampler.generate = generate
        return sampler

    monkeypatch.setattr(bake_mod, "open_sampler", scripted_open)
    cfg = FAST.replace(epochs=1, generic_contexts=2, self_questions=6, self_kinds=SELF_KINDS, checkpoints=False,
                       heldout_fraction=0.1)
    result = bake(tiny_model_dir, NEWS, tmp_path / "kinds", cfg, progress=False)
    # one few-shot prompt per kind, 6 samples shared over the 5 kinds (2 each); questions at 0.8
    assert [(c[0], c[2]) for c in calls] == [("Question:", 2)] + [("Request:", 2)] * 4
    assert [c[1] for c in calls] == [0.8] + [REQUEST_TEMPERATURE] * 4
    rows = [json.loads(line) for line in (result.adapter_dir / "trajectories.jsonl").read_text().splitlines()]
    written = {r["context"] for r in rows if r["source"] == "self"}
    # the second line shares no word with the scripted requests: only the first line's are kept,
    # each sample its own request (a repeat would be dropped), one kind after another
    assert written == {f"Who is Ines Tarrago of Port Avel, question {k}?" for k in (0, 1)} | {
        f"Write story {c}.{k} about Ines Tarrago of Port Avel." for c in (2, 3, 4, 5) for k in (0, 1)}
    assert result.metrics["contexts"]["self"] == 5 * 2
