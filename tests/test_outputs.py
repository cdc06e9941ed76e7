"""Issue 15: a writer replaces only an output bakehouse wrote itself; --force for another kind,
never a foreign folder; leftovers of dead writers are swept. One test per writing command with a
sentinel file (the user's thesis.txt), on the tiny Llama (HF sampler) and small synthetic adapters."""
from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from agent.cli import cli
from baker import BakeConfig, OutputError
from baker.outputs import (MARKER, check_output, output_kind, prepare_output, replace_output, sweep_leftovers,
                           temp_dir, write_marker)

DEAD = 999999999  # above any pid_max: never a running process
THESIS = "four years of work"
FAST_ARGS = ["--epochs", "1", "--max-new-tokens", "6", "--sampler", "hf", "--no-compile", "--quiet"]
FAST = BakeConfig(epochs=1, generic_contexts=6, self_questions=0, max_new_tokens=6, batch_size=4, rank=2,
                  sampler="hf", compute_dtype="float32", teacher_cache_dtype="float32", compile=False,
                  checkpoints=False)


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _foreign(path):
    """A folder of the user's, as in the issue."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.txt").write_text(THESIS)
    return path


def _assert_refused(r, path):
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    err = r.stderr.strip()
    assert "\n" not in err and f"refusing to replace {path}: it is not a bakehouse output" in err, err
    assert "thesis.txt" in err
    assert (path / "thesis.txt").read_text() == THESIS
    assert sorted(p.name for p in path.iterdir()) == ["thesis.txt"]


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != "home")  # (the data home fixture)


@pytest.fixture
def fast_config(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(FAST.to_dict()))
    return cfg


@pytest.fixture(scope="module")
def layers(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from baker.models import load_model

    d = tmp_path_factory.mktemp("out-layers")
    out = []
    for name, r, seed in (("a", 4, 1), ("b", 2, 2)):
        torch.manual_seed(seed)
        model, _ = load_model(tiny_model_dir)
        peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False,
                                                target_modules=["q_proj", "v_proj"]))
        peft.save_pretrained(d / name)
        out.append(d / name)
    return out


# -- the rules -----------------------------------------------------------------------------------


def test_check_output_rules(tmp_path):
    check_output(tmp_path / "missing", "bake")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "bake")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        check_output(tmp_path / "file", "bake")
    for force in (False, True):
        with pytest.raises(OutputError, match=r"refusing to replace .*thesis: it is not a bakehouse output "
                                              r"\(it holds thesis.txt\)"):
            check_output(_foreign(tmp_path / "thesis"), "bake", force=force)
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OutputError, match="symbolic link"):
        check_output(tmp_path / "link", "bake", force=True)

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "adapter_config.json").write_text("{}")
    (ours / "bake.json").write_text(json.dumps({"kind": "stack"}))
    assert output_kind(ours) == "stack"  # written before markers existed: bake.json + adapter files
    (ours / MARKER).write_text(json.dumps({"kind": "half-baked", "files": ["adapter_config.json", "bake.json"]}))
    assert output_kind(ours) == "half-baked"  # the marker decides
    check_output(ours, "half-baked")
    with pytest.raises(OutputError, match=r"ours is a bakehouse half-baked output; pass --force to replace it"):
        check_output(ours, "bake")
    check_output(ours, "bake", force=True)
    (ours / "thesis.txt").write_text(THESIS)  # the user's file inside a bakehouse output
    with pytest.raises(OutputError, match=r"not a bakehouse output \(it holds thesis.txt\)"):
        check_output(ours, "half-baked", force=True)

    peft_only = tmp_path / "peft"  # an adapter bakehouse did not write (no bake.json, no marker)
    peft_only.mkdir()
    (peft_only / "adapter_config.json").write_text("{}")
    with pytest.raises(OutputError, match="not a bakehouse output"):
        check_output(peft_only, "bake", force=True)


def test_replace_output_marks_and_swaps(tmp_path):
    dst = tmp_path / "out"
    for n in (1, 2):
        prepare_output(dst, "stack")
        tmp = temp_dir(dst)
        (tmp / "adapter_config.json").write_text(str(n))
        replace_output(tmp, dst, "stack")
        assert (dst / "adapter_config.json").read_text() == str(n)
        marker = json.loads((dst / MARKER).read_text())
        assert marker["kind"] == "stack" and marker["files"] == ["adapter_config.json"]
        assert _siblings(dst) == ["out"]


def test_leftovers_of_dead_writers_are_swept(tmp_path):
    dst = tmp_path / "out"
    dead = [f".out.tmp-{DEAD}-abc12_yz", f".out.old-{DEAD}", f".out.pursuit-{DEAD}", ".out.tmp-k2j_x9a1"]
    live = [f".out.tmp-{os.getpid()}-abc12_yz", f".out.old-{os.getpid()}"]
    others = [f".other.tmp-{DEAD}-abcdefgh", "out2", f".out.tmp-5.tmp-{DEAD}-abcdefgh",  # not leftovers of `out`
              f".out.tmp-5-x.tmp-{DEAD}-abcdefgh"]  # (those of outputs named `out.tmp-5`, `out.tmp-5-x`)
    for name in dead + live + others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    removed = sweep_leftovers(dst)
    assert sorted(p.name for p in removed) == sorted(dead)
    assert _siblings(dst) == sorted(live + others)


# -- bake ----------------------------------------------------------------------------------------


def test_bake_refuses_a_foreign_folder_and_replaces_its_own_output(tiny_model_dir, tmp_path, fast_config):
    prompt = tmp_path / "p.txt"
    prompt.write_text("You love the color green.\nAlways mention green things.")
    docs = _foreign(tmp_path / "Documents")
    bake = ("bake", prompt, "--model", tiny_model_dir, "--config", fast_config, *FAST_ARGS)
    for extra in ([], ["--force"]):
        _assert_refused(_cli(*bake, "-o", docs, *extra), docs)

    out = tmp_path / "adapter"
    for _ in range(2):  # the second run replaces the first's output
        r = _cli(*bake, "-o", out)
        assert r.exit_code == 0, r.output
        assert json.loads((out / MARKER).read_text())["kind"] == "bake"
    assert _siblings(out) == ["Documents", "adapter", "cfg.json", "p.txt"]

    # another kind (a half-bake) needs --force; --force then replaces it
    from baker.adapters import scale_adapter

    half = scale_adapter(out, tmp_path / "half", 0.5)
    r = _cli(*bake, "-o", half)
    assert r.exit_code == 1 and "is a bakehouse half-baked output; pass --force to replace it" in r.stderr
    assert json.loads((half / "bake.json").read_text())["kind"] == "half-baked"
    assert _cli(*bake, "-o", half, "--force").exit_code == 0
    assert json.loads((half / MARKER).read_text())["kind"] == "bake"


def test_bake_sweeps_leftovers_of_a_dead_bake(tiny_model_dir, tmp_path):
    from baker import bake

    out = tmp_path / "adapter"
    (tmp_path / f".adapter.tmp-{DEAD}-xyz12345").mkdir()
    (tmp_path / f".adapter.old-{DEAD}").mkdir()
    bake(tiny_model_dir, "Be nice.", out, FAST, progress=False)
    assert _siblings(out) == ["adapter"]


# -- scale and stack -----------------------------------------------------------------------------


def test_scale_refuses_a_foreign_folder_and_replaces_its_own_output(layers, tmp_path):
    docs = _foreign(tmp_path / "thesis")
    for extra in ([], ["--force"]):
        _assert_refused(_cli("scale", layers[0], "-o", docs, "--strength", 0.5, *extra), docs)
    out = tmp_path / "half"
    for strength in (0.5, 0.25):
        r = _cli("scale", layers[0], "-o", out, "--strength", strength)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "bake.json").read_text())["strength"] == strength
    assert json.loads((out / MARKER).read_text())["kind"] == "half-baked"
    assert _siblings(out) == ["half", "thesis"]


def test_stack_refuses_a_foreign_folder_and_replaces_its_own_output(layers, tmp_path):
    docs = _foreign(tmp_path / "thesis")
    for extra in ([], ["--force"]):
        _assert_refused(_cli("stack", *layers, "-o", docs, *extra), docs)
    out = tmp_path / "both"
    for _ in range(2):
        r = _cli("stack", *layers, "-o", out)
        assert r.exit_code == 0 and "rank 6" in r.output, r.output
    # a stack over a half-bake: another kind, so --force
    _cli("scale", layers[0], "-o", tmp_path / "half", "--strength", 0.5)
    r = _cli("stack", *layers, "-o", tmp_path / "half")
    assert r.exit_code == 1 and "is a bakehouse half-baked output" in r.stderr
    assert _cli("stack", *layers, "-o", tmp_path / "half", "--force").exit_code == 0
    assert json.loads((tmp_path / "half" / MARKER).read_text())["kind"] == "stack"


# -- pursue --------------------------------------------------------------------------------------


def test_pursue_refuses_a_foreign_folder_and_replaces_its_own_output(tiny_model_dir, tmp_path, fast_config):
    from baker.pursuit import pursue

    prompt = tmp_path / "p.txt"
    prompt.write_text("You love the color green.")
    docs = _foreign(tmp_path / "thesis")
    for extra in ([], ["--force"]):
        r = _cli("pursue", prompt, "-o", docs, "--rounds", 1, "--model", tiny_model_dir,
                 "--config", fast_config, *FAST_ARGS, *extra)
        _assert_refused(r, docs)
    out = tmp_path / "pursued"
    (tmp_path / f".pursued.pursuit-{DEAD}").mkdir()  # a killed pursuit's work dir
    for _ in range(2):
        pursue(tiny_model_dir, prompt.read_text(), out, rounds=1, config=FAST, progress=False)
    assert json.loads((out / MARKER).read_text())["kind"] == "prompt-pursuit"
    assert (out / "pursuit.json").is_file() and (out / "layers" / "round-1" / "bake.json").is_file()
    assert _siblings(out) == ["cfg.json", "p.txt", "pursued", "thesis"]


# -- publish -------------------------------------------------------------------------------------


def test_publish_never_replaces_an_existing_directory(tiny_model_dir, layers, home):
    from serving import registry as reg_mod
    from serving.errors import RegistryError
    from serving.registry import Registry

    reg = Registry(home)
    tdir = reg.root / "alice"
    _foreign(tdir / "v1")  # a version directory on disk the registry does not know
    (tdir / "v2").mkdir()  # an empty one: os.rename would silently replace it
    (tdir / "notes.txt").write_text(THESIS)
    (tdir / f".incoming-{DEAD}-abcdefgh").mkdir()  # a killed publish
    (tdir / f".incoming-{os.getpid()}-defghijk").mkdir()  # a publish under way
    rec = reg.publish("alice", layers[0], tiny_model_dir, max_rank=8)
    assert rec.version == 3
    assert (tdir / "v1" / "thesis.txt").read_text() == THESIS and (tdir / "notes.txt").read_text() == THESIS
    assert list((tdir / "v2").iterdir()) == []
    left = sorted(p.name for p in tdir.iterdir())
    assert left == [f".incoming-{os.getpid()}-defghijk", "notes.txt", "v1", "v2", "v3"]

    # bake's marker is not carried into a version dir: `bake -o adapters/alice/v4` must not take
    # a published version for its own output
    src = home / "baked"
    src.mkdir()
    for f in layers[0].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    write_marker(src, "bake")
    reg.publish("alice", src, tiny_model_dir, max_rank=8)
    assert not (tdir / "v4" / MARKER).exists()
    with pytest.raises(OutputError, match="not a bakehouse output"):
        check_output(tdir / "v4", "bake", force=True)

    staging = tdir / "staged"
    staging.mkdir()
    with pytest.raises(RegistryError, match="refusing to publish into .*v2: it already exists"):
        reg_mod._rename_new(staging, tdir / "v2")
    assert staging.is_dir()


# -- model materialisation -----------------------------------------------------------------------


def test_model_materialisation_refuses_a_foreign_folder(home, monkeypatch):
    import baker.models as models

    target = _foreign(home / "models" / models.DEFAULT_MODEL)
    with pytest.raises(OutputError, match=rf"refusing to replace {target}: it is not a bakehouse output"):
        models.ensure_default_model(home)
    assert sorted(p.name for p in target.iterdir()) == ["thesis.txt"]
    (home / "q.jsonl").write_text('{"id": 1, "prompt": "hi"}\n')
    r = _cli("generate", "--input", home / "q.jsonl", "--output", home / "a.jsonl")
    _assert_refused(r, target)  # the CLI: one line, exit code 1

    # leftovers of a dead materialisation are swept before a new one starts
    (target / "thesis.txt").unlink()
    for name in (f".{models.DEFAULT_MODEL}.tmp-{DEAD}-abcdefgh", f".{models.DEFAULT_MODEL}.k2j_x9a1"):
        (home / "models" / name).mkdir()

    def stop():
        raise models.ModelError("stopped before the conversion")

    monkeypatch.setattr(models, "gguf_source", stop)
    with pytest.raises(models.ModelError, match="stopped"):
        models.ensure_default_model(home)
    left = sorted(p.name for p in (home / "models").iterdir())
    assert left == [f".{models.DEFAULT_MODEL}.lock", models.DEFAULT_MODEL]


def test_a_complete_model_is_returned_at_once(home, monkeypatch):
    import baker.models as models

    target = home / "models" / models.DEFAULT_MODEL
    target.mkdir(parents=True)
    (target / models._HASH_FILE).write_text(json.dumps({"sha256": "x"}))
    monkeypatch.setattr(models, "gguf_source", lambda: pytest.fail("materialised again"))
    assert models.ensure_default_model(home) == target
