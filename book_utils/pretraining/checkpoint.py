"""Checkpoints and the base model artifact: resumable training state written
atomically (:func:`save_checkpoint`, :func:`load_checkpoint`), where each run keeps it
(:func:`run_checkpoint_dir`), and the finished base model in the artifact cache
(:func:`save_base_model`, :func:`load_trained`, :func:`load_saved_llama`).

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb (chapters 4c and 5 load the base
model from here).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from book_utils.pretraining.config import ModelConfig, TrainConfig

#: Cache name of the base model artifact: ``artifact_dir(BASE_MODEL_ARTIFACT, profile)``
#: holds ``model/`` (the finished model and tokenizer, ``from_pretrained``-loadable) and
#: the resumable training state of each run in ``<run>-checkpoint-<config hash>/``
#: (:func:`run_checkpoint_dir`).
BASE_MODEL_ARTIFACT = "base-model"
#: Written by :func:`save_checkpoint`; a checkpoint from another format version is
#: refused, not misread.
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or written for another
    configuration).

    The message says which folder and what to do (usually: delete it to train from
    scratch).
    """


def save_checkpoint(
    path,
    model,
    optimizer,
    scheduler,
    step: int,
    history: dict,
    train_cfg: TrainConfig,
) -> None:
    """Save everything a resumed run needs into folder ``path``, atomically (chapter 3).

    ``model.safetensors`` + ``config.json`` (``save_pretrained``), ``optimizer.pt``
    (AdamW moments, plain tensors: ``torch.load(weights_only=True)`` reads it),
    ``state.json`` (step, scheduler, history, config). The folder is built beside
    ``path`` and renamed into place only when complete (``cache.atomic_dir``): an
    interrupted save leaves the previous checkpoint intact and nothing half-written
    under ``path``.
    """
    from book_utils.cache import atomic_dir

    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "train_config": asdict(train_cfg),
    }
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "optimizer.pt").write_bytes(buffer.getvalue())
        (tmp / "state.json").write_text(json.dumps(state))


def load_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    train_cfg: TrainConfig | None = None,
) -> dict | None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and
    optimizer, scheduler).

    Returns the saved state (``step``, ``history``), or ``None`` when there is no
    finished checkpoint: a folder without the completion marker is never loaded. Raises
    :class:`CheckpointError` when the files are corrupt or were written for another
    model or training configuration.
    """
    from safetensors.torch import load_file

    from book_utils.cache import is_complete

    path = Path(path)
    if not path.exists():
        return None
    if not is_complete(path):
        warnings.warn(
            f"ignoring {path}: it has no completion marker (an interrupted write); "
            "training starts from scratch"
        )
        return None
    advice = f"delete the folder to train from scratch:  rm -r '{path}'"
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "model.safetensors")
        optim_state = (
            torch.load(path / "optimizer.pt", weights_only=True)
            if optimizer is not None
            else None
        )
    except Exception as error:  # noqa: BLE001 - any unreadable file means the same
        raise CheckpointError(
            f"the checkpoint in {path} is corrupt or incomplete "
            f"({type(error).__name__}: {error}); {advice}"
        ) from error
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"the checkpoint in {path} has format {state.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT}; {advice}"
        )
    if train_cfg is not None and state.get("train_config") != json.loads(
        json.dumps(asdict(train_cfg))
    ):
        raise CheckpointError(
            f"the checkpoint in {path} was written for another training configuration "
            f"({state.get('train_config')} vs {asdict(train_cfg)}); use another folder "
            f"or {advice}"
        )
    expected = model.state_dict()
    tied = (
        {"lm_head.weight"}
        if getattr(model.config, "tie_word_embeddings", False)
        else set()
    )
    missing = set(expected) - set(weights) - tied
    mismatched = [
        k
        for k, v in weights.items()
        if k not in expected or expected[k].shape != v.shape
    ]
    if missing or mismatched:
        raise CheckpointError(
            f"the checkpoint in {path} holds another model shape (missing "
            f"{sorted(missing)[:3]}, different {mismatched[:3]}); use another folder "
            f"or {advice}"
        )
    model.load_state_dict(weights, strict=False)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(optim_state)
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(
            f"the optimizer state in {path} does not fit this model ({error}); {advice}"
        ) from error
    return state


# --- the base model artifact ----------------------------------------------------------


def base_model_dir(profile: str) -> Path:
    """``artifact_dir("base-model", profile)``: ``model/`` (finished) and the runs'
    checkpoints inside."""
    from book_utils.cache import artifact_dir

    return artifact_dir(BASE_MODEL_ARTIFACT, profile)


def run_checkpoint_dir(
    profile: str, name: str, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> Path:
    """Where run ``name`` keeps its resumable checkpoint: under
    ``base_model_dir(profile)``, in a folder named after a hash of both configs, so a
    changed configuration starts a fresh run instead of resuming from (or being refused
    by) another configuration's checkpoint."""
    import hashlib

    key = json.dumps([asdict(model_cfg), asdict(train_cfg)], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return base_model_dir(profile) / f"{name}-checkpoint-{digest}"


def save_base_model(
    profile: str, model, tokenizer, history: dict | None = None
) -> Path:
    """Write the finished base model and its tokenizer to
    ``base_model_dir(profile)/"model"``, atomically."""
    from book_utils.cache import atomic_dir

    folder = base_model_dir(profile) / "model"
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if history is not None:
            (tmp / "history.json").write_text(json.dumps(history))
    return folder


def load_trained(checkpoint_dir):
    """The ``LlamaForCausalLM`` in a finished run's checkpoint folder (eval mode)."""
    from transformers import LlamaForCausalLM

    from book_utils.cache import is_complete

    if not is_complete(checkpoint_dir):
        raise CheckpointError(
            f"no finished checkpoint in {checkpoint_dir}: train first "
            "(pt.run_cli or pt.train)"
        )
    return LlamaForCausalLM.from_pretrained(checkpoint_dir).eval()


def load_saved_llama(folder, device, *, what: str, retry: str):
    """``(model, tokenizer)`` of a ``save_pretrained`` Llama folder, in eval mode on
    ``device``.

    Shared by :func:`~book_utils.pretraining.base_model.load_base_model` and chapter
    4c's SFT model. A folder that cannot be loaded raises :class:`CheckpointError`
    naming ``what`` it held and the call (``retry``) to run after deleting it.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = LlamaForCausalLM.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(
            f"{what} in {folder} cannot be loaded ({error}); delete {folder} and call "
            f"{retry} again"
        ) from error
    return model.to(device).eval(), tokenizer
