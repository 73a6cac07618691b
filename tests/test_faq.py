"""book_utils.faq: windows, repetition rate, k-fold scores, cost formulas, int8 round
trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from book_utils import faq


@pytest.mark.parametrize(
    "n, window, overlap",
    [(0, 10, 2), (5, 10, 2), (10, 10, 2), (11, 10, 2), (1000, 510, 128), (37, 4, 3)],
)
def test_window_spans_cover_everything_with_the_overlap(n, window, overlap):
    spans = faq.window_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < e - s <= window or n == 0 for s, e in spans)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert (
            e1 - s2 == overlap
        )  # each window repeats the last `overlap` tokens of the previous one
    assert len(spans) == 1 + math.ceil(max(0, n - window) / (window - overlap))


def test_window_spans_match_a_fast_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(50)]
    backend = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    text = " ".join(words[i % 50] for i in range(237))
    ids = tok(text)["input_ids"]
    windows = tok(
        text, max_length=40, stride=8, truncation=True, return_overflowing_tokens=True
    )["input_ids"]
    assert [w for w in windows] == [
        ids[s:e] for s, e in faq.window_spans(len(ids), 40, 8)
    ]


def test_window_spans_reject_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        faq.window_spans(100, 10, 10)
    with pytest.raises(ValueError, match="window"):
        faq.window_spans(100, 0, 0)
    with pytest.raises(ValueError, match="n_tokens"):
        faq.window_spans(-1, 10, 2)


def test_owner_window_picks_the_most_central_window():
    spans = faq.window_spans(30, 10, 4)  # (0,10), (6,16), (12,22), (18,28), (24,30)
    owner = faq.owner_window(spans, 30)
    assert owner[0] == 0 and owner[29] == len(spans) - 1
    assert owner[9] == 1  # token 9 is at the edge of window 0 but inside window 1
    with pytest.raises(ValueError, match="in no window"):
        faq.owner_window([(0, 5)], 10)


def test_kfold_macro_f1_separable_data():
    texts = [f"great lovely item {i}" for i in range(20)] + [
        f"awful broken item {i}" for i in range(20)
    ]
    labels = [1] * 20 + [0] * 20
    scores = faq.kfold_macro_f1(texts, labels, k=4, seed=0, C=1.0)
    assert scores.shape == (4,) and np.all(scores == 1.0)
    with pytest.raises(ValueError, match="class"):
        faq.kfold_macro_f1(texts[:22], labels[:22], k=5)  # only 2 negatives
    with pytest.raises(ValueError, match="C must be"):
        faq.tfidf_logreg_pipeline(C=0)


def test_cost_formulas():
    assert faq.training_flops(10, 100) == 6000
    assert faq.training_time(100, 50, 2, 1000) == 10.0
    assert faq.weight_bytes(1000, "int4") == 500
    with pytest.raises(ValueError, match="unknown format"):
        faq.weight_bytes(10, "fp8")
    assert faq.human_bytes(90.9e6) == "90.9 MB" and faq.format_duration(7200) == "2.0 h"


def test_int8_round_trip_error_is_at_most_half_a_step():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    q, scale = faq.quantize_rows_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert (
        faq.dequantize_rows_int8(q, scale) - w
    ).abs().max() <= scale.max() / 2 + 1e-7
    layer = torch.nn.Sequential(
        torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )
    assert faq.simulate_int8_linear(layer) == 32 * 8 + 8 * 2
    with pytest.raises(ValueError, match="2-D"):
        faq.quantize_rows_int8(torch.randn(3))
