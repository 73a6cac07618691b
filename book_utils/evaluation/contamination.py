"""Contamination checks: shared word n-grams between test items and training text, and
a memorisation probe (does greedy decoding reproduce a text's continuation verbatim?).

Taught in chapter 4c.4, book/04_sft/07_evaluation.ipynb ("Contamination").
"""

from __future__ import annotations

import re

import numpy as np
import torch


def word_ngrams(text: str, n: int = 13) -> set[str]:
    """The set of lower-cased word ``n``-grams of ``text`` (13 words is the usual
    contamination probe: long enough that a shared one is almost never chance)."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@torch.no_grad()
def continuation_match(model, tokenizer, texts, *, prefix: int = 32, suffix: int = 16):
    """A memorisation probe: for each text, greedy decoding continues its first
    ``prefix`` tokens for ``suffix`` tokens; returns, per text, the share of those
    tokens that equal the text's own next tokens, position by position (1.0: the text
    is reproduced verbatim). Texts shorter than ``prefix + suffix`` tokens get NaN."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    keep = [i for i, ids in enumerate(encoded) if len(ids) >= prefix + suffix]
    scores = np.full(len(encoded), np.nan)
    if not keep:
        return scores
    device = next(model.parameters()).device
    heads = torch.tensor([encoded[i][:prefix] for i in keep], device=device)
    truth = torch.tensor([encoded[i][prefix : prefix + suffix] for i in keep])
    out = model.generate(
        heads,
        attention_mask=torch.ones_like(heads),
        max_new_tokens=suffix,
        min_new_tokens=suffix,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    scores[keep] = (out[:, prefix:].cpu() == truth).float().mean(dim=1).numpy()
    return scores
