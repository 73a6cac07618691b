"""Argument checks that every module shares, so one kind of bad input always gets one
error message that names the argument (CONTRIBUTING.md, "Bad input")."""

from __future__ import annotations

import numbers


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` if it is a whole number >= 1 (numpy integers included,
    ``bool`` excluded); otherwise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


__all__ = ["positive_int"]
