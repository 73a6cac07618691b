"""The DPO training loop, written out: :func:`train_dpo` (forward both sides of each
pair through the policy and, under ``no_grad``, the frozen reference; the DPO loss;
backward, clipping, AdamW step, schedule step), with the schedule :func:`lr_factor`,
the seeded batch order :func:`pair_order` and :func:`precompute_reference` (the
reference's log-probabilities, once for all runs).

Chapter 4c.5, book/04_sft/08_preference_tuning.ipynb ("A DPO loop"), which shows
:func:`train_dpo` next to chapter 3.2's ``train_step``
(:mod:`book_utils.pretraining.train`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from book_utils.checks import positive_int
from book_utils.preference.data import REFERENCE_KEYS, PreferenceCollator
from book_utils.preference.loss import (
    _check_beta,
    completion_tokens,
    dpo_loss,
    pair_logprobs,
)
from book_utils.preference.measures import _evaluating

SCHEDULES = ("cosine", "constant")
#: What :func:`train_dpo` records per step.
HISTORY_KEYS = (
    "step",
    "lr",
    "loss",
    "sft_loss",
    "accuracy",
    "margins",
    "chosen_rewards",
    "rejected_rewards",
    "grad_norm",
)


def lr_factor(step: int, steps: int, warmup: float, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based):
    linear warmup over W steps (``warmup`` below 1 is a share of ``steps``, else a
    count), then a half cosine to 0 at ``steps`` (``"cosine"``) or the peak
    (``"constant"``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (0 <= warmup < 1 or float(warmup).is_integer()) or warmup < 0:
        raise ValueError(f"warmup must be a share in [0, 1) or a count, got {warmup!r}")
    w = round(warmup * steps) if warmup < 1 else int(warmup)
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def pair_order(n_pairs: int, batch_size: int, steps: int, seed: int) -> Iterator[list]:
    """``steps`` batches of ``batch_size`` pair indices: the pairs in a seeded random
    order, a new order each pass (a batch may straddle two passes)."""
    generator = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    for _ in range(steps):
        while len(stream) < batch_size:
            stream += torch.randperm(n_pairs, generator=generator).tolist()
        yield stream[:batch_size]
        stream = stream[batch_size:]


def precompute_reference(
    reference, pairs: Sequence[Mapping], *, batch_size: int = 32, pad_token_id: int
) -> list[dict]:
    """The tokenized ``pairs`` with the frozen reference's log-probabilities of both
    sides added (:data:`~book_utils.preference.data.REFERENCE_KEYS`): computed once,
    in eval mode, so that :func:`train_dpo` runs a single model per step, and every
    run of a β sweep shares them (TRL's ``precompute_ref_log_probs``)."""
    positive_int("batch_size", batch_size)
    collate = PreferenceCollator(pad_token_id)
    out = []
    with _evaluating(reference):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            chosen, rejected = pair_logprobs(reference, collate(chunk))
            for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                out.append({**pair, REFERENCE_KEYS[0]: c, REFERENCE_KEYS[1]: r})
    return out


def _check_run(pairs, beta, steps, learning_rate, batch_size, clip) -> None:
    _check_beta(beta)
    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    if not 0 < learning_rate < 1:
        raise ValueError(f"learning_rate must be in (0, 1), got {learning_rate!r}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    if batch_size > len(pairs):
        raise ValueError(
            f"batch_size {batch_size} is larger than the {len(pairs)} pairs"
        )


def train_dpo(
    policy,
    reference,
    pairs: Sequence[Mapping],
    *,
    beta: float,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    sft_weight: float = 0.0,
    clip: float = 1.0,
    warmup: float = 0.1,
    schedule: str = "cosine",
    progress: bool = False,
) -> dict[str, list]:
    """DPO on tokenized ``pairs`` (:func:`~book_utils.preference.data.tokenize_pair`
    rows) for ``steps`` AdamW steps; the reference stays frozen (eval mode, no
    gradients; rows from :func:`precompute_reference` carry its log-probabilities,
    and then ``reference`` is not run at all and may be None); batches come in a
    seeded order (:func:`pair_order`), the learning rate warms up linearly then
    follows ``schedule`` (:func:`lr_factor`).
    ``sft_weight`` > 0 adds the SFT loss on the chosen replies (RPO, see
    :func:`~book_utils.preference.loss.dpo_loss`). Returns the history: per step the
    learning rate, loss, its SFT part, reward accuracy, mean margin, mean
    chosen/rejected rewards and gradient norm (before clipping)."""
    from tqdm.auto import tqdm

    _check_run(pairs, beta, steps, learning_rate, batch_size, clip)
    if reference is None and any(REFERENCE_KEYS[0] not in p for p in pairs):
        raise ValueError(
            "reference is None, but the pairs carry no reference log-probabilities: "
            "pass the reference model or rows from precompute_reference"
        )
    collate = PreferenceCollator(policy.config.pad_token_id or 0)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, schedule)
    )
    history = {key: [] for key in HISTORY_KEYS}
    policy.train()
    if reference is not None:
        reference.eval()
    order = pair_order(len(pairs), batch_size, steps, seed)
    order = tqdm(order, desc="DPO", total=steps, disable=not progress)
    for step, indices in enumerate(order):
        batch = collate([pairs[i] for i in indices])
        policy_chosen, policy_rejected = pair_logprobs(policy, batch)
        if REFERENCE_KEYS[0] in batch:
            reference_chosen, reference_rejected = (batch[k] for k in REFERENCE_KEYS)
        else:
            with torch.no_grad():
                reference_chosen, reference_rejected = pair_logprobs(reference, batch)
        out = dpo_loss(
            policy_chosen,
            policy_rejected,
            reference_chosen,
            reference_rejected,
            beta,
            sft_weight=sft_weight,
            chosen_tokens=completion_tokens(batch["chosen_labels"]),
        )
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        row = dict(step=step, lr=lr, loss=out["loss"].item(), accuracy=out["accuracy"])
        row["sft_loss"] = out["sft_loss"].item()
        for key in ("margins", "chosen_rewards", "rejected_rewards"):
            row[key] = out[key].mean().item()
        row["grad_norm"] = float(grad_norm)
        for key in HISTORY_KEYS:
            history[key].append(row[key])
    return history
