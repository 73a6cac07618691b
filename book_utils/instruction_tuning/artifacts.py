"""The models chapter 4c trains and later chapters load, in the artifact cache: our base
model instruction-tuned with the chapter's recipe (chapter 4c,
book/04_sft/04_instruction_tuning.ipynb; chapter 5 starts from it), SmolLM2 as a
trainable checkpoint and its two fine-tunes (chapter 4c.3,
book/04_sft/06_lora_smollm2.ipynb; chapter 4c.4, book/04_sft/07_evaluation.ipynb,
loads them)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from book_utils.decoding import stop_token_ids
from book_utils.instruction_tuning.data import sft_context, tokenize_records
from book_utils.instruction_tuning.train import finetune
from book_utils.sizes import SFT_CONTEXT, SFT_RECIPE, SMOLLM2_CI_CONFIG, for_profile

#: Cache name of the instruction-tuned base model:
#: ``artifact_dir(SFT_MODEL_ARTIFACT, profile)`` holds the merged model and tokenizer
#: (``from_pretrained``-loadable) and ``sft_info.json`` (recipe and scores).
SFT_MODEL_ARTIFACT = "sft-model"
#: Cache name of SmolLM2-135M-Instruct converted from GGUF to a float32 safetensors
#: checkpoint.
SMOLLM2_ARTIFACT = "smollm2-135m-instruct"
#: SmolLM2's fine-tunes of chapter 4c.3, saved for chapter 4c.4's evaluation:
#: ``smollm2-sft-full`` holds the fine-tuned model, ``smollm2-sft-lora`` only the
#: LoRA adapter (a few MB; the base is :func:`smollm2_checkpoint`).
SMOLLM2_FINETUNES = ("full", "lora")


def _save_folder(
    folder: Path, model, tokenizer, info: dict | None, info_name: str
) -> Path:
    """Write ``model`` (safetensors), ``tokenizer`` and, if given, ``info`` as JSON to
    ``folder``, atomically: a reader sees the old folder or the complete new one."""
    from book_utils.cache import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / info_name).write_text(json.dumps(info, indent=1, default=str))
    return folder


# --- the instruction-tuned base model (chapter 5 loads it) ----------------------------


def sft_recipe(*, profile: str) -> dict:
    """The recipe chapter 4c instruction-tunes our base model with, per profile
    (``sizes.SFT_RECIPE``, a fresh copy): :func:`finetune`'s arguments (the loss of
    :func:`~book_utils.instruction_tuning.loss.per_example_nll`, each "which play?"
    record three times, :func:`book_utils.training.training_arguments`)."""
    return copy.deepcopy(for_profile(SFT_RECIPE, profile))


def sft_model_dir(profile: str) -> Path:
    """``artifact_dir("sft-model", profile)``."""
    from book_utils.cache import artifact_dir

    return artifact_dir(SFT_MODEL_ARTIFACT, profile)


def save_sft_model(profile: str, model, tokenizer, info: dict | None = None) -> Path:
    """Write the (merged) SFT model and its tokenizer to :func:`sft_model_dir` in
    safetensors, atomically.

    The generation config lists :func:`~book_utils.decoding.stop_token_ids` as eos, so
    ``model.generate`` stops at the end of the assistant's turn, as for any chat model
    on the Hub. In the ``ci`` profile the saved config records the
    ``sizes.SFT_CONTEXT`` positions the model was fine-tuned with (see
    :func:`~book_utils.instruction_tuning.data.sft_context`), so that code loading it
    (chapter 5) sees the context it was trained on.
    """
    budget = for_profile(SFT_CONTEXT, profile)
    if budget is not None:
        config = model.config
        config.max_position_embeddings = max(config.max_position_embeddings, budget)
    # `generate` ends the reply at <|im_end|>
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    folder = sft_model_dir(profile)
    return _save_folder(folder, model, tokenizer, info, "sft_info.json")


def sft_train_data(tokenizer, context: int, data=None, *, profile: str):
    """The tokenized, prompt-masked train and validation splits for our base model,
    and how many records of each were dropped for length:
    ``(train, validation, dropped)``. ``data`` defaults to the profile's SFT dataset
    (chapter 4b)."""
    if data is None:
        from book_utils.sft_data import load_or_build_sft_dataset

        data = load_or_build_sft_dataset(profile=profile)
    train, dropped_train = tokenize_records(data["train"], tokenizer, context)
    validation, dropped_val = tokenize_records(data["validation"], tokenizer, context)
    return train, validation, {"train": dropped_train, "validation": dropped_val}


def train_sft_model(
    *,
    profile: str,
    device,
    seed: int = 0,
    data=None,
    output_dir=None,
    **recipe_overrides,
):
    """Instruction-tune our chapter-3 base model with :func:`sft_recipe`
    (prompt-masked, per-example loss, full fine-tuning) on ``device``, seeded by
    ``seed``: returns ``(model, tokenizer, run)`` with ``run`` from
    :func:`~book_utils.instruction_tuning.train.train_sft`. Chapter 4c runs these
    steps."""
    import tempfile

    from book_utils.pretraining import load_base_model

    model, tokenizer = load_base_model(profile=profile, device=device)
    context = sft_context(model, profile=profile)
    train, validation, dropped = sft_train_data(
        tokenizer, context, data, profile=profile
    )
    recipe = {**sft_recipe(profile=profile), **recipe_overrides}
    output_dir = output_dir or tempfile.mkdtemp(prefix="sft-run-")
    run = finetune(
        model,
        tokenizer,
        train,
        validation,
        output_dir=output_dir,
        seed=seed,
        device=device,
        **recipe,
    )
    run["dropped"] = dropped
    run["recipe"] = recipe
    return model.eval(), tokenizer, run


def load_or_train_sft_model(*, profile: str, device, seed: int = 0):
    """Our base model after instruction tuning, ``(model, tokenizer)`` in eval mode on
    ``device``.

    Loaded from ``artifact_dir("sft-model", profile)`` when chapter 4c (or an earlier
    call) has written it; otherwise trained now with :func:`train_sft_model` (the
    chapter's recipe; CPU: seconds in ``ci``, a few minutes in ``full``), saved, then
    loaded. Chapter 5 (deployment) starts from it; prompts go through
    ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``.
    """
    from book_utils.cache import is_complete
    from book_utils.pretraining import load_saved_llama

    folder = sft_model_dir(profile)
    if not is_complete(folder):
        print(
            f"no SFT model in {folder}: instruction-tuning the base model "
            f"with the {profile!r} recipe"
        )
        model, tokenizer, run = train_sft_model(
            profile=profile, device=device, seed=seed
        )
        keys = ("recipe", "dropped", "val_loss", "train_loss", "seconds", "tokens")
        save_sft_model(profile, model, tokenizer, {k: run[k] for k in keys})
    return load_saved_llama(
        folder, device, what="the SFT model", retry="load_or_train_sft_model"
    )


# --- SmolLM2 as a trainable checkpoint ------------------------------------------------


def smollm2_checkpoint(*, profile: str) -> Path:
    """SmolLM2-135M-Instruct as a plain float32 safetensors checkpoint in the cache,
    converted once (chapter 4c).

    ``assets.load_smollm2`` dequantises the GGUF file, but ``Trainer`` refuses a model
    loaded from GGUF, so the weights are copied into a model built ``from_config`` and
    saved with ``save_pretrained`` (≈ 540 MB; reloading takes a fraction of a second).
    Returns the folder (``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` load it).

    The ``ci`` profile, which only checks that the code runs, gets a *tiny randomly
    initialised* model of the same family instead (``sizes.SMOLLM2_CI_CONFIG``: 2
    layers, width 64, SmolLM2's real tokenizer and chat template): training the real
    135 M parameters takes minutes per step on a small CPU.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from book_utils.assets import asset_path, load_smollm2
    from book_utils.cache import artifact_dir, load_or_build

    def build(folder: Path) -> None:
        gguf = asset_path("smollm2")
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if profile == "ci":
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config.update(dict(SMOLLM2_CI_CONFIG))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            tokenizer, loaded = load_smollm2(dtype=torch.float32)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            missing, unexpected = model.load_state_dict(
                loaded.state_dict(), strict=False
            )
            # lm_head is tied to the embedding
            missing = [k for k in missing if k != "lm_head.weight"]
            if missing or unexpected:
                raise RuntimeError(
                    "GGUF weights do not match the config: "
                    f"missing {missing}, unexpected {unexpected}"
                )
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    folder = artifact_dir(SMOLLM2_ARTIFACT, profile)
    return load_or_build(folder, build, lambda folder: folder)


def _smollm2_finetune_dir(method: str, profile: str) -> Path:
    from book_utils.cache import artifact_dir

    if method not in SMOLLM2_FINETUNES:
        raise ValueError(f"method must be one of {SMOLLM2_FINETUNES}, got {method!r}")
    return artifact_dir(f"smollm2-sft-{method}", profile)


def save_smollm2_finetune(
    method: str, model, tokenizer, info: dict | None = None, *, profile: str
) -> Path:
    """Save chapter 4c.3's fine-tuned SmolLM2 atomically: the whole model for
    ``"full"``, the adapter alone for ``"lora"`` (``model`` is then the ``PeftModel``,
    before any merge). Returns the folder."""
    if method == "lora" and not hasattr(model, "peft_config"):
        raise TypeError(
            "method 'lora' saves a PeftModel's adapter; merge only after saving"
        )
    folder = _smollm2_finetune_dir(method, profile)
    return _save_folder(folder, model, tokenizer, info, "run_info.json")


def load_smollm2_finetune(method: str, *, profile: str, device):
    """Chapter 4c.3's fine-tuned SmolLM2 (``"full"`` or ``"lora"``, the adapter merged
    into the weights), in eval mode on ``device``. Raises ``FileNotFoundError`` naming
    the notebook to run when chapter 4c.3 has not saved it in this profile."""
    from transformers import AutoModelForCausalLM

    from book_utils.cache import is_complete

    folder = _smollm2_finetune_dir(method, profile)
    if not is_complete(folder):
        raise FileNotFoundError(
            f"no SmolLM2 {method!r} fine-tune in {folder}: run chapter 4c.3 "
            f"(book/04_sft/06_lora_smollm2.ipynb) in the {profile!r} profile first; "
            "it trains and saves it"
        )
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(profile=profile))
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    return model.to(device).eval()
