"""`watch` norms against numpy: total, per parameter, and per layer for stacked layers."""

import dataclasses

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.tracker import NoopTracker
from lm.trainer.hooks import InsideStepInfo
from lm.trainer.watch import WatchConfig

Layers = hax.Axis("layers", 3)
Embed = hax.Axis("embed", 4)
Mlp = hax.Axis("mlp", 5)


class Block(eqx.Module):
    w: hax.NamedArray  # stacked: (layers, embed, mlp)
    b: jax.Array  # plain array


class Model(eqx.Module):
    block: Block
    head: hax.NamedArray  # (embed,)


class State(eqx.Module):
    trainable_model: Model
    opt_state: object = None


class Recorder(NoopTracker):
    def __init__(self):
        self.logged = {}

    def log(self, metrics, *, step, commit=None):
        self.logged.update(metrics)


def _model(seed):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return Model(
        Block(hax.random.normal(k1, (Layers, Embed, Mlp)), jax.random.normal(k2, (2, 3))),
        hax.random.normal(k3, (Embed,)),
    )


def _logged(config, params, grads, updates=None, opt_state=None):
    callback = config.build()
    out = jax.jit(
        lambda p, g, u, o: callback.inside_step(State(p, o), InsideStepInfo(grads=g, updates=u))
    )(params, grads, updates, opt_state)
    recorder = Recorder()
    with recorder:
        callback.on_step(dataclasses.make_dataclass("Info", ["step"])(0), out)
    return recorder.logged


def test_norms_match_numpy_per_parameter_per_layer_and_total():
    params, grads = _model(0), _model(1)
    logged = _logged(WatchConfig(), params, grads)
    for target, tree in (("params", params), ("grad", grads)):
        w = np.asarray(tree.block.w.array, np.float64)
        b = np.asarray(tree.block.b, np.float64)
        head = np.asarray(tree.head.array, np.float64)
        for i in range(Layers.size):
            np.testing.assert_allclose(
                logged[f"{target}/norm/block/w/layer_{i}"], np.linalg.norm(w[i]), rtol=1e-6
            )
        assert f"{target}/norm/block/w" not in logged  # split into layers
        np.testing.assert_allclose(logged[f"{target}/norm/block/b"], np.linalg.norm(b), rtol=1e-6)
        np.testing.assert_allclose(logged[f"{target}/norm/head"], np.linalg.norm(head), rtol=1e-6)
        total = np.sqrt(np.sum(w**2) + np.sum(b**2) + np.sum(head**2))
        np.testing.assert_allclose(logged[f"{target}/norm/total"], total, rtol=1e-6)
    assert len(logged) == 2 * (Layers.size + 3)


def test_unsplit_layers_and_totals_only():
    params, grads = _model(0), _model(1)
    logged = _logged(WatchConfig(split_scan_layers=False), params, grads)
    w = np.asarray(params.block.w.array, np.float64)
    np.testing.assert_allclose(logged["params/norm/block/w"], np.linalg.norm(w), rtol=1e-6)
    assert not any("layer_" in k for k in logged)
    totals = _logged(WatchConfig(include_per_parameter_norms=False), params, grads)
    assert sorted(totals) == ["grad/norm/total", "params/norm/total"]
    np.testing.assert_allclose(totals["grad/norm/total"], logged["grad/norm/total"], rtol=1e-6)


def test_histograms_are_the_arrays():
    params = _model(0)
    logged = _logged(
        WatchConfig(watch_targets=("params",), include_histograms=True), params, params
    )
    assert logged["params/hist/block/w"].num == Layers.size * Embed.size * Mlp.size
    np.testing.assert_allclose(
        logged["params/hist/head"].max, float(jnp.max(params.head.array)), rtol=1e-6
    )


def test_each_target_logs_under_its_prefix():
    """Gradients log as `grad/...` (Levanter's and the checklist's name); the other targets
    under their own names."""
    trees = [_model(seed) for seed in range(4)]
    config = WatchConfig(
        watch_targets=("grads", "params", "opt_state", "updates"), include_per_parameter_norms=False
    )
    logged = _logged(config, *trees)
    assert sorted(logged) == [
        "grad/norm/total",
        "opt_state/norm/total",
        "params/norm/total",
        "updates/norm/total",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"watch_targets": ("grads", "weights")},
            "watch_targets: unknown target(s) ['weights']; allowed: "
            "['grads', 'params', 'opt_state', 'updates']",
        ),
        (
            {"interval": -1},
            "interval: got -1, expected a number of steps >= 0 (0 disables watching)",
        ),
    ],
)
def test_a_bad_value_is_an_error_at_its_field(kwargs, message):
    with pytest.raises(ValueError) as caught:  # a FieldError: the decoder reports watch.<field>
        WatchConfig(**kwargs)
    assert str(caught.value) == message


def test_every_bad_field_is_reported_in_one_run():
    import lm.config
    from lm.trainer import TrainerConfig

    with pytest.raises(lm.config.ConfigError) as caught:
        lm.config.decode(
            TrainerConfig, {"watch": {"watch_targets": ["foo"], "interval": -1}}, path="trainer"
        )
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (
            "trainer.watch.watch_targets",
            "unknown target(s) ['foo']; allowed: ['grads', 'params', 'opt_state', 'updates']",
        ),
        ("trainer.watch.interval", "got -1, expected a number of steps >= 0 (0 disables watching)"),
    ]
