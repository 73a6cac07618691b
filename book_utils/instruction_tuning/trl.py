"""The production path: the same SFT run through TRL's ``SFTTrainer`` (records in
prompt-completion form, TRL's ``SFTConfig``, TRL tokenizing and labelling itself).
Chapter 4c.3, book/04_sft/06_lora_smollm2.ipynb.

(Imports are absolute, so ``from trl import ...`` below is the TRL library, not this
module.)"""

from __future__ import annotations

from book_utils.instruction_tuning.data import prompt_of
from book_utils.instruction_tuning.train import SFT_ARGUMENTS, _counting_trainer_class
from book_utils.training import training_arguments


def prompt_completion(records) -> list[dict]:
    """Records in TRL's conversational prompt-completion form: ``prompt`` = every
    message but the last, ``completion`` = the final assistant message.
    ``SFTTrainer`` then trains on the completion only."""
    rows = records.to_list() if hasattr(records, "to_list") else list(records)
    return [
        {"prompt": prompt_of(r["messages"]), "completion": r["messages"][-1:]}
        for r in rows
    ]


def trl_config(
    output_dir,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int = 0,
    device=None,
    **overrides,
):
    """TRL's ``SFTConfig`` for the same run as
    :func:`book_utils.training.training_arguments` with
    :data:`~book_utils.instruction_tuning.train.SFT_ARGUMENTS` (a log line every
    step), with the defaults that differ from ``TrainingArguments`` set explicitly:
    gradient checkpointing (TRL turns it on) and bf16 (TRL turns it on unless fp16 is
    set) follow the hardware, loss on the completion only. Chapter 4c."""
    from trl import SFTConfig

    settings = {
        **SFT_ARGUMENTS,
        "logging_steps": 1,
        "per_device_eval_batch_size": max(batch_size, 8),
        "remove_unused_columns": True,  # SFTConfig's default: TRL picks the columns
        "max_length": max_length,
        "completion_only_loss": True,
        "packing": False,
        "gradient_checkpointing": False,
        **overrides,
    }
    return training_arguments(
        output_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
        config_class=SFTConfig,
        **settings,
    )


def trl_trainer(model, tokenizer, train, validation=None, *, args, peft_config=None):
    """TRL's ``SFTTrainer`` (counting tokens like
    :func:`~book_utils.instruction_tuning.train.train_sft`) on prompt-completion
    ``train``/``validation`` (see :func:`prompt_completion`); TRL tokenizes with the
    chat template and builds the labels itself. Train and measure it with
    :func:`~book_utils.instruction_tuning.train.run_trainer`."""
    from datasets import Dataset
    from trl import SFTTrainer

    def as_dataset(rows):
        if rows is None or isinstance(rows, Dataset):
            return rows
        return Dataset.from_list(rows)

    return _counting_trainer_class(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=as_dataset(train),
        eval_dataset=as_dataset(validation),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
