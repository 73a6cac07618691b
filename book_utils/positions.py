"""Position information for attention, which is otherwise blind to order: the
sinusoidal encoding of Vaswani et al. and rotary position embedding (RoPE).

Taught in chapter 2.2, book/02_attention/02_transformer_block.ipynb; RoPE is checked
against the rotary embedding of ``transformers``' Llama in
``tests/test_transformer.py``.
:mod:`book_utils.attention` (``MultiHeadAttention(rope=...)``), the chapter's decoder
and :mod:`book_utils.llama` all rotate with these functions.
"""

from __future__ import annotations

import torch

from book_utils.checks import positive_int

__all__ = [
    "sinusoidal_position_encoding",
    "rope_cos_sin",
    "rotate_half",
    "apply_rope",
]


def sinusoidal_position_encoding(n: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The ``(n, d)`` sinusoidal position encoding (位置编码) of Vaswani et al. (2017).

    ``PE[pos, 2i] = sin(pos / base^(2i/d))`` and
    ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``: every pair of features is a clock
    turning at its own frequency, from one turn per ``2π`` positions down to one per
    ``2π·base``. Added to the token embeddings, it tells attention (which is otherwise
    blind to order) where each token sits. Taught in chapter 2.
    """
    positive_int("n", n)
    positive_int("d", d)
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
    positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(
            f"head_dim must be even (RoPE rotates pairs of features), got {head_dim}"
        )
    if isinstance(positions, int):
        positions = torch.arange(positive_int("positions", positions))
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
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)
