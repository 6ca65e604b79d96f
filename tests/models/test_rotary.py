import haliax as hax
import jax.numpy as jnp
import numpy as np
import pytest

import lm.config
from lm.models import (
    DefaultRotaryEmbeddingsConfig,
    LinearRotaryEmbeddingsConfig,
    Llama3RotaryEmbeddingsConfig,
    LmConfig,
    RotaryEmbeddingsConfig,
    YarnRotaryEmbeddingsConfig,
)
from lm.models.layers.rotary import apply_rotary

HEAD_DIM = 16
CONFIGS = [
    DefaultRotaryEmbeddingsConfig(theta=10000.0),
    LinearRotaryEmbeddingsConfig(theta=5000.0, factor=4.0),
    Llama3RotaryEmbeddingsConfig(original_max_position_embeddings=64),
    YarnRotaryEmbeddingsConfig(factor=4.0, original_max_position_embeddings=64),
    YarnRotaryEmbeddingsConfig(
        factor=8.0, mscale=1.0, mscale_all_dim=0.5, original_max_position_embeddings=32
    ),
]


@pytest.mark.torch
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_frequencies_match_hf_rope_init_functions(config):
    import torch
    from transformers import LlamaConfig as HfLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = config.to_hf_rope_parameters()
    factor = params.get("factor", 1.0)
    original = params.get("original_max_position_embeddings", 64)
    hf = HfLlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        rope_parameters=params,
        max_position_embeddings=int(original * factor),
    )
    if params["rope_type"] == "default":
        theta = params["rope_theta"]
        expected = 1.0 / (
            theta ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM)
        )
        expected_factor = 1.0
    else:
        expected, expected_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf, "cpu")
    inv_freq, attention_factor = config.frequencies(HEAD_DIM)
    np.testing.assert_allclose(inv_freq, expected.numpy(), rtol=1e-6)
    assert attention_factor == pytest.approx(expected_factor, rel=1e-12)
    assert RotaryEmbeddingsConfig.from_hf_rope_parameters(params) == config


def test_rotation_matches_rotate_half_formula():
    config = DefaultRotaryEmbeddingsConfig(theta=100.0)
    x = np.random.default_rng(0).normal(size=(5, HEAD_DIM)).astype(np.float32)
    out = apply_rotary(
        hax.named(jnp.asarray(x), ("position", "head_size")),
        HeadSize=hax.Axis("head_size", HEAD_DIM),
        Pos=hax.Axis("position", 5),
        config=config,
    )
    inv_freq = 1.0 / 100.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    angles = np.arange(5)[:, None] * inv_freq[None]
    half = HEAD_DIM // 2
    x1, x2 = x[:, :half], x[:, half:]
    expected = np.concatenate(
        [x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)],
        axis=-1,
    )
    np.testing.assert_allclose(out.array, expected, rtol=1e-5, atol=1e-5)


def test_bad_rope_values():
    with pytest.raises(ValueError, match="rope_type 'dynamic' is not supported"):
        RotaryEmbeddingsConfig.from_hf_rope_parameters({"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match=r"theta: got 0.0, expected a number > 0"):
        DefaultRotaryEmbeddingsConfig(theta=0.0)
    with pytest.raises(
        ValueError,
        match=r"high_freq_factor: got 1.0, expected a number greater than low_freq_factor \(1.0\)",
    ):
        Llama3RotaryEmbeddingsConfig(high_freq_factor=1.0)


@pytest.mark.parametrize(
    "rope, field, value",
    [
        ({"type": "default", "theta": 0.0}, "theta", 0.0),
        ({"type": "default", "factor": 0.0}, "factor", 0.0),
        ({"type": "linear", "factor": -2.0}, "factor", -2.0),
        ({"type": "llama3", "factor": 0.0}, "factor", 0.0),
        ({"type": "llama3", "factor": -8.0}, "factor", -8.0),
        ({"type": "llama3", "low_freq_factor": 0.0}, "low_freq_factor", 0.0),
        (
            {"type": "llama3", "original_max_position_embeddings": 0},
            "original_max_position_embeddings",
            0,
        ),
        ({"type": "yarn", "factor": 0.0}, "factor", 0.0),
        ({"type": "yarn", "factor": -4.0}, "factor", -4.0),
        (
            {"type": "yarn", "original_max_position_embeddings": 0},
            "original_max_position_embeddings",
            0,
        ),
        (
            {"type": "yarn", "original_max_position_embeddings": -64},
            "original_max_position_embeddings",
            -64,
        ),
        ({"type": "yarn", "beta_fast": 0.0}, "beta_fast", 0.0),
        ({"type": "yarn", "beta_slow": -1.0}, "beta_slow", -1.0),
        ({"type": "yarn", "mscale_all_dim": -1.0}, "mscale_all_dim", -1.0),
    ],
)
def test_bad_rope_values_are_reported_at_the_rope_field(rope, field, value):
    """Values that would give zero, negative or non-finite frequencies (or fail inside
    `frequencies`) are config errors at `model.rope.<field>`."""
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(LmConfig, {"type": "llama", "rope": rope}, path="model")
    [problem] = caught.value.problems
    assert problem.path == f"model.rope.{field}"
    assert problem.message.startswith(f"got {value!r}, expected ")


@pytest.mark.parametrize(
    "rope",
    [
        {"type": "llama3", "factor": 1e-3},
        {"type": "llama3", "factor": 32.0, "low_freq_factor": 0.5, "high_freq_factor": 0.75},
        {"type": "llama3", "original_max_position_embeddings": 1},
        {"type": "yarn", "factor": 1e-3},
        {"type": "yarn", "factor": 0.5, "beta_fast": 0.1, "beta_slow": 0.01},
        {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 1},
        {"type": "yarn", "factor": 16.0, "mscale": 0.0, "mscale_all_dim": 0.0},
        {"type": "default", "theta": 1e-3, "factor": 1e-3},
    ],
)
def test_accepted_rope_values_give_finite_positive_frequencies(rope):
    config = lm.config.decode(LmConfig, {"type": "llama", "rope": rope}).rope
    inv_freq, attention_factor = config.frequencies(HEAD_DIM)
    assert inv_freq.shape == (HEAD_DIM // 2,)
    assert np.all(np.isfinite(inv_freq)) and np.all(inv_freq > 0), inv_freq
    assert np.isfinite(attention_factor) and attention_factor > 0


def test_every_bad_rope_field_is_reported_in_one_run():
    rope = {"type": "llama3", "theta": 0, "factor": 0, "low_freq_factor": 0, "high_freq_factor": 0}
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(LmConfig, {"type": "llama", "rope": rope}, path="model")
    # high_freq_factor is compared with low_freq_factor only once that is valid itself
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("model.rope.theta", "got 0.0, expected a number > 0"),
        ("model.rope.factor", "got 0.0, expected a number > 0"),
        ("model.rope.low_freq_factor", "got 0.0, expected a number > 0"),
    ]
    with pytest.raises(lm.config.ConfigError) as caught:
        YarnRotaryEmbeddingsConfig(factor=0.0, beta_slow=-1.0, mscale=-1.0)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("factor", "got 0.0, expected a number > 0"),
        ("beta_slow", "got -1.0, expected a number > 0"),
        ("mscale", "got -1.0, expected a number >= 0 or null"),
    ]


def test_a_rope_value_of_the_wrong_type_from_python_names_its_field():
    with pytest.raises(ValueError) as caught:
        Llama3RotaryEmbeddingsConfig(factor="8", high_freq_factor="4")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("factor", "got '8', expected a number > 0"),
        ("high_freq_factor", "got '4', expected a number greater than low_freq_factor (1.0)"),
    ]
