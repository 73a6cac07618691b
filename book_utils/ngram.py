"""Character n-gram language models with add-k and interpolated Kneser-Ney smoothing
(taught in chapter 1).

An n-gram model predicts the next character from the previous ``order - 1`` characters.
Training is nothing but counting, so it is the natural first language model of the book
and the baseline that the neural model of chapter 3 must beat, measured in bits per
character (BPC) on the held-out test plays.

- :func:`count_ngrams` counts every n-gram of length 1 … ``max_order`` once; the counts
  can be shared by models of every order and smoothing (:meth:`CharNGramLM.fit` accepts
  them instead of text).
- :class:`CharNGramLM` turns counts into probabilities with add-k (Laplace when
  ``k = 1``) or interpolated Kneser-Ney smoothing (Kneser & Ney 1995, in the form of
  Chen & Goodman 1999), evaluates text (:meth:`~CharNGramLM.evaluate`) and samples from
  it (:meth:`~CharNGramLM.sample`).
- :func:`perplexity` and :func:`bits_per_char` convert a mean negative log-likelihood in
  nats.
- :data:`SHAKESPEARE_BASELINE` records the model chapter 1 chose on the validation
  plays.

The vocabulary is the set of training characters plus one unknown symbol :data:`UNK`, so
a held-out character never seen in training still gets a probability above zero
(otherwise the perplexity of any text containing it would be infinite).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from book_utils.checks import positive_int

#: The unknown symbol ``<unk>``: every character outside the training vocabulary is
#: mapped to it.
UNK = "\ufffd"
SMOOTHINGS = ("add_k", "kneser_ney")
#: The chapter-1 baseline, chosen on the validation plays (lowest validation BPC over
#: orders 1-8, add-k with k in {1, 0.01} and Kneser-Ney with D in {0.75, 0.9}; test BPC
#: 2.243 on Hamlet + The Tempest). Chapter 3 refits it with
#: ``CharNGramLM(**SHAKESPEARE_BASELINE).fit(train)`` and compares on the same test
#: plays.
SHAKESPEARE_BASELINE = {"order": 7, "smoothing": "kneser_ney", "discount": 0.9}


def perplexity(nll_nats: float) -> float:
    """Per-symbol perplexity ``exp(NLL)`` from a mean negative log-likelihood in nats
    (chapter 1).

    A model that is uniform over V symbols has NLL = ln V and therefore perplexity V:
    perplexity is the size of the uniform choice the model is, on average, as uncertain
    as.
    """
    nll_nats = _check_nll(nll_nats)
    return math.exp(nll_nats)


def bits_per_char(nll_nats: float, n_chars: int = 1) -> float:
    """Bits per character ``NLL / (n_chars · ln 2)``: ``nll_nats`` is the negative
    log-likelihood in nats of ``n_chars`` characters (the default ``n_chars=1`` takes a
    mean per character). Chapter 1 teaches it; every chapter's character-level
    comparison uses this one function.

    BPC is the average code length, in bits, an ideal coder built on the model needs per
    character (Shannon 1948); it compares models whatever their tokenizer.
    """
    nll_nats = _check_nll(nll_nats)
    n_chars = positive_int("n_chars", n_chars)
    return nll_nats / n_chars / math.log(2)


def _check_nll(nll_nats: float) -> float:
    if isinstance(nll_nats, bool) or not isinstance(
        nll_nats, (int, float, np.floating, np.integer)
    ):
        raise TypeError(
            "the negative log-likelihood must be a number (nats per symbol), got "
            f"{type(nll_nats).__name__}"
        )
    if -1e-12 < nll_nats < 0:  # a probability that rounded to just above 1
        return 0.0
    if math.isnan(nll_nats) or nll_nats < 0:
        raise ValueError(
            f"a mean negative log-likelihood is >= 0 nats, got {nll_nats!r}"
        )
    return float(nll_nats)


def _check_text(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} is empty: give at least one character")
    return text


@dataclass(frozen=True)
class NGramCounts:
    """All n-gram counts of a training text up to ``max_order``: the whole of an n-gram
    model's training.

    ``raw[m]`` maps each m-gram (a string of m characters) to how often it occurs;
    ``continuation[m]`` maps each m-gram to the number of *different* characters that
    precede it in the text (Kneser-Ney's continuation count N1+(• w)), for m <
    ``max_order``. Built by :func:`count_ngrams` (chapter 1).
    """

    vocab: tuple[str, ...]
    max_order: int
    n_chars: int
    raw: dict[int, Counter]
    continuation: dict[int, Counter]
    _stats: dict = field(default_factory=dict, repr=False, compare=False)

    def table(self, kind: str, m: int) -> Counter:
        """The m-gram table of ``kind`` ``"raw"`` (counts c) or ``"continuation"``
        (counts N1+(• w))."""
        if kind not in ("raw", "continuation"):
            raise ValueError(f"kind must be 'raw' or 'continuation', got {kind!r}")
        tables = self.raw if kind == "raw" else self.continuation
        if m not in tables:
            raise ValueError(
                f"no {kind} counts of length {m}: these counts go up to order "
                f"{self.max_order}"
            )
        return tables[m]

    def context_stats(self, kind: str, m: int) -> dict[str, tuple[int, int]]:
        """``{h: (sum_w c(hw), number of w with c(hw) > 0)}`` over the m-grams ``hw`` of
        a table (cached)."""
        key = (kind, m)
        if key not in self._stats:
            stats: dict[str, list[int]] = {}
            for gram, count in self.table(kind, m).items():
                entry = stats.setdefault(gram[:-1], [0, 0])
                entry[0] += count
                entry[1] += 1
            self._stats[key] = {
                h: (total, types) for h, (total, types) in stats.items()
            }
        return self._stats[key]


def count_ngrams(text: str, max_order: int) -> NGramCounts:
    """Count every n-gram of ``text`` of length 1 … ``max_order`` (chapter 1).

    Counting is the expensive part of fitting; do it once at the highest order you want
    and pass the result to :meth:`CharNGramLM.fit` for every order and smoothing (an
    order-k model fitted from these counts is identical to one fitted on the text
    directly).
    """
    _check_order(max_order, "max_order")
    _check_text(text, "the training text")
    if UNK in text:
        raise ValueError(
            f"the training text contains the reserved unknown symbol {UNK!r}; remove "
            "or replace it"
        )
    if len(text) < max_order:
        raise ValueError(
            f"the training text has {len(text)} characters, fewer than "
            f"max_order={max_order}"
        )
    vocab = tuple(sorted(set(text))) + (UNK,)
    raw: dict[int, Counter] = {}
    continuation: dict[int, Counter] = {}
    for m in range(1, max_order + 1):
        # One pass over the text per length: every slice text[i:i+m] is an m-gram.
        raw[m] = Counter(text[i : i + m] for i in range(len(text) - m + 1))
        if m > 1:
            # N1+(• w) for the (m-1)-gram w = number of distinct m-gram types that end
            # with w.
            continuation[m - 1] = Counter(gram[1:] for gram in raw[m])
    return NGramCounts(
        vocab=vocab,
        max_order=max_order,
        n_chars=len(text),
        raw=raw,
        continuation=continuation,
    )


def _check_order(order: int, name: str = "order") -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {type(order).__name__}")
    if order < 1:
        raise ValueError(
            f"{name} must be >= 1 (1 = unigram, 2 = bigram, ...), got {order}"
        )
    return int(order)


@dataclass(frozen=True)
class Evaluation:
    """How well a model predicts a text: mean NLL (nats per character), BPC and
    per-character perplexity."""

    nll: float
    bpc: float
    perplexity: float
    n_chars: int
    n_unknown: int

    def __str__(self) -> str:
        return (
            f"NLL {self.nll:.4f} nats/char | {self.bpc:.4f} bits/char | perplexity "
            f"{self.perplexity:.3f} | {self.n_chars:,} chars ({self.n_unknown} unknown)"
        )


class CharNGramLM:
    """A character n-gram language model, p(next char | previous ``order - 1`` chars)
    (chapter 1).

    ``smoothing="add_k"``: p(w | h) = (c(hw) + k) / (c(h•) + k V), with V the vocabulary
    size including :data:`UNK`; ``k = 1`` is Laplace smoothing.

    ``smoothing="kneser_ney"`` (interpolated, one absolute ``discount`` D for every
    level; Chen & Goodman 1999): p(w | h) = max(c(hw) - D, 0) / c(h•) + D N1+(h•) /
    c(h•) · p(w | h'), where h' drops the oldest character of h, the highest level uses
    raw counts c, the lower levels use continuation counts N1+(• hw), and the recursion
    ends in the uniform distribution 1 / V. A context never seen in training backs off
    entirely to the shorter context.

    A context shorter than ``order - 1`` characters (the start of a text) uses the lower
    levels only.

    >>> lm = CharNGramLM(order=2, smoothing="add_k", k=1.0).fit("abab")
    >>> round(lm.prob("b", "a"), 4)   # (c(ab) + 1) / (c(a•) + 1 * 3) = 3 / 5
    0.6
    """

    def __init__(
        self,
        order: int,
        smoothing: str = "kneser_ney",
        *,
        discount: float = 0.75,
        k: float = 1.0,
    ):
        self.order = _check_order(order)
        if smoothing not in SMOOTHINGS:
            raise ValueError(
                f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}"
            )
        self.smoothing = smoothing
        if (
            isinstance(discount, bool)
            or not isinstance(discount, (int, float))
            or not 0 < discount < 1
        ):
            raise ValueError(
                "discount must be a number with 0 < discount < 1 (0.75 is usual), got "
                f"{discount!r}"
            )
        if (
            isinstance(k, bool)
            or not isinstance(k, (int, float))
            or not k > 0
            or math.isinf(k)
        ):
            raise ValueError(
                f"k must be a finite number > 0 (k = 1 is Laplace smoothing), got {k!r}"
            )
        self.discount = float(discount)
        self.k = float(k)
        self.counts: NGramCounts | None = None

    def __repr__(self) -> str:
        knob = (
            f"discount={self.discount}"
            if self.smoothing == "kneser_ney"
            else f"k={self.k}"
        )
        state = f"V={len(self.vocab)}" if self.counts is not None else "not fitted"
        return (
            f"CharNGramLM(order={self.order}, smoothing={self.smoothing!r}, "
            f"{knob}; {state})"
        )

    # --- training ---------------------------------------------------------------------

    def fit(self, data: str | NGramCounts) -> CharNGramLM:
        """Train on a text, or on :func:`count_ngrams` counts of at least this order;
        returns ``self``."""
        if isinstance(data, NGramCounts):
            if data.max_order < self.order:
                raise ValueError(
                    f"the counts go up to order {data.max_order}; this model needs "
                    f"order {self.order}"
                )
            counts = data
        elif isinstance(data, str):
            counts = count_ngrams(data, self.order)
        else:
            raise TypeError(
                "fit() takes the training text (str) or NGramCounts, got "
                f"{type(data).__name__}"
            )
        self.counts = counts
        self.vocab = counts.vocab
        self._vocab_set = frozenset(counts.vocab)
        # Level m predicts the m-th character from m-1 characters of context.
        # Kneser-Ney's top level uses raw counts, its lower levels continuation counts;
        # add-k uses raw counts at every level.
        kinds = {
            m: "raw" if self.smoothing == "add_k" or m == self.order else "continuation"
            for m in range(1, self.order + 1)
        }
        self._tables = {m: counts.table(kind, m) for m, kind in kinds.items()}
        self._stats = {m: counts.context_stats(kind, m) for m, kind in kinds.items()}
        return self

    def _require_fitted(self) -> None:
        if self.counts is None:
            raise RuntimeError(
                "this model is not fitted yet: call .fit(training_text) first"
            )

    # --- probabilities ----------------------------------------------------------------

    def encode(self, text: str) -> str:
        """``text`` with every character outside the vocabulary replaced by
        :data:`UNK`."""
        self._require_fitted()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return "".join(ch if ch in self._vocab_set else UNK for ch in text)

    def _prob(self, history: str, char: str) -> float:
        """p(char | history) for an encoded history of at most ``order - 1``
        characters."""
        V = len(self.vocab)
        if self.smoothing == "add_k":
            m = len(history) + 1
            total, _ = self._stats[m].get(history, (0, 0))
            return (self._tables[m].get(history + char, 0) + self.k) / (
                total + self.k * V
            )
        D = self.discount
        p = 1.0 / V  # the recursion starts from the uniform distribution
        for m in range(1, len(history) + 2):
            h = history[len(history) - m + 1 :]  # the last m-1 characters
            stats = self._stats[m].get(h)
            if stats is None:
                # An unseen context: every longer context is unseen too, so back off
                # entirely.
                break
            total, types = stats
            count = self._tables[m].get(h + char, 0)
            p = (max(count - D, 0.0) + D * types * p) / total
        return p

    def _history(self, context: str) -> str:
        if not isinstance(context, str):
            raise TypeError(
                "the context must be a str (the preceding characters), got "
                f"{type(context).__name__}"
            )
        n = self.order - 1
        return self.encode(context[max(0, len(context) - n) :])

    def prob(self, char: str, context: str = "") -> float:
        """p(char | context): the last ``order - 1`` characters of ``context`` are
        used."""
        self._require_fitted()
        if not isinstance(char, str) or len(char) != 1:
            raise ValueError(f"char must be a single character, got {char!r}")
        return self._prob(self._history(context), self.encode(char))

    def distribution(self, context: str = "") -> np.ndarray:
        """The next-character distribution after ``context``: an array over ``vocab``
        that sums to 1."""
        self._require_fitted()
        history = self._history(context)
        return np.array([self._prob(history, ch) for ch in self.vocab])

    def log_probs(self, text: str, context: str = "") -> np.ndarray:
        """Natural-log probability of each character of ``text`` given all characters
        before it.

        The first characters are conditioned on ``context`` (default: nothing, i.e. a
        shorter history).
        """
        self._require_fitted()
        _check_text(text, "the text to score")
        if not isinstance(context, str):
            raise TypeError(f"the context must be a str, got {type(context).__name__}")
        full = self.encode(context + text)
        start, n = len(context), self.order - 1
        if self.smoothing == "kneser_ney":
            return np.log(self._kneser_ney_probs(full, start))
        out = np.empty(len(text))
        for t in range(start, len(full)):
            out[t - start] = self._prob(full[max(0, t - n) : t], full[t])
        return np.log(out)

    def _kneser_ney_probs(self, full: str, start: int) -> np.ndarray:
        """p(full[t] | history) for t >= start: the recursion of :meth:`_prob`, one
        level at a time for all positions at once (several times faster than one
        position at a time, same numbers)."""
        V, D = len(self.vocab), self.discount
        p = np.full(len(full) - start, 1.0 / V)
        for m in range(1, self.order + 1):
            # positions with at least m-1 characters of history
            first = max(start, m - 1)
            if first >= len(full):
                break
            grams = [full[t - m + 1 : t + 1] for t in range(first, len(full))]
            stats = [self._stats[m].get(g[:-1], (0, 0)) for g in grams]
            total = np.array([s[0] for s in stats], dtype=float)
            types = np.array([s[1] for s in stats], dtype=float)
            count = np.array([self._tables[m].get(g, 0) for g in grams], dtype=float)
            lower = p[first - start :]
            # an unseen context keeps the lower-order probability (backs off entirely)
            seen = total > 0
            update = (np.maximum(count - D, 0.0) + D * types * lower) / np.where(
                seen, total, 1.0
            )
            p[first - start :] = np.where(seen, update, lower)
        return p

    def evaluate(self, text: str, context: str = "") -> Evaluation:
        """Mean negative log-likelihood (nats/char), bits per character and perplexity
        of ``text``."""
        nll = float(-self.log_probs(text, context).mean())
        n_unknown = sum(ch not in self._vocab_set for ch in text)
        return Evaluation(
            nll=nll,
            bpc=bits_per_char(nll),
            perplexity=perplexity(nll),
            n_chars=len(text),
            n_unknown=n_unknown,
        )

    # --- generation -------------------------------------------------------------------

    def sample(self, n_chars: int, prompt: str = "", seed: int = 0) -> str:
        """Generate ``n_chars`` characters after ``prompt`` by ancestral sampling with a
        seeded generator.

        :data:`UNK` is never emitted: its probability is set to zero and the rest
        renormalised. The same seed gives the same text.
        """
        self._require_fitted()
        if (
            isinstance(n_chars, bool)
            or not isinstance(n_chars, (int, np.integer))
            or n_chars < 0
        ):
            raise ValueError(f"n_chars must be an int >= 0, got {n_chars!r}")
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or seed < 0
        ):
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        rng = np.random.default_rng(seed)
        text = prompt
        for _ in range(n_chars):
            # drop UNK (always the last vocabulary entry)
            p = self.distribution(text)[:-1]
            text += self.vocab[rng.choice(len(p), p=p / p.sum())]
        return text[len(prompt) :]
