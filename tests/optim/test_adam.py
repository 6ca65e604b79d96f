"""AdamConfig vs optax and vs the formulas of its extras (clipping, skip-step, AdamC)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_helpers import random_like

import lm.tracker
from lm.optim import (
    AdamConfig,
    ClipUpdateNormConfig,
    SkipStepConfig,
    current_learning_rate,
    map_params,
)
from lm.optim.clipping import clip_update_by_historical_norm

STEPS = 4


def small_params():
    rng = np.random.default_rng(1)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }


def grads_for(params, n, scales=None):
    """n gradient trees; step i is scaled by scales[i]."""
    scales = scales or [1.0] * n
    return [
        jax.tree_util.tree_map(lambda g, s=s: g * s, random_like(params, 10 + i))
        for i, s in enumerate(scales)
    ]


def run(tx, params, grads, losses=None):
    """Apply `tx` over the gradient sequence; returns params, opt states and metrics per step."""

    @eqx.filter_jit
    def step(params, state, g, loss):
        with lm.tracker.capture_metrics() as metrics:
            updates, state = tx.update(g, state, params, loss=loss)
        return optax.apply_updates(params, updates), state, metrics

    state = tx.init(params)
    history = []
    for i, g in enumerate(grads):
        loss = jnp.float32(1.0 if losses is None else losses[i])
        params, state, metrics = step(params, state, g, loss)
        history.append((params, state, metrics))
    return history


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def run_optax(tx, params, grads):
    @eqx.filter_jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append(params)
    return out


# --- plain AdamW --------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_matches_optax_adamw_step_by_step(nesterov):
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.25,
        weight_decay=0.1,
        default_weight_decay_mask=False,
        max_grad_norm=None,
        nesterov=nesterov,
    )
    params = small_params()
    grads = grads_for(params, STEPS)
    ours = run(config.build(STEPS), params, grads)
    reference = optax.adamw(
        config.lr_scheduler(STEPS), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, nesterov=nesterov
    )
    expected = run_optax(reference, params, grads)
    schedule = config.lr_scheduler(STEPS)
    for i, ((p, state, _), q) in enumerate(zip(ours, expected, strict=True)):
        assert_trees_close(p, q, atol=1e-6)
        assert np.isclose(float(current_learning_rate(state)), float(schedule(i)))


def test_adam_with_grad_clipping_matches_optax():
    config = AdamConfig(learning_rate=1e-2, warmup=0.0, default_weight_decay_mask=False)
    params = small_params()
    grads = grads_for(params, STEPS, scales=[5.0, 0.1, 3.0, 0.5])
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(config.lr_scheduler(STEPS), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1),
    )
    for (p, _, _), q in zip(
        run(config.build(STEPS), params, grads), run_optax(reference, params, grads), strict=True
    ):
        assert_trees_close(p, q, atol=1e-6)


def test_adam_with_mask_matches_masked_reference(gpt2_like):
    config = AdamConfig(learning_rate=1e-2, warmup=0.0, weight_decay=0.5, max_grad_norm=None)
    # The default mask written out by hand: only the four Linear weights decay.
    linear_weights = {
        "transformer.blocks.stacked.attn.c_attn.weight",
        "transformer.blocks.stacked.attn.c_proj.weight",
        "transformer.blocks.stacked.mlp.c_fc.weight",
        "transformer.blocks.stacked.mlp.c_proj.weight",
    }
    mask = map_params(lambda x, info: info.path in linear_weights, gpt2_like, default=False)
    reference = optax.adamw(
        config.lr_scheduler(3), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.5, mask=mask
    )
    grads = grads_for(gpt2_like, 3)
    ours = run(config.build(3), gpt2_like, grads)
    for (p, _, _), q in zip(ours, run_optax(reference, gpt2_like, grads), strict=True):
        assert_trees_close(p, q, atol=1e-6)
    # and the mask matters: norms are not decayed
    unmasked = run_optax(
        optax.adamw(config.lr_scheduler(3), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.5),
        gpt2_like,
        grads,
    )
    assert not np.allclose(
        ours[-1][0].transformer.ln_f.weight.array, unmasked[-1].transformer.ln_f.weight.array
    )


def test_update_accepts_and_ignores_loss_and_reports_lr():
    config = AdamConfig(learning_rate=1e-3, warmup=2, lr_schedule="linear")
    tx = config.build(10)
    params = small_params()
    state = tx.init(params)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    u1, _ = tx.update(params, state, params)
    u2, state = tx.update(params, state, params, loss=jnp.float32(3.0))
    assert_trees_close(u1, u2, atol=0)
    assert float(current_learning_rate(state)) == 0.0  # the LR of step 0 (warmup from 0)
    _, state = tx.update(params, state, params)
    assert np.isclose(float(current_learning_rate(state)), 5e-4)
    assert current_learning_rate({"no": "lr"}) is None


# --- AdamC --------------------------------------------------------------------------------


def test_adamc_weight_decay_follows_the_schedule():
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.5,
        lr_schedule="linear",
        weight_decay=0.3,
        adamc_weight_decay=True,
        default_weight_decay_mask=False,
        max_grad_norm=None,
    )
    params = small_params()
    grads = grads_for(params, STEPS)
    schedule = config.lr_scheduler(STEPS)
    adam = optax.scale_by_adam(0.9, 0.95, 1e-8)
    adam_state = adam.init(params)
    expected = params
    for i, g in enumerate(grads):
        step, adam_state = adam.update(g, adam_state)
        lr = float(schedule(i))
        wd = 0.3 * lr / 1e-2  # wd * lr_t / peak_lr
        expected = jax.tree_util.tree_map(
            lambda p, u, lr=lr, wd=wd: p - lr * (u + wd * p), expected, step
        )
    assert_trees_close(run(config.build(STEPS), params, grads)[-1][0], expected, atol=1e-6)


# --- update RMS clipping ------------------------------------------------------------------


def _reference_rms_clip(update, layer_axes, threshold):
    """Per-leaf RMS clip, per layer (leading axes) for stacked weights: numpy."""
    u = np.asarray(update)
    if u.ndim <= layer_axes:
        rms = np.abs(u)
    else:
        rms = np.sqrt(np.mean(u**2, axis=tuple(range(layer_axes, u.ndim)), keepdims=True))
    return u / np.maximum(1.0, rms / threshold)


def test_update_rms_clipping_per_layer_matches_formula(gpt2_like):
    """The clip acts on the Adam step plus its weight-decay term (the reference's chain:
    scale_by_adam -> add_decayed_weights -> RMS clip -> scale(-lr))."""
    threshold, wd = 0.3, 0.5
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.0,
        weight_decay=wd,
        default_weight_decay_mask=False,
        max_grad_norm=None,
        update_rms_clipping=threshold,
    )
    # Layers get gradients of very different scales, so Adam steps differ per layer.
    grads = grads_for(gpt2_like, 3, scales=[1.0, 30.0, 0.01])
    ours = run(config.build(3), gpt2_like, grads)

    adam = optax.scale_by_adam(0.9, 0.95, 1e-8)
    adam_update = jax.jit(adam.update)
    state = adam.init(gpt2_like)
    params = gpt2_like
    schedule = config.lr_scheduler(3)
    infos = {}
    map_params(lambda x, info: infos.setdefault(info.path, info), gpt2_like)
    for i, g in enumerate(grads):
        step, state = adam_update(g, state)
        paths = jax.tree_util.tree_leaves(map_params(lambda x, info: info.path, step))
        raw = [
            np.asarray(u) + wd * np.asarray(p)
            for u, p in zip(
                jax.tree_util.tree_leaves(step), jax.tree_util.tree_leaves(params), strict=True
            )
        ]
        clipped = [
            _reference_rms_clip(u, len(infos[p].layer_axes), threshold)
            for p, u in zip(paths, raw, strict=True)
        ]
        pre = np.sqrt(sum(float(np.sum(np.asarray(u) ** 2)) for u in raw))
        post = np.sqrt(sum(float(np.sum(c**2)) for c in clipped))
        metrics = ours[i][2]
        assert np.isclose(float(metrics["optim/pre_clip_update_norm"]), pre, rtol=1e-5)
        assert np.isclose(float(metrics["optim/post_clip_update_norm"]), post, rtol=1e-5)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        lr = float(schedule(i))
        params = jax.tree_util.tree_unflatten(
            treedef, [p - lr * c for p, c in zip(leaves, clipped, strict=True)]
        )
        assert_trees_close(ours[i][0], params, atol=1e-6)
    assert post < pre  # the clip was active


def test_update_rms_clipping_validation():
    with pytest.raises(
        ValueError, match="update_rms_clipping: got 0.0, expected a positive number"
    ):
        AdamConfig(update_rms_clipping=0.0)
    with pytest.raises(
        ValueError, match="Cannot use both update_rms_clipping and clip_update_norm"
    ):
        AdamConfig(update_rms_clipping=1.0, clip_update_norm=ClipUpdateNormConfig())


# --- clip_update_norm ---------------------------------------------------------------------


def test_clip_update_norm_matches_historical_formula():
    length, sigma = 4, 1.0
    tx = clip_update_by_historical_norm(length, sigma)
    norms = [1.0, 1.2, 0.8, 5.0, 1.1, 0.9, 9.0]
    base = {"a": jnp.ones((3,), jnp.float32) / np.sqrt(3.0)}  # unit norm
    state = tx.init(base)
    history: list[float] = []
    for n in norms:
        with lm.tracker.capture_metrics() as metrics:
            out, state = tx.update(jax.tree_util.tree_map(lambda x, n=n: x * n, base), state)
        window = np.asarray(history[-length:])
        if len(window) >= max(2, length // 2):
            limit = window.mean() + sigma * max(window.std(), 1e-6)
        else:
            limit = np.inf
        expected = min(n, limit)
        got = float(optax.tree.norm(out))
        assert np.isclose(got, expected, rtol=1e-5), (n, got, expected)
        assert float(metrics["optim/clip_update/did_clip"]) == float(n > limit)
        assert np.isclose(float(metrics["optim/clip_update/pre_clip_norm"]), n, rtol=1e-6)
        assert np.isclose(float(metrics["optim/clip_update/post_clip_norm"]), expected, rtol=1e-5)
        if np.isfinite(limit):
            assert np.isclose(
                float(metrics["optim/clip_update/update_norm_threshold"]), limit, rtol=1e-5
            )
        history.append(n)  # the history keeps the unclipped norm
    assert float(metrics["optim/clip_update/did_clip"]) == 1.0


@pytest.mark.parametrize("build", ["function", "config"])
def test_clip_update_norm_waits_for_half_the_history(build):
    """With a history of 10, nothing is clipped until 10 // 2 = 5 norms are in it."""
    length = 10
    if build == "config":
        tx = ClipUpdateNormConfig(rolling_interval_length=length, sigma_factor=1.0).build()
    else:
        tx = clip_update_by_historical_norm(length, 1.0)
    base = {"a": jnp.ones((4,), jnp.float32) / 2.0}  # unit norm
    calm = [1.0, 1.2, 0.8, 1.1, 0.9]

    def last_step(norms):
        state = tx.init(base)
        for n in norms:
            with lm.tracker.capture_metrics() as metrics:
                out, state = tx.update(jax.tree_util.tree_map(lambda x, n=n: x * n, base), state)
        return float(optax.tree.norm(out)), float(metrics["optim/clip_update/did_clip"])

    # 4 norms in the history: the spike passes unclipped
    assert last_step([*calm[:4], 9.0]) == (pytest.approx(9.0, rel=1e-6), 0.0)
    # 5 norms: it is clipped to mean + std of the history
    limit = np.mean(calm) + np.std(calm)
    assert last_step([*calm, 9.0]) == (pytest.approx(limit, rel=1e-5), 1.0)


def test_clip_update_norm_in_adam_logs_and_clips():
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.0,
        max_grad_norm=None,
        weight_decay=0.0,
        clip_update_norm=ClipUpdateNormConfig(rolling_interval_length=4, sigma_factor=1.0),
    )
    params = small_params()
    history = run(config.build(6), params, grads_for(params, 6, scales=[1, 1, 1, 1, 1, 1]))
    keys = set(history[-1][2])
    assert {
        "optim/pre_clip_update_norm",
        "optim/post_clip_update_norm",
        "optim/clip_update/did_clip",
        "optim/clip_update/update_norm_threshold",
    } <= keys
    for _, _, m in history:
        assert float(m["optim/post_clip_update_norm"]) <= float(m["optim/pre_clip_update_norm"]) * (
            1 + 1e-6
        )


# --- skip_bad_steps -----------------------------------------------------------------------


def test_skip_step_coercion():
    assert SkipStepConfig.from_bool_int_or_config(False) is None
    assert SkipStepConfig.from_bool_int_or_config(0) is None
    assert SkipStepConfig.from_bool_int_or_config(True) == SkipStepConfig(128, 6.0)
    assert SkipStepConfig.from_bool_int_or_config(1) == SkipStepConfig(128, 6.0)
    assert SkipStepConfig.from_bool_int_or_config(32) == SkipStepConfig(rolling_interval_length=32)
    cfg = SkipStepConfig(16, 2.0)
    assert SkipStepConfig.from_bool_int_or_config(cfg) is cfg
    with pytest.raises(ValueError, match="skip_bad_steps: got -4, .*rolling_interval_length"):
        AdamConfig(skip_bad_steps=-4)


def test_skipped_step_leaves_params_and_inner_state_untouched():
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.0,
        lr_schedule="constant",  # so that a run without step 4 sees the same LRs
        skip_bad_steps=SkipStepConfig(rolling_interval_length=4, sigma_factor=2.0),
    )
    params = small_params()
    # Unit-norm gradients: only the loss decides.
    grads = [
        jax.tree_util.tree_map(lambda x, g=g: x / optax.tree.norm(g), g)
        for g in grads_for(params, 6)
    ]
    losses = [1.0, 1.1, 0.9, 1.05, 50.0, 1.0]  # step 4 is a loss spike
    history = run(config.build(6), params, grads, losses)
    skipped = [float(m["optim/skip_step/skipped"]) for _, _, m in history]
    assert skipped == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    (p3, s3, _), (p4, s4, _) = history[3], history[4]
    assert_trees_close(p3, p4, atol=0)

    def inner(state):
        return state.inner_state.inner_opt_state

    assert_trees_close(inner(s3), inner(s4), atol=0)
    # the LR schedule still advances (its count lives outside the skip wrapper)
    assert int(s4.count) == 5
    # step 5 proceeds from the step-3 state, like a run without step 4 (the same grads)
    ref = run(config.build(6), params, [*grads[:4], grads[5]], [1.0, 1.1, 0.9, 1.05, 1.0])
    ref_params, ref_state, _ = ref[-1]
    assert_trees_close(history[5][0], ref_params, atol=1e-7)
    assert_trees_close(inner(history[5][1]), inner(ref_state), atol=1e-7)


def _unit_norm_grads(params, scales):
    """Gradients whose global norms are exactly `scales`."""
    grads = grads_for(params, len(scales))
    return [
        jax.tree_util.tree_map(lambda x, g=g, s=s: x * s / optax.tree.norm(g), g)
        for g, s in zip(grads, scales, strict=True)
    ]


def test_grad_norm_spike_with_a_flat_loss_is_skipped():
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.0,
        lr_schedule="constant",
        max_grad_norm=None,  # the skip rule sees the raw gradient norm
        skip_bad_steps=SkipStepConfig(rolling_interval_length=4, sigma_factor=2.0),
    )
    params = small_params()
    grads = _unit_norm_grads(params, [1.0, 1.1, 0.9, 1.05, 50.0, 1.0])  # step 4: norm spike
    history = run(config.build(6), params, grads, [1.0] * 6)  # the loss never moves
    skipped = [float(m["optim/skip_step/skipped"]) for _, _, m in history]
    assert skipped == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert_trees_close(history[3][0], history[4][0], atol=0)
    norms = np.array([1.0, 1.1, 0.9, 1.05])
    threshold = float(history[4][2]["optim/skip_step/grad_norm_threshold"])
    assert threshold == pytest.approx(norms.mean() + 2.0 * norms.std(), rel=1e-5)


def test_skip_decision_follows_each_signal_alone():
    from lm.optim.skip_step import SkipStepState, skip_decision

    state = SkipStepState(
        inner_opt_state=(),
        losses=jnp.array([2.0, 2.1, 1.9, 2.0], jnp.float32),
        grad_norms=jnp.array([1.0, 1.1, 0.9, 1.0], jnp.float32),
        index=jnp.array(0, jnp.int32),
        count=jnp.array(4, jnp.int32),
    )

    def skip(loss, norm):
        decision = skip_decision(
            state, jnp.float32(loss), jnp.float32(norm), min_history=2, sigma=3.0
        )
        return bool(decision.skip)

    assert not skip(2.0, 1.0)
    assert skip(2.0, 5.0)  # only the gradient norm spikes
    assert skip(9.0, 1.0)  # only the loss spikes


@pytest.mark.parametrize("calm_steps, skipped", [(4, 0.0), (5, 1.0)])
def test_skip_waits_for_half_the_history(calm_steps, skipped):
    """With a history of 10, nothing is skipped until 10 // 2 = 5 steps are in it."""
    config = AdamConfig(
        learning_rate=1e-2,
        warmup=0.0,
        lr_schedule="constant",
        skip_bad_steps=SkipStepConfig(rolling_interval_length=10, sigma_factor=2.0),
    )
    params = small_params()
    losses = [1.0, 1.1, 0.9, 1.05, 0.95][:calm_steps] + [50.0]  # then a loss spike
    grads = _unit_norm_grads(params, [1.0] * len(losses))
    history = run(config.build(len(losses)), params, grads, losses)
    flags = [float(m["optim/skip_step/skipped"]) for _, _, m in history]
    assert flags == [0.0] * calm_steps + [skipped]


def test_nonfinite_loss_is_skipped_even_without_history():
    config = AdamConfig(learning_rate=1e-2, warmup=0.0, skip_bad_steps=True)
    params = small_params()
    history = run(config.build(2), params, grads_for(params, 2), [float("nan"), 1.0])
    assert float(history[0][2]["optim/skip_step/skipped"]) == 1.0
    assert_trees_close(history[0][0], params, atol=0)
    assert float(history[1][2]["optim/skip_step/skipped"]) == 0.0


def test_skip_step_needs_loss():
    tx = AdamConfig(skip_bad_steps=True).build(10)
    params = small_params()
    with pytest.raises(ValueError, match="Loss must be provided as a keyword argument"):
        tx.update(params, tx.init(params), params)
