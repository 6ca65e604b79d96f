import dataclasses

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import jmp
import numpy as np
import pytest
from helpers import matmul_flops, random_model, stacked_residuals

import lm.config
from lm.models import (
    AttentionMask,
    DefaultRotaryEmbeddingsConfig,
    Llama3RotaryEmbeddingsConfig,
    LlamaConfig,
    LmConfig,
    LmExample,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    compute_next_token_loss,
)
from lm.models.hf.compat import model_from_hf_state_dict, model_to_hf_state_dict

VOCAB = 101
Vocab = hax.Axis("vocab", VOCAB)
# Vanilla attention compiles fastest; jax_flash is covered by test_attention and the HF round trips.
TINY = LlamaConfig(
    seq_len=64,
    hidden_dim=32,
    intermediate_dim=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    attn_backend="vanilla",
)

_logits = eqx.filter_jit(lambda model, tokens, mask: model(tokens, mask).array)


def _tokens(batch=2, seq=64, seed=1):
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, seq), 0, VOCAB)
    return hax.named(ids, ("batch", "position"))


@pytest.fixture(scope="module")
def tiny_model():
    return random_model(TINY, Vocab)


def test_defaults_and_axes_follow_the_reference():
    c = LlamaConfig()
    assert (c.seq_len, c.hidden_dim, c.intermediate_dim, c.num_layers) == (2048, 4096, 11008, 32)
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (32, 32, None)
    assert c.activation_function.value == "silu" and c.initializer_range == 0.02
    assert c.layer_norm_epsilon == 1e-5 and c.use_layer_norm_weight and not c.use_bias
    assert not (c.tie_word_embeddings or c.hybrid_norm or c.use_qk_norm or c.input_embedding_norm)
    assert not c.upcast_attn and c.attn_backend is None and c.flash_attention_block_size is None
    assert c.gradient_checkpointing is True and c.scan_layers is True
    assert c.rope.theta == 10000.0 and type(c.rope).__name__ == "DefaultRotaryEmbeddingsConfig"
    assert c.reference_checkpoint == "NousResearch/Llama-2-7b-hf" and c.tokenizer is None
    assert c.Pos == hax.Axis("position", 2048) and c.KeyPos == hax.Axis("key_position", 2048)
    assert c.Embed == hax.Axis("embed", 4096) and c.Mlp == hax.Axis("mlp", 11008)
    assert c.Layers == hax.Axis("layer", 32)
    assert c.actual_head_size == 128 and LlamaConfig(head_dim=64).actual_head_size == 64
    assert c.model_type.__name__ == "LlamaLMHeadModel"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(num_heads=32, num_kv_heads=5),
            r"num_kv_heads: got 5, expected a divisor of num_heads \(32\)",
        ),
        (dict(head_dim=7), "head_dim: got 7, expected a positive even int"),
        (
            dict(gradient_checkpointing="never"),
            "gradient_checkpointing: unknown checkpointing policy 'never'",
        ),
        (
            dict(activation_function="swiglu"),
            "activation_function: unknown activation function 'swiglu'",
        ),
        (dict(attn_backend="splash"), "'splash' .* is not available in this build"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            dict(num_layers=0, num_heads=4, num_kv_heads=3),
            [
                ("num_layers", "got 0, expected a positive int"),
                ("num_kv_heads", "got 3, expected a divisor of num_heads (4)"),
            ],
        ),
        (
            dict(seq_len=0, hidden_dim=96, num_heads=7, num_kv_heads=7),
            [
                ("seq_len", "got 0, expected a positive int"),
                (
                    "num_heads",
                    "got 7, expected a divisor of hidden_dim (96) unless head_dim is set",
                ),
            ],
        ),
        (
            # hidden_dim is invalid: num_kv_heads is still judged against num_heads, num_heads
            # not against hidden_dim
            dict(hidden_dim=0, num_heads=4, num_kv_heads=3),
            [
                ("hidden_dim", "got 0, expected a positive int"),
                ("num_kv_heads", "got 3, expected a divisor of num_heads (4)"),
            ],
        ),
        (
            dict(num_heads=0, num_kv_heads=3),
            [("num_heads", "got 0, expected a positive int")],
        ),
    ],
)
def test_head_divisibility_waits_only_for_the_sizes_it_uses(kwargs, expected):
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(LmConfig, {"type": "llama", **kwargs}, path="model")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (f"model.{field}", message) for field, message in expected
    ]


def test_rope_from_python_takes_the_yaml_mapping():
    config = LlamaConfig(rope={"type": "llama3", "factor": 16.0})
    assert config.rope == Llama3RotaryEmbeddingsConfig(factor=16.0)
    assert LlamaConfig(rope={"theta": 5e5}).rope == DefaultRotaryEmbeddingsConfig(theta=5e5)
    with pytest.raises(ValueError) as caught:
        LlamaConfig(rope={"type": "llama4"})
    assert str(caught.value) == (
        "rope.type: unknown RotaryEmbeddingsConfig type 'llama4'; known types: default, linear, "
        "llama3, yarn; did you mean 'llama3'?"
    )
    with pytest.raises(ValueError) as caught:
        LlamaConfig(rope={"type": "yarn", "factor": 0.0}, num_heads=0)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("num_heads", "got 0, expected a positive int"),
        ("rope.factor", "got 0.0, expected a number > 0"),
    ]
    with pytest.raises(ValueError) as caught:
        LlamaConfig(rope="llama3")
    assert str(caught.value) == (
        "rope: got 'llama3', expected a RotaryEmbeddingsConfig (e.g. "
        "Llama3RotaryEmbeddingsConfig()), or a dict of its fields with its `type` as in a run "
        'YAML ({"type": "llama3"})'
    )


@dataclasses.dataclass(frozen=True)
class _Run:
    model: LmConfig = dataclasses.field(default_factory=LlamaConfig)


@pytest.mark.parametrize(
    "yaml_text, args, path, location, message",
    [
        (
            "model:\n  type: llama\n  num_heads: 32\n  num_kv_heads: 5\n",
            [],
            "model.num_kv_heads",
            "run.yaml:4",
            "got 5, expected a divisor of num_heads (32)",
        ),
        (
            "model:\n  type: llama\n  num_heads: 32\n",
            ["--model.num_kv_heads", "5"],
            "model.num_kv_heads",
            "--model.num_kv_heads 5",
            "got 5, expected a divisor of num_heads (32)",
        ),
        (
            "model:\n  type: mistral\n  hidden_dim: 96\n  num_heads: 7\n  num_kv_heads: 7\n",
            [],
            "model.num_heads",
            "run.yaml:4",
            "got 7, expected a divisor of hidden_dim (96) unless head_dim is set",
        ),
        (
            "model:\n  type: llama\n  attn_backend: splash\n",
            [],
            "model.attn_backend",
            "run.yaml:3",
            "'splash' (a vendor kernel) is not available in this build",
        ),
        (
            "model:\n  type: llama\n",
            ["--model.gradient_checkpointing", "maybe"],
            "model.gradient_checkpointing",
            "--model.gradient_checkpointing maybe",
            "unknown checkpointing policy 'maybe'",
        ),
        (
            "model:\n  type: llama\n  rope_theta: 5.0e5\n",
            [],
            "model.rope_theta",
            "run.yaml:3",
            "unknown field `rope_theta` for LlamaConfig; did you mean `rope.theta`? (write "
            "`rope: {theta: ...}`)",
        ),
        (
            "model:\n  type: llama\n  sliding_window: 4096\n",
            [],
            "model.sliding_window",
            "run.yaml:3",
            "unknown field `sliding_window` for LlamaConfig (it is a field of `type: mistral`)",
        ),
        (
            "model:\n  type: qwen2\n\n  use_bias: true\n",
            [],
            "model.use_bias",
            "run.yaml:4",
            "must be false for qwen2",
        ),
    ],
)
def test_config_problems_are_reported_at_the_field_and_its_line(
    tmp_path, yaml_text, args, path, location, message
):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml_text)
    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.parse(_Run, str(run_yaml), args)
    [problem] = caught.value.problems
    assert problem.path == path
    expected_location = str(tmp_path / location) if location.startswith("run.yaml") else location
    assert problem.location == expected_location
    assert problem.message.startswith(message)


def test_variant_specific_validation():
    with pytest.raises(ValueError, match="sliding_window: got 0, expected a positive int"):
        MistralConfig(sliding_window=0)
    with pytest.raises(ValueError, match="use_bias: must be false for qwen2"):
        Qwen2Config(use_bias=True)
    with pytest.raises(ValueError, match="use_qk_norm: false has no HF Qwen3 equivalent"):
        Qwen3Config(use_qk_norm=False).to_hf_config(VOCAB)
    with pytest.raises(ValueError, match="use_qk_norm has no HF LlamaForCausalLM equivalent"):
        dataclasses.replace(TINY, use_qk_norm=True).to_hf_config(VOCAB)


PARAM_CASES = {
    "gqa": TINY,
    "tied_bias_qknorm": dataclasses.replace(
        TINY, tie_word_embeddings=True, use_bias=True, use_qk_norm=True
    ),
    "hybrid_input_norm_no_weight": dataclasses.replace(
        TINY, hybrid_norm=True, input_embedding_norm=True, use_layer_norm_weight=False, head_dim=16
    ),
    "mqa_unrolled": dataclasses.replace(TINY, num_kv_heads=1, scan_layers=False),
    "qwen2": Qwen2Config(
        seq_len=64, hidden_dim=32, intermediate_dim=48, num_layers=2, num_heads=4, num_kv_heads=2
    ),
    "qwen3_bias": Qwen3Config(
        seq_len=64,
        hidden_dim=32,
        intermediate_dim=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        head_dim=8,
        use_bias=True,
    ),
}


@pytest.mark.parametrize("name", list(PARAM_CASES))
def test_total_trainable_params_is_the_built_count(name):
    config = PARAM_CASES[name]
    model = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves(model)
    assert sum(x.size for x in leaves if hasattr(x, "size")) == config.total_trainable_params(VOCAB)


def test_flops_per_token_matches_counted_matmuls():
    config = dataclasses.replace(TINY, head_dim=16)
    model = random_model(config, Vocab)
    flops = matmul_flops(lambda m, t: m(t).array, model, _tokens(batch=1))
    assert flops == config.flops_per_token(VOCAB) * config.seq_len


def test_nvte_backend_in_the_model_matches_vanilla(tiny_model, monkeypatch):
    """The model's own axis layout through `nvte` (grouped-query heads, packed segments), on
    JAX's reference implementation of the fused call (the cuDNN kernel needs a GPU)."""
    from lm.models.layers import attention

    monkeypatch.setattr(attention, "FUSED_IMPLEMENTATION", "xla")
    fused = random_model(dataclasses.replace(TINY, attn_backend="nvte"), Vocab)
    tokens = _tokens()
    segments = hax.named(jnp.array([[0] * 20 + [1] * 44, [3] * 64]), ("batch", "position"))
    for mask in (AttentionMask.causal(), AttentionMask.causal().with_segment_ids(segments)):
        np.testing.assert_allclose(
            _logits(fused, tokens, mask), _logits(tiny_model, tokens, mask), atol=1e-5, rtol=1e-5
        )


def test_packed_documents_match_separate_documents(tiny_model):
    # RoPE makes attention depend only on relative positions, so a document packed after
    # another (with segment ids) gets the same logits as when run on its own.
    tokens = _tokens(batch=1)
    segments = hax.named(jnp.array([[0] * 20 + [1] * 44]), ("batch", "position"))
    packed = _logits(tiny_model, tokens, AttentionMask.causal().with_segment_ids(segments))
    first = _logits(tiny_model, tokens["position", :20], AttentionMask.causal())
    second = _logits(tiny_model, tokens["position", 20:], AttentionMask.causal())
    np.testing.assert_allclose(packed[0, :20], first[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(packed[0, 20:], second[0], atol=1e-4, rtol=1e-4)


def test_unrolled_layers_compute_the_same_model(tiny_model):
    unrolled = dataclasses.replace(TINY, scan_layers=False)
    template = eqx.filter_eval_shape(unrolled.build, Vocab, key=jax.random.PRNGKey(0))
    as_blockseq = model_from_hf_state_dict(template, model_to_hf_state_dict(tiny_model))
    assert isinstance(as_blockseq.transformer.layers, hax.nn.BlockSeq)
    tokens = _tokens()
    np.testing.assert_allclose(
        _logits(as_blockseq, tokens, None), _logits(tiny_model, tokens, None), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "norm",
    [
        lambda m: m.embeddings.norm,
        lambda m: m.transformer.layers.stacked.post_attn_norm,
        lambda m: m.transformer.layers.stacked.post_mlp_norm,
    ],
    ids=["input_embedding_norm", "post_attn_norm", "post_mlp_norm"],
)
def test_hybrid_and_input_embedding_norms_are_applied(norm):
    """Each optional norm is on the forward path: rescaling its weight changes the logits
    (a norm that is built but never called would leave them as they are)."""
    config = dataclasses.replace(TINY, hybrid_norm=True, input_embedding_norm=True)
    model = random_model(config, Vocab)
    assert norm(model) is not None
    weight = norm(model).weight
    scale = np.random.default_rng(3).uniform(0.5, 3.0, weight.array.shape).astype(np.float32)
    rescaled = eqx.tree_at(lambda m: norm(m).weight, model, weight * hax.named(scale, weight.axes))
    tokens = _tokens(batch=1)
    base, changed = _logits(model, tokens, None), _logits(rescaled, tokens, None)
    assert np.abs(base - changed).max() > 1e-3


def test_norms_are_absent_unless_asked_for(tiny_model):
    assert tiny_model.embeddings.norm is None
    assert tiny_model.transformer.layers.stacked.post_attn_norm is None
    assert tiny_model.transformer.layers.stacked.post_mlp_norm is None


def test_resize_vocab_resizes_untied_head(tiny_model):
    resized = tiny_model.resize_vocab(64)
    assert resized.lm_head.Out.size == 64 and resized.get_lm_head().axes == (
        hax.Axis("vocab", 64),
        TINY.Embed,
    )
    np.testing.assert_array_equal(resized.get_lm_head().array, tiny_model.get_lm_head().array[:64])


def test_bf16_compute_stays_close_to_f32(tiny_model):
    # bf16 keeps ~3 significant digits; through 2 layers the loss agrees to about 1e-2 relative.
    example = LmExample.causal(_tokens())
    policy = jmp.get_policy("p=f32,c=bf16")
    f32_loss = eqx.filter_jit(compute_next_token_loss)(tiny_model, example)
    bf16_loss = eqx.filter_jit(compute_next_token_loss)(policy.cast_to_compute(tiny_model), example)
    assert bf16_loss.dtype == jnp.float32
    np.testing.assert_allclose(bf16_loss.array, f32_loss.array, rtol=2e-2)


def test_norm_and_attention_configs_describe_the_built_layers():
    from lm.models.layers.configs import AttentionConfig, LayerNormConfig
    from lm.models.layers.normalization import LayerNorm, RmsNorm

    qwen3 = PARAM_CASES["qwen3_bias"]
    assert qwen3.norm_config == LayerNormConfig(kind="rms", eps=qwen3.layer_norm_epsilon)
    attn = qwen3.attention_config()
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (4, 4, 8)
    assert attn.qkv_bias and attn.qk_norm == qwen3.norm_config and attn.rope == qwen3.rope
    assert attn.scale == pytest.approx(8**-0.5)
    assert TINY.attention_config().qk_norm is None
    assert TINY.attention_config().QHeadsPerGroup == hax.Axis("q_heads_per_group", 2)
    mistral = MistralConfig(
        sliding_window=16, seq_len=64, hidden_dim=32, num_heads=4, num_kv_heads=2
    )
    assert mistral.attention_config().sliding_window == 16

    # The built attention block has exactly the axes the config names.
    layer = random_model(qwen3, Vocab).transformer.layers.stacked.self_attn
    assert set(layer.q_proj.Out) == set(attn.q_axes) and set(layer.k_proj.Out) == set(attn.kv_axes)
    assert isinstance(layer.q_norm, RmsNorm) and layer.q_norm.axis == attn.HeadSize

    # Norms built from a config follow their formulas.
    Embed = hax.Axis("embed", 6)
    x = hax.random.normal(jax.random.PRNGKey(0), (hax.Axis("b", 3), Embed))
    xs = np.asarray(x.array, dtype=np.float64)
    rms = LayerNormConfig(kind="rms", eps=1e-6).build(Embed)
    ln = LayerNormConfig(kind="layer", eps=1e-6, use_bias=True).build(Embed)
    assert isinstance(ln, LayerNorm) and ln.bias is not None
    want_rms = xs / np.sqrt((xs**2).mean(-1, keepdims=True) + 1e-6)
    centered = xs - xs.mean(-1, keepdims=True)
    want_ln = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(rms(x).array), want_rms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ln(x).array), want_ln, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="must be divisible by num_kv_heads"):
        AttentionConfig(Embed=Embed, num_heads=4, num_kv_heads=3, head_dim=8)
    with pytest.raises(ValueError, match="norm kind must be 'rms' or 'layer'"):
        LayerNormConfig(kind="batch")


def test_save_projections_stores_the_attention_output_once():
    """Block input, q, k, v, attention output and log-sum-exp (jax_flash), attn_proj, and the
    MLP's gate and up projections: 9 stacked residuals, the attention output once."""
    config = dataclasses.replace(
        TINY, seq_len=24, gradient_checkpointing="save_projections", attn_backend="jax_flash"
    )
    stacked = stacked_residuals(config, Vocab, _tokens(batch=3, seq=24))
    assert len(stacked) == 9, "\n".join(stacked)
