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


@dataclasses.dataclass(frozen=True)
class _ModelRun:
    model: LmConfig


def test_every_bad_model_field_is_reported_in_one_run(config_problems):
    """One run names each bad field of the section at its own path and line, as the optimizer
    does, instead of the first one only."""
    found = config_problems(
        _ModelRun,
        "model:\n  type: llama\n  hidden_dim: 64\n  num_heads: 0\n  layer_norm_epsilon: 0\n"
        "  activation_function: sily\n  attn_backend: fast\n  rope: {type: default, theta: 0}\n",
        "--model.cross_entropy_block_size",
        "-1",
    )
    assert set(found) == {
        "model.num_heads",
        "model.layer_norm_epsilon",
        "model.activation_function",
        "model.attn_backend",
        "model.rope.theta",
        "model.cross_entropy_block_size",
    }
    assert found["model.num_heads"] == ("run.yaml:4", "got 0, expected a positive int")
    assert found["model.layer_norm_epsilon"][0] == "run.yaml:5"
    assert "did you mean 'silu'?" in found["model.activation_function"][1]
    assert found["model.cross_entropy_block_size"][0] == "--model.cross_entropy_block_size -1"


def test_gpt2_problems_that_depend_on_sizes_wait_for_valid_sizes(config_problems):
    found = config_problems(
        _ModelRun,
        "model:\n  type: gpt2\n  hidden_dim: 30\n  num_heads: 4\n  attn_pdrop: 0.1\n"
        "  attn_backend: jax_flash\n  use_flash_attention: false\n",
    )
    assert found == {
        "model.num_heads": ("run.yaml:4", "got 4, expected a divisor of hidden_dim (30)"),
        "model.attn_pdrop": (
            "run.yaml:5",
            "0.1 needs attn_backend: vanilla; jax_flash has no attention dropout",
        ),
        "model.use_flash_attention": (
            "run.yaml:7",
            "False contradicts attn_backend (jax_flash); set only attn_backend",
        ),
    }
    # a size that is not a positive int hides the divisibility check it would break
    assert set(config_problems(_ModelRun, "model:\n  type: gpt2\n  num_heads: 0\n")) == {
        "model.num_heads"
    }
