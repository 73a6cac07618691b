"""Tests of book_utils.decoding: every strategy matches model.generate token for token
(chapter 5)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from book_utils import decoding as dec


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        eos_token_id=3,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


STRATEGIES = [
    dec.DecodingConfig(),
    dec.DecodingConfig(repetition_penalty=1.3, no_repeat_ngram_size=2),
    dec.DecodingConfig(do_sample=True),
    dec.DecodingConfig(do_sample=True, temperature=0.7, top_k=5),
    dec.DecodingConfig(do_sample=True, temperature=1.3, top_p=0.8),
    dec.DecodingConfig(
        do_sample=True,
        top_k=10,
        top_p=0.9,
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
    ),
]


@pytest.mark.parametrize("cfg", STRATEGIES, ids=str)
def test_matches_generate_token_for_token(tiny, cfg):
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = (ids != 0).long()
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = dec.generate(
            tiny, ids, 12, cfg, attention_mask=mask, eos_token_id=3, pad_token_id=0
        )
        torch.manual_seed(seed)
        theirs = tiny.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            eos_token_id=3,
            pad_token_id=0,
            **cfg.generate_kwargs(),
        )
        assert ours.tolist() == theirs.tolist()


def test_cache_and_no_cache_agree(tiny):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    a = dec.generate(tiny, ids, 10, use_cache=True)
    b = dec.generate(tiny, ids, 10, use_cache=False)
    assert a.tolist() == b.tolist()


def test_processors():
    scores = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    out = dec.apply_repetition_penalty(scores, torch.tensor([[0, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 0.0]]))
    assert dec.top_k_filter(scores, 2).isinf().tolist() == [[False, True, False, True]]
    kept = ~dec.top_p_filter(
        torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.75
    ).isinf()
    assert kept.tolist() == [[True, True, False, False]]
    banned = dec.ban_repeated_ngrams(torch.zeros(1, 5), torch.tensor([[1, 2, 4, 1]]), 2)
    assert banned.isinf().tolist() == [[False, False, True, False, False]]


def test_repetition_metrics():
    assert dec.distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert dec.repeated_ngram_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no 3-grams"):
        dec.distinct_n([[1, 2]], 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        dec.DecodingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        dec.DecodingConfig(temperature=0)


def test_toy_cache_equals_full_attention():
    layer = dec.ToyCachedAttention(8)
    x = torch.randn(2, 6, 8)
    full, _ = layer(x)
    out, cache = layer(x[:, :4])
    step, cache = layer(x[:, 4:], cache)
    torch.testing.assert_close(torch.cat([out, step], 1), full)
    assert cache[0].shape == (2, 6, 8)


def test_kv_cache_bytes_equals_the_cache_transformers_builds(tiny):
    with torch.no_grad():
        cache = tiny(
            input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), use_cache=True
        ).past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    measured = sum(t.numel() * t.element_size() for t in tensors)
    assert dec.kv_cache_bytes(tiny.config, 10) == measured
    assert dec.kv_cache_bytes(tiny.config, 10, batch_size=3) == 3 * measured


def test_deadline(tiny):
    with pytest.raises(TimeoutError):
        dec.generate(tiny, torch.tensor([[1, 2]]), 5, deadline=0.0)


def test_several_stop_ids_match_generate(tiny):
    """A chat model ends its turn at <|im_end|> or eos: a list of stop ids behaves as in
    ``model.generate``."""
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = (ids != 0).long()
    cfg = dec.DecodingConfig(do_sample=True)
    plain = dec.generate(tiny, ids, 12, cfg, attention_mask=mask)
    stops = [
        int(plain[0, 5]),
        3,
    ]  # the second token the first row generates becomes a stop token
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = dec.generate(
            tiny, ids, 12, cfg, attention_mask=mask, eos_token_id=stops, pad_token_id=0
        )
        torch.manual_seed(seed)
        theirs = tiny.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            eos_token_id=stops,
            pad_token_id=0,
            **cfg.generate_kwargs(),
        )
        assert ours.tolist() == theirs.tolist()
    with pytest.raises(ValueError, match="empty"):
        dec.generate(tiny, ids, 2, eos_token_id=[])


def test_stop_token_ids_prefers_end_of_turn():
    class Tok:
        unk_token_id, eos_token_id = None, 0
        vocab = {"<|im_end|>": 3}

        def convert_tokens_to_ids(self, token):
            return self.vocab.get(token)

    assert dec.stop_token_ids(Tok()) == [3, 0]
    Tok.vocab = {}
    assert dec.stop_token_ids(Tok()) == [0]


def test_until_stop():
    assert dec.until_stop([5, 6, 3, 0, 0], [3, 0]) == [5, 6]
    assert dec.until_stop([5, 6], [3]) == [5, 6]
    assert dec.until_stop([3, 5], [3]) == []


def test_a_generator_samples_reproducibly_and_leaves_the_global_rng_alone(tiny):
    ids = torch.tensor([[5, 6, 7]])
    cfg = dec.DecodingConfig(do_sample=True, temperature=1.5)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = dec.generate(tiny, ids, 12, cfg, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), before)  # the training RNG is untouched
    again = dec.generate(tiny, ids, 12, cfg, generator=torch.Generator().manual_seed(4))
    other = dec.generate(tiny, ids, 12, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, other)
