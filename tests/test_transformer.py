"""Tests of book_utils.transformer against PyTorch's layers and transformers' Llama RoPE
(chapter 2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from book_utils.attention import causal_mask, padding_mask
from book_utils.transformer import (
    DecoderBlock,
    DecoderOnlyLM,
    FeedForward,
    TransformerBlock,
    TransformerConfig,
    apply_rope,
    copy_from_torch_decoder_layer,
    copy_from_torch_encoder_layer,
    estimate_loss,
    random_batch,
    rope_cos_sin,
    sinusoidal_position_encoding,
)


def test_sinusoidal_matches_formula():
    n, d = 50, 16
    pe = sinusoidal_position_encoding(n, d)
    assert pe.shape == (n, d) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert math.isclose(pe[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(
                pe[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6
            )
    with pytest.raises(ValueError, match="even"):
        sinusoidal_position_encoding(4, 5)
    with pytest.raises(ValueError, match="positive int"):
        sinusoidal_position_encoding(0, 4)


def test_rope_relative_position_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, generator=g), torch.randn(32, generator=g)
    cos, sin = rope_cos_sin(64, 32)

    def score(m, n):
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])

    for offset in (0, 3, 10):
        ref = score(offset, 0)
        for start in (1, 5, 40):
            assert math.isclose(
                score(start + offset, start).item(),
                ref.item(),
                rel_tol=1e-4,
                abs_tol=1e-4,
            )
    assert not math.isclose(score(3, 0).item(), score(9, 0).item(), abs_tol=1e-3)
    # rotations keep norms
    assert_close(apply_rope(q, cos[17], sin[17]).norm(), q.norm())


def test_rope_matches_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    b, h, n, head_dim = 2, 4, 12, 16
    config = LlamaConfig(
        hidden_size=h * head_dim,
        num_attention_heads=h,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    rotary = LlamaRotaryEmbedding(config)
    g = torch.Generator().manual_seed(1)
    q, k = (
        torch.randn(b, h, n, head_dim, generator=g),
        torch.randn(b, h, n, head_dim, generator=g),
    )
    position_ids = torch.arange(n)[None].expand(b, n)
    hf_cos, hf_sin = rotary(q, position_ids)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = rope_cos_sin(n, head_dim)
    assert_close(cos, hf_cos[0])
    assert_close(apply_rope(q, cos, sin), q_ref)
    assert_close(apply_rope(k, cos, sin), k_ref)


def test_rope_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        rope_cos_sin(4, 7)
    cos, sin = rope_cos_sin(4, 8)
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope(torch.randn(4, 6), cos, sin)
    with pytest.raises(ValueError, match="positions"):
        apply_rope(torch.randn(5, 8), cos, sin)


@pytest.mark.parametrize(
    "b, n, d, h, causal, pad",
    [
        (2, 6, 16, 4, False, False),
        (3, 5, 24, 3, True, False),
        (2, 7, 8, 2, False, True),
        (2, 7, 8, 2, True, True),
    ],
)
def test_block_matches_torch_encoder_layer(b, n, d, h, causal, pad):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d,
        h,
        dim_feedforward=3 * d,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    ).eval()
    block = copy_from_torch_encoder_layer(
        TransformerBlock(
            TransformerConfig(d_model=d, n_head=h, d_ff=3 * d, causal=causal)
        ),
        layer,
    ).eval()
    # make the LayerNorm parameters non-trivial so a swapped norm would be caught
    with torch.no_grad():
        for ln in (layer.norm1, layer.norm2):
            ln.weight.normal_(1.0, 0.1)
            ln.bias.normal_(0.0, 0.1)
        copy_from_torch_encoder_layer(block, layer)
    x = torch.randn(b, n, d)
    am = torch.ones(b, n, dtype=torch.long)
    if pad:
        am[1:, n - 2 :] = 0
    with torch.no_grad():
        ours = block(x, attn_mask=padding_mask(am))
        ref = layer(
            x,
            src_mask=~causal_mask(n) if causal else None,
            src_key_padding_mask=am == 0,
            is_causal=causal,
        )
    # torch's fast path leaves padded positions' outputs undefined (zeros); compare the
    # real tokens
    real = am.bool()
    assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-4)


def test_decoder_block_matches_torch_decoder_layer():
    torch.manual_seed(0)
    b, n_tgt, n_src, d, h = 2, 5, 7, 16, 4
    layer = nn.TransformerDecoderLayer(
        d,
        h,
        dim_feedforward=32,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    ).eval()
    block = copy_from_torch_decoder_layer(
        DecoderBlock(TransformerConfig(d_model=d, n_head=h, d_ff=32)), layer
    ).eval()
    x, memory = torch.randn(b, n_tgt, d), torch.randn(b, n_src, d)
    am = torch.ones(b, n_src, dtype=torch.long)
    am[1, -3:] = 0
    with torch.no_grad():
        ours = block(x, memory, memory_mask=padding_mask(am))
        ref = layer(
            x,
            memory,
            tgt_mask=~causal_mask(n_tgt),
            memory_key_padding_mask=am == 0,
            tgt_is_causal=True,
        )
    assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_copy_requires_norm_first():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    with pytest.raises(ValueError, match="norm_first=True"):
        copy_from_torch_encoder_layer(
            TransformerBlock(TransformerConfig(d_model=8, n_head=2, d_ff=16)), layer
        )


def test_feedforward_is_its_formula_applied_per_position():
    torch.manual_seed(0)
    ffn = FeedForward(8, 32)
    x = torch.randn(2, 3, 8)
    by_hand = (
        F.gelu(x @ ffn.fc1.weight.T + ffn.fc1.bias) @ ffn.fc2.weight.T + ffn.fc2.bias
    )
    torch.testing.assert_close(ffn(x), by_hand)
    changed = x.clone()
    changed[:, 1] += 1.0  # one position changes: the others' outputs must not
    out, out2 = ffn(x), ffn(changed)
    torch.testing.assert_close(out2[:, [0, 2]], out[:, [0, 2]])
    assert not torch.allclose(out2[:, 1], out[:, 1])


def test_config_validation():
    assert TransformerConfig(d_model=32).d_ff == 128
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="position"):
        TransformerConfig(position="alibi")
    with pytest.raises(ValueError, match="positive int"):
        TransformerConfig(n_layer=0)
    with pytest.raises(ValueError, match="causal"):
        DecoderOnlyLM(TransformerConfig(causal=False))


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope"])
def test_lm_is_causal(position):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=11, block_size=16, n_layer=1, n_head=2, d_model=16, position=position
    )
    model = DecoderOnlyLM(cfg)
    assert model.lm_head.weight is model.tok_emb.weight  # tied
    idx = torch.randint(0, 11, (2, 10))
    logits, loss = model(idx)
    assert logits.shape == (2, 10, 11) and loss is None
    # changing a later token must not change earlier logits (causality)
    idx2 = idx.clone()
    idx2[:, 6] = (idx2[:, 6] + 1) % 11
    assert_close(model(idx2)[0][:, :6], logits[:, :6])
    assert not torch.allclose(model(idx2)[0][:, 6:], logits[:, 6:])


def test_lm_learns():
    torch.manual_seed(0)
    model = DecoderOnlyLM(
        TransformerConfig(
            vocab_size=11,
            block_size=16,
            n_layer=1,
            n_head=2,
            d_model=16,
            position="rope",
        )
    )
    data = (
        torch.arange(200) % 5
    )  # a periodic sequence is learnt quickly: loss falls far below ln V
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        x, y = random_batch(data, 8, 8, generator=g)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * math.log(11)
    model.eval()
    val = estimate_loss(model, data, batches=2, batch_size=4)
    assert (
        val == estimate_loss(model, data, batches=2, batch_size=4) < 0.25 * math.log(11)
    )  # same windows
    model.train()
    out = model.generate(
        torch.zeros(1, 1, dtype=torch.long),
        5,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (1, 6)


def test_lm_and_batch_bad_inputs():
    model = DecoderOnlyLM(
        TransformerConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, d_model=8)
    )
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="more than block_size"):
        random_batch(torch.arange(4), 4, 2)
    with pytest.raises(ValueError, match="1-D"):
        random_batch(torch.zeros(2, 8, dtype=torch.long), 4, 2)
