"""Leaf codecs registered with draccus: durations, jmp mixed-precision policies, paths.

`register()` installs them in `draccus.decode` / `draccus.encode`; `lm.config` calls it on
import (the one import side effect the package allows), so both our decoder and plain
`draccus.decode` / `draccus.dump` understand these types.

Durations: `15m`, `1h30m`, `90s`, `2d`, `500ms`, `1.5h`, `1w`; a plain number is seconds.
Units: w, d, h, m (minutes), s, ms, us. A duration encodes back to the compact form
(`1h30m`), which decodes to the same `timedelta`.

Mixed precision (jmp grammar): comma-separated `key=dtype` with keys `p`/`params`,
`c`/`compute`, `o`/`output`, or a bare dtype for all three. Dtypes: `full`/`f32`/`float32`,
`bf16`/`bfloat16`, `f16`/`float16`, `f64`/`float64`, and `half` (bfloat16 on TPU, float16
elsewhere). Params default to f32, compute follows params, output follows compute. A policy
encodes back to `p=..,c=..,o=..`. A policy with `half` in it is a `HalfPolicy`, which keeps
`half` symbolic until a dtype is read (see there): parsing never touches the devices.
"""

from __future__ import annotations

import datetime
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import draccus
import jax.numpy as jnp
import jmp

from lm.config.errors import did_you_mean

# ---------------------------------------------------------------------------------------------
# Durations

_UNIT_SECONDS = {
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
}
_UNIT_ALIASES = {
    "week": "w",
    "weeks": "w",
    "day": "d",
    "days": "d",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "msec": "ms",
    "millisecond": "ms",
    "milliseconds": "ms",
    "usec": "us",
    "microsecond": "us",
    "microseconds": "us",
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)")
_DURATION_HELP = "a duration like 15m, 1h30m, 90s, 2d or 500ms (units w, d, h, m, s, ms, us)"


def parse_duration(raw: Any) -> datetime.timedelta:
    """A `timedelta` from a duration string (`1h30m`) or a number of seconds."""
    if isinstance(raw, datetime.timedelta):
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"expected {_DURATION_HELP}, got {raw!r}")
    if isinstance(raw, int | float):
        return _seconds(raw, raw)
    text = raw.strip()
    try:
        return _seconds(float(text), raw)
    except ValueError:
        pass
    total, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {raw!r}: expected {_DURATION_HELP}")
        number, unit = match.groups()
        key = _UNIT_ALIASES.get(unit.lower(), unit.lower())
        if key not in _UNIT_SECONDS:
            raise ValueError(
                f"invalid duration {raw!r}: unknown unit {unit!r}; expected {_DURATION_HELP}"
            )
        total += float(number) * _UNIT_SECONDS[key]
        pos = match.end()
        while pos < len(text) and text[pos] in " ,":
            pos += 1
    if pos == 0:
        raise ValueError(f"invalid duration {raw!r}: expected {_DURATION_HELP}")
    return _seconds(total, raw)


def _seconds(seconds: float, raw: Any) -> datetime.timedelta:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {raw!r}: must be a finite, non-negative time")
    return datetime.timedelta(seconds=seconds)


def format_duration(value: datetime.timedelta) -> str:
    """The compact form of a duration: `timedelta(minutes=90)` -> `1h30m`."""
    if value < datetime.timedelta(0):
        raise ValueError(f"cannot encode the negative duration {value}")
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    if micros == 0:
        return "0s"
    parts = []
    for unit, size in (
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
        ("us", 1),
    ):
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _decode_duration(raw: Any, path: Sequence[str] = ()) -> datetime.timedelta:
    return parse_duration(raw)


def _encode_duration(value: datetime.timedelta, declared_type: Any = None) -> str:
    return format_duration(value)


# ---------------------------------------------------------------------------------------------
# jmp mixed-precision policies

_DTYPE_NAMES = {
    "full": jnp.float32,
    "f32": jnp.float32,
    "float32": jnp.float32,
    "bf16": jnp.bfloat16,
    "bfloat16": jnp.bfloat16,
    "f16": jnp.float16,
    "float16": jnp.float16,
    "f64": jnp.float64,
    "float64": jnp.float64,
}
_CANONICAL = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}
_POLICY_KEYS = {
    "p": "params",
    "params": "params",
    "c": "compute",
    "compute": "compute",
    "o": "output",
    "output": "output",
}
_POLICY_HELP = (
    "a jmp policy like p=f32,c=bfloat16 (keys p/params, c/compute, o/output) or a bare dtype"
)
_DTYPE_HELP = "full, f32, float32, bf16, bfloat16, f16, float16, f64, float64 or half"


HALF = "half"
_ROLES = frozenset({"param_dtype", "compute_dtype", "output_dtype"})


class HalfPolicy(jmp.Policy):
    """A `jmp.Policy` with `half` in it, resolved when a dtype is read.

    `half` is bfloat16 on TPU and float16 elsewhere, which only the backend knows. Asking it
    while parsing (`jmp.half_dtype()` reads `jax.local_devices()`) would start the XLA backend,
    and a later `jax.distributed.initialize()` would then fail (DST-03). So the roles given as
    `half` hold the string until `param_dtype`/`compute_dtype`/`output_dtype` is read, which
    happens after `TrainerConfig.initialize()`. It encodes back to `half`.
    """

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        # A dtype is never a str here; `np.dtype("float16") == "half"` is why this isn't `==`.
        if name in _ROLES and isinstance(value, str):
            return jmp.half_dtype()
        return value

    def _spelled(self) -> tuple[Any, Any, Any]:
        return tuple(object.__getattribute__(self, role) for role in sorted(_ROLES))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HalfPolicy) and self._spelled() == other._spelled():
            return True
        if not isinstance(other, jmp.Policy):
            return NotImplemented
        return (self.param_dtype, self.compute_dtype, self.output_dtype) == (
            other.param_dtype,
            other.compute_dtype,
            other.output_dtype,
        )

    def __hash__(self) -> int:
        return hash((self.param_dtype, self.compute_dtype, self.output_dtype))

    def __str__(self) -> str:
        return format_policy(self)

    def __repr__(self) -> str:
        return f"HalfPolicy({format_policy(self)!r})"


def _parse_dtype(name: str, raw: str):
    key = name.strip().lower()
    if key == HALF:
        return HALF
    if key in _DTYPE_NAMES:
        return _DTYPE_NAMES[key]
    raise ValueError(
        f"unknown dtype {name.strip()!r} in mixed-precision policy {raw!r}; "
        f"allowed dtypes: {_DTYPE_HELP}{did_you_mean(key, [*_DTYPE_NAMES, HALF])}"
    )


def parse_policy(raw: Any) -> jmp.Policy:
    """A `jmp.Policy` from a policy string (`p=f32,c=bfloat16`, `bf16`)."""
    if isinstance(raw, jmp.Policy):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected {_POLICY_HELP}, got {raw!r}")
    if "=" not in raw:
        dtype = _parse_dtype(raw, raw)
        return _policy(dtype, dtype, dtype)
    chosen: dict[str, Any] = {}
    for part in raw.split(","):
        if "=" not in part:
            raise ValueError(
                f"malformed part {part.strip()!r} in mixed-precision policy {raw!r}; "
                f"expected {_POLICY_HELP}"
            )
        key, value = (s.strip() for s in part.split("=", 1))
        role = _POLICY_KEYS.get(key.lower())
        if role is None:
            raise ValueError(
                f"unknown key {key!r} in mixed-precision policy {raw!r}; allowed keys: "
                "p (params), c (compute), o (output)"
            )
        if role in chosen:
            raise ValueError(f"{role} is given twice in mixed-precision policy {raw!r}")
        chosen[role] = _parse_dtype(value, raw)
    params = chosen.get("params", jnp.float32)
    compute = chosen.get("compute", params)
    output = chosen.get("output", compute)
    return _policy(params, compute, output)


def _policy(params: Any, compute: Any, output: Any) -> jmp.Policy:
    cls = HalfPolicy if HALF in (params, compute, output) else jmp.Policy
    return cls(param_dtype=params, compute_dtype=compute, output_dtype=output)


def _dtype_short(dtype: Any) -> str:
    if isinstance(dtype, str):  # HalfPolicy's unresolved `half`
        return dtype
    name = jnp.dtype(dtype).name
    if name not in _CANONICAL:
        raise ValueError(f"dtype {name} cannot be written in a jmp policy string")
    return _CANONICAL[name]


def format_policy(policy: jmp.Policy) -> str:
    """The canonical string of a policy: `p=f32,c=bf16,o=bf16` (`half` stays `half`)."""
    read = object.__getattribute__  # a HalfPolicy's own spelling, without resolving `half`
    return (
        f"p={_dtype_short(read(policy, 'param_dtype'))},"
        f"c={_dtype_short(read(policy, 'compute_dtype'))},"
        f"o={_dtype_short(read(policy, 'output_dtype'))}"
    )


def _decode_policy(raw: Any, path: Sequence[str] = ()) -> jmp.Policy:
    return parse_policy(raw)


def _encode_policy(value: jmp.Policy, declared_type: Any = None) -> str:
    return format_policy(value)


# ---------------------------------------------------------------------------------------------
# Paths


def _decode_path(raw: Any, path: Sequence[str] = ()) -> pathlib.Path:
    if isinstance(raw, pathlib.PurePath):
        return pathlib.Path(raw)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a non-empty path string, got {raw!r}")
    return pathlib.Path(raw)


def _encode_path(value: pathlib.PurePath, declared_type: Any = None) -> str:
    return str(value)


def register() -> None:
    """Install the codecs in draccus's registries (idempotent)."""
    draccus.decode.register(datetime.timedelta, _decode_duration)
    draccus.encode.register(datetime.timedelta, _encode_duration)
    draccus.decode.register(jmp.Policy, _decode_policy)
    draccus.encode.register(jmp.Policy, _encode_policy, include_subclasses=True)
    draccus.decode.register(pathlib.Path, _decode_path)
    draccus.encode.register(pathlib.PurePath, _encode_path, include_subclasses=True)
