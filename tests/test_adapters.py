"""Half-baking by strength and exact stacking, checked against PEFT on the tiny Llama."""
import json

import pytest
import torch

from baker import AdapterError
from baker.adapters import scale_adapter, stack_adapters
from baker.models import load_model


def _random_adapter(model_dir, out, r, seed, alpha=None):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model, _ = load_model(model_dir)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha or 2 * r, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    peft.save_pretrained(out)
    return out


def _merged_weights(model_dir, adapters):
    from peft import PeftModel

    model, _ = load_model(model_dir)
    for a in adapters:
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def layers(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("layers")
    return [_random_adapter(tiny_model_dir, d / "a", 4, 1), _random_adapter(tiny_model_dir, d / "b", 2, 2, alpha=7)]


def test_strength_scales_the_update_exactly(tiny_model_dir, layers, tmp_path):
    base = _merged_weights(tiny_model_dir, [])
    full = _merged_weights(tiny_model_dir, [layers[0]])
    half = _merged_weights(tiny_model_dir, [scale_adapter(layers[0], tmp_path / "half", 0.5)])
    zero = _merged_weights(tiny_model_dir, [scale_adapter(layers[0], tmp_path / "zero", 0.0)])
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(full[key], base[key])
    torch.testing.assert_close(half[key], base[key] + 0.5 * (full[key] - base[key]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(zero[key], base[key])
    assert json.loads((tmp_path / "half" / "bake.json").read_text())["strength"] == 0.5


def test_stack_equals_applying_the_layers_in_turn(tiny_model_dir, layers, tmp_path):
    stacked = stack_adapters(layers, tmp_path / "stack")
    cfg = json.loads((stacked / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 6
    one = _merged_weights(tiny_model_dir, [stacked])
    seq = _merged_weights(tiny_model_dir, layers)
    for key in one:
        torch.testing.assert_close(one[key], seq[key], atol=1e-5, rtol=1e-4)


def test_bad_adapters_are_refused(tmp_path, layers):
    with pytest.raises(AdapterError, match="not a PEFT adapter"):
        scale_adapter(tmp_path, tmp_path / "o", 0.5)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text((layers[0] / "adapter_config.json").read_text())
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterError, match="corrupt adapter"):
        stack_adapters([layers[0], corrupt], tmp_path / "o")
    with pytest.raises(AdapterError, match="strength"):
        scale_adapter(layers[0], tmp_path / "o", -1)
    assert not (tmp_path / "o").exists()
