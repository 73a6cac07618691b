"""Statistics that decide: how many items an interval of a given width needs, and
McNemar's exact test for two systems scored on the same items.

Taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb ("How many items?", "Two models
on the same items").
"""

from __future__ import annotations

import math

import numpy as np

# --- statistics -----------------------------------------------------------------------


def items_for_halfwidth(halfwidth: float, p: float = 0.5, *, z: float = 1.96) -> int:
    """Items needed for a 95 % (``z`` = 1.96) interval of ± ``halfwidth`` around an
    accuracy near ``p``: the normal approximation n = z² p(1 − p) / halfwidth²."""
    if not 0 < halfwidth < 1 or not 0 < p < 1:
        raise ValueError(f"need 0 < halfwidth < 1 and 0 < p < 1, got {halfwidth}, {p}")
    return math.ceil(z * z * p * (1 - p) / halfwidth**2)


def mcnemar_exact(correct_a, correct_b) -> dict[str, float]:
    """McNemar's exact test for two systems scored on the same items: only the items on
    which they disagree count; under "equally good" each such item favours A with
    probability ½. Returns ``a_only``, ``b_only`` and the two-sided ``p_value``."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"score the same items: {a.shape} against {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}
