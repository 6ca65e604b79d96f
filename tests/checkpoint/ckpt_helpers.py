"""Small states and tree comparisons for the checkpoint tests."""

import warnings

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm.trainer.state import StepInfo, TrainerState

In = hax.Axis("embed", 8)
Out = hax.Axis("out", 4)
Width = 16


def make_mlp(key):
    return hax.nn.MLP.init(In, Out, Width, 2, key=key)


def make_state(key, *, num_steps=0, lr=1e-2) -> TrainerState:
    """An MLP TrainerState with Adam, after `num_steps` real optimizer steps."""
    k_model, k_train, k_data = jax.random.split(key, 3)
    model = make_mlp(k_model)
    opt = optax.adam(lr)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    x = hax.random.normal(k_data, (hax.Axis("batch", 4), In))

    @eqx.filter_jit
    def train_step(model, opt_state):
        def loss_fn(m):
            return hax.mean(m(x) ** 2).scalar()

        grads = eqx.filter_grad(loss_fn)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state

    with warnings.catch_warnings():
        # haliax 1.4.dev453's dot calls jax.core.is_constant_dim, deprecated in jax 0.10.
        warnings.filterwarnings("ignore", "jax.core.is_constant_dim", DeprecationWarning)
        for _ in range(num_steps):
            model, opt_state = train_step(model, opt_state)
    return TrainerState(
        step=jnp.asarray(num_steps, dtype=jnp.int32),
        model=model,
        opt_state=opt_state,
        training_key=k_train,
    )


def dummy_step_info(step: int) -> StepInfo:
    """A StepInfo whose state.step = step + 1, so info.step == step (as in the reference)."""
    state = TrainerState(
        step=jnp.asarray(step + 1, dtype=jnp.int32),
        model={"w": jnp.full((3,), float(step))},
        opt_state=(),
        training_key=jax.random.PRNGKey(step),
    )
    return StepInfo(state=state, loss=0.0, step_duration=0.0)


def array_leaves(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def assert_trees_equal(a, b):
    """Same structure and bit-identical arrays (including dtypes)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"{ta} != {tb}"
    for x, y in zip(la, lb, strict=True):
        if eqx.is_array(x):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x, y = jax.random.key_data(x), jax.random.key_data(y)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x == y


def save_state(state: TrainerState, path, step: int) -> None:
    """Save `state` as checkpoint `step` under `path` and wait for it to commit."""
    from lm.checkpoint import AsyncCheckpointManager, save_checkpoint
    from lm.trainer.state import saveable_state

    manager = AsyncCheckpointManager()
    save_checkpoint(saveable_state(state), step, str(path), manager=manager)
    manager.wait_until_finished()


def init_fn() -> TrainerState:
    """The `init_fn` the restore tests pass: a fresh state, always the same."""
    return make_state(jax.random.PRNGKey(42))
