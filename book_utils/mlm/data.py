"""Masked-LM data: BERT's special tokens for the book's BPE tokenizer, running text
packed into ``[CLS] … [SEP]`` blocks, and a validation set masked once (with each
target's case recorded).

Taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

import torch

from book_utils.checks import positive_int
from book_utils.mlm.masking import IGNORE_INDEX, _mask_token_id, mask_with_tokenizer


def with_bert_specials(tokenizer):
    """Give a byte-level BPE tokenizer (the book's, chapter 3) BERT's ``[CLS]``,
    ``[SEP]`` and ``[MASK]``.

    The three tokens are appended to the vocabulary (ids ``len(tokenizer)`` onwards),
    ``tokenizer(text)`` then wraps every text as ``[CLS] … [SEP]`` like BERT's
    tokenizer, and ``[MASK]`` absorbs the space in front of it (``lstrip``, as RoBERTa's
    ``<mask>``): in training a mask replaces a whole token such as ``Ġlove``, space
    included, so ``"food of [MASK],"`` must not leave a lone ``Ġ`` before it. Modifies
    and returns ``tokenizer``. Taught in chapter 3.
    """
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing

    if tokenizer.mask_token is not None or tokenizer.cls_token is not None:
        raise ValueError(f"{type(tokenizer).__name__} already has BERT special tokens")
    tokenizer.add_special_tokens(
        {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": AddedToken("[MASK]", lstrip=True),
        }
    )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def encode_blocks(
    text: str, tokenizer, block_size: int, max_blocks: int | None = None
) -> torch.Tensor:
    """Tokenise ``text`` into one stream and cut it into rows ``[CLS] t_1 …
    t_{block_size-2} [SEP]``.

    This is how BERT-style pretraining packs running text (no padding, every row full);
    lines are tokenised one by one so no warning about over-long inputs appears. Returns
    a ``(n_blocks, block_size)`` LongTensor; the tail shorter than a block is dropped.
    Taught in chapter 3.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 8
    ):
        raise ValueError(
            "block_size must be an int >= 8 (two places go to [CLS] and [SEP]), "
            f"got {block_size!r}"
        )
    if max_blocks is not None:
        positive_int("max_blocks", max_blocks)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no [CLS]/[SEP] tokens: "
            "use a BERT-style tokenizer"
        )
    body = block_size - 2
    # each line keeps its line break: a byte-level BPE tokenizer has a token for it
    # (WordPiece drops it)
    lines = [line + "\n" for line in text.splitlines() if line.strip()]
    stream: list[int] = []
    for start in range(0, len(lines), 2000):
        for ids in tokenizer(lines[start : start + 2000], add_special_tokens=False)[
            "input_ids"
        ]:
            stream.extend(ids)
        if max_blocks is not None and len(stream) >= max_blocks * body:
            break
    n = (
        len(stream) // body
        if max_blocks is None
        else min(len(stream) // body, max_blocks)
    )
    if n == 0:
        raise ValueError(
            f"text has {len(stream)} tokens, fewer than one block of {body}"
        )
    core = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((n, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, core, sep], dim=1)


#: What happened to a chosen position's input, as stored in ``batch["case"]``
#: (-1: not chosen).
CASES = ("[MASK]", "random", "kept")


def fixed_masked_batches(
    blocks: torch.Tensor, tokenizer, batch_size: int, seed: int = 1234
) -> list[dict]:
    """Mask ``blocks`` once, with a seeded :func:`mask_with_tokenizer`, into a list of
    batches.

    A validation set must not change between evaluations, otherwise a curve mixes model
    progress with masking luck; training batches, in contrast, are masked afresh every
    time ("dynamic masking", RoBERTa). Each batch is ``{"input_ids", "labels",
    "case"}``; ``case`` is -1 off the chosen positions and otherwise an index into
    :data:`CASES` (0 ``[MASK]``, 1 random, 2 kept), so that the loss can be split by
    what the model saw at the target. Taught in chapter 3.
    """
    positive_int("batch_size", batch_size)
    mask_id = _mask_token_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(blocks), batch_size):
        original = blocks[start : start + batch_size]
        inputs, labels = mask_with_tokenizer(tokenizer, original, generator=generator)
        case = torch.where(inputs == mask_id, 0, torch.where(inputs == original, 2, 1))
        case[labels == IGNORE_INDEX] = -1
        batches.append({"input_ids": inputs, "labels": labels, "case": case})
    return batches
