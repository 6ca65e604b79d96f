"""An independent FLOP count: walk a jaxpr and count every dot_general (2 per multiply-add)."""

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


def _subjaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item
