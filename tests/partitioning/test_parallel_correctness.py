"""Sharding changes where numbers live, never what they are (issue 9, item 3).

On the 8 fake CPU devices, the real `Trainer` trains a tiny GPT-2 and a tiny Llama for 5
steps under pure DP, FSDP over `embed`, TP (model axis 8), DP x TP and replica x FSDP. Every
run must give the loss and parameters of the same Trainer on a one-device mesh (within
1e-5), and every parameter's `jax.Array.sharding` must be exactly what the parameter axis
mapping says: per named axis, the mesh axes it is split over.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import haliax as hax
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from lm.data import ListDataset
from lm.models import Gpt2Config, LlamaConfig, LmExample, compute_next_token_loss
from lm.partitioning import MeshShape, create_mesh
from lm.tracker import NoopConfig
from lm.trainer import Trainer, TrainerConfig

NUM_STEPS = 5
BATCH = 8
SEQ = 16
Vocab = hax.Axis("vocab", 64)

MODELS = {
    # heads (8), mlp (128) and vocab (64) divide by 8, so even pure TP over 8 devices shards them
    "gpt2": Gpt2Config(
        seq_len=SEQ, hidden_dim=32, num_layers=2, num_heads=8, gradient_checkpointing=False
    ),
    # GQA: 16 query heads over 8 KV heads; mlp 64
    "llama": LlamaConfig(
        seq_len=SEQ,
        hidden_dim=64,
        intermediate_dim=64,
        num_layers=2,
        num_heads=16,
        num_kv_heads=8,
        gradient_checkpointing=False,
    ),
}
# Llama's attention weights carry `kv_head` (GPT-2's carry `heads`); vocab is sharded too.
TP_AXES = {"gpt2": ["heads", "mlp", "vocab"], "llama": ["kv_head", "mlp", "vocab"]}

# name -> (TrainerConfig overrides, expected mesh sizes (replica, data, model))
LAYOUTS = {
    "dp": (dict(fsdp_axis=None), (1, 8, 1)),
    "fsdp": (dict(fsdp_axis="embed"), (1, 8, 1)),
    "tp": (dict(fsdp_axis=None, model_axis_size=-1, tp=True), (1, 1, 8)),
    "dp_x_tp": (dict(fsdp_axis=None, model_axis_size=2, tp=True), (1, 4, 2)),
    "fsdp_x_tp": (dict(fsdp_axis="embed", model_axis_size=2, tp=True), (1, 4, 2)),
    "replica_x_fsdp": (dict(fsdp_axis="embed", replica_ici_axis_size=2), (2, 4, 1)),
}


@dataclasses.dataclass(frozen=True)
class OneDeviceTrainerConfig(TrainerConfig):
    """The same TrainerConfig on a one-device mesh: the unsharded baseline."""

    @functools.cached_property
    def mesh_shape(self) -> MeshShape:
        return MeshShape(
            num_slices=1, replica_ici=1, data_ici=1, model=1, replica_dcn=1, data_dcn=1
        )

    @functools.cached_property
    def device_mesh(self):
        return create_mesh(self.mesh_shape, jax.devices()[:1])


def _config(cls=TrainerConfig, *, tp=False, model_name="gpt2", **overrides) -> TrainerConfig:
    return cls(
        num_train_steps=NUM_STEPS,
        train_batch_size=BATCH,
        require_accelerator=False,
        tracker=NoopConfig(),
        log_jaxprs=False,
        log_xla_hlo=False,
        id=f"par-{model_name}",
        tensor_parallel_axes=TP_AXES[model_name] if tp else None,
        **overrides,
    )


def _dataset() -> ListDataset:
    # Each row counts upward from a random start: learnable, so the 5 steps move the weights.
    rng = np.random.default_rng(0)
    starts = rng.integers(0, Vocab.size, size=NUM_STEPS * BATCH)
    return ListDataset(
        [
            LmExample.causal(
                hax.named(((s + np.arange(SEQ)) % Vocab.size).astype(np.int32), "position")
            )
            for s in starts
        ]
    )


def _loss(model, example):
    return compute_next_token_loss(model, example).scalar()


def _train(config: TrainerConfig, model_config, initial_model):
    # Adam with a large eps: some gradients are exactly zero in exact arithmetic (a key bias
    # cannot change a softmax), and with eps=1e-8 Adam turns their rounding noise (which
    # differs between layouts) into full-size steps of +-lr. With eps=1e-3 Adam still
    # normalises real gradients but leaves noise at noise scale.
    optimizer = optax.adamw(1e-2, eps=1e-3, weight_decay=0.1)
    trainer = Trainer(config, optimizer, _loss, add_default_hooks=False)
    losses = []
    trainer.add_hook(lambda info: losses.append(float(info.loss)), every=1)
    with trainer:
        state = trainer.initial_state(jax.random.PRNGKey(1), model=initial_model)
        info = trainer.train(state, trainer.data_loader(_dataset()))
    return losses[:NUM_STEPS], info.state, trainer


@functools.cache
def _initial_model(name: str):
    """Host (numpy) weights, so each run shards them its own way. Drawn with numpy rather
    than `build` (compiling the XLA initialiser costs seconds); norm scales start at 1."""
    rng = np.random.default_rng(0)
    shapes = eqx.filter_eval_shape(MODELS[name].build, Vocab, key=jax.random.PRNGKey(0))

    def draw(path, x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        where = jax.tree_util.keystr(path)
        if ".ln_" in where or "norm." in where:  # GPT-2 LayerNorms, Llama RmsNorms
            return (np.ones if ".weight" in where else np.zeros)(x.shape, x.dtype)
        return rng.normal(0.0, 0.05, x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _baseline(name: str):
    config = _config(OneDeviceTrainerConfig, model_name=name)
    losses, state, trainer = _train(config, MODELS[name], _initial_model(name))
    assert trainer.device_mesh.devices.size == 1
    return losses, jax.tree_util.tree_map(np.asarray, state.model)


def _float_leaves(tree) -> list[np.ndarray]:
    leaves = jax.tree_util.tree_leaves(tree)
    return [np.asarray(x) for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating)]


def _expected_spec(array: hax.NamedArray, mapping) -> tuple:
    spec = []
    for axis in array.axes:
        physical = mapping.get(axis.name)
        spec.append((physical,) if isinstance(physical, str) else physical)
    return tuple(spec)


def _actual_spec(sharding: NamedSharding, ndim: int) -> tuple:
    spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
    return tuple((p,) if isinstance(p, str) else (tuple(p) if p else None) for p in spec)


def _check_shardings(model, trainer: Trainer) -> int:
    """Every parameter's sharding is the mapping's: per named axis, the same mesh axes.
    Returns how many parameters are split over more than one device."""
    mapping = trainer.parameter_axis_mapping
    mesh = trainer.device_mesh
    split = 0
    leaves = jax.tree_util.tree_leaves(model, is_leaf=hax.is_named_array)
    for path, leaf in jax.tree_util.tree_leaves_with_path(model, is_leaf=hax.is_named_array):
        if not hax.is_named_array(leaf):
            continue
        sharding = leaf.array.sharding
        where = f"{jax.tree_util.keystr(path)} {leaf.axes}"
        assert isinstance(sharding, NamedSharding), where
        assert sharding.mesh.shape == mesh.shape, where
        expected = _expected_spec(leaf, mapping)
        assert _actual_spec(sharding, leaf.ndim) == expected, (where, sharding.spec, expected)
        # and the pieces really are that small on each device
        shard = tuple(
            size // int(np.prod([mesh.shape[p] for p in (phys or ())]))
            for size, phys in zip(leaf.array.shape, expected, strict=True)
        )
        assert sharding.shard_shape(leaf.array.shape) == shard, where
        assert {s.data.shape for s in leaf.array.addressable_shards} == {shard}, where
        split += shard != leaf.array.shape
    assert leaves, "no parameters found"
    return split


# Two combined layouts run by default (each needs its model's baseline: ~20 s together on 2
# cores); every model x layout pair runs under `slow`.
DEFAULT_CASES = {("gpt2", "replica_x_fsdp"), ("llama", "fsdp_x_tp")}
CASES = [
    pytest.param(
        m, lay, marks=() if (m, lay) in DEFAULT_CASES else pytest.mark.slow, id=f"{m}-{lay}"
    )
    for m in MODELS
    for lay in LAYOUTS
]


@pytest.mark.parametrize(("model_name", "layout"), CASES)
def test_layout_matches_single_device(model_name, layout, capfd):
    overrides, (replica, data, model_size) = LAYOUTS[layout]
    config = _config(model_name=model_name, **overrides)
    assert (config.mesh_shape.replica, config.mesh_shape.data, config.mesh_shape.model) == (
        replica,
        data,
        model_size,
    )
    base_losses, base_model = _baseline(model_name)
    capfd.readouterr()
    losses, state, trainer = _train(config, MODELS[model_name], _initial_model(model_name))
    # XLA's SPMD partitioner found an efficient collective for every resharding (it logs this
    # when it falls back to gathering a whole array on every device; replica x FSDP used to,
    # for the embeddings' gradients: see lm.models.layers.embedding)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err

    assert len(losses) == NUM_STEPS and losses[-1] < losses[0]
    np.testing.assert_allclose(losses, base_losses, rtol=1e-5, atol=1e-5)
    got = _float_leaves(state.model)
    want = _float_leaves(base_model)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5)
    # the training really moved the weights (so agreement is not trivial)
    init = _float_leaves(_initial_model(model_name))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(want, init, strict=True)) > 5e-3

    split = _check_shardings(state.model, trainer)
    if layout == "dp":
        assert split == 0  # pure data parallel: every parameter is replicated
    else:
        assert split > 0
    # Adam's moments are sharded like the parameters they belong to
    _check_shardings(
        eqx.filter(state.opt_state, hax.is_named_array, is_leaf=hax.is_named_array), trainer
    )


def test_axis_that_cannot_be_split_is_named_before_compiling():
    # 6 KV heads cannot be split over a model axis of 4 devices
    config = _config(model_name="llama", fsdp_axis=None, model_axis_size=4, tp=True)
    model_config = LlamaConfig(
        seq_len=SEQ, hidden_dim=48, intermediate_dim=64, num_layers=1, num_heads=12, num_kv_heads=6
    )
    trainer = Trainer(config, optax.sgd(0.1), _loss, add_default_hooks=False)
    with (
        trainer,
        pytest.raises(ValueError, match=r"axis 'kv_head' of size 6.*\['model'\] \(4 devices\)"),
    ):
        trainer.initial_state(
            jax.random.PRNGKey(0),
            model_init=lambda: model_config.build(Vocab, key=jax.random.PRNGKey(0)),
        )
