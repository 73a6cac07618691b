"""Evaluating a masked LM on fixed masked batches: mean loss and top-1 accuracy, over
all targets and split by what the model saw there (``[MASK]``, random, kept), next to a
context-free unigram model.

Taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

import torch

from book_utils.checks import positive_int
from book_utils.mlm.data import CASES
from book_utils.mlm.loss import masked_lm_forward
from book_utils.mlm.masking import IGNORE_INDEX


def _require_cases(batches: list[dict], who: str) -> None:
    """Refuse batches that do not record each target's case (see
    :func:`fixed_masked_batches`)."""
    if not batches or "case" not in batches[0]:
        raise ValueError(
            f"{who} needs batches with a 'case' entry: "
            "build them with fixed_masked_batches"
        )


def _case_means(sums: dict[str, list[float]]) -> dict[str, float]:
    """``{case: mean}`` from the ``[total, count]`` sums of :func:`_split_by_case`
    (empty cases left out)."""
    return {name: total / n for name, (total, n) in sums.items() if n}


def _split_by_case(
    nll: torch.Tensor, case: torch.Tensor, sums: dict[str, list[float]]
) -> None:
    for name, selected in [("all", case >= 0)] + [
        (n, case == i) for i, n in enumerate(CASES)
    ]:
        sums.setdefault(name, [0.0, 0])
        sums[name][0] += float(nll[selected].sum())
        sums[name][1] += int(selected.sum())


@torch.no_grad()
def evaluate_mlm(
    model, batches: list[dict], by_case: bool = False
) -> float | dict[str, float]:
    """Mean MLM loss (nats per masked token) of ``model`` over fixed ``batches``,
    weighted by token count.

    With ``by_case=True`` (batches from :func:`fixed_masked_batches`), a dict with the
    loss over ``all`` targets and separately over the targets whose input was
    ``[MASK]``, a random token, or ``kept``: only the ``[MASK]`` targets measure the use
    of context, a kept target can be copied from the input. Taught in chapter 3.
    """
    if not batches:
        raise ValueError("no batches to evaluate")
    if by_case:
        _require_cases(batches, "by_case")
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        labels = batch["labels"]
        chosen = labels != IGNORE_INDEX
        if not bool(chosen.any()):
            continue
        _, logits = masked_lm_forward(model, batch["input_ids"], labels)
        nll = -logits.float().log_softmax(-1).gather(1, labels[chosen][:, None])[:, 0]
        _split_by_case(
            nll,
            batch["case"][chosen]
            if by_case
            else torch.zeros_like(nll, dtype=torch.long),
            sums,
        )
    model.train(was_training)
    if not sums:
        raise ValueError("no masked target in any batch")
    means = _case_means(sums)
    return means if by_case else means["all"]


@torch.no_grad()
def masked_accuracy(model, batches: list[dict]) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on the masked targets of ``batches`` (from
    :func:`fixed_masked_batches`), over ``all`` targets and by case (``[MASK]``,
    ``random``, ``kept``): the share whose most probable token is the original one.
    Taught in chapter 3."""
    _require_cases(batches, "masked_accuracy")
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        chosen = batch["labels"] != IGNORE_INDEX
        if bool(chosen.any()):
            _, logits = masked_lm_forward(model, batch["input_ids"], batch["labels"])
            hits = (logits.argmax(-1) == batch["labels"][chosen]).double()
            _split_by_case(hits, batch["case"][chosen], sums)
    model.train(was_training)
    return _case_means(sums)


def unigram_accuracy(
    train_blocks: torch.Tensor, batches: list[dict], vocab_size: int
) -> dict[str, float]:
    """Top-1 accuracy of the context-free unigram model on the masked targets, by case
    like :func:`masked_accuracy`: it always answers the most frequent training token.
    Taught in chapter 3."""
    _require_cases(batches, "unigram_accuracy")
    guess = int(unigram_log_probs(train_blocks, vocab_size).argmax())
    sums: dict[str, list[float]] = {}
    for b in batches:
        chosen = b["labels"] != IGNORE_INDEX
        _split_by_case((b["labels"][chosen] == guess).double(), b["case"][chosen], sums)
    return _case_means(sums)


def unigram_log_probs(train_blocks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Log-probabilities ``(vocab_size,)`` of a context-free unigram model of
    ``train_blocks`` (add-one smoothed)."""
    positive_int("vocab_size", vocab_size)
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1.0
    if counts.numel() != vocab_size:
        raise ValueError(f"train_blocks holds ids >= vocab_size={vocab_size}")
    return (counts / counts.sum()).log()


def unigram_cross_entropy(
    train_blocks: torch.Tensor,
    batches: list[dict],
    vocab_size: int,
    by_case: bool = False,
) -> float | dict[str, float]:
    """Cross-entropy (nats) on the masked targets of ``batches`` of a context-free
    unigram model.

    The unigram is estimated on ``train_blocks`` with add-one smoothing. An MLM that
    does not beat it has learnt word frequencies, not context. ``by_case`` splits it
    like :func:`evaluate_mlm`. Taught in chapter 3.
    """
    if by_case:
        _require_cases(batches, "by_case")
    log_p = unigram_log_probs(train_blocks, vocab_size)
    sums: dict[str, list[float]] = {}
    for b in batches:
        chosen = b["labels"] != IGNORE_INDEX
        case = (
            b["case"][chosen]
            if by_case
            else torch.zeros(int(chosen.sum()), dtype=torch.long)
        )
        _split_by_case(-log_p[b["labels"][chosen]], case, sums)
    if not sums or sums["all"][1] == 0:
        raise ValueError("no masked target in any batch")
    means = _case_means(sums)
    return means if by_case else means["all"]
