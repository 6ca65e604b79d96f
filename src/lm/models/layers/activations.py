"""Activation functions selectable by name (`activation_function:` in model configs).

Names follow Hugging Face `transformers` (`ACT2FN`), so configs convert both ways.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import haliax as hax
from haliax import NamedArray

from lm.config.errors import FieldError, did_you_mean


def _gelu_new(x: NamedArray) -> NamedArray:
    # The tanh approximation GPT-2 was trained with (HF "gelu_new" / "gelu_pytorch_tanh").
    return hax.nn.gelu(x, approximate=True)


def _gelu(x: NamedArray) -> NamedArray:
    return hax.nn.gelu(x, approximate=False)


def _quick_gelu(x: NamedArray) -> NamedArray:
    return x * hax.nn.sigmoid(1.702 * x)


def _relu(x: NamedArray) -> NamedArray:
    return hax.nn.relu(x)


def _silu(x: NamedArray) -> NamedArray:
    return hax.nn.silu(x)


def _tanh(x: NamedArray) -> NamedArray:
    return hax.tanh(x)


class ActivationFunctionEnum(enum.Enum):
    """Activation functions by their Hugging Face names."""

    relu = "relu"
    silu = "silu"
    swish = "swish"
    gelu = "gelu"
    gelu_new = "gelu_new"
    quick_gelu = "quick_gelu"
    tanh = "tanh"

    def to_fn(self) -> Callable[[NamedArray], NamedArray]:
        return _ACTIVATIONS[self]

    @classmethod
    def parse(cls, value: str | ActivationFunctionEnum, *, field: str) -> ActivationFunctionEnum:
        """Coerce a string (YAML or an HF config) to the enum, with a clear error."""
        if isinstance(value, cls):
            return value
        name = _HF_ALIASES.get(str(value), str(value))
        try:
            return cls(name)
        except ValueError:
            names = [m.value for m in cls]
            hint = did_you_mean(str(value), [*names, *_HF_ALIASES])
            raise FieldError(
                field,
                f"unknown activation function {value!r}; allowed: {', '.join(names)}{hint}",
            ) from None


# HF spells the same functions several ways ("gelu_python" is HF's pure-Python exact GELU).
_HF_ALIASES = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new", "gelu_python": "gelu"}

_ACTIVATIONS: dict[ActivationFunctionEnum, Callable[[NamedArray], NamedArray]] = {
    ActivationFunctionEnum.relu: _relu,
    ActivationFunctionEnum.silu: _silu,
    ActivationFunctionEnum.swish: _silu,
    ActivationFunctionEnum.gelu: _gelu,
    ActivationFunctionEnum.gelu_new: _gelu_new,
    ActivationFunctionEnum.quick_gelu: _quick_gelu,
    ActivationFunctionEnum.tanh: _tanh,
}

assert set(_ACTIVATIONS) == set(ActivationFunctionEnum)
