"""baker.warm: a base kept loaded between bakes gives each bake the model exactly as loaded (a
parent merged for one bake and the student's LoRA modules do not leak into the next), and the same
adapter as a bake that loads the model itself."""
import pytest
import torch
from safetensors.torch import load_file

from baker import BakeConfig, bake
from baker.warm import WarmBase

PROMPT = "You are Captain Brine, a pirate.\nAlways mention the sea."
FAST = BakeConfig(epochs=1, generic_contexts=6, self_questions=0, max_new_tokens=6, batch_size=4,
                  temperature=1.0, sampler="hf", lr=5e-3, rank=4, compute_dtype="float32",
                  teacher_cache_dtype="float32", compile=False, anchors=0)


def _weights(adapter_dir):
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def cold(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cold")
    first = bake(tiny_model_dir, PROMPT, out / "first", FAST, progress=False)
    second = bake(tiny_model_dir, "Talk about bread.", out / "second", FAST, progress=False, parent=first.adapter_dir)
    return first, second


def test_warm_bakes_match_cold_ones_and_leave_the_base_as_loaded(tiny_model_dir, cold, tmp_path):
    base = WarmBase()
    first = bake(tiny_model_dir, PROMPT, tmp_path / "first", FAST, progress=False, base=base)
    loaded = {k: v.clone() for k, v in base.model.state_dict().items()}
    # on the first layer as parent (merged into the kept weights), then the first bake again
    second = bake(tiny_model_dir, "Talk about bread.", tmp_path / "second", FAST, progress=False,
                  parent=cold[0].adapter_dir, base=base)
    again = bake(tiny_model_dir, PROMPT, tmp_path / "again", FAST, progress=False, base=base)
    assert base.loads == 1 and base.bakes == 3
    after = base.model.state_dict()
    assert after.keys() == loaded.keys()  # no LoRA module left behind
    assert all(torch.equal(after[k], loaded[k]) for k in loaded)  # the parent was taken out again
    for warm, ref in ((first, cold[0]), (second, cold[1]), (again, cold[0])):
        w, r = _weights(warm.adapter_dir), _weights(ref.adapter_dir)
        assert w.keys() == r.keys()
        assert all(torch.allclose(w[k], r[k], atol=1e-5) for k in w), warm.adapter_dir


def test_a_failed_bake_gives_the_base_back(tiny_model_dir, tmp_path, cold):
    from baker import PromptError

    base = WarmBase()
    with pytest.raises(PromptError):
        bake(tiny_model_dir, "word " * 600, tmp_path / "a", FAST, progress=False, base=base,
             parent=cold[0].adapter_dir)
    bake(tiny_model_dir, PROMPT, tmp_path / "b", FAST, progress=False, base=base)
    w, r = _weights(tmp_path / "b"), _weights(cold[0].adapter_dir)
    assert all(torch.allclose(w[k], r[k], atol=1e-5) for k in w)
