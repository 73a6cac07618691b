"""The DPO objective: :func:`sequence_logprobs` (log π(y|x) of a completion, summed
over its tokens), :func:`pair_logprobs` (both sides of a preference batch in one
forward) and :func:`dpo_loss` (the loss, the implicit rewards, their margins and
accuracy).

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb ("The DPO loss"); the chapter
checks :func:`dpo_loss` against TRL's ``DPOTrainer`` on the same tokens.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from book_utils.sft_data.masks import IGNORE_INDEX


def _device(model) -> torch.device:
    return next(model.parameters()).device


def sequence_logprobs(
    model, input_ids, attention_mask, labels, *, average: bool = False
) -> torch.Tensor:
    """log π(y|x) per sequence, shape ``(B,)``: the sum of the log-probabilities the
    causal LM ``model`` gives the completion tokens, i.e. the positions whose label is
    not :data:`~book_utils.sft_data.masks.IGNORE_INDEX` (the prompt, the template
    tokens and the padding carry -100, as in SFT).

    Scored as the model is trained: the logits at position t predict the token at
    t + 1, so logits ``[:, :-1]`` are scored against labels ``[:, 1:]`` (the label of
    position 0 is never scored). Log-probabilities are taken in float32 from the full
    softmax. ``average=True`` divides each sum by the number of completion tokens
    (the length-normalised log-probability). Gradients flow unless the caller runs it
    under ``torch.no_grad()``.

    Raises ``ValueError`` when the three tensors are not 2-D of one shape, or when a row
    has no completion token to score (its completion was truncated away).
    """
    input_ids, attention_mask, labels = (
        torch.as_tensor(t) for t in (input_ids, attention_mask, labels)
    )
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be 2-D (batch, length), got shape {tuple(input_ids.shape)}"
        )
    for name, tensor in (("attention_mask", attention_mask), ("labels", labels)):
        if tensor.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but input_ids has "
                f"{tuple(input_ids.shape)}: they must match"
            )
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    empty = (~scored.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no completion token to score (every label after the "
            f"first position is {IGNORE_INDEX}): a longer max_length, or drop them"
        )
    device = _device(model)
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()
    targets, scored = targets.to(device), scored.to(device)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    total = (token_logps * scored).sum(dim=1)
    return total / scored.sum(dim=1) if average else total


def pair_logprobs(
    model, batch: Mapping[str, torch.Tensor], *, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(chosen|x), log π(rejected|x))``, each ``(B,)``, for a batch from
    :class:`~book_utils.preference.data.PreferenceCollator`: both sides go through
    the model in one forward of 2B rows (the collator pads them to one length), as
    TRL does."""
    missing = [
        f"{side}_{key}"
        for side in ("chosen", "rejected")
        for key in ("input_ids", "attention_mask", "labels")
        if f"{side}_{key}" not in batch
    ]
    if missing:
        raise KeyError(
            f"a preference batch needs {missing}: build it with PreferenceCollator"
        )
    both = {
        key: torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])
        for key in ("input_ids", "attention_mask", "labels")
    }
    logps = sequence_logprobs(model, **both, average=average)
    return logps.chunk(2)


def _check_beta(beta) -> float:
    if (
        isinstance(beta, bool)
        or not isinstance(beta, numbers.Real)
        or not math.isfinite(beta)
        or beta <= 0
    ):
        raise ValueError(
            f"beta must be a finite number > 0, got {beta!r} (0.1 is the usual "
            "starting point: larger keeps the policy closer to the reference)"
        )
    return float(beta)


def completion_tokens(labels) -> torch.Tensor:
    """Completion tokens per row, ``(B,)``: the labels after the first position that
    are not :data:`~book_utils.sft_data.masks.IGNORE_INDEX` (what
    :func:`sequence_logprobs` sums over)."""
    return (torch.as_tensor(labels)[:, 1:] != IGNORE_INDEX).sum(dim=1)


def dpo_loss(
    policy_chosen,
    policy_rejected,
    reference_chosen,
    reference_rejected,
    beta: float,
    *,
    sft_weight: float = 0.0,
    chosen_tokens=None,
) -> dict:
    """The DPO loss (Rafailov et al. 2023) of a batch of pairs, from the sequence
    log-probabilities of the policy and of the frozen reference (each ``(B,)``).

    The implicit rewards are r = β·(log π(y|x) − log π_ref(y|x)):
    ``chosen_rewards`` = β(πc − rc), ``rejected_rewards`` = β(πr − rr), and
    ``margins`` = chosen − rejected. The loss is the mean over pairs of
    −log σ(margin) = log(1 + exp(−margin)) (computed as ``softplus(-margin)``, stable
    for any margin). ``accuracy`` is the share of pairs whose chosen reward is
    strictly above the rejected one (0 when policy = reference, where every margin is
    0 and the loss is log 2).

    ``sft_weight`` > 0 adds that multiple of the SFT loss on the chosen replies,
    the mean negative log-likelihood per chosen token of the batch,
    −Σ πc / Σ ``chosen_tokens`` (RPO, Pang et al. 2024; TRL's ``loss_type=["sigmoid",
    "sft"]``): it keeps the probability of the preferred reply from falling while
    the margin grows. ``chosen_tokens`` (``(B,)``, :func:`completion_tokens` of the
    chosen labels) is then required.

    Returns ``loss`` (a scalar tensor that carries the gradient), ``sft_loss``
    (detached; 0 when ``sft_weight`` is 0), the three ``(B,)`` tensors (detached) and
    ``accuracy`` (a float). Raises ``ValueError`` for a beta that is not > 0, a
    negative ``sft_weight`` or one without ``chosen_tokens``, or inputs that are not
    four 1-D tensors of one non-zero length.
    """
    beta = _check_beta(beta)
    if not (isinstance(sft_weight, numbers.Real) and 0 <= sft_weight < math.inf):
        raise ValueError(f"sft_weight must be a finite number >= 0, got {sft_weight!r}")
    if sft_weight and chosen_tokens is None:
        raise ValueError(
            "sft_weight > 0 needs chosen_tokens (completion_tokens(chosen_labels)): "
            "the SFT term is a mean over the chosen tokens"
        )
    names = ("policy_chosen", "policy_rejected", "reference_chosen")
    values = (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    values = [torch.as_tensor(v) for v in values]
    shape = values[0].shape
    for name, value in zip((*names, "reference_rejected"), values):
        if value.dim() != 1 or value.shape != shape or value.numel() == 0:
            raise ValueError(
                "the four log-probabilities must be 1-D tensors of one length "
                f"(one value per pair), got {name} of shape {tuple(value.shape)} "
                f"and policy_chosen of shape {tuple(shape)}"
            )
    device = values[0].device
    dtype = torch.promote_types(values[0].dtype, torch.float32)  # float64 stays
    pc, pr, rc, rr = (v.to(device=device, dtype=dtype) for v in values)
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    margins = chosen_rewards - rejected_rewards
    loss = F.softplus(-margins).mean()
    sft_loss = torch.zeros((), dtype=dtype, device=device)
    if sft_weight:
        tokens = torch.as_tensor(chosen_tokens, device=device).sum()
        sft_loss = -pc.sum() / tokens
        loss = loss + sft_weight * sft_loss
    return {
        "loss": loss,
        "sft_loss": sft_loss.detach(),
        "chosen_rewards": chosen_rewards.detach(),
        "rejected_rewards": rejected_rewards.detach(),
        "margins": margins.detach(),
        "accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
    }
