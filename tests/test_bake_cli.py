"""`bakehouse bake / generate / config` through click's CliRunner, on the tiny Llama (HF sampler)."""
import json

import pytest
from click.testing import CliRunner

from agent.cli import cli

FAST = ["--epochs", "1", "--max-new-tokens", "6", "--sampler", "hf", "--no-compile", "--quiet"]


@pytest.fixture
def run():
    def go(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return go


@pytest.fixture
def fast_config(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"generic_contexts": 6, "self_questions": 0, "batch_size": 4, "rank": 2,
                               "compute_dtype": "float32"}))
    return cfg


def test_bake_then_generate(run, tiny_model_dir, tmp_path, fast_config):
    prompt = tmp_path / "p.txt"
    prompt.write_text("You love the color green.\nAlways mention green things.")
    out = tmp_path / "adapter"
    r = run("bake", prompt, "-o", out, "--model", tiny_model_dir, "--config", fast_config, *FAST)
    assert r.exit_code == 0, r.output
    assert "held-out KL" in r.output and (out / "bake.json").is_file()
    record = json.loads((out / "bake.json").read_text())
    assert record["config"]["generic_contexts"] == 6  # from the file
    assert record["config"]["compile"] is False and record["compiled"] is False  # from --no-compile

    q = tmp_path / "q.jsonl"
    q.write_text('{"id": 1, "prompt": "Hi"}\n\n{"id": "b", "prompt": "What color is grass?"}\n')
    a = tmp_path / "answers" / "a.jsonl"
    r = run("generate", "--model", tiny_model_dir, "--adapter", out, "--system-file", prompt,
            "--input", q, "--output", a, "--max-new-tokens", 5, "--sampler", "hf")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, "b"]
    assert all(set(row) == {"id", "prompt", "text"} and isinstance(row["text"], str) for row in rows)


@pytest.mark.parametrize("args,message", [
    (["bake", "{empty}", "-o", "{tmp}/o", "--model", "{model}"], "the prompt is empty"),
    (["bake", "{long}", "-o", "{tmp}/o", "--model", "{model}"], "more than the model's context of 512"),
    (["bake", "{prompt}", "-o", "{tmp}/o", "--model", "{tmp}/nope"], "model directory not found"),
    (["bake", "{prompt}", "-o", "{tmp}/file/o", "--model", "{model}"], "cannot create output directory"),
    (["bake", "{prompt}", "-o", "{tmp}/o", "--model", "{model}", "--epochs", "0"], "epochs must be a positive integer"),
    (["bake", "{tmp}/missing.txt", "-o", "{tmp}/o"], "cannot read prompt file"),
    (["generate", "--model", "{model}", "--input", "{badq}", "--output", "{tmp}/a.jsonl"], "badq.jsonl:2: not valid JSON"),
    (["generate", "--model", "{model}", "--adapter", "{tmp}", "--input", "{q}", "--output", "{tmp}/a.jsonl"], "not a PEFT adapter"),
])
def test_bad_input_is_one_clear_line(run, tiny_model_dir, tmp_path, args, message):
    files = {"empty": "", "long": "word " * 600, "prompt": "Be nice.", "badq": '{"id":1,"prompt":"a"}\n{oops\n',
             "q": '{"id":1,"prompt":"a"}\n'}
    paths = {}
    for name, text in files.items():
        p = tmp_path / (f"{name}.jsonl" if name in ("badq", "q") else f"{name}.txt")
        p.write_text(text)
        paths[name] = p
    (tmp_path / "file").write_text("x")
    fmt = {"tmp": tmp_path, "model": tiny_model_dir, **paths}
    r = CliRunner().invoke(cli, [a.format(**fmt) for a in args])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "a.jsonl").exists()


def test_config_prints_the_resolved_config(run, home):
    r = run("config", "--epochs", 7, "--rank", 8)
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["bake"]["epochs"] == 7 and data["bake"]["rank"] == 8
    assert data["home"] == str(home)


def test_scale_and_stack_commands(run, tiny_model_dir, tmp_path, fast_config):
    prompt = tmp_path / "p.txt"
    prompt.write_text("You love the color green.")
    a = tmp_path / "a"
    assert run("bake", prompt, "-o", a, "--model", tiny_model_dir, "--config", fast_config, *FAST).exit_code == 0
    r = run("scale", a, "-o", tmp_path / "half", "--strength", 0.5)
    assert r.exit_code == 0 and "strength 0.5" in r.output
    r = run("stack", a, tmp_path / "half", "-o", tmp_path / "both")
    assert r.exit_code == 0 and "rank 4" in r.output, r.output
    r = CliRunner().invoke(cli, ["stack", str(a), str(tmp_path), "-o", str(tmp_path / "bad")])
    assert r.exit_code == 1 and "not a PEFT adapter" in r.output


def test_bake_checks_recall_on_held_out_probes_and_reports_it(run, tiny_model_dir, tmp_path, fast_config):
    prompt = tmp_path / "news.txt"
    prompt.write_text("Port authority of Velmora names Ines Tarrago as its first harbor commissioner.\n"
                      "Rail strike in Dunmarrow ends after 19 days with a 7 percent wage deal.")
    out = tmp_path / "news"
    r = run("bake", prompt, "-o", out, "--model", tiny_model_dir, "--config", fast_config, *FAST)
    assert r.exit_code == 0, r.output
    assert "recall on" in r.output and "held-out probes" in r.output
    recall = json.loads((out / "bake.json").read_text())["recall"]
    assert [i["item_id"] for i in recall["items"]] == [0, 1]  # one item per prompt line
    answers = [a for i in recall["items"] for a in i["answers"]]
    assert answers and all({"base", "prompted", "baked"} <= a.keys() for a in answers)
    assert any("Tarrago" in a["expected"] for a in answers)
    trained = {json.loads(line)["context"] for line in (out / "trajectories.jsonl").read_text().splitlines()}
    cloze = [a["question"] for a in answers if a["kind"] == "cloze"]
    assert cloze and not trained & set(cloze)  # held out: never trained on, never evaluated
    assert recall["general"]["asked"] > 50
    page = (out / "report.html").read_text()
    assert "Recall probes, before / after" in page and answers[0]["question"] in page
    assert (out / ".bakehouse-output.json").is_file() and not list(out.glob(".*.tmp"))

    unchecked = tmp_path / "unchecked"
    r = run("bake", prompt, "-o", unchecked, "--model", tiny_model_dir, "--config", fast_config, *FAST, "--no-check")
    assert r.exit_code == 0, r.output
    assert "recall on" not in r.output and "recall" not in json.loads((unchecked / "bake.json").read_text())
    trained = {json.loads(line)["context"] for line in (unchecked / "trajectories.jsonl").read_text().splitlines()}
    assert trained & set(cloze)  # unchecked, every probe trains
