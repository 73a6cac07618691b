"""Pretraining data with 🤗 ``datasets``: whole documents per split
(:func:`documents_dataset`), tokenized, concatenated and chunked into fixed blocks
(:func:`build_lm_datasets`), the Shakespeare corpus as blocks
(:func:`shakespeare_lm_data`), each step's batch (:func:`batch_indices`) and the
held-out excerpt every model is scored on (:func:`held_out_excerpt`).

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from book_utils.checks import positive_int
from book_utils.sizes import PRETRAINING_CHARS, for_profile


def documents_dataset(splits: Mapping[str, Mapping[str, str]]):
    """A ``DatasetDict`` with one row per document (``title``, ``text``) for each split
    (chapter 3).

    ``splits`` is ``{"train": {title: text}, "validation": {...}, ...}`` as returned by
    :func:`book_utils.assets.shakespeare_splits`: whole plays, so a play is in exactly
    one split.
    """
    from datasets import Dataset, DatasetDict

    if not isinstance(splits, Mapping) or "train" not in splits:
        raise ValueError(
            "no training corpus: pass {'train': {title: text}, 'validation': {...}}, "
            "e.g. book_utils.assets.shakespeare_splits() (install the corpus with: "
            "python -m book_utils.assets install)"
        )
    out = {}
    for split, works in splits.items():
        texts = {
            title: text
            for title, text in dict(works).items()
            if isinstance(text, str) and text.strip()
        }
        if not texts:
            raise ValueError(
                f"the {split!r} split has no text (0 non-empty documents): the corpus "
                "is missing or empty. Install it with "
                "`python -m book_utils.assets install`, or pass non-empty documents."
            )
        titles = sorted(texts)
        out[split] = Dataset.from_dict(
            {"title": titles, "text": [texts[t] for t in titles]}
        )
    titles = [set(ds["title"]) for ds in out.values()]
    shared = set.intersection(*titles) if len(titles) > 1 else set()
    if shared:
        raise ValueError(
            f"documents {sorted(shared)} appear in more than one split: split by "
            "document so nothing leaks"
        )
    return DatasetDict(out)


def build_lm_datasets(splits, tokenizer, block_size: int):
    """Tokenize → concatenate → chunk into ``block_size``-token blocks, per split, with
    batched ``map``.

    Each document ends with the tokenizer's end-of-text token, then a split's documents
    are concatenated and cut into fixed blocks (the tail shorter than a block is
    dropped), exactly the ``group_texts`` recipe of 🤗's ``run_clm``. Splits are
    processed separately, so a block never mixes training and held-out text. Returns a
    ``DatasetDict`` with one ``input_ids`` column (torch format). Chapter 3.

    Raises ``ValueError`` for an empty corpus or when a split holds fewer tokens than
    one block.
    """
    from itertools import chain

    positive_int("block_size", block_size)
    docs = splits if hasattr(splits, "column_names") else documents_dataset(splits)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "the tokenizer has no eos_token: documents need an end-of-text token "
            "between them"
        )

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids]}

    def group(batch):
        joined = list(chain.from_iterable(batch["input_ids"]))
        usable = len(joined) // block_size * block_size
        return {
            "input_ids": [
                joined[i : i + block_size] for i in range(0, usable, block_size)
            ]
        }

    tokenized = docs.map(
        tokenize,
        batched=True,
        remove_columns=docs["train"].column_names,
        desc="tokenize",
    )
    for split, ds in tokenized.items():
        n_tokens = sum(len(ids) for ids in ds["input_ids"])
        if n_tokens < block_size:
            raise ValueError(
                f"the {split!r} split has only {n_tokens} tokens, fewer than one block "
                f"of block_size={block_size}: use a smaller block_size (or more text)"
            )
    # One map batch holds every document of a split, so only the split's last partial
    # block is dropped.
    blocks = tokenized.map(group, batched=True, batch_size=100_000, desc="chunk")
    return blocks.with_format("torch")


def batch_indices(
    n_blocks: int,
    batch_size: int,
    step: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """The block indices of optimizer step ``step`` for process ``rank`` of
    ``world_size`` (chapter 3).

    Every epoch is a fresh permutation of the blocks drawn from ``seed`` and the epoch
    number; step ``s`` takes the next ``batch_size`` of them (the global batch) and
    process ``rank`` keeps every ``world_size``-th one. The union over processes is the
    single-process batch, and the order depends on nothing but ``(seed, step)``, so an
    interrupted run resumes on exactly the batches it would have seen.
    """
    if batch_size > n_blocks:
        raise ValueError(
            f"batch_size={batch_size} blocks but the training split has only "
            f"{n_blocks}: lower batch_size or block_size (or use more text)"
        )
    if batch_size % world_size:
        raise ValueError(
            f"the global batch_size={batch_size} must be divisible by the number of "
            f"processes {world_size}"
        )
    per_epoch = n_blocks // batch_size
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_blocks, generator=generator)
    return order[i * batch_size : (i + 1) * batch_size][rank::world_size]


def shakespeare_lm_data(tokenizer, block_size: int, profile: str = "full"):
    """The Shakespeare splits (by whole play) as block datasets; the ``ci`` profile
    keeps the first characters of each training and held-out play
    (:data:`book_utils.sizes.PRETRAINING_CHARS`: the same code path, less text)."""
    from book_utils.assets import shakespeare_splits

    train_chars, held_out_chars = for_profile(PRETRAINING_CHARS, profile)
    splits = {
        name: {
            title: text[: train_chars if name == "train" else held_out_chars]
            for title, text in works.items()
        }
        for name, works in shakespeare_splits().items()
    }
    return build_lm_datasets(splits, tokenizer, block_size)


def held_out_excerpt(works: Mapping[str, str], n_chars: int) -> str:
    """About ``n_chars`` characters from the middle of each work (whole lines), joined
    by a blank line.

    Chapter 3 scores SmolLM2-135M, too slow on a CPU for two whole plays, on this
    excerpt of the test plays, and scores the other models on the same excerpt to
    compare like with like.
    """
    positive_int("n_chars", n_chars)
    if not works:
        raise ValueError("no works to take an excerpt from")
    parts = []
    for title in sorted(works):
        text = works[title]
        begin = text.find("\n", len(text) // 2) + 1
        end = text.find("\n", begin + n_chars)
        parts.append(text[begin : end if end != -1 else len(text)])
    return "\n\n".join(parts)
