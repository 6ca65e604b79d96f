"""Model YAMLs in config/model parse and build; tiny models train, shard and quantize."""

import pathlib

import draccus
import equinox as eqx
import haliax as hax
import jax
import numpy as np
import optax
import pytest
import yaml
from haliax.quantization import QuantizationConfig, quantize_linear_layers
from helpers import random_model
from jax.sharding import Mesh

from lm.models import Gpt2Config, LlamaConfig, LmConfig, LmExample, compute_next_token_loss

MODEL_YAMLS = sorted(
    (pathlib.Path(__file__).resolve().parents[2] / "config" / "model").glob("*.yaml")
)


def _load(path) -> LmConfig:
    return draccus.decode(LmConfig, yaml.safe_load(path.read_text()))


def test_expected_model_yamls_exist():
    assert {p.stem for p in MODEL_YAMLS} >= {"gpt2_nano", "gpt2_small", "llama_small", "llama_tiny"}


@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_model_yaml_parses_and_builds(path):
    config = _load(path)
    model = eqx.filter_eval_shape(config.build, hax.Axis("vocab", 50257), key=jax.random.PRNGKey(0))
    sizes = [
        x.size for x in jax.tree_util.tree_leaves(model) if isinstance(x, jax.ShapeDtypeStruct)
    ]
    assert sum(sizes) == config.total_trainable_params(50257)


def test_named_shapes():
    small = _load(MODEL_YAMLS[[p.stem for p in MODEL_YAMLS].index("gpt2_small")])
    assert isinstance(small, Gpt2Config) and small.total_trainable_params(50257) == 124_439_808
    llama = _load(MODEL_YAMLS[[p.stem for p in MODEL_YAMLS].index("llama_small")])
    assert isinstance(llama, LlamaConfig) and 100e6 < llama.total_trainable_params(32000) < 150e6


def _examples(batch, seq, vocab):
    # A learnable stream: each row counts upward from a random start (mod vocab).
    starts = np.random.default_rng(0).integers(0, vocab, size=(batch, 1))
    tokens = (starts + np.arange(seq)[None, :]) % vocab
    return LmExample.causal(
        hax.named(jax.numpy.asarray(tokens, dtype=jax.numpy.int32), ("batch", "position"))
    )


def test_llama_tiny_trains():
    config = _load(MODEL_YAMLS[[p.stem for p in MODEL_YAMLS].index("llama_tiny")])
    Vocab = hax.Axis("vocab", 64)
    model = random_model(config, Vocab, std=0.02)
    example = _examples(4, config.seq_len, Vocab.size)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(
            lambda m: compute_next_token_loss(m, example).array
        )(model)
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(10):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.6 * losses[0], losses


def test_sharded_model_matches_single_device():
    # Data parallel over 4 fake devices, tensor parallel (heads, MLP, vocab) over 2.
    config = LlamaConfig(
        seq_len=32, hidden_dim=32, intermediate_dim=48, num_layers=1, num_heads=4, num_kv_heads=2
    )
    model = random_model(config, hax.Axis("vocab", 128))
    example = _examples(8, 32, 128)

    def per_token_loss(model, example):
        return compute_next_token_loss(model, example, reduction=None)

    reference = eqx.filter_jit(per_token_loss)(model, example)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    compute = {"batch": "data", "kv_head": "model", "mlp": "model", "vocab": "model"}
    params = {"embed": "data", "kv_head": "model", "mlp": "model", "vocab": "model"}
    with hax.set_mesh(mesh):
        sharded_model = hax.shard(model, params)
        assert (
            sharded_model.transformer.layers.stacked.self_attn.q_proj.weight.array.sharding.spec[1]
            == "model"
        )
        loss = hax.named_jit(per_token_loss, axis_resources=compute)(
            sharded_model, hax.shard(example, compute)
        )
    assert loss.array.sharding.spec[0] == "data"
    np.testing.assert_allclose(loss.array, reference.array, rtol=1e-5, atol=1e-6)


def test_fp8_quantized_linear_layers_run():
    # MP-03: Haliax's quantization swaps the dot_general of every hnn.Linear; fp8 rounding
    # moves the loss by well under 1%.
    config = LlamaConfig(
        seq_len=32, hidden_dim=32, intermediate_dim=48, num_layers=2, num_heads=4, num_kv_heads=2
    )
    model = random_model(config, hax.Axis("vocab", 128))
    quantized = quantize_linear_layers(model, QuantizationConfig(fp8=True))
    assert (
        type(quantized.transformer.layers.stacked.mlp.up_proj.dot_general).__name__
        == "Fp8DotGeneralOp"
    )
    example = _examples(2, 32, 128)
    loss_fn = eqx.filter_jit(lambda m: compute_next_token_loss(m, example).array)
    np.testing.assert_allclose(loss_fn(quantized), loss_fn(model), rtol=1e-2)
