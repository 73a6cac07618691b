"""Held-out evaluation: :func:`score_text` scores a text under a model (every token
predicted exactly once, in sliding windows) as a :class:`TextScore`, whose bits per
character (:func:`book_utils.ngram.bits_per_char`) compare models with different
tokenizers (chapter 1's n-gram, a character model, SmolLM2); ``_block_loss`` is the
validation loss :func:`~book_utils.pretraining.train.train` records.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from book_utils.ngram import bits_per_char


@dataclass(frozen=True)
class TextScore:
    """How well a model predicts a text: total NLL (nats) over ``n_tokens`` tokens
    covering ``n_chars`` characters."""

    nll: float
    n_tokens: int
    n_chars: int

    @property
    def loss(self) -> float:
        """Mean NLL per token in nats: the cross-entropy loss training reports."""
        return self.nll / self.n_tokens

    @property
    def perplexity(self) -> float:
        """Per-token perplexity exp(loss): depends on the tokenizer, so compare models
        with :attr:`bpc`."""
        return math.exp(self.loss)

    @property
    def bpc(self) -> float:
        """Bits per character: the total NLL over ``ln 2 · n_chars``. The sum runs over
        the model's tokens, whatever they are (characters, BPE pieces), so each model
        pays, in bits, for encoding the same characters."""
        return bits_per_char(self.nll, self.n_chars)

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / self.n_tokens

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.4f} nats/token | perplexity {self.perplexity:.2f} | "
            f"{self.bpc:.4f} bits/char | {self.n_tokens:,} tokens, "
            f"{self.n_chars:,} chars"
        )


@torch.no_grad()
def score_text(
    model,
    tokenizer,
    text: str,
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    start_token_id: int | None = None,
    progress: bool = False,
    desc: str = "score",
) -> TextScore:
    """Total next-token NLL of ``text`` under ``model``: every token predicted exactly
    once (chapter 3).

    The text is encoded in one piece (its decoding must give the text back, or BPC
    would not be about the same characters) and a start token is put in front so that
    the first token is predicted too. Windows of ``block_size`` tokens (default: the
    model's context) slide over the sequence by ``stride`` tokens (default:
    ``block_size``, i.e. non-overlapping); each window scores only the tokens no
    earlier window scored, so with ``stride = block_size / 2`` every token after the
    first window sees at least half a context of preceding tokens. Never does a
    prediction see text after its target.
    """
    from tqdm.auto import tqdm

    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string (the held-out text to score)")
    block_size = block_size or model.config.max_position_embeddings
    stride = stride or block_size
    if not 1 <= stride <= block_size:
        raise ValueError(
            f"stride must be between 1 and block_size={block_size}, got {stride}"
        )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != text:
        raise ValueError(
            "this tokenizer does not decode the text back to itself, so its tokens do "
            "not cover exactly these characters"
        )
    if start_token_id is not None:
        start = start_token_id
    elif tokenizer.bos_token_id is not None:
        start = tokenizer.bos_token_id
    else:
        start = tokenizer.eos_token_id
    seq = torch.tensor([start] + ids)
    # Window w reads seq[begin : end] and predicts seq[begin + 1 : end + 1]; its last
    # `new` targets are scored.
    windows, scored, begin = [], 0, 0
    while scored < len(seq) - 1:
        end = min(begin + block_size, len(seq) - 1)
        windows.append((begin, end, end - scored))
        scored, begin = end, begin + stride
    full = [w for w in windows if w[1] - w[0] == block_size]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [
        [w] for w in windows if w[1] - w[0] != block_size
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, counted = 0.0, 0
    for group in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x = torch.stack([seq[b : e + 1] for b, e, _ in group]).to(device)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        # (windows, positions)
        token_nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        for row, (_, _, new) in zip(token_nll, group):
            nll += row[-new:].sum().item()
            counted += new
    model.train(was_training)
    assert counted == len(ids), (counted, len(ids))
    return TextScore(nll=nll, n_tokens=len(ids), n_chars=len(text))


@torch.no_grad()
def _block_loss(
    model, blocks: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1
) -> tuple[float, int]:
    """Summed next-token NLL and count over this process's share of ``blocks`` (rows
    ``rank::world_size``)."""
    device = next(model.parameters()).device
    mine = blocks[rank::world_size]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        x = mine[i : i + batch_size].to(device)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            x[:, 1:].reshape(-1),
            reduction="sum",
        ).item()
        count += x[:, 1:].numel()
    return total, count
