"""The book's base model as a cached artifact: its configs (:func:`base_configs`),
training it end to end (:func:`pretrain_base_model`, on :func:`default_nproc`
processes through the command line) and loading it (:func:`load_base_model`), which
trains it first when the cache does not hold it.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb; chapters 4c
(book/04_sft/04_instruction_tuning.ipynb) and 5 start from :func:`load_base_model`.
"""

from __future__ import annotations

import os

import torch

from book_utils.pretraining.checkpoint import (
    base_model_dir,
    load_saved_llama,
    load_trained,
    run_checkpoint_dir,
    save_base_model,
)
from book_utils.pretraining.cli import run_cli
from book_utils.pretraining.config import ModelConfig, TrainConfig, preset


def base_configs(
    tokenizer, *, profile: str, seed: int = 0
) -> tuple[ModelConfig, TrainConfig]:
    """The base model's ``(ModelConfig, TrainConfig)`` for ``profile`` (vocabulary from
    the tokenizer, ``seed`` in the training config)."""
    return preset("base", profile, len(tokenizer), seed=seed)


def default_nproc(device) -> int:
    """Processes for a training run: 2 on a CPU with at least 2 cores (one
    single-threaded process per core), else 1 (one GPU). On a shared CPU, one thread per
    process avoids the stalls of threads waiting for each other; chapter 3 measures
    it."""
    device = torch.device(device)
    return 2 if device.type == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def pretrain_base_model(
    *, profile: str, device, seed: int = 0, nproc: int | None = None
):
    """Train the book's base model with ``profile``'s preset on ``nproc`` processes
    (default :func:`default_nproc`), resuming from its checkpoint if one is in the
    cache, save it, and return ``(model, tokenizer, history)`` with the model on
    ``device``. Chapter 3 runs these steps one by one; :func:`load_base_model` calls
    this when the artifact is missing."""
    from book_utils.tokenization import load_or_train_tokenizer

    tokenizer = load_or_train_tokenizer(profile)
    model_cfg, train_cfg = base_configs(tokenizer, profile=profile, seed=seed)
    checkpoint_dir = run_checkpoint_dir(profile, "base", model_cfg, train_cfg)
    nproc = nproc or default_nproc(device)
    run = run_cli(
        [
            "--preset",
            "base",
            "--profile",
            profile,
            "--seed",
            str(seed),
            "--checkpoint-dir",
            str(checkpoint_dir),
        ],
        nproc=nproc,
    )
    model = load_trained(checkpoint_dir).to(device)
    save_base_model(profile, model, tokenizer, run["history"])
    return model, tokenizer, run["history"]


def load_base_model(*, profile: str, device, seed: int = 0):
    """The book's pretrained base model and its tokenizer, ``(model, tokenizer)``, in
    eval mode on ``device`` (chapter 3).

    Loaded from the artifact cache in seconds (``LlamaForCausalLM.from_pretrained``)
    when chapter 3 (or an earlier call) has trained it with this profile; otherwise
    trained now with the profile's preset and ``seed`` (CPU: seconds for ``ci``,
    minutes for ``full``), saved, then loaded. Chapters 4c and 5 start from it.
    """
    from book_utils.cache import is_complete

    folder = base_model_dir(profile) / "model"
    if not is_complete(folder):
        print(
            f"no trained base model in {folder}: pretraining one with the "
            f"{profile!r} profile"
        )
        pretrain_base_model(profile=profile, device=device, seed=seed)
    return load_saved_llama(
        folder, device, what="the base model", retry="load_base_model"
    )
