"""Instruction tuning (指令微调) of a decoder on chat data: the pieces chapter 4c uses
more than once.

Chapter 4c fine-tunes two decoders on the instruction dataset of chapter 4b
(:mod:`book_utils.sft_data`): our chapter-3 base model (the whole pipeline from
scratch) and the real SmolLM2-135M (full fine-tuning against LoRA, and TRL's
``SFTTrainer`` as the production path). Submodules, by concern:

- :mod:`~book_utils.instruction_tuning.data` (chapter 4c,
  book/04_sft/04_instruction_tuning.ipynb): :func:`tokenize_records` (prompt masked or
  not, records longer than the context dropped and counted), :class:`SFTCollator`,
  the task mixture (:func:`mix_tasks`, :func:`mixture_table`), :func:`replay_mix`,
  :func:`prompt_of` and the token budget :func:`sft_context`;
- :mod:`~book_utils.instruction_tuning.loss` (chapter 4c): :func:`masked_nll`, the
  formula the chapter checks, and :func:`per_example_nll`, which weights each
  conversation once;
- :mod:`~book_utils.instruction_tuning.train` (chapter 4c; LoRA and memory in 4c.3,
  book/04_sft/06_lora_smollm2.ipynb): :func:`finetune` (every SFT run of the chapter),
  :func:`train_sft` and :func:`run_trainer` (a ``Trainer`` run that also measures time,
  tokens per second and :func:`training_memory`), :func:`enable_checkpointing`,
  :func:`add_lora`, :func:`count_trainable`; the arguments come from
  :func:`book_utils.training.training_arguments` with :data:`SFT_ARGUMENTS`;
- :mod:`~book_utils.instruction_tuning.trl` (chapter 4c.3): :func:`prompt_completion`,
  :func:`trl_config` and :func:`trl_trainer`, the same run through TRL's
  ``SFTTrainer``;
- :mod:`~book_utils.instruction_tuning.evaluate` (chapter 4c; chapter 4c.4,
  book/04_sft/07_evaluation.ipynb): :func:`generate_replies` (greedy, batched with
  left padding), :func:`evaluate_closed` (exact match with ``sft_data.parse_answer``,
  format compliance), :func:`score_table` and :func:`accuracy_ci` (bootstrap
  intervals, paired differences), :func:`random_valid_accuracy` (a guesser that
  answers a random allowed label), :func:`closed_records`, :func:`fits_context`;
- :mod:`~book_utils.instruction_tuning.midtraining` (chapter 4c.2,
  book/04_sft/05_sft_ablations.ipynb): :func:`midtraining_documents` and
  :func:`load_or_midtrain`, continued pretraining on the domains SFT asks about;
- :mod:`~book_utils.instruction_tuning.artifacts` (chapter 4c; chapter 5 loads the
  result): :func:`sft_recipe`, :func:`train_sft_model` and
  :func:`load_or_train_sft_model` (our base model after SFT), :func:`smollm2_checkpoint`
  (SmolLM2 converted once from GGUF to safetensors) and its saved fine-tunes.

Also re-exported: :data:`IGNORE_INDEX` (``sft_data.masks``),
:func:`training_arguments` and :func:`mixed_precision_flags`
(:mod:`book_utils.training`), :func:`training_seconds` and :func:`format_duration`
(:mod:`book_utils.compute`, the 6·N·D arithmetic that extrapolates a measured rate).
"""

from __future__ import annotations

from book_utils.compute import format_duration, training_seconds
from book_utils.instruction_tuning.artifacts import (
    SFT_MODEL_ARTIFACT,
    SMOLLM2_ARTIFACT,
    SMOLLM2_FINETUNES,
    load_or_train_sft_model,
    load_smollm2_finetune,
    save_sft_model,
    save_smollm2_finetune,
    sft_model_dir,
    sft_recipe,
    sft_train_data,
    smollm2_checkpoint,
    train_sft_model,
)
from book_utils.instruction_tuning.data import (
    SFTCollator,
    context_length,
    mix_tasks,
    mixture_table,
    prompt_of,
    replay_mix,
    sft_context,
    tokenize_records,
)
from book_utils.instruction_tuning.evaluate import (
    accuracy_ci,
    closed_records,
    evaluate_closed,
    fits_context,
    generate_replies,
    options_of,
    random_valid_accuracy,
    score_table,
)
from book_utils.instruction_tuning.loss import masked_nll, per_example_nll
from book_utils.instruction_tuning.midtraining import (
    MID_MODEL_ARTIFACT,
    MID_SOURCES,
    load_or_midtrain,
    midtrain,
    midtraining_config,
    midtraining_documents,
)
from book_utils.instruction_tuning.train import (
    SFT_ARGUMENTS,
    add_lora,
    count_trainable,
    enable_checkpointing,
    finetune,
    run_trainer,
    train_sft,
    training_memory,
)
from book_utils.instruction_tuning.trl import (
    prompt_completion,
    trl_config,
    trl_trainer,
)
from book_utils.sft_data.masks import IGNORE_INDEX
from book_utils.training import mixed_precision_flags, training_arguments

__all__ = [
    "IGNORE_INDEX",
    "MID_MODEL_ARTIFACT",
    "MID_SOURCES",
    "SFTCollator",
    "SFT_ARGUMENTS",
    "SFT_MODEL_ARTIFACT",
    "SMOLLM2_ARTIFACT",
    "SMOLLM2_FINETUNES",
    "accuracy_ci",
    "add_lora",
    "closed_records",
    "context_length",
    "count_trainable",
    "enable_checkpointing",
    "evaluate_closed",
    "finetune",
    "fits_context",
    "format_duration",
    "generate_replies",
    "load_or_midtrain",
    "load_or_train_sft_model",
    "load_smollm2_finetune",
    "masked_nll",
    "midtrain",
    "midtraining_config",
    "midtraining_documents",
    "mix_tasks",
    "mixed_precision_flags",
    "mixture_table",
    "options_of",
    "per_example_nll",
    "prompt_completion",
    "prompt_of",
    "random_valid_accuracy",
    "replay_mix",
    "run_trainer",
    "save_sft_model",
    "save_smollm2_finetune",
    "score_table",
    "sft_context",
    "sft_model_dir",
    "sft_recipe",
    "sft_train_data",
    "smollm2_checkpoint",
    "tokenize_records",
    "train_sft",
    "train_sft_model",
    "training_arguments",
    "training_memory",
    "training_seconds",
    "trl_config",
    "trl_trainer",
]
