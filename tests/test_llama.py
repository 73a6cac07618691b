"""Tests for book_utils.llama: our Llama against transformers' LlamaForCausalLM (same
weights, same logits, same greedy tokens), its KV cache against a full forward pass, and
its pieces against PyTorch."""

from __future__ import annotations

import pytest
import torch
import transformers

from book_utils import llama


def hf_llama(tie=True, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        rope_theta=100_000.0,
        max_position_embeddings=128,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init: tokens vary
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_same_logits_as_transformers(tie):
    hf = hf_llama(tie)
    ours = llama.from_hf(hf)
    ids = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie


def test_same_greedy_tokens_as_transformers():
    hf = hf_llama()
    ours = llama.from_hf(hf)
    prompt = torch.tensor([[5, 17, 42, 8, 3]])
    want = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=None,  # LlamaConfig's default eos (2) would stop it early
        pad_token_id=0,
    )
    got = ours.generate(prompt, max_new_tokens=20)
    assert torch.equal(got, want)
    assert torch.equal(ours.generate(prompt, max_new_tokens=20, use_cache=False), want)
    stopped = ours.generate(prompt, max_new_tokens=20, eos_token_id=int(want[0, 6]))
    assert torch.equal(stopped, want[:, :7])  # ends with the eos token
    assert len(set(got[0, 5:].tolist())) > 1  # not one token repeated


def test_kv_cache_gives_the_full_forward_logits():
    ours = llama.from_hf(hf_llama())
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = ours(ids)
        cache = llama.KVCache()
        steps = [ours(ids[:, :5], cache), ours(ids[:, 5:8], cache)]  # a chunk after
        steps += [ours(ids[:, i : i + 1], cache) for i in range(8, 12)]  # the cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(cache) == 12


def test_rmsnorm_matches_torch():
    norm = llama.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    reference = torch.nn.RMSNorm(8, eps=1e-6)
    reference.weight = norm.weight
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(norm(x), reference(x))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="n_kv_heads"):
        llama.LlamaConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="one sequence"):
        llama.from_hf(hf_llama()).generate(torch.zeros(2, 3, dtype=torch.long), 2)
