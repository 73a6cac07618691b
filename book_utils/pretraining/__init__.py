"""Causal language model pretraining (预训练) of the book's small Llama-style base model
(taught in chapter 3.2, book/03_pretraining/02_causal_lm.ipynb).

A causal language model (因果语言模型) learns p(x_t | x_<t) by minimising the
next-token cross-entropy on raw text. This package holds everything chapter 3,
"Causal-LM pretraining", needs beyond a few lines, one submodule per concern (all
taught in chapter 3.2 unless said otherwise):

- :mod:`~book_utils.pretraining.config`: configs as small frozen dataclasses, nanoGPT
  style: :class:`ModelConfig` (with its parameter-count and FLOP formulas) and
  :class:`TrainConfig`; :func:`preset` reads the sizes the book uses per profile
  (:data:`PRESETS`, kept in :mod:`book_utils.sizes`); :func:`lr_at` is the warmup +
  cosine learning-rate schedule (学习率调度);
- :mod:`~book_utils.pretraining.data`: data with 🤗 ``datasets``:
  :func:`build_lm_datasets` tokenizes whole documents, concatenates and chunks them into
  fixed blocks with batched ``map``, one split at a time, so no validation text reaches
  training; :func:`batch_indices` draws each step's (sharded) batch;
- :mod:`~book_utils.pretraining.checkpoint`: resumable safetensors checkpoints (检查点)
  written atomically, and the base model artifact's folders;
- :mod:`~book_utils.pretraining.evaluate`: :func:`score_text` and :func:`bits_per_char`
  (from :mod:`book_utils.ngram`, chapter 1): held-out perplexity (困惑度) in bits per
  character, the unit that compares models with different tokenizers (chapter 1's
  n-gram, a character model, SmolLM2);
- :mod:`~book_utils.pretraining.train`: :func:`train`: AdamW, the schedule, gradient
  clipping (梯度裁剪), periodic evaluation and samples, checkpoints, and data
  parallelism (数据并行) with ``torch.distributed`` when launched by ``torchrun`` or
  ``accelerate launch`` (chapter 4c's mid-training reuses it);
- :mod:`~book_utils.pretraining.speed`: matmul FLOP/s and timed steps for MFU (also
  ``scripts/benchmark_pretraining.py``);
- :mod:`~book_utils.pretraining.base_model`: :func:`load_base_model`, the trained base
  model from the artifact cache (chapters 4c and 5 use it);
- :mod:`~book_utils.pretraining.cli`: a command line,
  ``python -m book_utils.pretraining --help``, that runs unchanged under
  ``torchrun --nproc_per_node 2 -m book_utils.pretraining`` (gloo on CPU, nccl on
  GPUs), and :func:`run_cli`, which launches it.

:func:`char_tokenizer` (nanoGPT's character encoding) lives in
:mod:`book_utils.tokenization` (chapter 3.1) and is re-exported here.
"""

from __future__ import annotations

from book_utils.ngram import bits_per_char
from book_utils.pretraining.base_model import (
    base_configs,
    default_nproc,
    load_base_model,
    pretrain_base_model,
)
from book_utils.pretraining.checkpoint import (
    BASE_MODEL_ARTIFACT,
    CHECKPOINT_FORMAT,
    CheckpointError,
    base_model_dir,
    load_checkpoint,
    load_saved_llama,
    load_trained,
    run_checkpoint_dir,
    save_base_model,
    save_checkpoint,
)
from book_utils.pretraining.cli import main, run_cli
from book_utils.pretraining.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    lr_at,
    preset,
)
from book_utils.pretraining.data import (
    batch_indices,
    build_lm_datasets,
    documents_dataset,
    held_out_excerpt,
    shakespeare_lm_data,
)
from book_utils.pretraining.evaluate import TextScore, score_text
from book_utils.pretraining.speed import measure_matmul_flops, time_train_steps
from book_utils.pretraining.train import (
    SAMPLE_PROMPT,
    build_model,
    count_parameters,
    new_history,
    tokens_per_second,
    train,
    train_step,
)
from book_utils.pretraining.train import _optimizer as _optimizer
from book_utils.pretraining.train import _scheduler as _scheduler
from book_utils.tokenization import char_tokenizer

__all__ = [
    "BASE_MODEL_ARTIFACT",
    "CHECKPOINT_FORMAT",
    "PRESETS",
    "SAMPLE_PROMPT",
    "CheckpointError",
    "ModelConfig",
    "TextScore",
    "TrainConfig",
    "base_configs",
    "base_model_dir",
    "batch_indices",
    "bits_per_char",
    "build_lm_datasets",
    "build_model",
    "char_tokenizer",
    "count_parameters",
    "default_nproc",
    "documents_dataset",
    "held_out_excerpt",
    "load_base_model",
    "load_checkpoint",
    "load_saved_llama",
    "load_trained",
    "lr_at",
    "main",
    "measure_matmul_flops",
    "new_history",
    "preset",
    "pretrain_base_model",
    "run_checkpoint_dir",
    "run_cli",
    "save_base_model",
    "save_checkpoint",
    "score_text",
    "shakespeare_lm_data",
    "time_train_steps",
    "tokens_per_second",
    "train",
    "train_step",
]
