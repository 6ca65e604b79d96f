"""Test helpers: an independent FLOP count (every dot_general in a jaxpr, 2 per multiply-add)
and cheap random models."""

import math

import jax


def matmul_flops(fn, *args) -> int:
    closed = jax.make_jaxpr(fn)(*args)
    return _count(closed.jaxpr)


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contract = math.prod(lhs_shape[i] for i in lhs_contract)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * contract
            continue
        if eqn.primitive.name == "while":
            raise AssertionError("cannot count FLOPs through a while loop (unknown trip count)")
        inner = sum(_count(sub) for sub in _subjaxprs(eqn.params))
        if eqn.primitive.name == "scan":
            inner *= eqn.params["length"]
        total += inner
    return total


def all_eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in its equations (jit, scan, remat,
    custom_vjp, ...), outermost first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in _subjaxprs(eqn.params):
            yield from all_eqns(sub)


def _subjaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def random_model(config, Vocab, seed: int = 0, std: float = 0.05):
    """A model of `config` with numpy-random weights: same structure as `config.build`, without
    compiling the initialiser (XLA RNG graphs dominate the cost of tiny test models).

    Weights are normal(0, std); norm weights are 1 + normal(0, std).
    """
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    from lm.models.layers.normalization import LayerNorm, RmsNorm

    rng = np.random.default_rng(seed)
    template = eqx.filter_eval_shape(config.build, Vocab, key=jax.random.PRNGKey(0))

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.normal(0.0, std, x.shape).astype(x.dtype))
        return x

    def norms_near_one(node):
        if isinstance(node, (LayerNorm, RmsNorm)) and node.weight is not None:
            return eqx.tree_at(lambda n: n.weight, node, node.weight + 1.0)
        return node

    model = jax.tree_util.tree_map(fill, template)
    return jax.tree_util.tree_map(
        norms_near_one, model, is_leaf=lambda n: isinstance(n, (LayerNorm, RmsNorm))
    )


def stacked_residuals(config, Vocab, tokens) -> list[str]:
    """The residuals the loss's backward pass keeps stacked by the scan over layers, one line
    each (`jax.ad_checkpoint.print_saved_residuals`), for `config`'s remat policy."""
    import contextlib
    import io

    import equinox as eqx

    from lm.models import LmExample, compute_next_token_loss

    model = config.build(Vocab, key=jax.random.PRNGKey(0))
    example = LmExample.causal(tokens)
    params, static = eqx.partition(model, eqx.is_array)

    def loss(p):
        return compute_next_token_loss(eqx.combine(p, static), example).array

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss, params)
    return [
        line
        for line in printed.getvalue().splitlines()
        if "output of scan" in line and f"[{config.num_layers}," in line.split()[0]
    ]
