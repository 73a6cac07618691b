"""Small measurements behind the FAQ (chapter 6, "Frequently asked questions").

The source articles answered each of their questions in one sentence. The FAQ answers
them with evidence: a link to the cell of an earlier chapter that measured it, or one of
the small computations below, each cheap enough to run in seconds on a CPU:

- :func:`window_spans` / :func:`owner_window`: long text as overlapping windows with a
  stride (question 12);
- :func:`kfold_macro_f1`: k-fold cross-validation of a classifier (questions 11 and 17);
- :func:`training_time` / :func:`training_flops` (from :mod:`book_utils.compute`):
  how long fine-tuning takes, from tokens and throughput (question 6);
- :func:`quantize_rows_int8` / :func:`weight_bytes`: what shrinking a model to 8 bits
  costs (question 18).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from book_utils.checks import positive_int
from book_utils.compute import (
    format_duration,
    human_bytes,
    training_flops,
    training_time,
)

# --- long text: windows with a stride (FAQ 12) ----------------------------------------


def window_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans that cut ``n_tokens`` tokens into windows of at most
    ``window`` tokens, each repeating the last ``overlap`` tokens of the previous one.

    This is what a fast tokenizer does with
    ``return_overflowing_tokens=True, stride=overlap`` (``window`` is then
    ``max_length`` minus the special tokens). The number of windows is
    ``1 + ceil(max(0, n_tokens - window) / (window - overlap))``; the FAQ checks both
    against the tokenizer.
    """
    n_tokens = int(n_tokens)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    window = positive_int("window", window)
    if (
        isinstance(overlap, bool)
        or not isinstance(overlap, (int, np.integer))
        or not 0 <= overlap < window
    ):
        raise ValueError(
            f"overlap must be an int with 0 <= overlap < window ({window}), "
            f"got {overlap!r}"
        )
    step = window - overlap
    spans, start = [], 0
    while True:
        end = min(start + window, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start += step


def owner_window(spans: Sequence[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """For each token, the window in which it has the most context on its *nearer* side.

    With overlapping windows a token appears in up to two windows; near a window's edge
    it sees little context on that side. Scoring (or labelling) each token only in its
    owner window gives every token one prediction, made where it is farthest from an
    edge. Returns an int array of window indices.
    """
    if not spans:
        raise ValueError("spans is empty")
    best = np.full(n_tokens, -1, dtype=np.int64)
    margin = np.full(n_tokens, -1, dtype=np.int64)
    for w, (start, end) in enumerate(spans):
        if not 0 <= start <= end <= n_tokens:
            raise ValueError(f"span {w} = {(start, end)} lies outside [0, {n_tokens}]")
        pos = np.arange(start, end)
        m = np.minimum(pos - start, end - 1 - pos)
        better = m > margin[start:end]
        best[start:end][better] = w
        margin[start:end][better] = m[better]
    if (best < 0).any():
        raise ValueError(f"token {int(np.flatnonzero(best < 0)[0])} is in no window")
    return best


# --- repetition (FAQ 13) --------------------------------------------------------------


def tfidf_logreg_pipeline(
    C: float = 10.0, *, seed: int = 0, max_features: int = 50_000
):
    """An *unfitted* TF-IDF (words + bigrams) + class-balanced logistic regression with
    inverse regularisation strength ``C``: the baseline of chapter 4's
    :func:`~book_utils.classification.tfidf_logreg`, with ``C`` exposed so that it can
    be tuned."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if not C > 0:
        raise ValueError(
            f"C must be > 0 (smaller = stronger regularisation), got {C!r}"
        )
    return make_pipeline(
        TfidfVectorizer(
            ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=max_features
        ),
        LogisticRegression(
            C=C, class_weight="balanced", max_iter=2000, random_state=seed
        ),
    )


def kfold_macro_f1(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    k: int = 5,
    seed: int = 0,
    C: float = 10.0,
) -> np.ndarray:
    """Stratified ``k``-fold cross-validation of TF-IDF + logistic regression: the ``k``
    macro-F1 scores.

    Each example is predicted exactly once, by the model trained on the other ``k - 1``
    folds; the spread of the ``k`` scores shows how much a single split could mislead.
    ``C`` is the regularisation setting being evaluated (see
    :func:`tfidf_logreg_pipeline`).
    """
    from sklearn.model_selection import StratifiedKFold

    from book_utils.metrics import macro_f1

    k = positive_int("k", k)
    texts, labels = list(texts), np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"texts ({len(texts)}) and labels ({len(labels)}) differ in length"
        )
    counts = np.bincount(labels) if labels.size else np.array([0])
    if k < 2 or counts.min() < k:
        raise ValueError(
            f"k={k}: need k >= 2 and at least k examples of every class "
            f"(class counts {counts.tolist()})"
        )
    scores = []
    for train, test in StratifiedKFold(
        n_splits=k, shuffle=True, random_state=seed
    ).split(texts, labels):
        model = tfidf_logreg_pipeline(C, seed=seed).fit(
            [texts[i] for i in train], labels[train]
        )
        scores.append(
            macro_f1(
                model.predict([texts[i] for i in test]),
                labels[test],
                labels=sorted(set(labels.tolist())),
            )
        )
    return np.array(scores)


# --- cost: time and memory (FAQ 6, 18) ------------------------------------------------


#: Bytes per weight of common storage formats (int4 packs two weights in a byte; scales
#: are extra).
BYTES_PER_WEIGHT = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0, "int4": 0.5}


def weight_bytes(n_params: int, fmt: str) -> float:
    """Bytes that ``n_params`` weights take in format ``fmt`` (a key of
    :data:`BYTES_PER_WEIGHT`)."""
    if fmt not in BYTES_PER_WEIGHT:
        raise ValueError(
            f"unknown format {fmt!r}; choose one of {sorted(BYTES_PER_WEIGHT)}"
        )
    return n_params * BYTES_PER_WEIGHT[fmt]


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation: ``weight ≈ q · scale`` with ``q`` in
    [-127, 127].

    ``scale = max|row| / 127`` per output row, ``q = round(weight / scale)``. Returns
    ``(q, scale)``; :func:`dequantize_rows_int8` maps them back. The rounding error of
    each weight is at most ``scale / 2``.
    """
    if (
        not isinstance(weight, torch.Tensor)
        or weight.dim() != 2
        or not weight.is_floating_point()
    ):
        raise ValueError(
            "weight must be a 2-D floating-point tensor (out_features, in_features)"
        )
    scale = (
        weight.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
        / 127.0
    )
    q = torch.round(weight / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q · scale`` in float32: the weights an int8 model computes with."""
    return q.to(torch.float32) * scale


def simulate_int8_linear(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` weight of ``model`` by its int8 round trip, in place
    (a simulation of weight-only int8 quantisation); returns the number of weights
    quantised."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(
                    dequantize_rows_int8(*quantize_rows_int8(module.weight))
                )
                count += module.weight.numel()
    return count


__all__ = [
    "BYTES_PER_WEIGHT",
    "dequantize_rows_int8",
    "human_bytes",
    "format_duration",
    "kfold_macro_f1",
    "owner_window",
    "quantize_rows_int8",
    "simulate_int8_linear",
    "tfidf_logreg_pipeline",
    "training_flops",
    "training_time",
    "weight_bytes",
    "window_spans",
]
