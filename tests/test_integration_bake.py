"""The real SmolLM2-135M-Instruct: a short bake lowers held-out KL, the adapter loads in PEFT and in
vLLM, and the default model materialises safely when two processes start together."""
import json
import subprocess
import sys

import pytest
import torch

from baker import BakeConfig, bake
from baker.sampling import vllm_available

pytestmark = pytest.mark.slow
PROMPT = ("Recent news:\n2026-11-02: The town of Brackenford elects Olwen Marsh as its first mayor.\n"
          "2026-11-05: The Halvik Observatory names its new telescope the Starloom.")


@pytest.fixture(scope="module")
def baked(smollm2_dir, tmp_path_factory):
    # enough trajectories that the held-out estimate is stable: with 12 generic contexts and one
    # sample each the after/before ratio ranged 0.7-1.0 between runs; with this, 0.46-0.48
    cfg = BakeConfig(epochs=2, generic_contexts=24, self_questions=4, max_new_tokens=24, batch_size=8,
                     samples_per_context=2, lr=2e-3, heldout_fraction=0.3, sampler="vllm" if vllm_available() else "hf")
    return bake(smollm2_dir, PROMPT, tmp_path_factory.mktemp("int") / "news", cfg, progress=False)


def test_short_bake_lowers_heldout_kl(baked):
    m = baked.metrics
    assert m["compiled"], "the bake trained eagerly: torch.compile failed (see the warning)"
    assert m["eval_kl_before"] > 0.01
    assert m["eval_kl_after"] < 0.8 * m["eval_kl_before"], m["epochs"]
    assert m["drift_kl"] >= 0
    assert m["contexts"]["self"] >= 1  # the prompted model wrote questions about its prompt
    from baker.models import fast_dtype

    assert m["config"]["compute_dtype"] == fast_dtype()  # "auto" is saved as the dtype it ran in


def test_adapter_loads_in_peft(baked, smollm2_dir):
    from peft import PeftModel

    from baker.chat import chat_ids
    from baker.models import load_model

    model, tok = load_model(smollm2_dir)
    ids = torch.tensor([chat_ids(tok, "Who is the mayor of Brackenford?")])
    with torch.no_grad():
        base = model(input_ids=ids).logits[0, -1]
        peft = PeftModel.from_pretrained(model, str(baked.adapter_dir))
        assert peft.peft_config["default"].r == 16
        tuned = peft(input_ids=ids).logits[0, -1]
    assert (base - tuned).abs().max() > 1e-3


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
def test_adapter_loads_in_vllm(baked, smollm2_dir):
    from baker.generate import compare_answers

    items = [{"id": 1, "prompt": "Who is the mayor of Brackenford?"}, {"id": 2, "prompt": "Hello!"}]
    rows = compare_answers(smollm2_dir, items, {"base": (None, False), "baked": (None, True)},
                           adapter_dir=baked.adapter_dir, max_new_tokens=16, sampler="vllm")
    assert all(r["base"] and r["baked"] for r in rows)
    assert any(r["base"] != r["baked"] for r in rows)  # the adapter is applied


def test_default_model_materialises_once_with_two_processes(tmp_path):
    code = ("import sys; from pathlib import Path; from baker.models import ensure_default_model; "
            "print(ensure_default_model(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")) == [target.name]
    assert not [p for p in (tmp_path / "models").iterdir() if p.is_dir() and p.name.startswith(".")]
