"""The one ``TrainingArguments`` builder every ``Trainer`` run of the book goes
through: classification and NER in chapter 4a, SFT and LoRA in chapter 4c, TRL's
``SFTConfig`` in chapter 4c.3 (pass ``config_class``). Chapter 3.2 writes its own loop
(:func:`book_utils.pretraining.train_step`) to show what these arguments configure."""

from __future__ import annotations

import torch

from book_utils.checks import positive_int


def mixed_precision_flags(device) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for ``TrainingArguments``: bf16 on GPUs that have
    it (Ampere and newer), fp16 with loss scaling on older GPUs (a T4 has no bf16),
    neither on a CPU (fp32). Chapter 4c."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"bf16": False, "fp16": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def training_arguments(
    output_dir,
    *,
    learning_rate: float,
    batch_size: int,
    max_steps: int | None = None,
    epochs: float | None = None,
    warmup_steps: float = 0.05,
    lr_scheduler_type: str = "cosine",
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    eval_steps: int | None = None,
    best_metric: str | None = None,
    logging_steps: int | None = None,
    group_by_length: bool = False,
    gradient_checkpointing: bool = False,
    seed: int = 0,
    device=None,
    config_class=None,
    **overrides,
):
    """``TrainingArguments`` (or ``config_class``, e.g. TRL's ``SFTConfig``) for one
    run, with transformers 5 names.

    - Length: ``max_steps`` optimizer steps or ``epochs`` passes, exactly one of them.
    - Schedule: ``warmup_steps`` below 1 is a share of the steps (transformers 5
      dropped ``warmup_ratio``), a whole number is a count; then
      ``lr_scheduler_type`` decay. The effective batch is ``batch_size × grad_accum``
      (gradient accumulation, 梯度累积).
    - Evaluation: every ``eval_steps`` steps, or once per epoch when ``best_metric``
      is set without ``eval_steps``. With ``best_metric`` (e.g. ``"macro_f1"``) a
      checkpoint is saved at each evaluation and the best one is restored at the end;
      without it no checkpoint is written (the chapter saves the final model itself).
    - ``group_by_length`` batches examples of similar length (less padding);
      ``gradient_checkpointing`` recomputes activations in the backward pass (memory
      for compute).
    - ``device`` (default: CUDA when present) sets ``use_cpu`` and bf16/fp16
      (:func:`mixed_precision_flags`). Nothing is reported to a tracking service and
      our prepared columns are kept (``remove_unused_columns=False``).
    """
    if config_class is None:
        from transformers import TrainingArguments as config_class
    if (max_steps is None) == (epochs is None):
        raise ValueError(
            f"give exactly one of max_steps and epochs, got {max_steps!r}, {epochs!r}"
        )
    if max_steps is not None:
        positive_int("max_steps", max_steps)
    elif not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    positive_int("batch_size", batch_size)
    positive_int("grad_accum", grad_accum)
    if not 0 < learning_rate < 1:
        raise ValueError(
            f"learning_rate must be in (0, 1), got {learning_rate!r} "
            "(2e-5 to 5e-5 is typical for fine-tuning)"
        )
    if isinstance(warmup_steps, bool) or not (
        0 <= warmup_steps < 1 or float(warmup_steps).is_integer()
    ):
        raise ValueError(
            "warmup_steps must be a share of the training steps in [0, 1) "
            f"or a whole number of steps, got {warmup_steps!r}"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if best_metric:
        when = "steps" if eval_steps else "epoch"
        checkpoints = dict(
            eval_strategy=when,
            save_strategy=when,
            save_steps=eval_steps,
            load_best_model_at_end=True,
            metric_for_best_model=best_metric,
            greater_is_better=True,
            save_total_limit=1,
            save_only_model=True,
        )
    else:
        checkpoints = dict(
            eval_strategy="steps" if eval_steps else "no", save_strategy="no"
        )
    kwargs = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 16),
        gradient_accumulation_steps=grad_accum,
        warmup_steps=warmup_steps if warmup_steps < 1 else int(warmup_steps),
        lr_scheduler_type=lr_scheduler_type,
        weight_decay=weight_decay,
        eval_steps=eval_steps,
        logging_strategy="steps" if logging_steps else "no",
        logging_steps=logging_steps or 500,
        activation_checkpointing=gradient_checkpointing,  # transformers 5's name
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=torch.device(device).type == "cpu",
        disable_tqdm=True,
        **mixed_precision_flags(device),
        **checkpoints,
    )
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    else:
        kwargs["num_train_epochs"] = epochs
    kwargs.update(overrides)
    return config_class(**kwargs)


__all__ = ["mixed_precision_flags", "training_arguments"]
