"""Lion, ADOPT, SGD and Muon against short numpy reference implementations."""

import equinox as eqx
import haliax as hax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_helpers import random_like

import lm.tracker
from lm.optim import (
    AdamConfig,
    AdoptConfig,
    LionConfig,
    MuonConfig,
    SgdConfig,
    map_params,
    param_infos,
)
from lm.optim.muon import muon_labels, newton_schulz

STEPS = 4


def as_dict(tree):
    """{root path: numpy array} for every parameter of a module tree."""
    leaves = jax.tree_util.tree_leaves(tree)
    return {
        info.path: np.asarray(x, np.float64)
        for info, x in zip(param_infos(tree), leaves, strict=True)
    }


def run(config, params, grads):
    tx = config.build(len(grads))

    @eqx.filter_jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params, loss=jnp.float32(1.0))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, g)
    return params


def assert_close(ours: dict, expected: dict, atol):
    assert ours.keys() == expected.keys()
    for k in ours:
        np.testing.assert_allclose(ours[k], expected[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(3)
    return {
        "w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    }


def small_grads(params, n=STEPS):
    return [random_like(params, 100 + i) for i in range(n)]


def lrs(config, n=STEPS):
    schedule = config.lr_scheduler(n)
    return [float(schedule(i)) for i in range(n)]


# --- Lion -----------------------------------------------------------------------------------


def test_lion_matches_reference(small):
    config = LionConfig(
        learning_rate=1e-2, warmup=0.25, weight_decay=0.5, default_weight_decay_mask=False,
        max_grad_norm=None, beta1=0.9, beta2=0.99,
    )  # fmt: skip
    grads = small_grads(small)
    p = {k: np.asarray(v, np.float64) for k, v in small.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    for lr, g in zip(lrs(config), grads, strict=True):
        for k in p:
            gk = np.asarray(g[k], np.float64)
            direction = np.sign(0.9 * m[k] + 0.1 * gk)
            m[k] = 0.99 * m[k] + 0.01 * gk
            p[k] = p[k] - lr * (direction + 0.5 * p[k])
    ours = run(config, small, grads)
    assert_close({k: np.asarray(v) for k, v in ours.items()}, p, atol=1e-6)


# --- ADOPT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [True, False])
def test_adopt_matches_reference(small, clip):
    b1, b2, eps, wd = 0.9, 0.999, 1e-6, 0.1
    config = AdoptConfig(
        learning_rate=1e-2, warmup=0.0, weight_decay=wd, default_weight_decay_mask=False,
        max_grad_norm=None, beta1=b1, beta2=b2, epsilon=eps, clip_normalized_grad=clip,
    )  # fmt: skip
    grads = small_grads(small, 5)
    p = {k: np.asarray(v, np.float64) for k, v in small.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (lr, g) in enumerate(zip(lrs(config, 5), grads, strict=True)):
        for k in p:
            gk = np.asarray(g[k], np.float64)
            if t == 0:  # step 0 only initialises the second moment
                v[k] = gk**2
                update = np.zeros_like(gk)
            else:
                normed = gk / np.maximum(np.sqrt(v[k]), eps)
                if clip:
                    normed = np.clip(normed, -(t**0.25), t**0.25)
                m[k] = b1 * m[k] + (1 - b1) * normed
                update = m[k]
                v[k] = b2 * v[k] + (1 - b2) * gk**2
            p[k] = p[k] - lr * (update + wd * p[k])
    ours = run(config, small, grads)
    assert_close({k: np.asarray(x) for k, x in ours.items()}, p, atol=1e-5)


# --- SGD ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_reference(small, momentum, nesterov):
    config = SgdConfig(
        learning_rate=0.1, warmup=0.0, weight_decay=0.01, default_weight_decay_mask=False,
        max_grad_norm=None, momentum=momentum, nesterov=nesterov,
    )  # fmt: skip
    grads = small_grads(small)
    p = {k: np.asarray(v, np.float64) for k, v in small.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for lr, g in zip(lrs(config), grads, strict=True):
        for k in p:
            gk = np.asarray(g[k], np.float64)
            buf[k] = momentum * buf[k] + gk
            step = gk + momentum * buf[k] if nesterov else buf[k]
            p[k] = p[k] - lr * (step + 0.01 * p[k])
    ours = run(config, small, grads)
    assert_close({k: np.asarray(v) for k, v in ours.items()}, p, atol=1e-6)


# --- Muon -----------------------------------------------------------------------------------

# The Linear weights of the GPT-2-shaped tree and their (rows = Out axes, cols = In axes).
MUON_MATRICES = {
    "transformer.blocks.stacked.attn.c_attn.weight": (["qkv", "heads", "head_size"], ["embed"]),
    "transformer.blocks.stacked.attn.c_proj.weight": (["embed"], ["heads", "head_size"]),
    "transformer.blocks.stacked.mlp.c_fc.weight": (["mlp"], ["embed"]),
    "transformer.blocks.stacked.mlp.c_proj.weight": (["embed"], ["mlp"]),
}


def reference_newton_schulz(x, steps=5, eps=1e-7):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = x / (np.linalg.norm(x) + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def reference_orthogonalize(update: np.ndarray, names: list[str], out, inp):
    """Per-layer NS on the Out x In matrix of a weight with axes `names` (layers first)."""
    order = ["layers", *out, *inp]
    x = np.transpose(update, [names.index(n) for n in order])
    layers, rest = x.shape[0], x.shape[1:]
    rows = int(np.prod(rest[: len(out)]))
    cols = int(np.prod(rest[len(out) :]))
    mats = x.reshape(layers, rows, cols)
    ortho = np.stack([reference_newton_schulz(m) for m in mats]) * np.sqrt(max(1.0, rows / cols))
    return np.transpose(ortho.reshape(x.shape), np.argsort([names.index(n) for n in order]))


def test_newton_schulz_matches_reference_and_orthogonalises():
    rng = np.random.default_rng(0)
    for shape in [(6, 4), (4, 6), (5, 5)]:
        x = rng.normal(size=shape).astype(np.float32)
        ours = np.asarray(newton_schulz(jnp.asarray(x)))
        np.testing.assert_allclose(ours, reference_newton_schulz(x.astype(np.float64)), atol=1e-5)
        s = np.linalg.svd(ours, compute_uv=False)
        assert s.min() > 0.5 and s.max() < 1.3  # NS pushes singular values towards ~1


def test_muon_labels_follow_linear_axes(gpt2_like):
    labels = muon_labels(gpt2_like)
    infos = param_infos(gpt2_like)
    chosen = {i.path for i in infos if _label_of(labels, i.path) == "muon"}
    assert chosen == set(MUON_MATRICES)
    # an LM head Linear is left to Adam
    head = {
        "lm_head": hnn.Linear.init(
            hax.Axis("embed", 4), hax.Axis("vocab", 6), key=jax.random.PRNGKey(0)
        )
    }
    assert muon_labels(head)["lm_head"].weight == "adam"


def _label_of(tree, path):
    node = tree
    for part in path.split("."):
        node = getattr(node, part)
    return node


def test_muon_matches_reference(gpt2_like):
    lr, adam_lr, mu, wd = 0.02, 1e-3, 0.95, 0.1
    b1, b2, eps = 0.9, 0.95, 1e-8
    config = MuonConfig(
        learning_rate=lr, adam_lr=adam_lr, warmup=0.0, lr_schedule="linear", min_lr_ratio=0.5,
        weight_decay=wd, momentum=mu, nesterov=True, max_grad_norm=None,
    )  # fmt: skip
    n = 3
    grads = [random_like(gpt2_like, 200 + i) for i in range(n)]
    axes = {
        info.path: [a.name for a in _label_of(gpt2_like, info.path).axes]
        for info in param_infos(gpt2_like)
    }

    p = as_dict(gpt2_like)
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    schedule = config.lr_scheduler(n)
    for t, g in enumerate(grads, start=1):
        lr_t = float(schedule(t - 1))
        adam_lr_t = lr_t * adam_lr / lr
        gd = as_dict(g)
        for k in p:
            if k in MUON_MATRICES:
                buf[k] = mu * buf[k] + gd[k]
                direction = gd[k] + mu * buf[k]
                out, inp = MUON_MATRICES[k]
                update = reference_orthogonalize(direction, axes[k], out, inp)
                p[k] = p[k] - lr_t * (update + wd * p[k])  # Linear weights are decayed
            else:
                m[k] = b1 * m[k] + (1 - b1) * gd[k]
                v[k] = b2 * v[k] + (1 - b2) * gd[k] ** 2
                mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
                p[k] = p[k] - adam_lr_t * mhat / (np.sqrt(vhat) + eps)  # default mask: no decay
    ours = as_dict(run(config, gpt2_like, grads))
    assert_close(ours, p, atol=1e-5)


def test_muon_kimi_scaling_matches_rms_target():
    rng = np.random.default_rng(5)
    In, Out, Layers = hax.Axis("embed", 8), hax.Axis("mlp", 32), hax.Axis("layers", 2)
    lin = hnn.Linear(
        weight=hax.named(jnp.asarray(rng.normal(size=(2, 32, 8)), jnp.float32), (Layers, Out, In)),
        bias=None,
        In=In,
        Out=Out,
    )
    from lm.optim.muon import orthogonalize_linear_weight

    out = orthogonalize_linear_weight(lin.weight, lin, steps=5, eps=1e-7, kimi_scaling=True)
    # U V^T of a 32x8 matrix has RMS sqrt(8 / (32 * 8)); times 0.2 * sqrt(32) gives ~0.2.
    rms = np.sqrt(np.mean(np.asarray(out.array) ** 2, axis=(1, 2)))
    assert np.all(np.abs(rms - 0.2) < 0.04)
    assert out.axes == lin.weight.axes


@pytest.mark.parametrize(
    "config", [MuonConfig(), AdamConfig(update_rms_clipping=1.0)], ids=["muon", "adam"]
)
def test_partially_trainable_tree(gpt2_like, config):
    # The trainer optimizes only trainable leaves; eqx.filter leaves NamedArray(None) behind.
    trainable = map_params(lambda x, info: "ln_" not in info.path, gpt2_like, default=False)
    params = eqx.filter(gpt2_like, trainable)
    grads = eqx.filter(random_like(gpt2_like, 7), trainable)
    tx = config.build(10)

    @eqx.filter_jit
    def step(grads, params):
        with lm.tracker.capture_metrics():
            updates, _ = tx.update(grads, tx.init(params), params, loss=jnp.float32(1.0))
        return optax.apply_updates(params, updates)

    new = step(grads, params)
    assert new.transformer.ln_f.weight.array is None
    assert np.all(np.isfinite(np.asarray(new.transformer.blocks.stacked.mlp.c_fc.weight.array)))
