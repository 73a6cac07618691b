"""Instruction tuning (指令微调) of a decoder on chat data: the pieces chapter 4c uses more than once.

Chapter 4c fine-tunes two decoders on the instruction dataset of chapter 4b (:mod:`book_utils.sft_data`):
our chapter-3 base model (the whole pipeline from scratch) and the real SmolLM2-135M (full fine-tuning
against LoRA, and TRL's ``SFTTrainer`` as the production path). This module holds:

- mid-training: :func:`midtraining_documents` (train-split reviews and dialogues, split by ``source_id``
  like the SFT data, plus replayed plays) and :func:`load_or_midtrain` continue pretraining the base model
  on the domains SFT asks about (a lever chapter 4c measures);
- data: :func:`tokenize_records` turns chat records into ``input_ids``/``attention_mask``/``labels`` with
  the prompt masked (labels -100 outside the assistant turns) or unmasked, and drops (and counts) records
  longer than the model's context; :class:`SFTCollator` pads a batch (labels padded with -100);
  :func:`masked_nll` is the loss formula the chapter checks and :func:`per_example_nll` the variant that
  weights each conversation once; :func:`replay_mix` mixes pretraining blocks into
  the SFT data (replay against forgetting);
- training: :func:`training_arguments` (bf16/fp16 chosen by the GPU's capability, gradient accumulation,
  gradient checkpointing, the same arguments on a CPU) and :func:`train_sft`, a ``transformers.Trainer``
  run that also measures time per step, tokens per second and training memory (:func:`training_memory`);
  :func:`add_lora` wraps a model in a LoRA adapter (``peft``); :func:`trl_config`, :func:`trl_trainer` and
  :func:`prompt_completion` run the same training through TRL's ``SFTTrainer``; :func:`training_seconds` is
  the 6·N·D arithmetic that extrapolates a measured rate to other models and hardware;
- evaluation: :func:`generate_replies` (greedy, batched with left padding; :func:`sft_context` is the token
  budget of a record), :func:`evaluate_closed` (exact
  match with the stated parser ``sft_data.parse_answer``, format compliance), :func:`score_table`
  (accuracy with bootstrap intervals, before/after differences paired on the same items) and
  :func:`random_valid_accuracy` (the score of a guesser that answers a random allowed label);
- artifacts: :func:`load_or_train_sft_model` (our base model after SFT, used by chapter 5) and
  :func:`smollm2_checkpoint` (SmolLM2 converted once from GGUF to a plain safetensors checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from book_utils.decoding import stop_token_ids, until_stop

#: Cache name of the instruction-tuned base model: ``artifact_dir(SFT_MODEL_ARTIFACT, profile)`` holds the
#: merged model and tokenizer (``from_pretrained``-loadable) and ``sft_info.json`` (recipe and scores).
SFT_MODEL_ARTIFACT = "sft-model"
#: Cache name of SmolLM2-135M-Instruct converted from GGUF to a float32 safetensors checkpoint.
SMOLLM2_ARTIFACT = "smollm2-135m-instruct"
#: The label that ``CrossEntropyLoss`` skips: every prompt, template and padding position gets it.
IGNORE_INDEX = -100


# --- data ---------------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _default_tokenize(tokenizer, messages, max_length):
    from book_utils.sft_data import tokenize_for_sft

    return tokenize_for_sft(tokenizer, messages, max_length)


def tokenize_records(
    records,
    tokenizer,
    max_length: int,
    *,
    mask_prompt: bool = True,
    tokenize_fn: Callable | None = None,
    keep_columns: Sequence[str] = ("id", "task"),
):
    """Tokenize chat records for SFT and drop the ones longer than ``max_length`` tokens (chapter 4c).

    ``records`` is a ``datasets.Dataset`` (or list of dicts) in the SFT data contract (a ``messages`` column).
    Each conversation goes through ``tokenize_fn(tokenizer, messages, max_length)`` (default:
    ``sft_data.tokenize_for_sft``, labels -100 on every non-assistant token). With ``mask_prompt=False`` the
    labels are the input ids everywhere: the *unmasked* loss the chapter compares against. A record longer
    than the context is dropped, never truncated (a cut answer teaches a wrong answer).

    Returns ``(dataset, n_dropped)``: a ``Dataset`` with ``input_ids``, ``attention_mask``, ``labels`` and the
    ``keep_columns`` that exist, and the number of records dropped for length.
    """
    from datasets import Dataset

    max_length = _check_positive_int("max_length", max_length)
    tokenize_fn = tokenize_fn or _default_tokenize
    rows = records if not isinstance(records, Dataset) else records.to_list()
    out, dropped = [], 0
    for index, record in enumerate(rows):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"record {index} has no 'messages' field (see the SFT data contract, chapter 4b)")
        encoded = tokenize_fn(tokenizer, record["messages"], 1_000_000)
        ids, labels = list(encoded["input_ids"]), list(encoded["labels"])
        if len(ids) != len(labels):
            raise ValueError(f"record {index}: {len(ids)} input ids but {len(labels)} labels")
        if len(ids) > max_length:
            dropped += 1
            continue
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError(f"record {index} (id {record.get('id')!r}) has no assistant token to train on")
        row = {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": labels if mask_prompt else list(ids),
        }
        row.update({c: record[c] for c in keep_columns if c in record})
        out.append(row)
    if not out:
        raise ValueError(
            f"all {dropped} records are longer than max_length={max_length} tokens: nothing left to train on "
            "(use a model with a longer context, or shorter records)"
        )
    return Dataset.from_list(out), dropped


class SFTCollator:
    """Pad a list of tokenized examples into a batch: ``input_ids`` with the pad id, ``attention_mask`` with 0,
    ``labels`` with -100 (so padding never counts in the loss). Right padding, as training wants; chapter 4c.

    Equivalent to ``transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``; extra
    columns (``id``, ``task``) are dropped.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: the tokenizer needs a pad token (set tokenizer.pad_token)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            pad = longest - len(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            labels = list(f.get("labels", ids))
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _next_token_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, keep)``: the labels shifted to the position that predicts them and the mask of the ones that
    count, after checking the shapes and that some label is not -100 (:func:`masked_nll`, :func:`per_example_nll`)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}")
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    if not keep.any():
        raise ValueError("every label is -100: there is no assistant token to compute a loss on")
    return target, keep


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not -100 (chapter 4c's formula).

    L = −(1/|A|) Σ_{t ∈ A} log p(x_t | x_<t), A = {t : labels_t ≠ −100}: the prediction of token t is read
    at position t − 1, so logits drop their last position and labels their first. Written out with
    ``log_softmax`` and ``gather`` so the notebook can check it against ``F.cross_entropy(ignore_index=-100)``
    and against the model's own ``loss``.
    """
    target, keep = _next_token_targets(logits, labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum() / keep.sum()


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss with every conversation weighted equally (chapter 4c): each example's mean next-token
    cross-entropy over its own labelled tokens, then the mean over the examples that have any.

    L = (1/B) Σ_b (1/|A_b|) Σ_{t ∈ A_b} −log p(x_t | x_<t). :func:`masked_nll` weights every *token* equally
    instead, so a 60-token chat answer counts 60 times as much as a one-token label; here both count once.
    """
    target, keep = _next_token_targets(logits, labels)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none").view_as(target)
    counts = keep.sum(dim=1)
    has = counts > 0
    return (nll.sum(dim=1)[has] / counts[has]).mean()


def mix_tasks(train, repeats: Mapping[str, int], *, seed: int = 0):
    """The SFT mixture (数据配比): each record of a task in ``repeats`` appears that many times (a whole number
    >= 1; other tasks once), then the set is shuffled with ``seed``. Chapter 4c up-weights the task whose
    answers must be memorised, so it gets more passes within the same number of steps."""
    from datasets import concatenate_datasets

    tasks = set(train["task"])
    unknown = sorted(set(repeats) - tasks)
    if unknown:
        raise ValueError(f"no records of task(s) {unknown} to repeat; the data has {sorted(tasks)}")
    parts = [train]
    for task, times in repeats.items():
        _check_positive_int(f"repeats[{task!r}]", times)
        parts += [train.filter(lambda r, task=task: r["task"] == task)] * (times - 1)
    return concatenate_datasets(parts).shuffle(seed=seed)


def mixture_table(train):
    """Per task of tokenized SFT data: records, labelled tokens (the targets the loss sees), and the task's
    share of the loss under the per-token mean (:func:`masked_nll`: its share of labelled tokens) and under the
    per-example mean (:func:`per_example_nll`: its share of records). Chapter 4c."""
    import pandas as pd

    targets = [sum(label != IGNORE_INDEX for label in labels[1:]) for labels in train["labels"]]
    frame = pd.DataFrame({"task": train["task"], "labelled tokens": targets})
    table = frame.groupby("task").agg(records=("task", "size"), **{"labelled tokens": ("labelled tokens", "sum")})
    table["tokens per record"] = table["labelled tokens"] / table["records"]
    table["loss share, per token"] = table["labelled tokens"] / table["labelled tokens"].sum()
    table["loss share, per example"] = table["records"] / table["records"].sum()
    return table.sort_values("records", ascending=False)


def replay_mix(sft_train, lm_blocks, fraction: float, *, max_length: int | None = None, seed: int = 0):
    """Mix pretraining text into SFT training data (replay, 回放): a ``fraction`` of the mixed set is plain LM blocks.

    ``lm_blocks`` holds token blocks of the *pretraining* corpus (an ``input_ids`` column, e.g. the train
    split of ``pretraining.shakespeare_lm_data``); each becomes an example whose labels are all its tokens
    (ordinary next-token loss), cut to ``max_length``. With ``fraction`` f and n SFT examples, round(n·f/(1−f))
    blocks are added (sampled without replacement, repeating only if the corpus is too small), then the whole
    set is shuffled. Chapter 4c uses it against catastrophic forgetting.
    """
    from datasets import Dataset, concatenate_datasets

    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1) (the share of replayed blocks), got {fraction!r}")
    if fraction == 0:
        return sft_train
    n_replay = round(len(sft_train) * fraction / (1 - fraction))
    rng = np.random.default_rng(seed)
    n_blocks = len(lm_blocks)
    if n_blocks == 0:
        raise ValueError("lm_blocks is empty: pass the pretraining corpus as token blocks")
    picks = np.concatenate([rng.permutation(n_blocks) for _ in range(math.ceil(n_replay / n_blocks))])[:n_replay]
    rows = []
    for i in picks:
        ids = [int(t) for t in lm_blocks[int(i)]["input_ids"]][:max_length]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    columns = ["input_ids", "attention_mask", "labels"]
    replay = Dataset.from_list(rows)
    return concatenate_datasets([sft_train.select_columns(columns), replay]).shuffle(seed=seed)


# --- training -----------------------------------------------------------------------------------------------


def mixed_precision_flags(device) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for ``TrainingArguments``: bf16 on GPUs that have it (Ampere and newer),
    fp16 with loss scaling on older GPUs (a T4 has no bf16), neither on a CPU (fp32). Chapter 4c."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"bf16": False, "fp16": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16}


def training_arguments(
    output_dir,
    ctx,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    grad_accum: int = 1,
    warmup_steps: float = 0.05,
    weight_decay: float = 0.0,
    eval_steps: int | None = None,
    logging_steps: int = 10,
    gradient_checkpointing: bool = False,
    lr_scheduler_type: str = "cosine",
    group_by_length: bool = False,
    **overrides,
):
    """``TrainingArguments`` for an SFT run with transformers 5 names (chapter 4c).

    The effective batch is ``batch_size × grad_accum`` sequences (gradient accumulation, 梯度累积);
    ``warmup_steps`` below 1 is a share of ``max_steps`` (transformers 5 dropped ``warmup_ratio``), a whole
    number a count; ``group_by_length`` batches conversations of similar length together (less padding,
    transformers 5's ``train_sampling_strategy="group_by_length"``); ``gradient_checkpointing`` trades
    compute for memory (activations recomputed in the backward pass); bf16/fp16 come from
    :func:`mixed_precision_flags`; ``use_cpu`` when ``ctx.device`` is a CPU. No checkpoints are written
    during the run (the notebook saves the final model itself), nothing is reported to a tracking service,
    and ``remove_unused_columns=False`` keeps our prepared columns.
    """
    from transformers import TrainingArguments

    _check_positive_int("max_steps", max_steps)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("grad_accum", grad_accum)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    kwargs = _run_kwargs(output_dir, ctx, max_steps, batch_size, learning_rate, warmup_steps, lr_scheduler_type)
    kwargs.update(
        per_device_eval_batch_size=max(batch_size, 16),
        gradient_accumulation_steps=grad_accum,
        weight_decay=weight_decay,
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        activation_checkpointing=gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _run_kwargs(output_dir, ctx, max_steps, batch_size, learning_rate, warmup_steps=0.05, lr_scheduler_type="cosine"):
    """The arguments :func:`training_arguments` and :func:`trl_config` share: schedule, seeds, device and
    precision, no checkpoints, no tracking service, no progress bar (the numbers are read from trainer.state)."""
    if isinstance(warmup_steps, bool) or not (0 <= warmup_steps < 1 or float(warmup_steps).is_integer()):
        raise ValueError(f"warmup_steps must be a share in [0, 1) or a whole number of steps, got {warmup_steps!r}")
    return dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps if warmup_steps < 1 else int(warmup_steps),
        lr_scheduler_type=lr_scheduler_type,
        save_strategy="no",
        report_to="none",
        seed=ctx.seed,
        data_seed=ctx.seed,
        use_cpu=torch.device(ctx.device).type == "cpu",
        disable_tqdm=True,
        **mixed_precision_flags(ctx.device),
    )


def _counting_trainer_class(base=None, *, per_example: bool = False):
    """A ``Trainer`` subclass (of ``base``, default ``transformers.Trainer``) that counts the tokens it trains on
    and, with ``per_example``, computes :func:`per_example_nll` instead of the per-token mean, in training and
    in evaluation alike (so the two losses are the same quantity)."""
    from transformers import Trainer

    base = base or Trainer

    class CountingTrainer(base):
        tokens_seen = 0  # non-padding tokens in training batches
        target_tokens = 0  # tokens with a label (the ones the loss averages over)
        # a per-micro-batch mean: Trainer divides it by the accumulation steps (the mean over the whole batch)
        loss_is_scaled_for_ga = False if per_example else None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.tokens_seen += int(inputs["attention_mask"].sum())
                self.target_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            if not per_example:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
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
    """Bytes a training step holds, measured on ``model`` and one ``batch`` (works on a CPU; chapter 4c).

    weights: every parameter; gradients: one per *trainable* parameter; optimizer: ``optimizer_states``
    tensors per trainable parameter (AdamW keeps two moments); activations: the tensors the forward pass saves
    for the backward pass, measured with ``torch.autograd.graph.saved_tensors_hooks`` (each storage counted
    once). This is what full fine-tuning, LoRA and gradient checkpointing change; on a GPU
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
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
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
    """Turn on gradient checkpointing (梯度检查点; transformers 5 calls it activation checkpointing): keep only
    each layer's input in the forward pass and recompute the rest during backward (non-reentrant)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older transformers, and peft wrappers that forward the old name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # so a frozen embedding (LoRA) still feeds gradients to the layers


def train_sft(model, tokenizer, train, validation=None, *, args, per_example: bool = False, callbacks=None) -> dict:
    """Fine-tune ``model`` on tokenized ``train`` with ``transformers.Trainer`` and measure the run (chapter 4c).

    ``train``/``validation`` come from :func:`tokenize_records` (or :func:`replay_mix`); ``args`` from
    :func:`training_arguments`. The model is trained in place. Returns a dict: ``trainer``, ``log`` (the
    Trainer's log history), ``train_loss`` (last logged), ``val_loss`` (masked loss on ``validation`` at the
    end, or None), ``seconds``, ``seconds_per_step``, ``tokens`` (non-padding tokens trained on),
    ``tokens_per_second``, ``trainable``/``total`` parameters, ``memory`` (:func:`training_memory` on the
    first batch, plus ``cuda_peak`` on a GPU).
    """
    collator = SFTCollator(tokenizer.pad_token_id)
    columns = ["input_ids", "attention_mask", "labels"]
    train = train.select_columns(columns)
    validation = validation.select_columns(columns) if validation is not None else None
    if getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False):
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
    """Train a (counting) ``Trainer`` built by :func:`train_sft` or :func:`train_with_trl` and measure the run:
    memory on the first batch, wall time, tokens, final validation loss (see :func:`train_sft`)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no log dicts printed; they stay in trainer.state.log_history
    model = trainer.model
    size = trainer.args.per_device_train_batch_size
    first = trainer.data_collator([trainer.train_dataset[i] for i in range(min(len(trainer.train_dataset), size))])
    memory = training_memory(model, first)
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    if cuda:
        memory["cuda_peak"] = torch.cuda.max_memory_allocated()
    val_loss = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    trainable, total = count_trainable(model)
    # mixed precision wraps model.forward in bf16/fp16 autocast (accelerate) and leaves the wrapper on: remove
    # it, so the trained model computes in float32 like the same model reloaded from disk
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


def prompt_completion(records) -> list[dict]:
    """Records in TRL's conversational prompt-completion form: ``prompt`` = every message but the last,
    ``completion`` = the final assistant message. ``SFTTrainer`` then trains on the completion only."""
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    return [{"prompt": prompt_of(r["messages"]), "completion": r["messages"][-1:]} for r in rows]


def trl_config(output_dir, ctx, *, max_steps: int, batch_size: int, learning_rate: float, max_length: int, **overrides):
    """TRL's ``SFTConfig`` for the same run as :func:`training_arguments`, with the defaults that differ from
    ``TrainingArguments`` set explicitly: gradient checkpointing (TRL turns it on) and bf16 (TRL turns it on
    unless fp16 is set) follow the hardware, loss on the completion only. Chapter 4c."""
    from trl import SFTConfig

    kwargs = _run_kwargs(output_dir, ctx, max_steps, batch_size, learning_rate)
    kwargs.update(
        per_device_eval_batch_size=max(batch_size, 8),
        max_length=max_length,
        completion_only_loss=True,
        packing=False,
        gradient_checkpointing=False,
        logging_steps=1,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def trl_trainer(model, tokenizer, train, validation=None, *, args, peft_config=None):
    """TRL's ``SFTTrainer`` (counting tokens like :func:`train_sft`) on prompt-completion ``train``/``validation``
    (see :func:`prompt_completion`); TRL tokenizes with the chat template and builds the labels itself.
    Train and measure it with :func:`run_trainer`."""
    from datasets import Dataset
    from trl import SFTTrainer

    as_dataset = lambda rows: rows if rows is None or isinstance(rows, Dataset) else Dataset.from_list(rows)
    return _counting_trainer_class(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=as_dataset(train),
        eval_dataset=as_dataset(validation),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def add_lora(model, *, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules=("q_proj", "v_proj")):
    """Wrap ``model`` in a LoRA adapter (低秩适配, Hu et al. 2021) with ``peft``: W x + (α/r)·B A x on the named
    linear layers, A (r × d_in) random, B (d_out × r) zero, so training starts from the base model exactly.
    Everything else is frozen. ``target_modules="all-linear"`` adapts every linear layer but the LM head."""
    from peft import LoraConfig, get_peft_model

    _check_positive_int("r", r)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


# --- evaluation ---------------------------------------------------------------------------------------------


def prompt_of(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) its final assistant turn: what the model sees at inference."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a record's messages must end with an assistant turn (the reference answer)")
    return list(messages[:-1])


def context_length(model) -> int:
    """The model's context window in tokens (``max_position_embeddings``)."""
    return int(model.config.max_position_embeddings)


#: Token budget of an SFT record for the ``ci`` profile's toy base model (see :func:`sft_context`).
CI_CONTEXT = 256


def sft_context(ctx, model) -> int:
    """Longest record (prompt, answer and template tokens) the chapter trains and evaluates our base model on.

    ``full``: the model's context (256 tokens). ``ci``: the toy base model has 64 positions and a 512-token
    vocabulary, which no record fits, so the ``ci`` profile lets it read :data:`CI_CONTEXT` positions (rotary
    positions have no hard limit; ``ci`` only checks that the code runs, its numbers mean nothing).
    """
    return context_length(model) if ctx.profile == "full" else max(context_length(model), CI_CONTEXT)


@torch.no_grad()
def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    progress: bool = False,
    context: int | None = None,
) -> list[str | None]:
    """Greedy replies (deterministic) to chat ``prompts`` (lists of messages without the answer), batched with
    left padding so every prompt ends where generation starts (chapter 4c).

    Each prompt is rendered with the tokenizer's chat template and ``add_generation_prompt=True``;
    generation stops at ``<|im_end|>`` or eos. A prompt that does not leave ``max_new_tokens`` free in the
    model's context (or ``context`` tokens) gets ``None`` (the caller counts these). Returns the decoded
    replies, special tokens removed.
    """
    from tqdm.auto import tqdm

    _check_positive_int("max_new_tokens", max_new_tokens)
    _check_positive_int("batch_size", batch_size)
    limit = (context or context_length(model)) - max_new_tokens
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    replies: list[str | None] = [None] * len(prompts)
    order = [i for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if len(encoded[i]) <= limit]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = order[start : start + batch_size]
        longest = max(len(encoded[i]) for i in chunk)
        ids = torch.tensor([[pad] * (longest - len(encoded[i])) + encoded[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (longest - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        for i, row in zip(chunk, out[:, longest:].tolist()):
            replies[i] = tokenizer.decode(until_stop(row, stops), skip_special_tokens=True)
    model.train(was_training)
    return replies


def evaluate_closed(
    model,
    tokenizer,
    records,
    *,
    parse: Callable[[str, str], str | None] | None = None,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    progress: bool = False,
    context: int | None = None,
):
    """Score ``model`` on closed-task records: greedy reply → ``parse(task, reply)`` → exact match (chapter 4c).

    ``parse`` defaults to ``sft_data.parse_answer`` (None = the reply does not parse: a format failure).
    Returns a pandas DataFrame, one row per record: ``id``, ``task``, ``answer``, ``reply`` (None when the
    prompt does not fit the context), ``fits``, ``parsed``, ``format_ok``, ``correct``.
    """
    import pandas as pd

    if parse is None:
        from book_utils.sft_data import parse_answer as parse
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    for index, r in enumerate(rows):
        if r.get("answer") is None:
            raise ValueError(f"record {index} (id {r.get('id')!r}, task {r.get('task')!r}) is open: no answer to score")
    replies = generate_replies(
        model,
        tokenizer,
        [prompt_of(r["messages"]) for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        context=context,
    )
    # parsed from the Python lists: in a pandas 3 string column a missing reply is NaN, not None
    parsed = [parse(r["task"], reply) if reply is not None else None for r, reply in zip(rows, replies)]
    frame = pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "task": [r["task"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "reply": replies,
            "fits": [reply is not None for reply in replies],
            "parsed": parsed,
            "format_ok": [p is not None for p in parsed],
            "correct": [p is not None and p == r["answer"] for r, p in zip(rows, parsed)],
        }
    )
    return frame


def accuracy_ci(correct, baseline=None, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy (mean of 0/1 ``correct``) with a 95 % percentile-bootstrap interval, or, with ``baseline``
    on the *same* items, the paired difference ``mean(correct − baseline)`` and its interval.

    ``baseline`` is another system's 0/1 correctness, or each item's probability of being right (a random
    guesser's 1/k, :func:`random_valid_accuracy`). Items are resampled with ``metrics.bootstrap_ci``.
    """
    from book_utils.metrics import bootstrap_ci

    correct = np.asarray(correct, dtype=float)
    base = np.zeros_like(correct) if baseline is None else np.asarray(baseline, dtype=float)
    if base.shape != correct.shape:
        raise ValueError(f"baseline has {base.shape} values for {correct.shape} items: score the same items")
    index = np.arange(len(correct))
    metric = lambda _, items: float(np.mean(correct[items] - base[items]))  # noqa: E731
    return bootstrap_ci(index, index, metric=metric, n_boot=n_boot, seed=seed)


def options_of(record) -> tuple[str, ...]:
    """The answers a closed-task record allows: the plays its prompt lists for ``play`` (four of eight), the
    task's label set otherwise (``sft_data.CLOSED_TASKS``)."""
    import re

    from book_utils.sft_data import CLOSED_TASKS

    task = record.get("task")
    if task not in CLOSED_TASKS:
        raise ValueError(f"record {record.get('id')!r}: task {task!r} is not closed; closed: {list(CLOSED_TASKS)}")
    if task != "play":
        return CLOSED_TASKS[task]
    title = "|".join(re.escape(t) for t in CLOSED_TASKS["play"])
    prompt = prompt_of(record["messages"])[-1]["content"]
    listed = re.search(f"(?:{title})(?:, (?:{title}))+", prompt)
    if listed is None:
        raise ValueError(f"record {record.get('id')!r}: no list of plays in its prompt")
    return tuple(listed.group(0).split(", "))


def random_valid_accuracy(records) -> np.ndarray:
    """Per record, the chance that a guesser who answers a uniformly random *allowed* label is right:
    1/k for k = ``len(options_of(record))``. Its mean is the random-valid-label baseline of chapter 4c: the
    score of a model that learned the answer format and nothing else."""
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    return np.array([1.0 / len(options_of(r)) for r in rows])


def score_table(frame, *, n_boot: int = 1000, seed: int = 0):
    """Per task and overall: items, items that fit the context, format compliance (share of replies that parse),
    exact-match accuracy with its 95 % bootstrap interval. Items that do not fit count as wrong and unparsed.
    When ``frame`` has a ``random_valid`` column (:func:`random_valid_accuracy`), also that baseline and the
    paired gain over it, ``gain`` with its interval ``gain_low``..``gain_high``."""
    import pandas as pd

    rows = []
    groups = [(task, g) for task, g in frame.groupby("task", sort=True)] + [("all", frame)]
    for task, g in groups:
        ci = accuracy_ci(g["correct"].to_numpy(), n_boot=n_boot, seed=seed)
        row = {
            "task": task,
            "n": len(g),
            "fits": int(g["fits"].sum()),
            "format_ok": float(g["format_ok"].mean()),
            "accuracy": ci["estimate"],
            "low": ci["low"],
            "high": ci["high"],
        }
        if "random_valid" in g:
            gain = accuracy_ci(g["correct"].to_numpy(), g["random_valid"].to_numpy(), n_boot=n_boot, seed=seed)
            row.update(random_valid=float(g["random_valid"].mean()), gain=gain["estimate"], gain_low=gain["low"],
                       gain_high=gain["high"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


def closed_records(split, tasks: Iterable[str] | None = None, limit_per_task: int | None = None, seed: int = 0):
    """The closed-task records of a split (``answer`` not None), optionally only ``tasks`` and at most
    ``limit_per_task`` per task (a seeded sample), as a list of dicts in a stable order."""
    rows = split.to_list() if hasattr(split, "to_list") else list(split)
    wanted = None if tasks is None else set(tasks)  # once: ``tasks`` may be a one-pass iterator
    rows = [r for r in rows if r.get("answer") is not None and (wanted is None or r["task"] in wanted)]
    if limit_per_task is None:
        return rows
    rng = np.random.default_rng(seed)
    out = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        keep = sorted(rng.permutation(len(mine))[:limit_per_task].tolist())
        out.extend(mine[i] for i in keep)
    return out


def fits_context(records, tokenizer, context: int, *, reserve: int = 0) -> list[dict]:
    """The records whose full conversation (prompt and answer, with template) fits ``context − reserve``
    tokens of ``tokenizer``."""
    out = []
    for r in records:
        text = tokenizer.apply_chat_template(r["messages"], tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= context - reserve:
            out.append(r)
    return out


# --- how long does fine-tuning take? --------------------------------------------------------------------


def training_seconds(n_params: float, n_tokens: float, peak_flops: float, mfu: float = 0.4) -> float:
    """Time to train ``n_params`` on ``n_tokens``: 6·N·D FLOPs (forward 2, backward 4 per weight and token)
    divided by the sustained rate ``peak_flops × mfu`` (model FLOPs utilisation). Chapter 4c extrapolates
    the measured CPU rate to a GPU and a larger model with it; attention FLOPs are left out (short contexts)."""
    if min(n_params, n_tokens, peak_flops) <= 0 or not 0 < mfu <= 1:
        raise ValueError("n_params, n_tokens and peak_flops must be > 0 and mfu in (0, 1]")
    return 6.0 * n_params * n_tokens / (peak_flops * mfu)


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest sensible unit: ``"42.0 s"``, ``"3.5 min"``, ``"2.1 h"``, ``"12.3 days"``."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


# --- mid-training: continued pretraining on the domains SFT asks about ----------------------------------

#: Cache name of the mid-trained base model (``artifact_dir(MID_MODEL_ARTIFACT, profile)``: model, tokenizer
#: and ``history.json``, the run's losses).
MID_MODEL_ARTIFACT = "mid-model"
#: The SFT sources whose train-split text mid-training reads (the play passages are not among them: see
#: :func:`midtraining_documents`).
MID_SOURCES = ("reviews", "chatterbot", "chitchat")


def midtraining_documents(profile: str = "full", *, seed: int = 0, replay_share: float = 0.25) -> dict:
    """The text of mid-training (中期训练, continued pretraining), ``{"train": {id: text}, "validation": {...}}``.

    Each review and each dialogue of :data:`MID_SOURCES` is a document, cleaned and deduplicated over the whole
    source with chapter 4b's ``sft_data.clean_items`` (so of two near duplicates only the one 4b kept
    survives) and split by ``source_id`` with ``sft_data.split_of``, exactly like the SFT data: no
    validation or test item of chapter 4b, nor a near duplicate of one, is ever read. ``train`` adds whole
    training plays of chapter 3 (replay, 回放) until they are ``replay_share`` of the characters, so the model
    keeps its Shakespeare; ``validation`` holds the validation-split reviews and dialogues. The ``ci``
    profile keeps 300 documents per source and split.
    """
    from book_utils import sft_data as sd
    from book_utils.assets import shakespeare_splits

    if not 0 <= replay_share < 1:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share!r}")
    limit = 300 if profile == "ci" else None
    items = {"reviews": sd.review_items(), "chatterbot": sd.chatterbot_items(),
             "chitchat": sd.chitchat_items(limit=1500 if profile == "ci" else None)}
    docs: dict[str, dict[str, str]] = {"train": {}, "validation": {}}
    for source in MID_SOURCES:
        kept, _ = sd.clean_items(items[source], min_chars=sd.CLEANING[source][0], max_chars=sd.MAX_CONTENT_CHARS)
        taken = {"train": 0, "validation": 0}
        for item in kept:
            split = sd.split_of(item["source_id"], seed)
            if split in docs and (limit is None or taken[split] < limit):
                docs[split][item["source_id"]] = item["text"]
                taken[split] += 1
    domain_chars = sum(map(len, docs["train"].values()))
    plays = shakespeare_splits()["train"]
    replay_chars = 0
    for title in sorted(plays):
        if replay_chars >= replay_share / (1 - replay_share) * domain_chars:
            break
        docs["train"][f"shakespeare:{title}"] = plays[title]
        replay_chars += len(plays[title])
    return docs


def midtraining_config(ctx):
    """Mid-training's ``pretraining.TrainConfig``: a short run at a third of pretraining's peak learning rate."""
    from book_utils.pretraining import TrainConfig

    return TrainConfig(
        max_steps=ctx.pick(ci=20, full=300), batch_size=ctx.pick(ci=8, full=16), lr=1e-3, min_lr=1e-4,
        warmup_steps=ctx.pick(ci=2, full=30), eval_every=ctx.pick(ci=10, full=100), eval_blocks=64,
        checkpoint_every=ctx.pick(ci=20, full=300), seed=ctx.seed,
    )


def midtrain(ctx, model, tokenizer, docs=None):
    """Continue pretraining ``model`` (in place) on :func:`midtraining_documents` with chapter 3's training loop
    (``pretraining.train``, next-token loss on every token, blocks of the model's context) and
    :func:`midtraining_config`. Returns the run's history. Chapter 4c."""
    from book_utils.pretraining import build_lm_datasets, train

    docs = docs or midtraining_documents(ctx.profile, seed=ctx.seed)
    data = build_lm_datasets(docs, tokenizer, context_length(model))
    return train(model.train(), data, midtraining_config(ctx), desc="mid-training", log=None)


def load_or_midtrain(ctx):
    """The base model after mid-training, ``(model, tokenizer, history)``, in eval mode on ``ctx.device``:
    loaded from ``artifact_dir("mid-model", profile)``, or mid-trained now from chapter 3's base model
    (:func:`midtrain`; CPU: seconds in ``ci``, a few minutes in ``full``) and saved atomically first."""
    from book_utils.cache import artifact_dir, load_or_build
    from book_utils.pretraining import load_base_model, load_saved_llama

    def build(folder: Path) -> None:
        model, tokenizer = load_base_model(ctx)
        history = midtrain(ctx, model, tokenizer)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "history.json").write_text(json.dumps(history))

    def load(folder: Path):
        model, tokenizer = load_saved_llama(folder, ctx.device, what="the mid-trained model", retry="load_or_midtrain")
        return model, tokenizer, json.loads((folder / "history.json").read_text())

    return load_or_build(artifact_dir(MID_MODEL_ARTIFACT, ctx.profile), build, load)


# --- the instruction-tuned base model (chapter 5 loads it) -------------------------------------------------


def sft_recipe(ctx) -> dict:
    """The recipe chapter 4c instruction-tunes our base model with, per profile: :func:`finetune`'s arguments
    (the loss of :func:`per_example_nll`, each "which play?" record three times, :func:`training_arguments`)."""
    return ctx.pick(
        ci=dict(max_steps=20, batch_size=8, learning_rate=2e-3, warmup_steps=0.1, group_by_length=True,
                per_example=True, repeats={"play": 3}),
        full=dict(max_steps=1600, batch_size=16, learning_rate=2e-3, warmup_steps=0.05, group_by_length=True,
                  per_example=True, repeats={"play": 3}),
    )


def finetune(model, tokenizer, train, validation, ctx, *, output_dir, per_example: bool = True,
             repeats: Mapping[str, int] | None = None, callbacks=None, **settings) -> dict:
    """One SFT run: ``model`` trained in place on ``train`` (mixed by :func:`mix_tasks` with ``repeats``) with
    :func:`training_arguments` (``settings``) and :func:`train_sft`, seeded by ``settings["seed"]`` or
    ``ctx.seed`` (``Trainer`` seeds every generator with it when it is built). Returns the run of
    :func:`train_sft`. Every run of chapter 4c goes through here."""
    args = training_arguments(output_dir, ctx, **settings)
    if repeats:
        train = mix_tasks(train, repeats, seed=args.seed)
    return train_sft(model.train(), tokenizer, train, validation, args=args, per_example=per_example,
                     callbacks=callbacks)


def sft_model_dir(profile: str) -> Path:
    """``artifact_dir("sft-model", profile)``."""
    from book_utils.cache import artifact_dir

    return artifact_dir(SFT_MODEL_ARTIFACT, profile)


def save_sft_model(profile: str, model, tokenizer, info: dict | None = None) -> Path:
    """Write the (merged) SFT model and its tokenizer to :func:`sft_model_dir` in safetensors, atomically.

    The generation config lists :func:`~book_utils.decoding.stop_token_ids` as eos, so ``model.generate``
    stops at the end of the assistant's turn, as for any chat model on the Hub. In the ``ci`` profile the
    saved config records the :data:`CI_CONTEXT` positions the model was fine-tuned
    with (see :func:`sft_context`), so that code loading it (chapter 5) sees the context it was trained on.
    """
    if profile == "ci":
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, CI_CONTEXT)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)  # `generate` ends the reply at <|im_end|>
    return _save_folder(sft_model_dir(profile), model, tokenizer, info, "sft_info.json")


def _save_folder(folder: Path, model, tokenizer, info: dict | None, info_name: str) -> Path:
    """Write ``model`` (safetensors), ``tokenizer`` and, if given, ``info`` as JSON to ``folder``,
    atomically: a reader sees the old folder or the complete new one."""
    from book_utils.cache import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / info_name).write_text(json.dumps(info, indent=1, default=str))
    return folder


def sft_train_data(ctx, tokenizer, context: int, data=None):
    """The tokenized, prompt-masked train and validation splits for our base model, and how many records of
    each were dropped for length: ``(train, validation, dropped)``."""
    if data is None:
        from book_utils.sft_data import load_or_build_sft_dataset

        data = load_or_build_sft_dataset(ctx)
    train, dropped_train = tokenize_records(data["train"], tokenizer, context)
    validation, dropped_val = tokenize_records(data["validation"], tokenizer, context)
    return train, validation, {"train": dropped_train, "validation": dropped_val}


def train_sft_model(ctx, *, data=None, output_dir=None, **recipe_overrides):
    """Instruction-tune our chapter-3 base model with :func:`sft_recipe` (prompt-masked, per-example loss, full
    fine-tuning): returns ``(model, tokenizer, run)`` with ``run`` from :func:`train_sft`. Chapter 4c runs
    these steps."""
    import tempfile

    from book_utils.pretraining import load_base_model

    model, tokenizer = load_base_model(ctx)
    train, validation, dropped = sft_train_data(ctx, tokenizer, sft_context(ctx, model), data)
    recipe = {**sft_recipe(ctx), **recipe_overrides}
    output_dir = output_dir or tempfile.mkdtemp(prefix="sft-run-")
    run = finetune(model, tokenizer, train, validation, ctx, output_dir=output_dir, **recipe)
    run["dropped"] = dropped
    run["recipe"] = recipe
    return model.eval(), tokenizer, run


def load_or_train_sft_model(ctx):
    """Our base model after instruction tuning, ``(model, tokenizer)`` in eval mode on ``ctx.device``.

    Loaded from ``artifact_dir("sft-model", ctx.profile)`` when chapter 4c (or an earlier call) has written
    it; otherwise trained now with :func:`train_sft_model` (the chapter's recipe; CPU: seconds in ``ci``,
    a few minutes in ``full``), saved, then loaded. Chapter 5 (deployment) starts from it; prompts go
    through ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``.
    """
    from book_utils.cache import is_complete
    from book_utils.pretraining import load_saved_llama

    folder = sft_model_dir(ctx.profile)
    if not is_complete(folder):
        print(f"no SFT model in {folder}: instruction-tuning the base model with the {ctx.profile!r} recipe")
        model, tokenizer, run = train_sft_model(ctx)
        info = {k: run[k] for k in ("recipe", "dropped", "val_loss", "train_loss", "seconds", "tokens")}
        save_sft_model(ctx.profile, model, tokenizer, info)
    return load_saved_llama(folder, ctx.device, what="the SFT model", retry="load_or_train_sft_model")


# --- SmolLM2 as a trainable checkpoint ---------------------------------------------------------------------


def smollm2_checkpoint(ctx) -> Path:
    """SmolLM2-135M-Instruct as a plain float32 safetensors checkpoint in the cache, converted once (chapter 4c).

    ``assets.load_smollm2`` dequantises the GGUF file, but ``Trainer`` refuses a model loaded from GGUF, so
    the weights are copied into a model built ``from_config`` and saved with ``save_pretrained`` (≈ 540 MB;
    reloading takes a fraction of a second). Returns the folder (``AutoModelForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load it).

    The ``ci`` profile, which only checks that the code runs, gets a *tiny randomly initialised* model of the
    same family instead (2 layers, width 64, SmolLM2's real tokenizer and chat template): training the real
    135 M parameters takes minutes per step on a small CPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from book_utils.assets import asset_path, load_smollm2
    from book_utils.cache import artifact_dir, load_or_build

    def build(folder: Path) -> None:
        gguf = asset_path("smollm2")
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if ctx.profile == "ci":
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            tokenizer, loaded = load_smollm2(dtype=torch.float32)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
            missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
            if missing or unexpected:
                raise RuntimeError(f"GGUF weights do not match the config: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return load_or_build(artifact_dir(SMOLLM2_ARTIFACT, ctx.profile), build, lambda folder: folder)


#: SmolLM2's fine-tunes of chapter 4c.3, saved for chapter 4c.4's evaluation: ``smollm2-sft-full`` holds the
#: fine-tuned model, ``smollm2-sft-lora`` only the LoRA adapter (a few MB; the base is
#: :func:`smollm2_checkpoint`).
SMOLLM2_FINETUNES = ("full", "lora")


def _smollm2_finetune_dir(method: str, profile: str) -> Path:
    from book_utils.cache import artifact_dir

    if method not in SMOLLM2_FINETUNES:
        raise ValueError(f"method must be one of {SMOLLM2_FINETUNES}, got {method!r}")
    return artifact_dir(f"smollm2-sft-{method}", profile)


def save_smollm2_finetune(ctx, method: str, model, tokenizer, info: dict | None = None) -> Path:
    """Save chapter 4c.3's fine-tuned SmolLM2 atomically: the whole model for ``"full"``, the adapter alone
    for ``"lora"`` (``model`` is then the ``PeftModel``, before any merge). Returns the folder."""
    if method == "lora" and not hasattr(model, "peft_config"):
        raise TypeError("method 'lora' saves a PeftModel's adapter; merge only after saving")
    folder = _smollm2_finetune_dir(method, ctx.profile)
    return _save_folder(folder, model, tokenizer, info, "run_info.json")


def load_smollm2_finetune(ctx, method: str):
    """Chapter 4c.3's fine-tuned SmolLM2 (``"full"`` or ``"lora"``, the adapter merged into the weights), in
    eval mode on ``ctx.device``. Raises ``FileNotFoundError`` naming the notebook to run when chapter 4c.3
    has not saved it in this profile."""
    from transformers import AutoModelForCausalLM

    from book_utils.cache import is_complete

    folder = _smollm2_finetune_dir(method, ctx.profile)
    if not is_complete(folder):
        raise FileNotFoundError(
            f"no SmolLM2 {method!r} fine-tune in {folder}: run chapter 4c.3 "
            f"(book/04_sft/06_lora_smollm2.ipynb) in the {ctx.profile!r} profile first; it trains and saves it"
        )
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(ctx))
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    return model.to(ctx.device).eval()
