"""From attention to a Transformer: position encodings, the feed-forward network and
pre-norm blocks.

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


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --- position information -------------------------------------------------------------


def sinusoidal_position_encoding(n: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The ``(n, d)`` sinusoidal position encoding (位置编码) of Vaswani et al. (2017).

    ``PE[pos, 2i] = sin(pos / base^(2i/d))`` and
    ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``: every pair of features is a clock
    turning at its own frequency, from one turn per ``2π`` positions down to one per
    ``2π·base``. Added to the token embeddings, it tells attention (which is otherwise
    blind to order) where each token sits. Taught in chapter 2.
    """
    _positive_int("n", n)
    _positive_int("d", d)
    if d % 2:
        raise ValueError(f"d must be even (features come in sin/cos pairs), got d={d}")
    if base <= 1:
        raise ValueError(f"base must be > 1, got {base}")
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # 1 / base^(2i/d)
    pe = torch.empty(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


def rope_cos_sin(
    positions: int | torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of rotary position embedding (RoPE, 旋转位置编码; Su et al.)
    for ``positions``.

    ``positions`` is a length ``n`` (meaning ``0 … n-1``) or a tensor of integer
    positions. Returns ``cos`` and ``sin`` of shape ``(*positions.shape, head_dim)`` in
    the "half-split" layout used by Llama and Hugging Face: feature ``i`` is paired with
    feature ``i + head_dim/2`` and the pair is rotated by the angle
    ``pos · base^(-2i/head_dim)``. (The RoFormer paper pairs neighbours ``2i, 2i+1``;
    the two layouts differ only by a fixed permutation of the features.) Taught in
    chapter 2.
    """
    _positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(
            f"head_dim must be even (RoPE rotates pairs of features), got {head_dim}"
        )
    if isinstance(positions, int):
        positions = torch.arange(_positive_int("positions", positions))
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point():
        raise ValueError("positions must be an int n or an integer tensor of positions")
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    )
    angles = positions[..., None].float() * inv_freq  # (..., head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis: multiplying each (x1_i, x2_i) pair by
    i, as a complex number."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` of shape ``(..., n, head_dim)`` by their positions'
    angles.

    ``cos``/``sin`` come from :func:`rope_cos_sin` with shape ``(n, head_dim)`` (or
    broadcastable). Because a rotation by angle ``a`` followed by the dot product with a
    vector rotated by ``b`` only sees ``a - b``, ``apply_rope(q, m) · apply_rope(k, n)``
    depends on the relative position ``m - n`` only. Taught in chapter 2.
    """
    if cos.shape != sin.shape:
        raise ValueError(
            f"cos and sin must have the same shape, got {tuple(cos.shape)} and "
            f"{tuple(sin.shape)}"
        )
    if x.shape[-1] != cos.shape[-1]:
        raise ValueError(
            f"x has head_dim={x.shape[-1]} but cos/sin were built for "
            f"head_dim={cos.shape[-1]}"
        )
    if cos.ndim >= 2 and x.ndim >= 2 and cos.shape[-2] != x.shape[-2]:
        raise ValueError(
            f"x has {x.shape[-2]} positions but cos/sin have {cos.shape[-2]}; build "
            "them with rope_cos_sin(n, ...)"
        )
    return x * cos + rotate_half(x) * sin


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
            _positive_int(name, getattr(self, name))
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        _positive_int("d_ff", self.d_ff)
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
    _positive_int("block_size", block_size)
    _positive_int("batch_size", batch_size)
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
    _positive_int("batches", batches)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = random_batch(data, model.config.block_size, batch_size, generator=gen)
        total += model(x, y)[1].item()
    model.train(was_training)
    return total / batches
