import dataclasses

import draccus
import pytest
import yaml

from lm.models import (
    Gpt2Config,
    LlamaConfig,
    LmConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    RotaryEmbeddingsConfig,
)


def test_registered_model_types():
    assert set(LmConfig.get_known_choices()) == {"gpt2", "llama", "mistral", "qwen2", "qwen3"}
    assert set(RotaryEmbeddingsConfig.get_known_choices()) == {
        "default",
        "linear",
        "llama3",
        "yarn",
    }


@pytest.mark.parametrize(
    "config",
    [Gpt2Config(), LlamaConfig(), MistralConfig(), Qwen2Config(), Qwen3Config()],
    ids=lambda c: type(c).__name__,
)
def test_every_model_config_round_trips_through_draccus(config):
    encoded = draccus.encode(config, LmConfig)
    decoded = draccus.decode(LmConfig, yaml.safe_load(yaml.safe_dump(encoded)))
    assert decoded == config and type(decoded) is type(config)


def test_missing_type_is_an_error():
    with pytest.raises(draccus.utils.ParsingError, match="with a .type. key"):
        draccus.decode(LmConfig, {"hidden_dim": 64})


def test_llama_yaml_with_rope_and_policy_object():
    text = """
type: llama
hidden_dim: 64
num_heads: 4
num_kv_heads: 2
gradient_checkpointing: {save_carries: offload, nested: 2}
rope: {type: llama3, factor: 16}
"""
    config = draccus.decode(LmConfig, yaml.safe_load(text))
    assert config.rope.factor == 16 and config.rope.theta == 500000.0
    assert config.gradient_checkpointing.nested == 2
    assert dataclasses.replace(config).KVHeads.size == 2
