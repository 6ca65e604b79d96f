"""`trainer.quantization` (MP-03): the config's checks, and the trainer quantizing the model,
keeping the quantization state out of the optimizer, writing it each step and resuming it."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import haliax as hax
import jax
import numpy as np
import optax
import pytest
from haliax.quantization import DefaultDotGeneralOp, Fp8DotGeneralOp, Int8DotGeneralOp
from toy import Example, Feature, Hidden, assert_leaves_equal, make_dataset, trainer_config

import lm.config
from lm.config import ConfigError
from lm.models.layers.init import init_linear
from lm.models.layers.linear import Linear, dequantize
from lm.trainer import Trainer, TrainerConfig
from lm.trainer.quantization import QuantizationConfig, count_quantized, linear_paths, quantize


class LinearMlp(eqx.Module):
    up: Linear
    down: Linear

    @staticmethod
    def init(*, key) -> LinearMlp:
        k1, k2 = jax.random.split(key)
        Out = hax.Axis("out", 1)
        return LinearMlp(
            up=init_linear(Feature, Hidden, key=k1, std=0.5, use_bias=True),
            down=init_linear(Hidden, Out, key=k2, std=0.5, use_bias=False),
        )

    def __call__(self, x):
        return self.down(hax.tanh(self.up(x)))["out", 0]


def mse(model: LinearMlp, batch: Example):
    err = model(batch.x) - batch.y
    return hax.mean(err * err).scalar()


def _train(config, *, steps_hook=None):
    trainer = Trainer(config, optax.adam(1e-2), mse)
    if steps_hook is not None:
        trainer.add_hook(steps_hook, every=1)
    with trainer:
        state = trainer.initial_state(
            jax.random.PRNGKey(1), model_init=lambda: LinearMlp.init(key=jax.random.PRNGKey(0))
        )
        # the train step donates the state's buffers: keep a host copy of what tests compare
        first = jax.tree_util.tree_map(np.asarray, state.model)
        info = trainer.train(state, trainer.data_loader(make_dataset()))
    return first, info


def _decode_error(quantization) -> str:
    with pytest.raises(ConfigError) as e:
        lm.config.decode(TrainerConfig, {"quantization": quantization}, path="trainer")
    return str(e.value)


@pytest.mark.parametrize(
    "quantization, expected",
    [
        (
            {"fp8": True, "int8": True},
            "trainer.quantization.int8: got true, expected false when fp8",
        ),
        (
            {},
            "trainer.quantization: neither fp8 nor int8 is true: set `fp8: true` or `int8: true` "
            "(remove trainer.quantization for plain matmuls)",
        ),
        (
            {"fp8": True, "amax_history_length": 0},
            "amax_history_length: got 0, expected an integer >= 1",
        ),
        (
            {"fp8": True, "compute_dtype": "bfloat61"},
            "compute_dtype: got 'bfloat61', expected a float dtype",
        ),
        ({"fp8": True, "compute_dtype": "int32"}, "compute_dtype: got 'int32'"),
        (
            {"fp8": True, "targets": "up_(proj"},
            "targets: got 'up_(proj', expected a valid regular expression",
        ),
        ({"fp8": True, "targets": []}, "targets: got [], expected a non-empty list of layer names"),
        ({"fp8": True, "fp9": True}, "fp9"),
    ],
)
def test_bad_quantization_configs_name_the_field(quantization, expected):
    assert expected in _decode_error(quantization)


def test_an_unknown_key_is_not_followed_by_a_complaint_about_a_default():
    """`{fp9: true}` reported fp9, and also `fp8` (a default it never wrote) as unset."""
    with pytest.raises(ConfigError) as e:
        lm.config.decode(TrainerConfig, {"quantization": {"fp9": True}}, path="trainer")
    assert [(p.path, p.message) for p in e.value.problems] == [
        (
            "trainer.quantization.fp9",
            "unknown field `fp9` for QuantizationConfig; did you mean `fp8`?",
        )
    ]
    with pytest.raises(ConfigError) as e:
        lm.config.decode(
            TrainerConfig, {"quantization": {"amax_history_length": 0}}, path="trainer"
        )
    assert [p.path for p in e.value.problems] == [
        "trainer.quantization",
        "trainer.quantization.amax_history_length",
    ]


def test_every_bad_quantization_field_is_reported_in_one_run():
    with pytest.raises(ConfigError) as e:
        lm.config.decode(
            TrainerConfig,
            {
                "quantization": {
                    "fp8": True,
                    "int8": True,
                    "amax_history_length": 0,
                    "compute_dtype": "int32",
                    "targets": [],
                }
            },
            path="trainer",
        )
    assert [p.path for p in e.value.problems] == [
        "trainer.quantization.int8",
        "trainer.quantization.amax_history_length",
        "trainer.quantization.compute_dtype",
        "trainer.quantization.targets",
    ]


def test_good_quantization_configs_decode():
    config = lm.config.decode(
        TrainerConfig,
        {"quantization": {"fp8": True, "targets": ["up"], "compute_dtype": "bfloat16"}},
    )
    assert config.quantization == QuantizationConfig(
        fp8=True, targets=["up"], compute_dtype="bfloat16"
    )
    haliax_config = config.quantization.to_haliax()
    assert (haliax_config.fp8, haliax_config.targets, haliax_config.compute_dtype) == (
        True,
        ["up"],
        "bfloat16",
    )


def test_targets_select_layers_and_typos_are_errors():
    model = LinearMlp.init(key=jax.random.PRNGKey(0))
    assert linear_paths(model) == ["up", "down"]
    only_up = quantize(model, QuantizationConfig(int8=True, targets=["up"]))
    assert isinstance(only_up.up.dot_general, Int8DotGeneralOp)
    assert isinstance(only_up.down.dot_general, DefaultDotGeneralOp)
    by_pattern = quantize(model, QuantizationConfig(fp8=True, targets="d.*"))
    assert count_quantized(by_pattern) == 1 and isinstance(
        by_pattern.down.dot_general, Fp8DotGeneralOp
    )
    with pytest.raises(
        ValueError, match=r"targets\[1\]: 'dwn' names no Linear.*did you mean 'down'"
    ):
        quantize(model, QuantizationConfig(fp8=True, targets=["up", "dwn"]))
    with pytest.raises(ValueError, match="'mlp' matches none of the model's 2 Linear layers"):
        quantize(model, QuantizationConfig(fp8=True, targets="mlp"))


def test_fp8_state_is_overwritten_each_step_and_never_optimized(tmp_path):
    config = trainer_config(
        tmp_path,
        num_train_steps=3,
        steps_per_eval=100,
        quantization=QuantizationConfig(fp8=True, amax_history_length=4),
    )
    kernels = []
    first, info = _train(
        config, steps_hook=lambda i: kernels.append(np.asarray(i.state.model.up.weight.array))
    )
    up = info.state.model.up.dot_general
    assert isinstance(up, Fp8DotGeneralOp)
    # the optimizer state covers the weights only: as many leaves as without quantization
    _, plain_info = _train(
        trainer_config(tmp_path / "plain", num_train_steps=3, steps_per_eval=100)
    )
    assert len(jax.tree_util.tree_leaves(info.state.opt_state)) == len(
        jax.tree_util.tree_leaves(plain_info.state.opt_state)
    )
    # delayed scaling: each step's forward records max|kernel| in the history, which Haliax
    # (as Flax) updates as `roll(history, -1).at[0].set(amax)`
    used = [first.up.weight.array, *kernels[:2]]  # the kernels steps 0, 1, 2 ran with
    expected = np.zeros(4, np.float32)
    for w in used:
        expected = np.roll(expected, -1)
        expected[0] = np.max(np.abs(w))
    np.testing.assert_allclose(np.asarray(up.kernel_amax_history), expected, rtol=1e-6)
    assert np.all(np.asarray(up.input_amax_history)[[0, 2, 3]] > 0)
    assert np.all(np.asarray(up.output_grad_amax_history)[[0, 2, 3]] > 0)
    assert float(up.kernel_scale[0]) != 1.0  # the scale followed the history


def test_quantized_run_resumes_exactly(tmp_path):
    quantization = QuantizationConfig(fp8=True, amax_history_length=8)
    full = trainer_config(
        tmp_path / "a", num_train_steps=6, steps_per_eval=100, quantization=quantization
    )
    _, info_full = _train(full)
    first = trainer_config(
        tmp_path / "b", num_train_steps=3, steps_per_eval=100, quantization=quantization
    )
    _train(first)
    _, info_resumed = _train(dataclasses.replace(first, num_train_steps=6))
    assert int(info_resumed.state.step) == 6
    assert_leaves_equal(info_full.state.model, info_resumed.state.model)


def test_dequantize_restores_the_plain_matmuls_and_weights():
    model = LinearMlp.init(key=jax.random.PRNGKey(0))
    quantized = quantize(model, QuantizationConfig(fp8=True))
    plain = dequantize(quantized)
    assert count_quantized(plain) == 0
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(model)
    assert_leaves_equal(plain, model)


def test_hf_state_dict_of_a_quantized_model_has_only_the_weights():
    from lm.models import Gpt2Config
    from lm.models.hf.compat import model_to_hf_state_dict

    config = Gpt2Config(seq_len=16, hidden_dim=16, num_layers=2, num_heads=2)
    model = config.build(hax.Axis("vocab", 32), key=jax.random.PRNGKey(0))
    quantized = quantize(model, QuantizationConfig(fp8=True))
    assert count_quantized(quantized) > 0
    plain, exported = model_to_hf_state_dict(model), model_to_hf_state_dict(quantized)
    assert sorted(exported) == sorted(plain)
    for key, value in plain.items():
        np.testing.assert_array_equal(exported[key], value)


def test_gpt2_fused_qkv_keeps_one_fp8_state_per_layer():
    """GPT-2 computes q, k and v from one fused `c_attn`. Called once per slice, its fp8
    state got three next values, summed by the backward pass: the scales tripled every step
    until the q/k/v products underflowed to 0. The next state is the one matmul's: its kernel
    history holds max|W| of the whole fused kernel, and a scale from an all-zero history
    stays 1."""
    from lm.models import AttentionMask, Gpt2Config

    config = Gpt2Config(seq_len=8, hidden_dim=16, num_layers=2, num_heads=2)
    Vocab = hax.Axis("vocab", 32)
    model = quantize(
        config.build(Vocab, key=jax.random.PRNGKey(0)),
        QuantizationConfig(fp8=True, amax_history_length=4),
    )
    tokens = hax.random.randint(jax.random.PRNGKey(1), config.Pos, 0, Vocab.size)

    def loss(m):
        return hax.sum(m(tokens, AttentionMask.causal())).scalar()

    grads = eqx.filter_grad(loss)(model)
    attn = model.transformer.blocks.stacked.attn
    new_state = grads.transformer.blocks.stacked.attn.c_attn.dot_general
    kernel = np.asarray(attn.c_attn.weight.array)
    per_layer_max = np.abs(kernel).reshape(config.num_layers, -1).max(axis=1)
    history = np.asarray(new_state.kernel_amax_history)
    np.testing.assert_allclose(history[:, 0], per_layer_max, rtol=1e-6)
    np.testing.assert_array_equal(history[:, 1:], 0)
    for scale in (new_state.kernel_scale, new_state.input_scale, new_state.output_grad_scale):
        np.testing.assert_array_equal(np.asarray(scale), 1.0)


def test_int8_trains_an_lm_model():
    """The model's own matmul called the quantized op without `precision`, which Haliax's
    int8 op requires: every lm model failed in its first step with a TypeError."""
    from lm.models import AttentionMask, Gpt2Config

    config = Gpt2Config(seq_len=8, hidden_dim=16, num_layers=1, num_heads=2)
    Vocab = hax.Axis("vocab", 32)
    plain = config.build(Vocab, key=jax.random.PRNGKey(0))
    model = quantize(plain, QuantizationConfig(int8=True))
    assert count_quantized(model) > 0
    tokens = hax.random.randint(jax.random.PRNGKey(1), config.Pos, 0, Vocab.size)

    def logits(m):
        return m(tokens, AttentionMask.causal()).array

    q, p = np.asarray(logits(model)), np.asarray(logits(plain))
    assert np.all(np.isfinite(q)) and not np.array_equal(q, p)
    np.testing.assert_allclose(q, p, atol=0.05 * np.abs(p).max())
    grads = eqx.filter_grad(lambda m: jax.numpy.sum(logits(m)))(model)
    assert np.all(
        np.isfinite(np.asarray(grads.transformer.blocks.stacked.attn.c_attn.weight.array))
    )


def test_an_fp8_trained_checkpoint_loads_for_evaluation_and_export(tmp_path):
    """eval_lm and export_lm_to_hf load a checkpoint exactly (a leaf the model lacks is an
    error): an fp8 run's scales and histories made every fp8 checkpoint refused. They are
    left out; the weights load as trained."""
    import jmp

    from lm.checkpoint import save_checkpoint, wait_until_finished
    from lm.lm_run import load_lm_checkpoint
    from lm.models import Gpt2Config

    config = Gpt2Config(seq_len=8, hidden_dim=16, num_layers=2, num_heads=2)
    Vocab = hax.Axis("vocab", 32)
    plain = config.build(Vocab, key=jax.random.PRNGKey(0))
    trained = quantize(plain, QuantizationConfig(fp8=True, amax_history_length=4))
    save_checkpoint({"model": trained}, 1, str(tmp_path / "step-1"))
    wait_until_finished()
    loaded, path = load_lm_checkpoint(config, Vocab, str(tmp_path), mp=jmp.get_policy("f32"))
    assert path == str(tmp_path / "step-1")
    assert count_quantized(loaded) == 0
    assert_leaves_equal(loaded, plain)
