"""Mid-training (中期训练, continued pretraining): the base model reads train-split
reviews and dialogues (split by ``source_id`` like the SFT data) plus replayed plays,
with chapter 3's training loop, before SFT. Chapter 4c.2,
book/04_sft/05_sft_ablations.ipynb measures what it buys."""

from __future__ import annotations

import json
from pathlib import Path

import book_utils.sft_data.sources as sources
from book_utils.instruction_tuning.data import context_length
from book_utils.sft_data import CLEANING, MAX_CONTENT_CHARS, clean_items, split_of
from book_utils.sizes import CHITCHAT_LIMIT, MIDTRAINING, MIDTRAINING_DOCS, for_profile

#: Cache name of the mid-trained base model (``artifact_dir(MID_MODEL_ARTIFACT,
#: profile)``: model, tokenizer and ``history.json``, the run's losses).
MID_MODEL_ARTIFACT = "mid-model"
#: The SFT sources whose train-split text mid-training reads (the play passages are
#: not among them: see :func:`midtraining_documents`).
MID_SOURCES = ("reviews", "chatterbot", "chitchat")


def midtraining_documents(
    profile: str = "full", *, seed: int = 0, replay_share: float = 0.25
) -> dict:
    """The text of mid-training (中期训练, continued pretraining),
    ``{"train": {id: text}, "validation": {...}}``.

    Each review and each dialogue of :data:`MID_SOURCES` is a document, cleaned and
    deduplicated over the whole source with chapter 4b's ``sft_data.clean_items`` (so
    of two near duplicates only the one 4b kept survives) and split by ``source_id``
    with ``sft_data.split_of``, exactly like the SFT data: no validation or test item of
    chapter 4b, nor a near duplicate of one, is ever read. ``train`` adds whole
    training plays of chapter 3 (replay, 回放) until they are ``replay_share`` of the
    characters, so the model keeps its Shakespeare; ``validation`` holds the
    validation-split reviews and dialogues. The ``ci`` profile keeps
    ``sizes.MIDTRAINING_DOCS["ci"]`` (300) documents per source and split.
    """
    from book_utils.assets import shakespeare_splits

    if not 0 <= replay_share < 1:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share!r}")
    limit = for_profile(MIDTRAINING_DOCS, profile)
    items = {
        "reviews": sources.review_items(),
        "chatterbot": sources.chatterbot_items(),
        "chitchat": sources.chitchat_items(limit=for_profile(CHITCHAT_LIMIT, profile)),
    }
    docs: dict[str, dict[str, str]] = {"train": {}, "validation": {}}
    for source in MID_SOURCES:
        kept, _ = clean_items(
            items[source], min_chars=CLEANING[source][0], max_chars=MAX_CONTENT_CHARS
        )
        taken = {"train": 0, "validation": 0}
        for item in kept:
            split = split_of(item["source_id"], seed)
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


def midtraining_config(*, profile: str, seed: int = 0):
    """Mid-training's ``pretraining.TrainConfig``: a short run at a third of
    pretraining's peak learning rate (``sizes.MIDTRAINING``)."""
    from book_utils.pretraining import TrainConfig

    return TrainConfig(**for_profile(MIDTRAINING, profile), seed=seed)


def midtrain(model, tokenizer, docs=None, *, profile: str, seed: int = 0):
    """Continue pretraining ``model`` (in place) on :func:`midtraining_documents` with
    chapter 3's training loop (``pretraining.train``, next-token loss on every token,
    blocks of the model's context) and :func:`midtraining_config`. Returns the run's
    history. Chapter 4c."""
    from book_utils.pretraining import build_lm_datasets, train

    docs = docs or midtraining_documents(profile, seed=seed)
    data = build_lm_datasets(docs, tokenizer, context_length(model))
    config = midtraining_config(profile=profile, seed=seed)
    return train(model.train(), data, config, desc="mid-training", log=None)


def load_or_midtrain(*, profile: str, device, seed: int = 0):
    """The base model after mid-training, ``(model, tokenizer, history)``, in eval mode
    on ``device``: loaded from ``artifact_dir("mid-model", profile)``, or mid-trained
    now from chapter 3's base model (:func:`midtrain`; CPU: seconds in ``ci``, a few
    minutes in ``full``) and saved atomically first."""
    from book_utils.cache import artifact_dir, load_or_build
    from book_utils.pretraining import load_base_model, load_saved_llama

    def build(folder: Path) -> None:
        model, tokenizer = load_base_model(profile=profile, device=device)
        history = midtrain(model, tokenizer, profile=profile, seed=seed)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "history.json").write_text(json.dumps(history))

    def load(folder: Path):
        model, tokenizer = load_saved_llama(
            folder, device, what="the mid-trained model", retry="load_or_midtrain"
        )
        return model, tokenizer, json.loads((folder / "history.json").read_text())

    return load_or_build(artifact_dir(MID_MODEL_ARTIFACT, profile), build, load)
