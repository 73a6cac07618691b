"""Task fine-tuning (微调) with ``Trainer``: the run's ``TrainingArguments``, the
class-weighted loss, early stopping on validation macro-F1, predictions in the
dataset's order, and the Trainer's output folders.

Taught in chapter 4a, book/04_sft/01_classification.ipynb (the arguments and
:func:`predict_logits` also serve book/04_sft/02_token_classification.ipynb). The
arguments come from the book's one builder,
:func:`book_utils.training.training_arguments`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from book_utils.checks import positive_int
from book_utils.training import training_arguments


def classification_arguments(
    output_dir,
    *,
    learning_rate: float = 5e-5,
    epochs: float = 3,
    batch_size: int = 16,
    warmup_steps: float = 0.1,
    weight_decay: float = 0.01,
    eval_every: int | None = None,
    seed: int = 0,
    device=None,
    best_metric: str = "macro_f1",
):
    """``TrainingArguments`` for classification and NER: AdamW + linear warmup +
    linear decay, best by ``best_metric`` (macro-F1; entity F1 for NER).

    Built by :func:`book_utils.training.training_arguments` with this chapter's
    defaults. ``warmup_steps`` uses transformers 5's spelling: a float in [0, 1) is a
    fraction of the training steps (``warmup_ratio``, its old name, raises a TypeError
    in transformers 5), a whole number >= 1 is a count.

    Evaluates (and saves) every ``eval_every`` steps (default: once per epoch), keeps
    one checkpoint besides the best, restores the best at the end, logs nowhere
    (``report_to="none"``), batches reviews of similar length together and evaluates
    64 at a time. ``device`` (default: CUDA when present) picks the CPU or the GPU,
    and on a GPU bf16 or fp16 mixed precision.
    """
    return training_arguments(
        output_dir,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=weight_decay,
        eval_steps=eval_every,
        best_metric=best_metric,
        logging_steps=None,
        group_by_length=True,
        seed=seed,
        device=device,
        per_device_eval_batch_size=64,
    )


def weighted_cross_entropy(class_weights):
    """A ``Trainer`` ``compute_loss_func``: softmax cross-entropy with one weight per
    class.

    ``L = -Σ_i w_{y_i} log p(y_i | x_i) / Σ_i w_{y_i}`` (PyTorch's
    ``F.cross_entropy(..., weight=w)``). With ``w_c = N / (C·N_c)`` ("balanced"), each
    class contributes equally to the loss, whatever its frequency.
    """
    import torch
    import torch.nn.functional as F

    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.ndim != 1 or (weights <= 0).any():
        raise ValueError(
            "class_weights must be a 1-D sequence of positive numbers, "
            f"got {class_weights!r}"
        )

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return F.cross_entropy(logits.float(), labels, weight=weights.to(logits.device))

    return loss


def balanced_class_weights(labels) -> list[float]:
    """``w_c = N / (C · N_c)``: scikit-learn's ``class_weight="balanced"``."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    if not np.array_equal(values, np.arange(len(values))):
        raise ValueError(
            "labels must be 0..C-1 with every class present, "
            f"got classes {values.tolist()}"
        )
    return (counts.sum() / (len(counts) * counts)).tolist()


def fine_tune(
    model,
    tokenizer,
    train,
    validation,
    output_dir,
    *,
    patience: int = 2,
    class_weights=None,
    **kwargs,
):
    """Train ``model`` with ``Trainer`` on tokenised ``train``, early-stopping on
    ``validation`` macro-F1.

    ``class_weights`` (e.g. :func:`balanced_class_weights`) switches the loss to
    :func:`weighted_cross_entropy`; by default the model's own (unweighted)
    cross-entropy is used. Returns the ``Trainer`` (its model is the best checkpoint).
    ``kwargs`` go to :func:`classification_arguments` (``learning_rate``,
    ``epochs``, ``batch_size``, ``warmup_steps``, ``weight_decay``, ``eval_every``,
    ``seed``, ``device``, ``best_metric``).
    """
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
    )

    from book_utils.metrics import make_compute_metrics

    for name, ds in (("train", train), ("validation", validation)):
        if "input_ids" not in ds.column_names or "label" not in ds.column_names:
            raise ValueError(
                f"{name} must be tokenised and labelled (see tokenize_splits); "
                f"columns: {ds.column_names}"
            )
    trainer = Trainer(
        model=model,
        args=classification_arguments(output_dir, **kwargs),
        train_dataset=train.remove_columns(
            [
                c
                for c in train.column_names
                if c not in ("input_ids", "attention_mask", "label", "token_type_ids")
            ]
        ),
        eval_dataset=validation.remove_columns(
            [
                c
                for c in validation.column_names
                if c not in ("input_ids", "attention_mask", "label", "token_type_ids")
            ]
        ),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
        compute_loss_func=None
        if class_weights is None
        else weighted_cross_entropy(class_weights),
    )
    # keep notebook output lean: results are read from trainer.state
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def predict_logits(model, dataset, collator, *, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` on a tokenised dataset, **in the dataset's order**, padded
    per batch.

    Why not ``trainer.predict``? With ``train_sampling_strategy="group_by_length"``
    transformers 5 also length-groups the *evaluation* sampler, so ``predict`` returns
    rows shuffled (its ``label_ids`` are shuffled the same way, which is why
    ``compute_metrics`` is right but comparing with the dataset's own labels is not).
    Here batches are sorted by length for speed and the order is restored. Token
    classification logits come back as ``(N, longest, labels)`` padded with 0.
    """
    import torch

    keep = [
        c
        for c in dataset.column_names
        if c in ("input_ids", "attention_mask", "token_type_ids")
    ]
    if "input_ids" not in keep:
        raise ValueError(
            "dataset must be tokenised (input_ids missing); "
            f"columns: {dataset.column_names}"
        )
    rows = dataset.select_columns(keep)
    order = np.argsort([len(ids) for ids in rows["input_ids"]], kind="stable")
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collator([rows[int(i)] for i in order[start : start + batch_size]])
            outputs.append(
                model(**{k: v.to(device) for k, v in batch.items()})
                .logits.float()
                .cpu()
                .numpy()
            )
    if outputs[0].ndim == 2:
        logits = np.concatenate(outputs)
    else:
        longest = max(o.shape[1] for o in outputs)
        logits = np.concatenate(
            [np.pad(o, ((0, 0), (0, longest - o.shape[1]), (0, 0))) for o in outputs]
        )
    result = np.empty_like(logits)
    result[order] = logits
    return result


def predict_probabilities(trainer, dataset) -> np.ndarray:
    """Softmax probabilities ``(N, num_labels)`` of a trained ``Trainer``'s model, in
    the dataset's order."""
    import torch
    from transformers import DataCollatorWithPadding

    logits = predict_logits(
        trainer.model, dataset, DataCollatorWithPadding(trainer.processing_class)
    )
    return torch.softmax(torch.as_tensor(logits), dim=-1).numpy()


def steps_for(
    n_train: int, *, batch_size: int, min_steps: int, max_epochs: int = 20
) -> float:
    """Epochs so that a small training set still gets ``min_steps`` optimiser steps
    (capped at ``max_epochs``)."""
    positive_int("n_train", n_train)
    positive_int("batch_size", batch_size)
    positive_int("min_steps", min_steps)
    per_epoch = math.ceil(n_train / batch_size)
    return float(min(max_epochs, max(1, math.ceil(min_steps / per_epoch))))


def run_dir(name: str, profile: str) -> Path:
    """A Trainer ``output_dir`` under the book's cache (never inside the repository),
    emptied first."""
    import shutil

    from book_utils.cache import artifact_dir

    path = artifact_dir("ch4-trainer-runs", profile) / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
