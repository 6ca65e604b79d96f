"""Byte sizes as people write them: `16GiB`, `80GB`, `512MiB`, `1.5TB`, `1024`."""

from __future__ import annotations

import difflib
import re

_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
ALLOWED = (
    "a number of bytes with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, "
    "TiB (powers of 1024), e.g. 16GiB or 80GB"
)


def parse_size(text: str | int) -> int:
    """The number of bytes `text` names, e.g. `parse_size("16GiB") == 16 * 2**30`.

    A bare number is bytes. Units are case-sensitive where case matters (`MB` vs `Mb` is
    a classic megabit mix-up), so `16gib` is rejected with a did-you-mean.

    Raises:
        ValueError: not a positive size, or an unknown unit.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size, got {text!r}; {ALLOWED}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"a size must be positive, got {text}")
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"cannot read {text!r} as a size; expected {ALLOWED}")
    number, unit = float(match.group(1)), match.group(2) or "B"
    if unit not in _UNITS:
        by_lower = {u.lower(): u for u in _UNITS}
        guess = by_lower.get(unit.lower()) or by_lower.get(unit.lower() + "b")
        if guess is None:
            close = difflib.get_close_matches(unit, list(_UNITS), n=1)
            guess = close[0] if close else None
        hint = f" (did you mean {match.group(1)}{guess}?)" if guess else ""
        raise ValueError(f"unknown size unit {unit!r} in {text!r}{hint}; expected {ALLOWED}")
    size = int(round(number * _UNITS[unit]))
    if size <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return size


def format_size(num_bytes: float) -> str:
    """`format_size(3 * 2**30) == "3.00 GiB"`: binary units, three significant digits."""
    value = float(num_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{sign}{value:.{digits}f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(n: float) -> str:
    """`format_count(124_439_808) == "124.4M"`."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:g}"
