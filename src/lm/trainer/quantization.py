"""`trainer.quantization`: fp8 or int8 matmuls in every (or the chosen) `Linear` layer (MP-03).

The config's fields are Haliax's `QuantizationConfig`'s; this class checks them at decode
time (Haliax's own only asserts that fp8 and int8 are not both set) and builds Haliax's.

How a quantized run differs from a plain one, all in the trainer:

- `quantize` swaps each matching `Linear`'s `dot_general` for Haliax's `Fp8DotGeneralOp`
  (delayed scaling: per-layer scales and amax histories for the input, the kernel and the
  output gradient, float32 arrays inside the model) or `Int8DotGeneralOp` (AQT, no state).
- Those ops are `OverwriteWithGradient` modules: the backward pass returns each one's next
  state as its "gradient". `split_overwrites` takes them out of the gradients before the
  optimizer (no optimizer state, no weight decay, not in `optim/grad_norm`) and
  `haliax.quantization.apply_updates` writes them into the new model.
- The state lives in the model, so checkpoints carry it and a resumed run continues with
  the same scales. Evaluation and HF export use the plain weights (`dequantize` in
  `lm.models.layers.linear`): the scales are a training device, not part of the model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import equinox as eqx
import haliax.nn as hnn
import haliax.quantization as hq
import jax
import jax.numpy as jnp

from lm.config.errors import (
    FieldError,
    SetupConfigError,
    did_you_mean,
    invalid,
    raise_problems,
)

_NO_FORMAT = (
    "neither fp8 nor int8 is true: set `fp8: true` or `int8: true` (remove "
    "trainer.quantization for plain matmuls)"
)


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """fp8 or int8 dot-generals for `Linear` layers (Haliax's quantization)."""

    targets: list[str] | str | None = None
    """Which `Linear`s: None for all; a list of layer names (the last part of the path,
    e.g. `[q_proj, up_proj]`); a string is a regular expression matched against the whole
    path (e.g. `transformer\\.layers\\.stacked\\.mlp\\..*`)."""
    amax_history_length: int = 1024
    """fp8: how many steps of absolute maxima each scale is computed from."""
    compute_dtype: str | None = None
    """fp8: the dtype the quantize/dequantize runs in (default: the kernel's dtype)."""
    fp8: bool = False
    """fp8 (e4m3 forward, e5m2 gradients) with delayed scaling."""
    int8: bool = False
    """int8 through AQT."""

    def __post_init__(self):
        problems: list[FieldError] = []
        if self.fp8 and self.int8:
            problems.append(
                invalid("int8", self.int8, "false when fp8 is true (choose one of fp8, int8)")
            )
        elif not (self.fp8 or self.int8):
            # The section's problem (an empty field: the decoder reports it at the section),
            # not fp8's: blaming fp8 would also blame a default the user did not write
            # (`{fp9: true}` would get a second complaint, about fp8).
            problems.append(FieldError("", _NO_FORMAT))
        if not isinstance(self.amax_history_length, int) or self.amax_history_length < 1:
            problems.append(
                invalid("amax_history_length", self.amax_history_length, "an integer >= 1")
            )
        if self.compute_dtype is not None:
            try:
                dtype = jnp.dtype(self.compute_dtype)
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                problems.append(
                    invalid(
                        "compute_dtype",
                        self.compute_dtype,
                        "a float dtype (float32, bfloat16, ...)",
                    )
                )
        if isinstance(self.targets, str):
            try:
                re.compile(self.targets)
            except re.error as e:
                problems.append(
                    invalid("targets", self.targets, f"a valid regular expression ({e})")
                )
        elif self.targets is not None:
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                problems.append(invalid("targets", self.targets, "a non-empty list of layer names"))
        raise_problems(problems)

    def to_haliax(self) -> hq.QuantizationConfig:
        return hq.QuantizationConfig(
            targets=list(self.targets) if isinstance(self.targets, list) else self.targets,
            amax_history_length=self.amax_history_length,
            compute_dtype=self.compute_dtype,
            fp8=self.fp8,
            int8=self.int8,
        )


def check_targets(model: Any, config: QuantizationConfig | hq.QuantizationConfig) -> None:
    """Raise a `SetupConfigError` if `config.targets` selects none of `model`'s `Linear` layers, or one of its
    names is no layer's (a typo would otherwise train unquantized without a word); the error
    lists the layers there are. `model` may be abstract (`eqx.filter_eval_shape`)."""
    paths = linear_paths(model)
    if not paths:
        raise SetupConfigError("trainer.quantization: the model has no Linear layers to quantize")
    names = sorted({p.rsplit(".", 1)[-1] for p in paths})
    targets = config.targets
    if isinstance(targets, list | tuple):
        for i, target in enumerate(targets):
            if target not in names:
                raise SetupConfigError(
                    f"trainer.quantization.targets[{i}]: {target!r} names no Linear layer of "
                    f"the model (its layers: {', '.join(names)}){did_you_mean(target, names)}"
                )
    elif isinstance(targets, str) and not any(re.match(targets, p) for p in paths):
        raise SetupConfigError(
            f"trainer.quantization.targets: {targets!r} matches none of the model's "
            f"{len(paths)} Linear layers (the pattern is matched from the start of paths such "
            f"as {paths[0]!r}; a list names layers: {', '.join(names)})"
        )


def quantize(model: Any, config: QuantizationConfig | hq.QuantizationConfig) -> Any:
    """`model` with the targeted `Linear`s' matmuls quantized (`check_targets` first)."""
    check_targets(model, config)
    hconfig = config.to_haliax() if isinstance(config, QuantizationConfig) else config
    quantized = hq.quantize_linear_layers(model, hconfig)
    assert count_quantized(quantized) > 0, "checked targets selected no layer"
    return quantized


def _is_overwrite(x: Any) -> bool:
    return isinstance(x, hq.OverwriteWithGradient)


def count_quantized(tree: Any) -> int:
    """How many quantized dot-general ops (stacked layers count once) `tree` holds."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=_is_overwrite)
    return sum(1 for leaf in leaves if _is_overwrite(leaf))


def split_overwrites(tree: Any) -> tuple[Any, Any]:
    """(the quantization state, everything else): two trees shaped like `tree`, each with
    None where the other has its part. Without quantization the first is all None and the
    second is `tree` itself (same structure, so optimizer states and checkpoints of plain
    runs are unchanged)."""
    return eqx.partition(tree, _is_overwrite, is_leaf=_is_overwrite)


def linear_paths(model: Any) -> list[str]:
    """Dotted paths of the `Linear` layers in `model` (stacked blocks under `.stacked`)."""
    is_linear = lambda x: isinstance(x, hnn.Linear)  # noqa: E731
    flat, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_linear)
    return [
        ".".join(_key_name(k) for k in path) for path, leaf in flat if isinstance(leaf, hnn.Linear)
    ]


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
