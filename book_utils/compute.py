"""Compute arithmetic: how many FLOPs and seconds training takes, and numbers people
can read. FAQ questions 6 and 18 teach it; chapter 4c extrapolates a measured CPU
rate to a GPU with it."""

from __future__ import annotations


def training_flops(n_params: float, n_tokens: float) -> float:
    """About ``6 · N · T`` floating-point operations to train ``N`` weights on ``T``
    tokens (forward 2, backward 4 per weight and token; attention left out, which is
    fair for short contexts)."""
    if n_params <= 0 or n_tokens < 0:
        raise ValueError(
            f"n_params must be > 0 and n_tokens >= 0, got {n_params}, {n_tokens}"
        )
    return 6.0 * n_params * n_tokens


def training_seconds(
    n_params: float, n_tokens: float, peak_flops: float, mfu: float = 0.4
) -> float:
    """Seconds to train ``n_params`` on ``n_tokens``: :func:`training_flops` divided
    by the sustained rate ``peak_flops × mfu`` (model FLOPs utilisation)."""
    if min(n_params, n_tokens, peak_flops) <= 0 or not 0 < mfu <= 1:
        raise ValueError(
            "n_params, n_tokens and peak_flops must be > 0 and mfu in (0, 1], got "
            f"{n_params}, {n_tokens}, {peak_flops}, {mfu}"
        )
    return training_flops(n_params, n_tokens) / (peak_flops * mfu)


def training_time(
    n_examples: int, tokens_per_example: float, epochs: float, tokens_per_second: float
) -> float:
    """Seconds of training:
    ``examples × tokens per example × epochs / tokens per second``."""
    if min(n_examples, tokens_per_example, epochs) < 0 or tokens_per_second <= 0:
        raise ValueError("sizes must be >= 0 and tokens_per_second > 0")
    return n_examples * tokens_per_example * epochs / tokens_per_second


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest sensible unit: ``"42.0 s"``, ``"3.5 min"``,
    ``"2.1 h"``, ``"12.3 days"``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


def human_bytes(n: float) -> str:
    """``1.2 GB``-style string (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


__all__ = [
    "format_duration",
    "human_bytes",
    "training_flops",
    "training_seconds",
    "training_time",
]
