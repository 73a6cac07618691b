"""The SFT loss, written out: the masked next-token cross-entropy (every labelled token
weighted equally) and the per-example variant (every conversation weighted equally).
Chapter 4c, book/04_sft/04_instruction_tuning.ipynb."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from book_utils.sft_data.masks import IGNORE_INDEX


def _next_token_targets(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, keep)``: the labels shifted to the position that predicts them and
    the mask of the ones that count, after checking the shapes and that some label is
    not -100 (:func:`masked_nll`, :func:`per_example_nll`)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            "need logits (B, T, V) and labels (B, T); "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    if not keep.any():
        raise ValueError(
            "every label is -100: there is no assistant token to compute a loss on"
        )
    return target, keep


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not -100
    (chapter 4c's formula).

    L = −(1/|A|) Σ_{t ∈ A} log p(x_t | x_<t), A = {t : labels_t ≠ −100}: the
    prediction of token t is read at position t − 1, so logits drop their last
    position and labels their first. Written out with ``log_softmax`` and ``gather``
    so the notebook can check it against ``F.cross_entropy(ignore_index=-100)`` and
    against the model's own ``loss``.
    """
    target, keep = _next_token_targets(logits, labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum()


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss with every conversation weighted equally (chapter 4c): each example's
    mean next-token cross-entropy over its own labelled tokens, then the mean over the
    examples that have any.

    L = (1/B) Σ_b (1/|A_b|) Σ_{t ∈ A_b} −log p(x_t | x_<t). :func:`masked_nll` weights
    every *token* equally instead, so a 60-token chat answer counts 60 times as much
    as a one-token label; here both count once.
    """
    target, keep = _next_token_targets(logits, labels)
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        target.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(target)
    counts = keep.sum(dim=1)
    has = counts > 0
    return (nll.sum(dim=1)[has] / counts[has]).mean()
