"""Tests of book_utils.compression on a tiny random Llama (chapter 5)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from book_utils import compression as comp


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(0, 40, (8, 17), generator=torch.Generator().manual_seed(1))


def test_int8_is_smaller_and_close(tiny, blocks):
    q = comp.quantize_int8(tiny)
    assert comp.state_dict_bytes(q) < comp.state_dict_bytes(tiny)
    before, after = comp.evaluate_lm(tiny, blocks), comp.evaluate_lm(q, blocks)
    assert abs(before["loss"] - after["loss"]) < 0.05
    assert (
        type(tiny.model.layers[0].mlp.up_proj) is torch.nn.Linear
    )  # the original is untouched


def test_evaluate_lm_matches_cross_entropy(tiny, blocks):
    logits = tiny(input_ids=blocks[:, :-1]).logits
    expected = F.cross_entropy(logits.reshape(-1, 40), blocks[:, 1:].reshape(-1)).item()
    assert comp.evaluate_lm(tiny, blocks, batch_size=3)["loss"] == pytest.approx(
        expected, rel=1e-5
    )


def test_half_precision(tiny):
    assert comp.state_dict_bytes(
        comp.cast(tiny, torch.bfloat16)
    ) < 0.6 * comp.state_dict_bytes(tiny)
    with pytest.raises(ValueError, match="dtype"):
        comp.cast(tiny, torch.int8)


def test_distillation_loss():
    s, t = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    y = torch.randint(0, 7, (3, 5))
    tau = 2.0
    p = F.softmax(t / tau, -1)
    kl = (p * (p.log() - F.log_softmax(s / tau, -1))).sum(-1).mean() * tau**2
    ce = F.cross_entropy(s.reshape(-1, 7), y.reshape(-1))
    torch.testing.assert_close(
        comp.distillation_loss(s, t, y, temperature=tau, alpha=0.3), 0.3 * kl + 0.7 * ce
    )
    torch.testing.assert_close(comp.distillation_loss(s, None, y), ce)
    assert comp.distillation_loss(t, t, y, alpha=1.0).abs() < 1e-6


def test_masked_positions_count_nowhere(tiny, blocks):
    """SFT conversations score only the assistant's tokens: -100 targets leave the loss
    and the metrics."""
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    masked = y.clone()
    masked[:, :3] = -100
    torch.testing.assert_close(
        comp.distillation_loss(s, t, masked),
        comp.distillation_loss(s[:, 3:], t[:, 3:], y[:, 3:]),
    )
    with pytest.raises(ValueError, match="every target"):
        comp.distillation_loss(s, t, torch.full_like(y, -100))
    labels = blocks.clone()
    labels[:, :10] = -100
    logits = tiny(input_ids=blocks[:, :-1]).logits[:, 9:]
    expected = F.cross_entropy(
        logits.reshape(-1, 40), blocks[:, 10:].reshape(-1)
    ).item()
    assert comp.evaluate_lm(tiny, blocks, labels, batch_size=3)[
        "loss"
    ] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        comp.evaluate_lm(tiny, blocks, labels[:, 1:])


def test_train_lm_lowers_loss(tiny, blocks):
    import copy

    student = copy.deepcopy(tiny)
    losses = comp.train_lm(
        student, blocks, steps=30, batch_size=4, teacher=tiny, progress=False
    )
    assert losses[-1] < losses[0]
    labels = blocks.clone()
    labels[:, :8] = -100
    masked = comp.train_lm(
        copy.deepcopy(tiny),
        blocks,
        labels=labels,
        steps=30,
        batch_size=4,
        progress=False,
    )
    assert masked[-1] < masked[0]


def test_pruning(tiny, blocks):
    pruned = comp.magnitude_prune(tiny, 0.5)
    assert comp.weight_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert comp.weight_sparsity(tiny) == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        comp.magnitude_prune(tiny, 1.0)
    zeroed, kept = (
        [],
        [],
    )  # one global threshold: every zeroed weight is smaller than every kept one
    for (name, before), after in zip(tiny.named_parameters(), pruned.parameters()):
        if "layers." in name and before.dim() == 2:
            zeroed.append(before[after == 0].abs())
            kept.append(before[after != 0].abs())
            torch.testing.assert_close(after[after != 0], before[after != 0])
        else:  # embeddings, norms and the head are left alone
            torch.testing.assert_close(after, before)
    assert torch.cat(zeroed).max() <= torch.cat(kept).min()
    timing = comp.sparse_matmul_latency(32, 32, 4, 0.9, repeats=1)
    assert all(0 < seconds < 10 for seconds in timing.values())


def test_onnx_parity(tiny, tmp_path):
    path = comp.export_onnx(tiny, tmp_path / "m.onnx")
    session = comp.onnx_session(path, threads=1)
    for shape in [(1, 5), (3, 11)]:
        ids = torch.randint(0, 40, shape)
        with torch.no_grad():
            ref = tiny(input_ids=ids).logits
        torch.testing.assert_close(
            comp.onnx_logits(session, ids), ref, atol=1e-4, rtol=1e-4
        )


def test_quantize_weights_error_bounds_and_q4_1_grid():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    for bits in (8, 4):
        restored = comp.quantize_weights(w, bits=bits)  # symmetric, one scale per row
        scale = w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((w - restored).abs() <= scale / 2 + 1e-6).all()
    fine = comp.quantize_weights(w, bits=4, group_size=32, asymmetric=True)
    coarse = comp.quantize_weights(w, bits=4, asymmetric=True)
    assert (w - fine).pow(2).mean() < (w - coarse).pow(
        2
    ).mean()  # smaller groups, finer grids
    levels = [g.unique().numel() for g in fine.view(-1, 32)]
    assert max(levels) <= 16  # at most 2^4 values per block of 32
    # weights already on a Q4_1 grid come back exactly: the format's own min and max are
    # grid points
    torch.testing.assert_close(
        comp.quantize_weights(fine, bits=4, group_size=32, asymmetric=True), fine
    )
    assert comp.weight_bits(4, 32, asymmetric=True) == 5.0
    with pytest.raises(ValueError, match="group_size"):
        comp.quantize_weights(w, bits=4, group_size=48)
    with pytest.raises(ValueError, match="bits"):
        comp.quantize_weights(w, bits=1)


def test_fake_quantize_touches_block_linears_only(tiny, blocks):
    q = comp.fake_quantize(tiny, bits=4, group_size=16, asymmetric=True)
    assert not torch.equal(
        q.model.layers[0].mlp.up_proj.weight, tiny.model.layers[0].mlp.up_proj.weight
    )
    torch.testing.assert_close(
        q.model.embed_tokens.weight, tiny.model.embed_tokens.weight
    )
    eight = comp.fake_quantize(tiny, bits=8)
    loss = lambda m: comp.evaluate_lm(m, blocks)["loss"]
    assert (
        abs(loss(eight) - loss(tiny))
        < abs(loss(comp.fake_quantize(tiny, bits=2)) - loss(tiny)) + 1e-6
    )
