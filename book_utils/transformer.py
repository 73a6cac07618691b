"""From attention to a Transformer: the feed-forward network and pre-norm blocks
(position encodings come from :mod:`book_utils.positions` and are re-exported here).

Taught in chapter 2, "From attention to a Transformer block". The blocks are checked
against ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(``norm_first=True``) with copied weights, and RoPE against the rotary embedding of
``transformers``' Llama, in ``tests/test_transformer.py``. The small decoder-only
language model at the end is the shape of GPT, written in the spirit of nanoGPT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from book_utils.attention import MultiHeadAttention, copy_from_torch_mha
from book_utils.checks import positive_int
from book_utils.positions import (
    apply_rope,
    rope_cos_sin,
    rotate_half,
    sinusoidal_position_encoding,
)

__all__ = [
    "sinusoidal_position_encoding",
    "rope_cos_sin",
    "rotate_half",
    "apply_rope",
    "FeedForward",
    "TransformerConfig",
    "TransformerBlock",
    "DecoderBlock",
    "copy_from_torch_encoder_layer",
    "copy_from_torch_decoder_layer",
    "DecoderOnlyLM",
    "random_batch",
    "estimate_loss",
]

POSITIONS = ("sinusoidal", "learned", "rope")


# --- the block ------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    """Sizes of a small Transformer, nanoGPT style. ``d_ff`` defaults to
    ``4 * d_model``."""

    vocab_size: int = 128
    block_size: int = 128  # the context length: the longest sequence the model reads
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    d_ff: int | None = None
    dropout: float = 0.0
    bias: bool = True
    causal: bool = True  # decoder-only language model: each position sees only the past
    # "sinusoidal" (added), "learned" (added) or "rope" (rotates q and k)
    position: str = "sinusoidal"
    tie_weights: bool = True  # LM head W_out = embedding matrix E (transposed)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            positive_int(name, getattr(self, name))
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_head={self.n_head}"
            )
        if self.position not in POSITIONS:
            raise ValueError(
                f"position must be one of {POSITIONS}, got {self.position!r}"
            )
        if self.position == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(
                "RoPE needs an even head size, got d_model/n_head = "
                f"{self.d_model // self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class FeedForward(nn.Module):
    """The position-wise feed-forward network ``W_2 GELU(W_1 x + b_1) + b_2``,
    ``d_model → d_ff → d_model``.

    Attention mixes information *across* positions; the FFN transforms each position on
    its own and holds most of a Transformer's parameters. Taught in chapter 2.
    """

    def __init__(
        self, d_model: int, d_ff: int, *, dropout: float = 0.0, bias: bool = True
    ):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block (Xiong et al. 2020): two residual sublayers.

    ``x = x + MHA(LN(x))`` then ``x = x + FFN(LN(x))``. The residual connection
    (残差连接) gives gradients a straight path through deep stacks; layer normalisation
    (层归一化) *before* each sublayer (pre-norm, as in GPT-2 and most current LLMs)
    trains stably without the learning-rate warm-up that the original post-norm block
    needs. ``config.causal`` adds the causal mask; ``attn_mask`` (``True`` = may attend)
    is combined with it. Equal to
    ``torch.nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` with copied
    weights (:func:`copy_from_torch_encoder_layer`). Taught in chapter 2.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.config = c
        self.ln1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.attn = MultiHeadAttention(
            c.d_model, c.n_head, bias=c.bias, dropout=c.dropout
        )
        self.ln2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.ffn = FeedForward(c.d_model, c.d_ff, dropout=c.dropout, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        a, _ = self.attn(
            self.ln1(x), attn_mask=attn_mask, is_causal=self.config.causal, rope=rope
        )
        x = x + self.dropout(a)
        return x + self.dropout(self.ffn(self.ln2(x)))


class DecoderBlock(nn.Module):
    """The decoder block of an encoder-decoder Transformer (T5, BART, the 2017
    translation model), pre-norm.

    Three sublayers applied **in sequence**, each with its own residual connection:
    masked self-attention over the decoder's own prefix → cross-attention (queries from
    the decoder, keys/values from the encoder output ``memory``) → FFN. (Not a sum of
    three parallel branches.) Equal to
    ``torch.nn.TransformerDecoderLayer(norm_first=True)`` with copied weights. Taught in
    chapter 2.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.config = c
        self.ln1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.self_attn = MultiHeadAttention(
            c.d_model, c.n_head, bias=c.bias, dropout=c.dropout
        )
        self.ln2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.cross_attn = MultiHeadAttention(
            c.d_model, c.n_head, bias=c.bias, dropout=c.dropout
        )
        self.ln3 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.ffn = FeedForward(c.d_model, c.d_ff, dropout=c.dropout, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: decoder states ``(B, n_tgt, d)``; ``memory``: encoder output
        ``(B, n_src, d)``; ``memory_mask``: ``True`` where a decoder position may attend
        to a source position (e.g. padding)."""
        # 1. masked self-attention
        a, _ = self.self_attn(self.ln1(x), is_causal=True)
        x = x + self.dropout(a)
        # 2. cross-attention
        a, _ = self.cross_attn(self.ln2(x), memory, attn_mask=memory_mask)
        x = x + self.dropout(a)
        # 3. feed-forward
        return x + self.dropout(self.ffn(self.ln3(x)))


@torch.no_grad()
def _copy_ln(ours: nn.LayerNorm, theirs: nn.LayerNorm) -> None:
    ours.weight.copy_(theirs.weight)
    if ours.bias is not None:
        ours.bias.copy_(theirs.bias)


@torch.no_grad()
def _copy_ffn(ours: FeedForward, linear1: nn.Linear, linear2: nn.Linear) -> None:
    for mine, theirs in ((ours.fc1, linear1), (ours.fc2, linear2)):
        if mine.weight.shape != theirs.weight.shape:
            raise ValueError(
                f"FFN shape mismatch: ours {tuple(mine.weight.shape)}, torch "
                f"{tuple(theirs.weight.shape)}"
            )
        mine.weight.copy_(theirs.weight)
        if mine.bias is not None:
            mine.bias.copy_(theirs.bias)


def _check_norm_first(layer: nn.Module) -> None:
    if not getattr(layer, "norm_first", False):
        raise ValueError(
            "the torch layer must be built with norm_first=True (pre-norm) to match "
            "our block"
        )


def copy_from_torch_encoder_layer(
    block: TransformerBlock, layer: nn.TransformerEncoderLayer
) -> TransformerBlock:
    """Copy a ``torch.nn.TransformerEncoderLayer(norm_first=True)``'s weights into our
    block. Chapter 2."""
    _check_norm_first(layer)
    copy_from_torch_mha(block.attn, layer.self_attn)
    _copy_ffn(block.ffn, layer.linear1, layer.linear2)
    _copy_ln(block.ln1, layer.norm1)
    _copy_ln(block.ln2, layer.norm2)
    return block


def copy_from_torch_decoder_layer(
    block: DecoderBlock, layer: nn.TransformerDecoderLayer
) -> DecoderBlock:
    """Copy a ``torch.nn.TransformerDecoderLayer(norm_first=True)``'s weights into our
    decoder block. Chapter 2."""
    _check_norm_first(layer)
    copy_from_torch_mha(block.self_attn, layer.self_attn)
    copy_from_torch_mha(block.cross_attn, layer.multihead_attn)
    _copy_ffn(block.ffn, layer.linear1, layer.linear2)
    for mine, theirs in (
        (block.ln1, layer.norm1),
        (block.ln2, layer.norm2),
        (block.ln3, layer.norm3),
    ):
        _copy_ln(mine, theirs)
    return block


# --- a decoder-only language model ----------------------------------------------------


class DecoderOnlyLM(nn.Module):
    """A GPT-shaped language model: embedding + positions → ``n_layer`` causal blocks →
    LayerNorm → LM head.

    ``forward(idx)`` maps token ids ``(B, n)`` to logits ``(B, n, vocab_size)``; the
    next-token distribution at position ``t`` is ``softmax(h_t W_out)``. With
    ``tie_weights`` the LM head reuses the embedding matrix (``W_out = Eᵀ``). Given
    ``targets`` it also returns the cross-entropy loss computed from the raw logits.
    Taught in chapter 2 (built and trained on Shakespeare's characters).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not config.causal:
            raise ValueError(
                "a language model must be causal: build its config with causal=True"
            )
        c = config
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.position == "learned":
            self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        elif c.position == "sinusoidal":
            self.register_buffer(
                "pos_enc",
                sinusoidal_position_encoding(c.block_size, c.d_model),
                persistent=False,
            )
        else:
            cos, sin = rope_cos_sin(c.block_size, c.d_model // c.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)

    # GPT-2's initialisation: N(0, 0.02), zero biases
    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if (
            not isinstance(idx, torch.Tensor)
            or idx.ndim != 2
            or idx.is_floating_point()
        ):
            raise ValueError(
                "idx must be an integer tensor of shape (batch, n), got "
                f"{getattr(idx, 'shape', type(idx))}"
            )
        n = idx.shape[1]
        if n > self.config.block_size:
            raise ValueError(
                f"sequence of length {n} is longer than "
                f"block_size={self.config.block_size}"
            )
        x = self.tok_emb(idx)  # a row lookup E[w], no matrix product
        if self.config.position == "sinusoidal":
            # as in Vaswani et al.: keeps token identity above the ±1 encoding
            x = x * self.config.d_model**0.5
        rope = None
        if self.config.position == "learned":
            x = x + self.pos_emb(torch.arange(n, device=idx.device))
        elif self.config.position == "sinusoidal":
            x = x + self.pos_enc[:n]
        else:
            rope = (self.rope_cos[:n], self.rope_sin[:n])
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, rope=rope)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(
                    f"targets must have the shape of idx {tuple(idx.shape)}, got "
                    f"{tuple(targets.shape)}"
                )
            # raw logits, not probabilities
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens one at a time from
        ``softmax(logits / temperature)``."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            probs = torch.softmax(logits[:, -1] / temperature, dim=-1)
            idx = torch.cat(
                (idx, torch.multinomial(probs, 1, generator=generator)), dim=1
            )
        return idx


def random_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``data`` (a 1-D tensor of token ids) as inputs
    and next-token targets.

    ``y`` is ``x`` shifted by one position: at every position the model predicts the
    following token, so one window of ``block_size`` tokens gives ``block_size``
    training examples. Taught in chapter 2.
    """
    if not isinstance(data, torch.Tensor) or data.ndim != 1:
        raise ValueError(
            "data must be a 1-D tensor of token ids, got "
            f"{getattr(data, 'shape', type(data))}"
        )
    positive_int("block_size", block_size)
    positive_int("batch_size", batch_size)
    if len(data) <= block_size:
        raise ValueError(
            f"data has {len(data)} tokens, needs more than block_size={block_size}"
        )
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[s : s + block_size] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + 1 + block_size] for s in starts.tolist()])
    return x, y


@torch.no_grad()
def estimate_loss(
    model: DecoderOnlyLM,
    data: torch.Tensor,
    *,
    batches: int = 4,
    batch_size: int = 32,
    seed: int = 1,
) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on ``batches`` random windows of
    ``data``.

    The windows come from a generator seeded with ``seed``, so every call scores the
    *same* windows and successive evaluations during training are comparable. Runs in
    eval mode and restores the previous mode. Taught in chapter 2 (validation loss of
    the tiny Shakespeare model).
    """
    positive_int("batches", batches)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = random_batch(data, model.config.block_size, batch_size, generator=gen)
        total += model(x, y)[1].item()
    model.train(was_training)
    return total / batches
