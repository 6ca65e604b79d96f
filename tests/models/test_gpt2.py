import dataclasses

import draccus
import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import jmp
import numpy as np
import pytest
import yaml
from haliax import ScanCheckpointPolicy
from helpers import all_eqns, matmul_flops, random_model, stacked_residuals
from hf_oracle import assert_trees_equal, hf_logits, hf_model_from_config, hf_state_dict_numpy

import lm.config
from lm.models import AttentionMask, Gpt2Config, LmConfig, LmExample, compute_next_token_loss
from lm.models.hf.compat import model_from_hf_state_dict, model_to_hf_state_dict
from lm.models.lm_model import count_parameters

VOCAB = 97
Vocab = hax.Axis("vocab", VOCAB)
# Vanilla attention compiles fastest; jax_flash is covered by test_attention and the HF round trips.
TINY = Gpt2Config(seq_len=32, hidden_dim=32, num_layers=2, num_heads=4, attn_backend="vanilla")
_logits = eqx.filter_jit(
    lambda model, tokens, mask=None, key=None: model(tokens, mask, key=key).array
)


def _tokens(config, batch=2, seed=1):
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, config.seq_len), 0, VOCAB)
    return hax.named(ids, ("batch", "position"))


@pytest.fixture(scope="module")
def tiny_model():
    return random_model(TINY, Vocab)


def test_defaults_and_axes_follow_the_reference():
    c = Gpt2Config()
    assert (c.seq_len, c.hidden_dim, c.num_layers, c.num_heads, c.mlp_scale) == (
        1024,
        768,
        12,
        12,
        4,
    )
    assert c.initializer_range == 0.02 and c.layer_norm_epsilon == 1e-5
    assert (c.embed_pdrop, c.resid_pdrop, c.attn_pdrop) == (0.0, 0.0, 0.0)
    assert c.activation_function.value == "gelu_new"
    assert c.gradient_checkpointing is True and c.use_bias is True
    assert not c.scale_attn_by_inverse_layer_idx and not c.upcast_attn
    assert c.use_flash_attention is None and c.attn_backend is None
    assert c.flash_attention_block_size is None and c.cross_entropy_block_size is None
    assert c.Pos == hax.Axis("position", 1024)
    assert c.KeyPos == hax.Axis("key_position", 1024)
    assert c.Embed == hax.Axis("embed", 768)
    assert c.Heads == hax.Axis("heads", 12)
    assert c.Layers == hax.Axis("layers", 12)
    assert c.Mlp == hax.Axis("mlp", 3072)
    assert c.HeadSize == hax.Axis("head_size", 64)
    assert c.model_type.__name__ == "Gpt2LMHeadModel"


def test_yaml_round_trip_through_draccus():
    text = "type: gpt2\nhidden_dim: 64\nnum_heads: 4\ngradient_checkpointing: full\nattn_backend: vanilla\n"
    config = draccus.decode(LmConfig, yaml.safe_load(text))
    assert isinstance(config, Gpt2Config)
    assert config.hidden_dim == 64 and config.gradient_checkpointing == "full"
    encoded = draccus.encode(config, LmConfig)
    assert encoded["type"] == "gpt2"
    assert draccus.decode(LmConfig, encoded) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(hidden_dim=30, num_heads=4),
            "num_heads: got 4, expected a divisor of hidden_dim (30)",
        ),
        (dict(gradient_checkpointing="sometimes"), "gradient_checkpointing: unknown"),
        (dict(activation_function="gelu_neww"), "activation_function: unknown activation"),
        (dict(use_flash_attention=True, attn_backend="vanilla"), "contradicts attn_backend"),
        (dict(attn_pdrop=0.1, attn_backend="jax_flash"), "attn_pdrop: 0.1 needs attn_backend"),
        (dict(attn_pdrop=0.1, attn_backend="nvte"), "vanilla; nvte has no attention dropout"),
        (dict(attn_backend="splash"), "not available in this build"),
        (dict(attn_backend="fast"), "unknown attention backend 'fast'"),
        (dict(resid_pdrop=1.0), "resid_pdrop: got 1.0, expected a probability in [0, 1)"),
        (dict(cross_entropy_block_size=0), "cross_entropy_block_size: got 0, expected a positive"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        Gpt2Config(**kwargs)


def test_head_divisibility_waits_only_for_the_sizes_it_divides():
    """An invalid size the check does not use (`num_layers: 0`) does not hide it."""
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(
            LmConfig,
            {"type": "gpt2", "num_layers": 0, "hidden_dim": 10, "num_heads": 4},
            path="model",
        )
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("model.num_layers", "got 0, expected a positive int"),
        ("model.num_heads", "got 4, expected a divisor of hidden_dim (10)"),
    ]
    # one of the sizes it divides is invalid: nothing to judge
    with pytest.raises(ValueError) as caught:
        Gpt2Config(hidden_dim=0, num_heads=4)
    assert str(caught.value) == "hidden_dim: got 0, expected a positive int"


@pytest.mark.parametrize("use_bias", [True, False])
def test_total_trainable_params_is_the_built_count(use_bias):
    config = dataclasses.replace(TINY, use_bias=use_bias, mlp_scale=3)
    model = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
    sizes = [
        x.size for x in jax.tree_util.tree_leaves(model) if isinstance(x, jax.ShapeDtypeStruct)
    ]
    assert sum(sizes) == config.total_trainable_params(VOCAB)


def test_init_follows_hf_gpt2():
    model = TINY.build(Vocab, key=jax.random.PRNGKey(0))
    assert count_parameters(model) == TINY.total_trainable_params(VOCAB)
    block = model.transformer.blocks.stacked
    np.testing.assert_array_equal(block.ln_1.weight.array, 1.0)
    np.testing.assert_array_equal(block.attn.c_attn.bias.array, 0.0)
    assert np.std(block.attn.c_attn.weight.array) == pytest.approx(0.02, rel=0.1)
    # Residual projections are scaled by 1/sqrt(2 * num_layers).
    assert np.std(block.mlp.c_proj.weight.array) == pytest.approx(0.01, rel=0.1)
    assert model.get_lm_head() is model.embeddings.token_embeddings.weight


def test_flops_per_token_matches_counted_matmuls():
    # The count assumes full (non-causal) attention matmuls: what vanilla computes.
    config = TINY
    model = random_model(config, Vocab)
    flops = matmul_flops(lambda m, t: m(t).array, model, _tokens(config, batch=2))
    assert flops == config.flops_per_token(VOCAB) * 2 * config.seq_len


def _hf_gpt2(config, seed=0):
    return hf_model_from_config(config.to_hf_config(VOCAB), seed=seed)


@pytest.mark.torch
def test_hf_gpt2_options_logits_match():
    # The default GPT-2 is covered by test_hf_checkpoints; here the options HF also has.
    overrides = {
        "scale_attn_by_inverse_layer_idx": True,
        "activation_function": "gelu",
        "mlp_scale": 2,
    }
    config = dataclasses.replace(TINY, **overrides)
    hf = _hf_gpt2(config)
    template = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
    model = model_from_hf_state_dict(template, hf_state_dict_numpy(hf))
    tokens = _tokens(config)
    ours = eqx.filter_jit(lambda m, t: m(t))(model, tokens)
    np.testing.assert_allclose(ours.array, hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4)


@pytest.mark.torch
def test_export_into_hf_gpt2_matches(tiny_model):
    import torch

    hf = _hf_gpt2(TINY, seed=3)
    sd = model_to_hf_state_dict(tiny_model)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    tokens = _tokens(TINY)
    np.testing.assert_allclose(
        _logits(tiny_model, tokens), hf_logits(hf, tokens.array), atol=1e-4, rtol=1e-4
    )


def test_state_dict_round_trip_is_bit_exact(tiny_model):
    sd = model_to_hf_state_dict(tiny_model)
    assert "transformer.h.1.attn.c_attn.weight" in sd
    assert sd["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)
    template = eqx.filter_eval_shape(TINY.build, Vocab, key=jax.random.PRNGKey(1))
    back = model_from_hf_state_dict(template, sd)
    assert_trees_equal(eqx.filter(tiny_model, eqx.is_array), eqx.filter(back, eqx.is_array))


def test_missing_and_unexpected_keys_are_listed(tiny_model):
    sd = model_to_hf_state_dict(tiny_model)
    del sd["transformer.ln_f.weight"]
    sd["transformer.h.0.mlp.c_gate.weight"] = np.zeros(3)
    template = eqx.filter_eval_shape(TINY.build, Vocab, key=jax.random.PRNGKey(1))
    with pytest.raises(
        ValueError,
        match=r"missing keys: transformer\.ln_f\.weight.*unexpected keys: transformer\.h\.0\.mlp\.c_gate\.weight",
    ):
        model_from_hf_state_dict(template, sd)


def test_segments_keep_documents_apart(tiny_model):
    tokens = _tokens(TINY, batch=1)
    segments = hax.named(jnp.array([[0] * 12 + [1] * 20]), ("batch", "position"))
    mask = AttentionMask.causal().with_segment_ids(segments)
    changed = tokens.array.at[0, :12].set((tokens.array[0, :12] + 5) % VOCAB)
    a = _logits(tiny_model, tokens, mask)
    b = _logits(tiny_model, hax.named(changed, tokens.axes), mask)
    np.testing.assert_allclose(a[0, 12:], b[0, 12:], atol=1e-6)
    assert not np.allclose(a[0, :12], b[0, :12])
    # Without segment ids the second document sees the first.
    c = _logits(tiny_model, hax.named(changed, tokens.axes))
    assert not np.allclose(a[0, 12:], c[0, 12:], atol=1e-4)


POLICY_BASE = Gpt2Config(
    seq_len=16, hidden_dim=16, num_layers=4, num_heads=2, attn_backend="vanilla"
)


def _grads(config, example):
    model = random_model(config, Vocab)
    grad_fn = eqx.filter_grad(lambda m: compute_next_token_loss(m, example).array)
    return eqx.filter_jit(grad_fn)(model)


@pytest.fixture(scope="module")
def example():
    return LmExample.causal(_tokens(TINY))


@pytest.fixture(scope="module")
def policy_example():
    return LmExample.causal(_tokens(POLICY_BASE))


@pytest.fixture(scope="module")
def reference_grads(policy_example):
    return _grads(dataclasses.replace(POLICY_BASE, gradient_checkpointing=False), policy_example)


@pytest.mark.parametrize(
    "policy",
    [
        True,
        "full",
        "offload",
        "save_all",
        "nested",
        "save_projections",
        ScanCheckpointPolicy(save_carries=False, save_inputs=True),
    ],
    ids=["true", "full", "offload", "save_all", "nested", "save_projections", "policy_object"],
)
def test_checkpointing_policies_give_identical_gradients(policy, policy_example, reference_grads):
    grads = _grads(dataclasses.replace(POLICY_BASE, gradient_checkpointing=policy), policy_example)
    for a, b in zip(
        jax.tree_util.tree_leaves(reference_grads), jax.tree_util.tree_leaves(grads), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_is_active_only_with_a_key():
    config = dataclasses.replace(TINY, embed_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)
    model = random_model(config, Vocab)
    tokens = _tokens(config)
    no_key = _logits(model, tokens)
    np.testing.assert_array_equal(no_key, _logits(model, tokens))
    k = jax.random.PRNGKey(5)
    with_key = _logits(model, tokens, key=k)
    assert not np.allclose(no_key, with_key)
    np.testing.assert_array_equal(with_key, _logits(model, tokens, key=k))


def test_bf16_compute_stays_close_to_f32(tiny_model, example):
    # bf16 keeps ~3 significant digits; through 2 layers and a 97-way softmax the loss agrees
    # to about 1e-2 relative. Params stay f32 in the policy; only compute is cast.
    policy = jmp.get_policy("p=f32,c=bfloat16")
    f32_loss = eqx.filter_jit(compute_next_token_loss)(tiny_model, example)
    bf16_model = policy.cast_to_compute(tiny_model)
    assert bf16_model.get_lm_head().dtype == jnp.bfloat16
    bf16_loss = eqx.filter_jit(compute_next_token_loss)(bf16_model, example)
    assert bf16_loss.dtype == jnp.float32
    np.testing.assert_allclose(bf16_loss.array, f32_loss.array, rtol=2e-2)
    assert tiny_model.get_lm_head().dtype == jnp.float32


def test_resize_vocab_truncates_and_grows(tiny_model):
    smaller = tiny_model.resize_vocab(50)
    assert smaller.Vocab.size == 50 and smaller.get_lm_head().axes[0].size == 50
    np.testing.assert_array_equal(smaller.get_lm_head().array, tiny_model.get_lm_head().array[:50])
    bigger = tiny_model.resize_vocab(128, key=jax.random.PRNGKey(0))
    assert _logits(bigger, _tokens(TINY)).shape[-1] == 128


def test_positions_beyond_seq_len_are_an_error(tiny_model):
    too_long = hax.named(jnp.zeros((40,), dtype=jnp.int32), "position")
    with pytest.raises(ValueError, match="40 positions but the model has 32"):
        tiny_model(too_long)


def test_hf_config_round_trip():
    config = dataclasses.replace(TINY, scale_attn_by_inverse_layer_idx=True, resid_pdrop=0.1)
    hf = config.to_hf_config(VOCAB)
    assert hf.n_embd == 32 and hf.n_inner == 128 and hf.vocab_size == VOCAB
    assert Gpt2Config.from_hf_config(hf) == dataclasses.replace(config, attn_backend=None)
    with pytest.raises(ValueError, match="use_bias: false has no HF GPT-2 equivalent"):
        dataclasses.replace(TINY, use_bias=False).to_hf_config(VOCAB)


def test_backward_never_concatenates_the_qkv_activation_gradient():
    """q, k and v come from three matmuls on slices of the fused weight: the backward then
    has no (tokens, qkv, heads, head_size) concatenation of dq, dk, dv, which XLA:CPU wrote
    twice (once transposed for the weight gradient). Same values: the HF oracle tests."""
    config = dataclasses.replace(TINY, seq_len=24, gradient_checkpointing="save_projections")
    Vocab = hax.Axis("vocab", 50)
    model = config.build(Vocab, key=jax.random.PRNGKey(0))
    example = LmExample.causal(_tokens(config, batch=3))
    params, static = eqx.partition(model, eqx.is_array)

    def loss(p):
        return compute_next_token_loss(eqx.combine(p, static), example).array

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    tokens = {3, 24}  # the batch and position sizes, which no parameter has
    concatenated = [
        e.outvars[0].aval.shape
        for e in all_eqns(jaxpr)
        if e.primitive.name == "concatenate"
        and tokens <= set(e.outvars[0].aval.shape)
        and e.outvars[0].aval.ndim >= 4  # activations with heads (the loss shifts (batch, pos))
    ]
    assert concatenated == []


@pytest.mark.parametrize("backend, expected", [("jax_flash", 8), ("vanilla", 7)])
def test_save_projections_stores_each_residual_once(backend, expected):
    """Per layer: the block input, q, k, v, the attention output, attn_proj and mlp_up, and
    with jax_flash its log-sum-exp. The attention output once: jax_flash keeps it in its own
    layout, and the model's (transposed) copy of it is not stored again."""
    config = dataclasses.replace(
        TINY, seq_len=24, gradient_checkpointing="save_projections", attn_backend=backend
    )
    stacked = stacked_residuals(config, Vocab, _tokens(config, batch=3))
    assert len(stacked) == expected, "\n".join(stacked)
