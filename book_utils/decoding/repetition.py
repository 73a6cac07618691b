"""Measuring repetition in generated text: distinct-n (over a set of sequences) and the
repeated n-gram rate (within one sequence).

Taught in chapter 5.1, book/05_deployment/01_decoding.ipynb ("Measuring repetition").
"""

from __future__ import annotations

from collections.abc import Sequence

# --- repetition -----------------------------------------------------------------------


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The n-grams of ``tokens`` in order (overlapping)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams, pooled over
    ``sequences``; 1 = nothing repeats."""
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    if not grams:
        raise ValueError(f"no {n}-grams: the sequences are all shorter than {n} tokens")
    return len(set(grams)) / len(grams)


def repeated_ngram_rate(tokens: Sequence, n: int) -> float:
    """Fraction of a sequence's n-grams that already occurred earlier in the *same*
    sequence (loops, stutters)."""
    grams = ngrams(tokens, n)
    if not grams:
        raise ValueError(f"a sequence of {len(tokens)} tokens has no {n}-grams")
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)
