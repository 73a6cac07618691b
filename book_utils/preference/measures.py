"""What preference tuning changes, measured on held-out pairs: how far the policy
moved from the reference (:func:`kl_to_reference`), how often its implicit reward
ranks a pair right (:func:`implicit_reward_accuracy`), and how often it gives the
chosen reply more probability than the rejected one (:func:`preference_wins`,
:func:`preference_win_rate`); and, on generated replies, which of them are generic
(:func:`generic_flags`, :func:`generic_share`).

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb ("What DPO changed").

Each measure takes one batch from
:class:`~book_utils.preference.data.PreferenceCollator` or a list of them
(:func:`~book_utils.preference.data.preference_batches`), runs the models in eval
mode under ``torch.no_grad()`` and weighs every pair (or token) once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch

from book_utils.preference.data import generic_replies, reply_key
from book_utils.preference.loss import _device, pair_logprobs
from book_utils.sft_data.masks import IGNORE_INDEX


def _batches(batch) -> list[Mapping]:
    batches = [batch] if isinstance(batch, Mapping) else list(batch)
    if not batches:
        raise ValueError("no batches to measure")
    return batches


@contextlib.contextmanager
def _evaluating(*models):
    """Eval mode (no dropout) and no gradients; each model's mode restored after."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _sides(batch: Mapping) -> list[dict]:
    """The (input_ids, attention_mask, labels) of a batch: both sides of a preference
    batch, or the batch itself."""
    if "input_ids" in batch:
        return [{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}]
    return [
        {k: batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "labels")}
        for side in ("chosen", "rejected")
    ]


def kl_to_reference(policy, reference, batch: Mapping | Iterable[Mapping]) -> float:
    """Mean per-token KL(π‖π_ref) over the completion positions of ``batch`` (both
    sides of a preference batch, or an SFT batch with ``input_ids``,
    ``attention_mask``, ``labels``).

    At each position whose next-token label is not -100, the full next-token
    distributions in float32: KL = Σ_v π(v)·(log π(v) − log π_ref(v)); the mean is
    over all such positions of all batches. 0 when the policy equals the reference;
    it grows as DPO moves the policy away (β is the price of that distance).
    """
    total, count = 0.0, 0
    with _evaluating(policy, reference):
        for item in _batches(batch):
            for side in _sides(item):
                scored = side["labels"][:, 1:] != IGNORE_INDEX
                inputs = {k: side[k] for k in ("input_ids", "attention_mask")}
                logp, logq = (
                    torch.log_softmax(
                        model(
                            **{k: v.to(_device(model)) for k, v in inputs.items()},
                            use_cache=False,
                        )
                        .logits[:, :-1]
                        .float(),
                        dim=-1,
                    )
                    for model in (policy, reference)
                )
                logq = logq.to(logp.device)
                kl = (logp.exp() * (logp - logq)).sum(dim=-1)
                scored = scored.to(kl.device)
                total += float((kl * scored).sum())
                count += int(scored.sum())
    if count == 0:
        raise ValueError("the batch has no completion position (every label is -100)")
    return total / count


def implicit_reward_accuracy(
    policy, reference, batch: Mapping | Iterable[Mapping]
) -> float:
    """Share of pairs the policy's implicit reward ranks right:
    log π(chosen) − log π_ref(chosen) > log π(rejected) − log π_ref(rejected), i.e.
    the DPO ``accuracy`` of :func:`~book_utils.preference.loss.dpo_loss` (β > 0
    does not change it), on held-out pairs. 0 for the reference itself (all ties)."""
    right, pairs = 0, 0
    with _evaluating(policy, reference):
        for item in _batches(batch):
            policy_chosen, policy_rejected = pair_logprobs(policy, item)
            ref_chosen, ref_rejected = pair_logprobs(reference, item)
            chosen = policy_chosen - ref_chosen.to(policy_chosen.device)
            rejected = policy_rejected - ref_rejected.to(policy_chosen.device)
            right += int((chosen > rejected).sum())
            pairs += len(chosen)
    return right / pairs


def preference_wins(
    policy, batch: Mapping | Iterable[Mapping], *, normalize: bool = False
) -> torch.Tensor:
    """Per pair, in order: does the policy itself give the chosen reply a higher
    log-probability than the rejected one, log π(chosen|x) > log π(rejected|x)? No
    reference involved. ``normalize=True`` compares the mean log-probability per
    completion token instead, so that a short reply does not win by being short.
    A bool tensor, one entry per pair (for intervals; :func:`preference_win_rate`
    is its mean)."""
    wins = []
    with _evaluating(policy):
        for item in _batches(batch):
            chosen, rejected = pair_logprobs(policy, item, average=normalize)
            wins.append((chosen > rejected).cpu())
    return torch.cat(wins)


def preference_win_rate(
    policy, batch: Mapping | Iterable[Mapping], *, normalize: bool = False
) -> float:
    """Share of pairs where the policy gives the chosen reply the higher
    log-probability (:func:`preference_wins`)."""
    wins = preference_wins(policy, batch, normalize=normalize)
    return int(wins.sum()) / len(wins)


def generic_flags(replies, min_prompts: int = 3) -> list[bool]:
    """Per reply (one per prompt), in order: is it generic, given word for word to
    ``min_prompts`` or more of these prompts
    (:func:`~book_utils.preference.data.generic_replies`)? A missing reply is not."""
    replies = list(replies)
    if not replies:
        raise ValueError("no replies to measure")
    generic = generic_replies(replies, min_prompts)
    return [bool(r) and reply_key(r) in generic for r in replies]


def generic_share(replies, min_prompts: int = 3) -> float:
    """Share of ``replies`` that are generic (:func:`generic_flags`)."""
    flags = generic_flags(replies, min_prompts)
    return sum(flags) / len(flags)
