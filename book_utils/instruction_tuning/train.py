"""Training runs of chapter 4c: a ``transformers.Trainer`` that counts tokens (and can
use the per-example loss), :func:`train_sft` and :func:`run_trainer` that measure a run
(time, tokens per second, training memory), :func:`finetune` that every SFT run of the
chapter goes through, gradient checkpointing and LoRA. Chapter 4c,
book/04_sft/04_instruction_tuning.ipynb and book/04_sft/06_lora_smollm2.ipynb (LoRA,
memory)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from book_utils.checks import positive_int
from book_utils.instruction_tuning.data import SFTCollator, mix_tasks
from book_utils.instruction_tuning.loss import per_example_nll
from book_utils.sft_data.masks import IGNORE_INDEX
from book_utils.training import training_arguments

#: What every SFT run of chapter 4c adds to the shared builder's defaults (5 % warmup,
#: cosine decay, transformers' default optimizer): a log line every 10 steps.
SFT_ARGUMENTS = dict(logging_steps=10)


def _counting_trainer_class(base=None, *, per_example: bool = False):
    """A ``Trainer`` subclass (of ``base``, default ``transformers.Trainer``) that
    counts the tokens it trains on and, with ``per_example``, computes
    :func:`~book_utils.instruction_tuning.loss.per_example_nll` instead of the
    per-token mean, in training and in evaluation alike (so the two losses are the
    same quantity)."""
    from transformers import Trainer

    base = base or Trainer

    class CountingTrainer(base):
        tokens_seen = 0  # non-padding tokens in training batches
        target_tokens = 0  # tokens with a label (the ones the loss averages over)
        # a per-micro-batch mean: Trainer divides it by the accumulation steps (the
        # mean over the whole batch)
        loss_is_scaled_for_ga = False if per_example else None

        def compute_loss(
            self, model, inputs, return_outputs=False, num_items_in_batch=None
        ):
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
                self.target_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            if not per_example:
                return super().compute_loss(
                    model, inputs, return_outputs, num_items_in_batch
                )
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = per_example_nll(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    return CountingTrainer


def count_trainable(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (a tied matrix counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def training_memory(model, batch: dict, *, optimizer_states: int = 2) -> dict[str, int]:
    """Bytes a training step holds, measured on ``model`` and one ``batch`` (works on a
    CPU; chapter 4c).

    weights: every parameter; gradients: one per *trainable* parameter; optimizer:
    ``optimizer_states`` tensors per trainable parameter (AdamW keeps two moments);
    activations: the tensors the forward pass saves for the backward pass, measured
    with ``torch.autograd.graph.saved_tensors_hooks`` (each storage counted once).
    This is what full fine-tuning, LoRA and gradient checkpointing change; on a GPU
    ``torch.cuda.max_memory_allocated`` adds the allocator's own overheads on top.
    """
    seen, weights, trainable_bytes = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        weights += p.numel() * p.element_size()
        if p.requires_grad:
            trainable_bytes += p.numel() * p.element_size()
    storages: dict[tuple[int, object], int] = {}
    param_ptrs = {p.data_ptr() for p in model.parameters()}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.data_ptr() not in param_ptrs:
            storage = t.untyped_storage()
            storages[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    inputs = {
        k: v.to(device)
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "labels")
    }
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**inputs, use_cache=False).loss
    del loss
    model.train(was_training)
    activations = sum(storages.values())
    total = weights + trainable_bytes * (1 + optimizer_states) + activations
    return {
        "weights": weights,
        "gradients": trainable_bytes,
        "optimizer": trainable_bytes * optimizer_states,
        "activations": activations,
        "total": total,
    }


def enable_checkpointing(model) -> None:
    """Turn on gradient checkpointing (梯度检查点; transformers 5 calls it activation
    checkpointing): keep only each layer's input in the forward pass and recompute the
    rest during backward (non-reentrant)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older transformers, and peft wrappers that forward the old name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        # so a frozen embedding (LoRA) still feeds gradients to the layers
        model.enable_input_require_grads()


def train_sft(
    model,
    tokenizer,
    train,
    validation=None,
    *,
    args,
    per_example: bool = False,
    callbacks=None,
) -> dict:
    """Fine-tune ``model`` on tokenized ``train`` with ``transformers.Trainer`` and
    measure the run (chapter 4c).

    ``train``/``validation`` come from
    :func:`~book_utils.instruction_tuning.data.tokenize_records` (or
    :func:`~book_utils.instruction_tuning.data.replay_mix`); ``args`` from
    :func:`book_utils.training.training_arguments`. The model is trained in place.
    Returns a dict: ``trainer``, ``log`` (the Trainer's log history), ``train_loss``
    (last logged), ``val_loss`` (masked loss on ``validation`` at the end, or None),
    ``seconds``, ``seconds_per_step``, ``tokens`` (non-padding tokens trained on),
    ``tokens_per_second``, ``trainable``/``total`` parameters, ``memory``
    (:func:`training_memory` on the first batch, plus ``cuda_peak`` on a GPU).
    """
    collator = SFTCollator(tokenizer.pad_token_id)
    columns = ["input_ids", "attention_mask", "labels"]
    train = train.select_columns(columns)
    if validation is not None:
        validation = validation.select_columns(columns)
    if getattr(args, "activation_checkpointing", False) or getattr(
        args, "gradient_checkpointing", False
    ):
        enable_checkpointing(model)
    trainer = _counting_trainer_class(per_example=per_example)(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return run_trainer(trainer)


def run_trainer(trainer) -> dict:
    """Train a (counting) ``Trainer`` built by :func:`train_sft` or
    :func:`~book_utils.instruction_tuning.trl.trl_trainer` and measure the run: memory
    on the first batch, wall time, tokens, final validation loss (see
    :func:`train_sft`)."""
    from transformers import PrinterCallback

    # no log dicts printed; they stay in trainer.state.log_history
    trainer.remove_callback(PrinterCallback)
    model = trainer.model
    size = trainer.args.per_device_train_batch_size
    data = trainer.train_dataset
    first = trainer.data_collator([data[i] for i in range(min(len(data), size))])
    memory = training_memory(model, first)
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    if cuda:
        memory["cuda_peak"] = torch.cuda.max_memory_allocated()
    val_loss = None
    if trainer.eval_dataset is not None:
        val_loss = trainer.evaluate()["eval_loss"]
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    trainable, total = count_trainable(model)
    # mixed precision wraps model.forward in bf16/fp16 autocast (accelerate) and leaves
    # the wrapper on: remove it, so the trained model computes in float32 like the same
    # model reloaded from disk
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.eval()
    return {
        "trainer": trainer,
        "log": trainer.state.log_history,
        "train_loss": losses[-1] if losses else None,
        "val_loss": val_loss,
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "seconds_per_step": seconds / max(1, trainer.state.global_step),
        "tokens": trainer.tokens_seen,
        "target_tokens": trainer.target_tokens,
        "tokens_per_second": trainer.tokens_seen / seconds,
        "trainable": trainable,
        "total": total,
        "memory": memory,
    }


def finetune(
    model,
    tokenizer,
    train,
    validation,
    *,
    output_dir,
    seed: int = 0,
    device=None,
    per_example: bool = True,
    repeats: Mapping[str, int] | None = None,
    callbacks=None,
    **settings,
) -> dict:
    """One SFT run: ``model`` trained in place on ``train`` (mixed by
    :func:`~book_utils.instruction_tuning.data.mix_tasks` with ``repeats``) with
    :func:`book_utils.training.training_arguments` (:data:`SFT_ARGUMENTS`, then
    ``settings``) and :func:`train_sft`, seeded by ``seed`` (``Trainer`` seeds every
    generator with it when it is built) on ``device`` (default: CUDA when present).
    Returns the run of :func:`train_sft`. Every run of chapter 4c goes through here."""
    args = training_arguments(
        output_dir, seed=seed, device=device, **{**SFT_ARGUMENTS, **settings}
    )
    if repeats:
        train = mix_tasks(train, repeats, seed=args.seed)
    return train_sft(
        model.train(),
        tokenizer,
        train,
        validation,
        args=args,
        per_example=per_example,
        callbacks=callbacks,
    )


def add_lora(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules=("q_proj", "v_proj"),
):
    """Wrap ``model`` in a LoRA adapter (低秩适配, Hu et al. 2021) with ``peft``:
    W x + (α/r)·B A x on the named linear layers, A (r × d_in) random, B (d_out × r)
    zero, so training starts from the base model exactly. Everything else is frozen.
    ``target_modules="all-linear"`` adapts every linear layer but the LM head."""
    from peft import LoraConfig, get_peft_model

    positive_int("r", r)
    targets = (
        target_modules if isinstance(target_modules, str) else list(target_modules)
    )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
