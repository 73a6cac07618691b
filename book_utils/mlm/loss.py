"""The masked-LM loss, ``L_MLM = -(1/|M|) Σ_{i∈M} log p(x_i | x~)`` over the chosen
positions only, from scratch and through a model whose head runs only where there is a
label.

Taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

import torch

from book_utils.mlm.masking import IGNORE_INDEX


def mlm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The MLM loss from scratch: ``-(1/|M|) Σ_{i∈M} log softmax(logits_i)[labels_i]``
    over labelled positions.

    ``logits`` is ``(..., V)`` and ``labels`` is ``(...)`` with ``ignore_index`` where
    there is no target. Equal to ``F.cross_entropy(logits.flatten(0, -2),
    labels.flatten(), ignore_index=-100)``. Note the minus sign: the loss is positive
    (errata A7: one masked token predicted with p = 0.7 costs +0.357 nats). Raises
    ``ValueError`` when no position is labelled (the mean would be 0/0). Taught in
    chapter 3.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} "
            "plus a vocabulary axis"
        )
    chosen = labels != ignore_index
    if not bool(chosen.any()):
        raise ValueError(
            "no labelled position: every label is ignore_index, "
            "so the MLM loss is undefined"
        )
    log_p = logits[chosen].float().log_softmax(dim=-1)  # (|M|, V)
    return -log_p.gather(1, labels[chosen].long()[:, None]).mean()


def masked_lm_forward(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and logits of a BERT-style masked LM computed **only at the labelled
    positions**.

    ``model(input_ids, labels=labels)`` projects every position onto the whole
    vocabulary (B·T·V logits) and then ignores the ~85 % without a label; here the
    encoder runs on everything but the output head only on the ~15 % that count, which
    is the same loss for about 15 % of the output-layer cost. Returns ``(loss, logits)``
    with ``logits`` of shape ``(n_labelled, V)``. Taught in chapter 3.
    """
    head = getattr(model, "cls", None)  # BERT's MLM head
    head = getattr(model, "lm_head", None) if head is None else head  # RoBERTa's
    # ModernBERT's
    if head is None and hasattr(model, "head") and hasattr(model, "decoder"):
        head = torch.nn.Sequential(model.head, model.decoder)
    if head is None or not hasattr(model, "base_model") or model.base_model is model:
        raise TypeError(
            "expected a BERT-, RoBERTa- or ModernBERT-style *ForMaskedLM "
            "(an encoder and its head), "
            f"got {type(model).__name__}"
        )
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    chosen = labels != IGNORE_INDEX
    if not bool(chosen.any()):
        raise ValueError("no labelled position in this batch: nothing to predict")
    logits = head(hidden[chosen])
    return mlm_loss(logits, labels[chosen]), logits
