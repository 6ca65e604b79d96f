"""Field checks that the transformer configs share (GPT-2, Llama and its family).

Each returns the problems it finds as `FieldError`s, so that a config reports every bad field
of one section in one run (`LmConfig._field_problems`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lm.config import FieldError, field_problem, invalid
from lm.config.errors import is_count
from lm.models.layers.activations import ActivationFunctionEnum
from lm.models.layers.attention import validate_attention_backend


def positive_int_problems(config: Any, names: Iterable[str]) -> list[FieldError]:
    """Sizes and counts that must be positive ints (a bool is not one)."""
    problems = []
    for name in names:
        value = getattr(config, name)
        if not is_count(value):
            problems.append(invalid(name, value, "a positive int"))
    return problems


def norm_and_init_problems(config: Any) -> list[FieldError]:
    """`layer_norm_epsilon` (finite, > 0) and `initializer_range` (finite, >= 0)."""
    problems = []
    eps = config.layer_norm_epsilon
    if not (math.isfinite(eps) and eps > 0):
        problems.append(invalid("layer_norm_epsilon", eps, "a finite number > 0"))
    scale = config.initializer_range
    if not (math.isfinite(scale) and scale >= 0):
        problems.append(invalid("initializer_range", scale, "a finite number >= 0"))
    return problems


def activation_problems(config: Any) -> list[FieldError]:
    """Parses `activation_function` to its enum in place; an unknown name is the problem."""
    return field_problem(
        lambda: object.__setattr__(
            config,
            "activation_function",
            ActivationFunctionEnum.parse(config.activation_function, field="activation_function"),
        )
    )


def attention_backend_problems(config: Any) -> list[FieldError]:
    """Parses `attn_backend` to its enum in place, and checks `flash_attention_block_size`."""
    problems = field_problem(
        lambda: object.__setattr__(
            config, "attn_backend", validate_attention_backend(config.attn_backend)
        )
    )
    block = config.flash_attention_block_size
    if block is not None and block <= 0:
        problems.append(invalid("flash_attention_block_size", block, "a positive int or null"))
    return problems
