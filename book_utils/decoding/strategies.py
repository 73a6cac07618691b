"""Decoding strategies (解码策略) as logits processors: repetition penalty,
no-repeat-n-gram, temperature, top-k and top-p (nucleus), and :class:`DecodingConfig`,
one strategy's settings.

Each processor is written out in a few lines; :func:`process_logits` applies them in
the order ``transformers`` 5 applies them inside ``model.generate`` (repetition penalty
→ no-repeat-n-gram → temperature → top-k → top-p), so
:func:`~book_utils.decoding.generate` gives the same tokens as ``model.generate``.

Taught in chapter 5.1, book/05_deployment/01_decoding.ipynb ("Decoding strategies, as
formulas").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# --- the logits processors, one by one ------------------------------------------------


def apply_repetition_penalty(
    scores: torch.Tensor, input_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every token already in ``input_ids`` (prompt included): a positive logit
    is divided by ``penalty``, a negative one multiplied by it (Keskar et al. 2019,
    CTRL), so both become less likely.

    ``scores``: ``(B, V)`` logits of the next token; ``input_ids``: ``(B, T)``.
    ``penalty=1`` changes nothing.
    """
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {penalty!r}")
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def ban_repeated_ngrams(
    scores: torch.Tensor, input_ids: torch.Tensor, n: int
) -> torch.Tensor:
    """Forbid (logit −∞) every token that would complete an n-gram already present in
    ``input_ids``.

    If the last ``n − 1`` tokens equal the first ``n − 1`` tokens of an earlier n-gram,
    that n-gram's last token is banned. ``n=0`` is off. Strict: a phrase of n tokens can
    never occur twice in the whole sequence.
    """
    if n < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {n!r}")
    if n == 0 or input_ids.shape[1] < n:
        return scores
    scores = scores.clone()
    for row, ids in enumerate(input_ids.tolist()):
        prefix = tuple(ids[len(ids) - n + 1 :]) if n > 1 else ()
        banned = {
            ids[i + n - 1]
            for i in range(len(ids) - n + 1)
            if tuple(ids[i : i + n - 1]) == prefix
        }
        if banned:
            scores[row, list(banned)] = -float("inf")
    return scores


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` > 0: below 1 sharpens the distribution,
    above 1 flattens it."""
    if temperature <= 0:
        raise ValueError(
            "temperature must be > 0 when sampling (use greedy for 'temperature 0'), "
            f"got {temperature!r}"
        )
    return scores / temperature


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row (ties with the k-th are kept too), set
    the rest to −∞. 0 = off."""
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {k!r}")
    if k == 0:
        return scores
    kth = torch.topk(scores, min(k, scores.shape[-1])).values[..., -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (核) sampling filter (Holtzman et al. 2020): keep the smallest set of
    most likely tokens whose probability sums to at least ``p``; the most likely token
    is always kept. ``p=1`` is off.

    Written as ``transformers`` does: sort ascending, drop the tokens whose cumulative
    probability is ≤ 1 − p (the unlikely tail), so the result matches
    ``TopPLogitsWarper`` exactly.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {p!r}")
    if p == 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, -float("inf"))


@dataclass(frozen=True)
class DecodingConfig:
    """One decoding strategy: greedy when ``do_sample`` is False, else sampling with the
    given filters.

    Defaults turn every option off (temperature 1, top_k 0, top_p 1, penalty 1,
    n-gram 0).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if (
            isinstance(self.top_k, bool)
            or not isinstance(self.top_k, int)
            or self.top_k < 0
        ):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty!r}"
            )
        if (
            isinstance(self.no_repeat_ngram_size, bool)
            or not isinstance(self.no_repeat_ngram_size, int)
            or (self.no_repeat_ngram_size < 0)
        ):
            raise ValueError(
                "no_repeat_ngram_size must be an int >= 0, got "
                f"{self.no_repeat_ngram_size!r}"
            )

    def generate_kwargs(self) -> dict:
        """The same settings as keyword arguments of ``model.generate`` (every option
        explicit, so a model's own ``generation_config`` defaults cannot slip in)."""
        kwargs = asdict(self)
        kwargs["top_k"] = self.top_k or None
        kwargs["top_p"] = self.top_p if self.top_p < 1 else None
        if not self.do_sample:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def process_logits(
    scores: torch.Tensor, input_ids: torch.Tensor, cfg: DecodingConfig
) -> torch.Tensor:
    """All processors of ``cfg`` in ``transformers``' order: repetition penalty →
    no-repeat-n-gram, then (only when sampling) temperature → top-k → top-p. ``scores``
    ``(B, V)`` float logits, ``input_ids`` ``(B, T)``."""
    scores = apply_repetition_penalty(scores, input_ids, cfg.repetition_penalty)
    scores = ban_repeated_ngrams(scores, input_ids, cfg.no_repeat_ngram_size)
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            scores = apply_temperature(scores, cfg.temperature)
        scores = top_k_filter(scores, cfg.top_k)
        scores = top_p_filter(scores, cfg.top_p)
    return scores
