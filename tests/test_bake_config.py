import json

import pytest

from baker import BakeConfig, ConfigError


@pytest.mark.parametrize("field,value", [
    ("rank", 0), ("epochs", 0), ("batch_size", -1), ("max_new_tokens", 0), ("lr", 0.0),
    ("alpha", -1.0), ("temperature", 0.0), ("heldout_fraction", 1.0), ("heldout_fraction", 0.0),
    ("generic_contexts", -1), ("sampler", "tpu"), ("compute_dtype", "int8"), ("target_modules", ()),
    ("teacher_cache_dtype", "int4"), ("epochs", 2.5), ("lr_b_ratio", 0.0), ("lora_dropout", 1.0),
    ("lora_dropout", -0.1),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        BakeConfig(**{field: value})
    assert field in str(e.value)
    assert isinstance(e.value, ValueError)


def test_round_trip_and_unknown_fields(tmp_path):
    cfg = BakeConfig(rank=4, epochs=2, target_modules=["q_proj"])
    assert cfg.target_modules == ("q_proj",)
    assert BakeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field.*ranq"):
        BakeConfig.from_dict({"ranq": 3})
    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        BakeConfig.from_json_file(bad)
    bad.write_text(json.dumps({"epochs": 3}))
    assert BakeConfig.from_json_file(bad).epochs == 3
