"""Rotary position embeddings (RoPE) and their frequency-scaling variants (`rope:`).

Choices (`type:`), following HF `transformers`' `rope_parameters`:
- `default`: `theta` (10000); a `factor` other than 1 divides every frequency (linear
  position interpolation).
- `linear`: the same with HF's name for it.
- `llama3`: Llama 3.1's piecewise scaling (`factor`, `low_freq_factor`, `high_freq_factor`,
  `original_max_position_embeddings`).
- `yarn`: YaRN's ramp between interpolated and extrapolated frequencies, with an
  attention factor applied to cos/sin.

Rotation uses HF's "rotate half" layout: head dimension i pairs with i + head_dim/2, so
HF q/k projection weights load without permutation. cos/sin are computed in float32 and
cast to the activations' dtype, as HF does.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Any

import draccus
import haliax as hax
import jax.numpy as jnp
import numpy as np
from haliax import Axis, NamedArray

from lm.config import FieldError, invalid, raise_problems


@dataclasses.dataclass(frozen=True)
class RotaryEmbeddingsConfig(draccus.ChoiceRegistry, abc.ABC):
    """Base of the RoPE variants; `type: default` when omitted."""

    theta: float = 10000.0
    """Base wavelength (HF `rope_theta`)."""

    @classmethod
    def default_choice_name(cls) -> str | None:
        return "default"

    @abc.abstractmethod
    def frequencies(self, head_dim: int) -> tuple[np.ndarray, float]:
        """(inverse frequencies [head_dim // 2] float32, attention factor for cos/sin)."""

    @abc.abstractmethod
    def to_hf_rope_parameters(self) -> dict[str, Any]:
        """HF `rope_parameters` (transformers >= 5)."""

    def __post_init__(self):
        raise_problems(self._field_problems())

    def _field_problems(self) -> list[FieldError]:
        """Every invalid field, each a `FieldError` naming it, so that a YAML run reports all
        of them at `model.rope.<field>`. Each check keeps the frequencies finite and
        positive; subclasses extend `super()`'s list."""
        return _positive_problems(self, "theta")

    @staticmethod
    def from_hf_rope_parameters(params: dict[str, Any] | None) -> RotaryEmbeddingsConfig:
        """Parse HF `rope_parameters`; unknown rope types are an error."""
        params = dict(params or {})
        rope_type = params.get("rope_type", params.get("type", "default"))
        theta = float(params.get("rope_theta", 10000.0))
        if rope_type == "default":
            return DefaultRotaryEmbeddingsConfig(theta=theta)
        if rope_type == "linear":
            return LinearRotaryEmbeddingsConfig(theta=theta, factor=float(params["factor"]))
        if rope_type == "llama3":
            return Llama3RotaryEmbeddingsConfig(
                theta=theta,
                factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            )
        if rope_type == "yarn":
            return YarnRotaryEmbeddingsConfig(
                theta=theta,
                factor=float(params["factor"]),
                beta_fast=float(params.get("beta_fast") or 32.0),
                beta_slow=float(params.get("beta_slow") or 1.0),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]),
                mscale=params.get("mscale"),
                mscale_all_dim=params.get("mscale_all_dim"),
                attention_factor=params.get("attention_factor"),
                truncate=bool(params.get("truncate", True)),
            )
        raise ValueError(
            f"HF rope_type {rope_type!r} is not supported; supported: default, linear, llama3, yarn"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_problems(config: RotaryEmbeddingsConfig, *names: str) -> list[FieldError]:
    """Fields that divide a frequency or a wavelength (or go through a log) must be > 0."""
    return [
        invalid(name, value, "a number > 0")
        for name in names
        if not (_is_number(value := getattr(config, name)) and value > 0)
    ]


def _base_inv_freq(theta: float, head_dim: int) -> np.ndarray:
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


@RotaryEmbeddingsConfig.register_subclass("default")
@dataclasses.dataclass(frozen=True)
class DefaultRotaryEmbeddingsConfig(RotaryEmbeddingsConfig):
    factor: float = 1.0
    """Positions are divided by this (linear interpolation); 1 means plain RoPE."""

    def _field_problems(self) -> list[FieldError]:
        return super()._field_problems() + _positive_problems(self, "factor")

    def frequencies(self, head_dim: int) -> tuple[np.ndarray, float]:
        return (_base_inv_freq(self.theta, head_dim) / np.float32(self.factor)).astype(
            np.float32
        ), 1.0

    def to_hf_rope_parameters(self) -> dict[str, Any]:
        if self.factor == 1.0:
            return {"rope_type": "default", "rope_theta": self.theta}
        return {"rope_type": "linear", "rope_theta": self.theta, "factor": self.factor}


@RotaryEmbeddingsConfig.register_subclass("linear")
@dataclasses.dataclass(frozen=True)
class LinearRotaryEmbeddingsConfig(DefaultRotaryEmbeddingsConfig):
    """`default` under HF's name for linear position interpolation."""


@RotaryEmbeddingsConfig.register_subclass("llama3")
@dataclasses.dataclass(frozen=True)
class Llama3RotaryEmbeddingsConfig(RotaryEmbeddingsConfig):
    theta: float = 500000.0
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems()
        positive = _positive_problems(
            self, "factor", "low_freq_factor", "original_max_position_embeddings"
        )
        problems += positive
        # compared with low_freq_factor only once that is valid itself
        low_ok = not any(p.field == "low_freq_factor" for p in positive)
        high = self.high_freq_factor
        if not _is_number(high) or (low_ok and not high > self.low_freq_factor):
            expected = "a number"
            if low_ok:
                expected += f" greater than low_freq_factor ({self.low_freq_factor})"
            problems.append(invalid("high_freq_factor", high, expected))
        return problems

    def frequencies(self, head_dim: int) -> tuple[np.ndarray, float]:
        inv_freq = _base_inv_freq(self.theta, head_dim)
        old_len = self.original_max_position_embeddings
        low_freq_wavelen = old_len / self.low_freq_factor
        high_freq_wavelen = old_len / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (old_len / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0

    def to_hf_rope_parameters(self) -> dict[str, Any]:
        return {
            "rope_type": "llama3",
            "rope_theta": self.theta,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@RotaryEmbeddingsConfig.register_subclass("yarn")
@dataclasses.dataclass(frozen=True)
class YarnRotaryEmbeddingsConfig(RotaryEmbeddingsConfig):
    factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 2048
    mscale: float | None = 1.0
    """With `mscale_all_dim`, the attention factor is get_mscale(factor, mscale) /
    get_mscale(factor, mscale_all_dim) (DeepSeek style); otherwise 0.1 * ln(factor) + 1."""
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    """Explicit cos/sin scale; overrides the mscale rule."""
    truncate: bool = True
    """Round the correction range to whole dimensions (HF default)."""

    def _field_problems(self) -> list[FieldError]:
        problems = super()._field_problems() + _positive_problems(
            self, "factor", "beta_fast", "beta_slow", "original_max_position_embeddings"
        )
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value >= 0):
                problems.append(invalid(name, value, "a number >= 0 or null"))
        return problems

    def frequencies(self, head_dim: int) -> tuple[np.ndarray, float]:
        dim, base, factor = head_dim, self.theta, self.factor

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention_factor = self.attention_factor
        if attention_factor is None:
            if self.mscale and self.mscale_all_dim:
                attention_factor = get_mscale(factor, self.mscale) / get_mscale(
                    factor, self.mscale_all_dim
                )
            else:
                attention_factor = get_mscale(factor)

        def correction_dim(rotations):
            orig = self.original_max_position_embeddings
            return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation_weight = 1 - ramp
        pos_freqs = np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
        extrapolated = 1.0 / pos_freqs
        interpolated = 1.0 / (factor * pos_freqs)
        inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
        return inv_freq.astype(np.float32), float(attention_factor)

    def to_hf_rope_parameters(self) -> dict[str, Any]:
        params = {
            "rope_type": "yarn",
            "rope_theta": self.theta,
            "factor": self.factor,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "truncate": self.truncate,
        }
        for name in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params


def apply_rotary(
    x: NamedArray,
    *,
    HeadSize: Axis,
    Pos: Axis,
    config: RotaryEmbeddingsConfig,
    positions: NamedArray | None = None,
) -> NamedArray:
    """Rotate `x` (..., Pos, HeadSize) by its positions (default 0..Pos-1)."""
    inv_freq, attention_factor = config.frequencies(HeadSize.size)
    Pos = x.resolve_axis(Pos.name)
    if positions is None:
        positions = hax.arange(Pos)
    freqs = positions.array.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = hax.named(jnp.concatenate([freqs, freqs], axis=-1), (*positions.axes, HeadSize))
    cos = (hax.cos(emb) * attention_factor).astype(x.dtype)
    sin = (hax.sin(emb) * attention_factor).astype(x.dtype)
    first, second = x[HeadSize.name, : HeadSize.size // 2], x[HeadSize.name, HeadSize.size // 2 :]
    rotated = hax.concatenate(HeadSize.name, [-second, first])
    return x * cos + rotated * sin
