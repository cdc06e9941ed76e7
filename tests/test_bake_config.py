import json

import pytest

from baker import BakeConfig, ConfigError


@pytest.mark.parametrize("field,value", [
    ("rank", 0), ("epochs", 0), ("batch_size", -1), ("max_new_tokens", 0), ("lr", 0.0),
    ("alpha", -1.0), ("temperature", 0.0), ("heldout_fraction", 1.0), ("heldout_fraction", 0.0),
    ("generic_contexts", -1), ("sampler", "tpu"), ("compute_dtype", "int8"), ("target_modules", ()),
    ("teacher_cache_dtype", "int4"), ("epochs", 2.5), ("lr_b_ratio", 0.0), ("lora_dropout", 1.0),
    ("lora_dropout", -0.1), ("anchor_facts", 1.5), ("anchor_facts", -0.1), ("anchor_facts", "half"),
    ("self_kinds", "question"), ("self_kinds", ("question", "poem")), ("self_kinds", ()),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        BakeConfig(**{field: value})
    assert field in str(e.value)
    assert isinstance(e.value, ValueError)


def test_round_trip_and_unknown_fields(tmp_path):
    cfg = BakeConfig(rank=4, epochs=2, target_modules=["q_proj"], self_kinds=["question", "creative"])
    assert cfg.target_modules == ("q_proj",) and cfg.self_kinds == ("question", "creative")
    assert BakeConfig(self_questions=0, self_kinds=()).self_kinds == ()  # nothing written, no kind needed
    assert BakeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field.*ranq"):
        BakeConfig.from_dict({"ranq": 3})
    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        BakeConfig.from_json_file(bad)
    bad.write_text(json.dumps({"epochs": 3}))
    assert BakeConfig.from_json_file(bad).epochs == 3


@pytest.mark.parametrize("avx512_bf16, amx, machine, want", [
    (False, False, "x86_64", "float32"),  # AVX2: bfloat16 is emulated, a tenth of float32's speed
    (True, False, "x86_64", "bfloat16"), (False, True, "x86_64", "bfloat16"), (False, False, "aarch64", "bfloat16"),
])
def test_auto_dtype_is_bfloat16_only_where_it_is_native(monkeypatch, avx512_bf16, amx, machine, want):
    import platform

    import torch

    from baker.models import fast_dtype
    from serving.engine import engine_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert fast_dtype() == want and engine_dtype("auto") == want
    assert engine_dtype("float16") == "float16"
    assert BakeConfig().compute_dtype == "auto"
