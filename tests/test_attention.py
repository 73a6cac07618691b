"""Tests of book_utils.attention against PyTorch's own attention (chapter 2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from book_utils.attention import (
    MultiHeadAttention,
    attention_cost,
    causal_mask,
    copy_from_torch_mha,
    padding_mask,
    scaled_dot_product_attention,
)

SHAPES = [  # (batch, heads, n_q, n_k, d_k, d_v)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 5, 8, 8),
    (3, 4, 7, 7, 16, 4),
    (2, 2, 4, 9, 6, 10),
    (1, 8, 33, 33, 64, 64),
]


def _qkv(b, h, nq, nk, dk, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, nq, dk, generator=g),
        torch.randn(b, h, nk, dk, generator=g),
        torch.randn(b, h, nk, dv, generator=g),
    )


def _right_padding(b, n, seed=0):
    """A (b, n) 0/1 mask with real tokens first, each row keeping at least one token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n + 1, (b,), generator=g)
    lengths[0] = n
    return (torch.arange(n)[None, :] < lengths[:, None]).long()


@pytest.mark.parametrize("shape", SHAPES)
def test_no_mask_matches_torch(shape):
    q, k, v = _qkv(*shape)
    out, w = scaled_dot_product_attention(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert w.shape == shape[:3] + (shape[3],)


@pytest.mark.parametrize("shape", SHAPES)
def test_causal_matches_torch(shape):
    q, k, v = _qkv(*shape, seed=1)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    hidden = ~causal_mask(shape[2], shape[3])
    assert torch.all(w[..., hidden] == 0)
    assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


@pytest.mark.parametrize("shape", SHAPES)
def test_padding_and_causal_match_torch(shape):
    b, h, nq, nk, dk, dv = shape
    q, k, v = _qkv(*shape, seed=2)
    am = _right_padding(b, nk, seed=3)
    pad = padding_mask(am)
    assert pad.shape == (b, 1, 1, nk)
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=pad)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=pad))
    assert torch.all(w.masked_select(~pad.expand_as(w)) == 0)
    both = pad & causal_mask(nq, nk)
    out2, w2 = scaled_dot_product_attention(q, k, v, attn_mask=pad, is_causal=True)
    assert_close(out2, F.scaled_dot_product_attention(q, k, v, attn_mask=both))
    assert torch.all(w2.masked_select(~both.expand_as(w2)) == 0)
    assert_close(w2.sum(-1), torch.ones(w2.shape[:-1]))


def test_float_mask_and_broadcast_heads():
    q, k, v = _qkv(2, 4, 6, 6, 8, 8, seed=4)
    additive = torch.zeros(6, 6).masked_fill(~causal_mask(6), float("-inf"))
    out, _ = scaled_dot_product_attention(q, k, v, attn_mask=additive)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    bias = torch.randn(
        1, 4, 6, 6
    )  # a float bias, e.g. ALiBi-like, broadcast over batch
    assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=bias)[0],
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
    )
    # k, v shared across heads broadcast against q's heads
    out3, _ = scaled_dot_product_attention(q, k[:, :1], v[:, :1])
    assert_close(
        out3,
        F.scaled_dot_product_attention(q, k[:, :1].expand_as(k), v[:, :1].expand_as(v)),
    )


def test_weights_formula_and_scaling():
    q, k, v = _qkv(1, 1, 3, 4, 5, 2, seed=5)
    _, w = scaled_dot_product_attention(q, k, v)
    assert_close(w, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(5), dim=-1))
    _, w1 = scaled_dot_product_attention(q, k, v, scale=1.0)
    assert_close(w1, torch.softmax(q @ k.transpose(-1, -2), dim=-1))


def test_fully_masked_rows():
    q, k, v = _qkv(1, 1, 3, 3, 4, 4)
    mask = torch.tensor(
        [[False, False, False], [True, False, False], [True, True, True]]
    )
    with pytest.raises(ValueError, match="every key masked"):
        scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, fully_masked="zero")
    assert torch.all(w[..., 0, :] == 0) and torch.all(out[..., 0, :] == 0)
    assert not torch.isnan(out).any()
    assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )  # torch >= 2.5 also gives zeros


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"q": torch.randn(2, 3, 4), "k": torch.randn(2, 3, 5)}, "d_k mismatch"),
        ({"v": torch.randn(2, 4, 4)}, "same number of positions"),
        ({"q": torch.randn(4)}, "at least 2 dimensions"),
        ({"q": torch.ones(2, 3, 4, dtype=torch.long)}, "floating-point"),
        ({"q": [[1.0]]}, "torch.Tensor"),
        ({"attn_mask": torch.ones(3, 3, dtype=torch.long)}, "padding_mask"),
        ({"attn_mask": torch.ones(4, 3, dtype=torch.bool)}, "does not broadcast"),
        ({"attn_mask": torch.zeros(3, 3, dtype=torch.float64)}, "cast the mask"),
        ({"q": torch.randn(5, 3, 4)}, "do not broadcast"),
        ({"fully_masked": "nan"}, "fully_masked"),
    ],
)
def test_bad_inputs(kwargs, message):
    args = {
        "q": torch.randn(2, 3, 4),
        "k": torch.randn(2, 3, 4),
        "v": torch.randn(2, 3, 4),
    } | kwargs
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(**args)


def test_masks_and_their_errors():
    assert causal_mask(3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert causal_mask(2, 4).shape == (2, 4)
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(0)
    assert padding_mask(torch.tensor([[1, 1, 0]])).tolist() == [[[[True, True, False]]]]
    with pytest.raises(ValueError, match="shape \\(batch, n\\)"):
        padding_mask(torch.ones(3))
    with pytest.raises(ValueError, match="only 0"):
        padding_mask(torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    "b, n_q, n_k, d, h", [(2, 5, 5, 16, 4), (3, 4, 7, 24, 3), (1, 1, 6, 8, 1)]
)
def test_mha_matches_torch(b, n_q, n_k, d, h):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(d, h, batch_first=True).eval()
    ours = copy_from_torch_mha(MultiHeadAttention(d, h), theirs).eval()
    x, ctx = torch.randn(b, n_q, d), torch.randn(b, n_k, d)
    with torch.no_grad():
        # self-attention, averaged weights as torch returns them by default
        out, w = ours(x)
        ref, ref_w = theirs(x, x, x)
        assert_close(out, ref)
        assert_close(w.mean(1), ref_w)
        # cross-attention with a key padding mask (torch: True = ignore, the opposite
        # convention)
        am = _right_padding(b, n_k, seed=7)
        out, _ = ours(x, ctx, attn_mask=padding_mask(am))
        ref, _ = theirs(x, ctx, ctx, key_padding_mask=am == 0)
        assert_close(out, ref)
        # causal self-attention
        out, _ = ours(x, is_causal=True)
        ref, _ = theirs(x, x, x, attn_mask=~causal_mask(n_q))
        assert_close(out, ref)


def test_mha_bad_inputs():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="d_model=8"):
        mha(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="batch sizes"):
        mha(torch.randn(2, 3, 8), torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match="shape mismatch"):
        copy_from_torch_mha(mha, nn.MultiheadAttention(8, 4))


def test_attention_cost_rows():
    threads = torch.get_num_threads()
    rows = attention_cost([16, 32], d_k=8, n_heads=2, repeats=1)
    assert (
        torch.get_num_threads() == threads
    )  # restored after the one-thread measurement
    assert [(r["n"], r["implementation"]) for r in rows] == [
        (16, "naive"),
        (16, "sdpa"),
        (32, "naive"),
        (32, "sdpa"),
    ]
    naive = [r["bytes"] for r in rows if r["implementation"] == "naive"]
    assert (
        naive[1] > naive[0] > 2 * 16 * 16 * 4
    )  # at least the (2 heads) 16 x 16 float32 score matrix
    assert all(r["seconds"] > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown implementations"):
        attention_cost([8], implementations=("flash3",))
    with pytest.raises(ValueError, match="positive ints"):
        attention_cost([])
    with pytest.raises(ValueError, match="threads"):
        attention_cost([8], threads=0)
