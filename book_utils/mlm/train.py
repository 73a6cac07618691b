"""Masked-LM pretraining as a plain, visible loop: fresh masks every step, the loss at
the masked positions, AdamW under linear warmup and decay, validation by case.

Taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from book_utils.checks import positive_int
from book_utils.mlm.evaluation import evaluate_mlm
from book_utils.mlm.loss import masked_lm_forward


@dataclass
class TrainHistory:
    """What :func:`train_mlm` measured: losses per step, validation loss (overall and by
    case) at evaluations."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_by_case: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_mlm(
    model,
    train_blocks: torch.Tensor,
    collator,
    val_batches: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> TrainHistory:
    """Pretrain ``model`` (a ``BertForMaskedLM``) with masked language modelling: a
    plain, visible loop.

    Each step draws ``batch_size`` rows of ``train_blocks``, masks them with
    ``collator`` (transformers' ``DataCollatorForLanguageModeling``: fresh masks every
    step), computes the loss at the masked positions (:func:`masked_lm_forward`) and
    takes an AdamW step under linear warmup (``warmup_ratio`` of the steps) then linear
    decay, with gradients clipped at 1.0. BERT itself used Adam with warmup (lr 1e-4,
    10k warmup steps, weight decay 0.01), not SGD. Validation loss on ``val_batches`` is
    measured every ``eval_every`` steps and at the end, also split by case when the
    batches carry one (:func:`fixed_masked_batches`). Taught in chapter 3.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    positive_int("steps", steps)
    positive_int("batch_size", batch_size)
    positive_int("eval_every", eval_every)
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if len(train_blocks) < batch_size:
        raise ValueError(
            f"{len(train_blocks)} training rows are fewer than one batch "
            f"of {batch_size}"
        )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay
    )
    schedule = get_linear_schedule_with_warmup(
        optimizer, round(warmup_ratio * steps), steps
    )
    order = torch.Generator().manual_seed(seed)
    history, start = TrainHistory(), time.perf_counter()
    model.train()
    for step in tqdm(
        range(1, steps + 1),
        desc="MLM pretraining",
        disable=not progress,
        mininterval=10.0,
    ):
        rows = train_blocks[
            torch.randint(len(train_blocks), (batch_size,), generator=order)
        ]
        batch = collator(list(rows))
        loss, _ = masked_lm_forward(model, batch["input_ids"], batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.steps.append(step)
        history.train_loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            history.eval_steps.append(step)
            by_case = "case" in val_batches[0]
            result = evaluate_mlm(model, val_batches, by_case=by_case)
            history.val_loss.append(result["all"] if by_case else result)
            if by_case:
                history.val_by_case.append(result)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history
