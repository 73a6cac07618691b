"""Reading a masked LM: fill-mask done correctly (logits read only where
``input_ids == mask_token_id``), a table that ranks the true word against a unigram
model, and the head-less tied-embedding guess.

Taught in chapter 3.3, book/03_pretraining/03_masked_lm.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from book_utils.checks import positive_int
from book_utils.mlm.masking import _mask_token_id


@torch.no_grad()
def mask_probabilities(model, tokenizer, texts: Sequence[str]) -> list[torch.Tensor]:
    """For each text, the ``(n_masks, V)`` probabilities a masked-LM model gives at its
    ``[MASK]`` positions.

    The right way to read a masked LM (errata K7): run the whole sentence, then take the
    logits **only where** ``input_ids == mask_token_id``; an argmax over every position
    decodes positions the model was never asked about. Raises ``ValueError`` for a text
    without a mask token. Taught in chapter 3.
    """
    mask_id = _mask_token_id(tokenizer)
    if isinstance(texts, str):
        texts = [texts]
    for text in texts:
        if tokenizer.mask_token not in text:
            raise ValueError(
                f"text {text!r} contains no {tokenizer.mask_token}: nothing to fill in"
            )
    model.eval()
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    logits = model(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).logits
    where = enc["input_ids"] == mask_id
    return [logits[i][where[i]].float().softmax(dim=-1) for i in range(len(texts))]


def fill_mask(
    model, tokenizer, texts: Sequence[str], k: int = 5
) -> list[list[list[tuple[str, float]]]]:
    """Top-``k`` ``(token, probability)`` for every ``[MASK]`` of every text (same as
    the fill-mask pipeline)."""
    positive_int("k", k)
    result = []
    for probs in mask_probabilities(model, tokenizer, texts):
        top = probs.topk(k, dim=-1)
        result.append(
            [
                list(
                    zip(
                        tokenizer.convert_ids_to_tokens(ids.tolist()),
                        values.tolist(),
                        strict=True,
                    )
                )
                for values, ids in zip(top.values, top.indices, strict=True)
            ]
        )
    return result


def fill_mask_table(
    model,
    tokenizer,
    items: Sequence[tuple[str, str]],
    k: int = 5,
    unigram: torch.Tensor | None = None,
):
    """A DataFrame of fill-mask results for ``(text with one [MASK], true word)`` pairs.

    Columns: the line, the true word, the top-``k`` tokens with probabilities, the
    probability and rank (1 = best of the whole vocabulary) the model gives the true
    word, and, when ``unigram`` log-probabilities are given (:func:`unigram_log_probs`),
    the rank a context-free model gives it: a model that uses the context ranks the true
    word better than word frequency alone does. Taught in chapter 3.
    """
    import pandas as pd

    rows = []
    for (text, answer), probs in zip(
        items, mask_probabilities(model, tokenizer, [t for t, _ in items]), strict=True
    ):
        if probs.shape[0] != 1:
            raise ValueError(
                f"{text!r} must contain exactly one mask token, found {probs.shape[0]}"
            )
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(answer_ids) != 1:
            raise ValueError(
                f"answer {answer!r} is {len(answer_ids)} WordPieces; "
                "choose a one-piece word"
            )
        p, top = probs[0], probs[0].topk(k)
        rows.append(
            {
                "line": text,
                "answer": answer,
                f"top-{k}": ", ".join(
                    f"{t} {v:.2f}"
                    for t, v in zip(
                        tokenizer.convert_ids_to_tokens(top.indices.tolist()),
                        top.values,
                    )
                ),
                "p(answer)": float(p[answer_ids[0]]),
                "rank": int((p > p[answer_ids[0]]).sum()) + 1,
            }
        )
        if unigram is not None:
            rows[-1]["unigram rank"] = int((unigram > unigram[answer_ids[0]]).sum()) + 1
    return pd.DataFrame(rows)


@torch.no_grad()
def tied_embedding_fill(
    encoder, tokenizer, texts: Sequence[str], k: int = 5
) -> list[list[str]]:
    """Head-less guess: score the vocabulary by ``h_mask · E[w]`` (last hidden state ·
    input embeddings).

    A BERT MLM head is ``softmax(LayerNorm(GELU(h W + b)) Eᵀ + bias)`` with ``E`` tied
    to the input embeddings, so dropping the small transform is the cheapest stand-in
    when a checkpoint ships no head (as sentence-transformers' MiniLM does). It only
    works if the last layer still lives in the embedding space; chapter 3 measures that
    it does not. Returns the top-``k`` tokens for the first mask of each text.
    """
    positive_int("k", k)
    mask_id = _mask_token_id(tokenizer)
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    hidden = encoder(**enc).last_hidden_state
    embeddings = encoder.get_input_embeddings().weight
    out = []
    for i in range(len(texts)):
        where = (enc["input_ids"][i] == mask_id).nonzero()
        if len(where) == 0:
            raise ValueError(f"text {texts[i]!r} contains no {tokenizer.mask_token}")
        scores = hidden[i, where[0, 0]] @ embeddings.T
        out.append(tokenizer.convert_ids_to_tokens(scores.topk(k).indices.tolist()))
    return out
