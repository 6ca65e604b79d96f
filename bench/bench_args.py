"""Argument types shared by the bench scripts: a bad count is argparse's one-line usage
error (exit 2) before anything runs, e.g. `argument --repeats: 0: must be >= 1`."""

from __future__ import annotations

import argparse


def _int_at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: must be >= {least}")
        return value

    parse.__name__ = f"int >= {least}"
    return parse


positive_int = _int_at_least(1)
"""`type=` for counts that must be at least 1 (steps, repeats, sizes)."""

non_negative_int = _int_at_least(0)
"""`type=` for counts that may be 0 (warm-up steps)."""
