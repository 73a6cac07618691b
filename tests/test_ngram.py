import math

import numpy as np
import pytest

from book_utils import ngram
from book_utils.ngram import UNK, CharNGramLM

TEXT = "the cat sat on the mat. the dog sat on the log."
CONTEXTS = ["", "t", "th", "the ", "at", "zq", "\u00e9\u00e9", "on the m", "dog"]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "smoothing, knob",
    [
        ("add_k", {"k": 1.0}),
        ("add_k", {"k": 0.05}),
        ("kneser_ney", {"discount": 0.75}),
        ("kneser_ney", {"discount": 0.3}),
    ],
)
def test_distributions_sum_to_one_for_seen_and_unseen_contexts(order, smoothing, knob):
    lm = CharNGramLM(order, smoothing, **knob).fit(TEXT)
    for context in CONTEXTS:
        p = lm.distribution(context)
        assert p.shape == (len(lm.vocab),)
        assert np.all(p > 0), f"zero probability after {context!r}"
        assert math.isclose(p.sum(), 1.0, rel_tol=0, abs_tol=1e-12), (context, p.sum())


def test_vocabulary_is_training_chars_plus_unk():
    lm = CharNGramLM(2).fit("banana")
    assert lm.vocab == ("a", "b", "n", UNK)


def test_add_k_unigram_matches_the_hand_formula():
    k = 0.5
    lm = CharNGramLM(1, "add_k", k=k).fit(
        "aab"
    )  # counts a:2, b:1, N = 3, V = 3 (a, b, <unk>)
    assert lm.prob("a") == pytest.approx((2 + k) / (3 + k * 3))
    assert lm.prob("b") == pytest.approx((1 + k) / (3 + k * 3))
    assert lm.prob("z") == pytest.approx(k / (3 + k * 3))  # unseen character -> <unk>


def test_add_k_bigram_matches_the_hand_formula():
    lm = CharNGramLM(2, "add_k", k=1.0).fit(
        "abab"
    )  # ab:2, ba:1; c(a.) = 2, c(b.) = 1, V = 3
    assert lm.prob("b", "a") == pytest.approx(3 / 5)
    assert lm.prob("a", "b") == pytest.approx(2 / 4)
    assert lm.prob("a", "z") == pytest.approx(1 / 3)  # unseen context: uniform


def test_kneser_ney_matches_a_hand_computed_example():
    # "abcab", D = 1/2, V = 4 (a, b, c, <unk>). Bigram types ab(2), bc(1), ca(1), so
    # every character has continuation count 1 out of 3 types:
    # p1(w) = (1 - D + D * 3 / 4) / 3 = 7/24, p1(<unk>) = (D * 3/4) / 3 = 1/8.
    lm = CharNGramLM(2, "kneser_ney", discount=0.5).fit("abcab")
    p1 = {"a": 7 / 24, "b": 7 / 24, "c": 7 / 24, UNK: 1 / 8}
    for ch, expected in p1.items():
        assert lm.prob(ch) == pytest.approx(expected)
    # context "a": c(a.) = 2 with one type (ab): p(b|a) = (2 - D + D * 1 * p1(b)) / 2
    assert lm.prob("b", "a") == pytest.approx((2 - 0.5 + 0.5 * 7 / 24) / 2)
    assert lm.prob("a", "a") == pytest.approx((0.5 * 7 / 24) / 2)
    assert lm.prob("c", "b") == pytest.approx(1 - 0.5 + 0.5 * 7 / 24)
    # unseen context backs off to the lower order entirely
    assert lm.prob("a", "q") == pytest.approx(7 / 24)


def test_kneser_ney_order_1_is_smoothed_continuation_unigram():
    lm = CharNGramLM(1, "kneser_ney", discount=0.5).fit("aab")
    # order 1 has no lower level: the top (and only) level uses raw counts a:2, b:1
    # over N = 3, V = 3
    assert lm.prob("a") == pytest.approx((2 - 0.5 + 0.5 * 2 / 3) / 3)
    assert lm.prob("z") == pytest.approx((0.5 * 2 / 3) / 3)


def test_unseen_characters_get_positive_probability_and_finite_perplexity():
    for smoothing in ngram.SMOOTHINGS:
        lm = CharNGramLM(3, smoothing).fit(TEXT)
        assert lm.prob("Z", "th") > 0
        result = lm.evaluate("the zebra", context="")  # z, b, r never occur in TEXT
        assert result.n_unknown == 3 and math.isfinite(result.perplexity)


def test_shared_counts_give_the_same_model_as_fitting_the_text():
    counts = ngram.count_ngrams(TEXT, max_order=5)
    for smoothing in ngram.SMOOTHINGS:
        for order in (1, 2, 3):
            direct = CharNGramLM(order, smoothing).fit(TEXT)
            shared = CharNGramLM(order, smoothing).fit(counts)
            np.testing.assert_allclose(
                direct.log_probs("the hat sat"), shared.log_probs("the hat sat")
            )


def test_log_probs_agree_with_prob_and_distribution():
    lm = CharNGramLM(3, "kneser_ney").fit(TEXT)
    text, context = "cat on", "the "
    logp = lm.log_probs(text, context=context)
    for t, ch in enumerate(text):
        history = context + text[:t]
        assert logp[t] == pytest.approx(math.log(lm.prob(ch, history)))
        assert logp[t] == pytest.approx(
            math.log(lm.distribution(history)[lm.vocab.index(ch)])
        )


def test_bpc_and_perplexity_follow_from_nll():
    lm = CharNGramLM(2, "add_k").fit(TEXT)
    result = lm.evaluate("the rat sat")
    assert result.nll == pytest.approx(-lm.log_probs("the rat sat").mean())
    assert result.bpc == pytest.approx(result.nll / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(result.nll))
    assert ngram.perplexity(math.log(27)) == pytest.approx(
        27
    )  # uniform over 27 symbols
    assert ngram.bits_per_char(math.log(2)) == pytest.approx(1.0)
    # a total over 8 characters is divided by them
    assert ngram.bits_per_char(8 * math.log(2), n_chars=8) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_chars"):
        ngram.bits_per_char(1.0, n_chars=0)


def test_sampling_is_deterministic_with_a_seed_and_uses_the_vocabulary():
    lm = CharNGramLM(3, "kneser_ney").fit(TEXT)
    a, b = lm.sample(40, prompt="the ", seed=7), lm.sample(40, prompt="the ", seed=7)
    assert a == b and len(a) == 40
    assert set(a) <= set(TEXT)  # <unk> is never emitted
    assert lm.sample(40, prompt="the ", seed=8) != a
    assert lm.sample(0) == ""


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"order": 0}, ValueError, "order must be >= 1"),
        ({"order": 2.0}, TypeError, "order must be an int"),
        ({"order": 2, "smoothing": "laplace"}, ValueError, "smoothing must be one of"),
        (
            {"order": 2, "smoothing": "add_k", "k": 0},
            ValueError,
            "k must be a finite number > 0",
        ),
        ({"order": 2, "discount": 1.0}, ValueError, "0 < discount < 1"),
        ({"order": 2, "discount": 0}, ValueError, "0 < discount < 1"),
    ],
)
def test_bad_constructor_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        CharNGramLM(**kwargs)


def test_bad_fit_and_query_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        CharNGramLM(2).fit("")
    with pytest.raises(TypeError, match=r"\(str\) or NGramCounts"):
        CharNGramLM(2).fit(["a", "b"])
    with pytest.raises(ValueError, match="up to order 2"):
        CharNGramLM(3).fit(ngram.count_ngrams(TEXT, 2))
    with pytest.raises(ValueError, match="reserved unknown symbol"):
        CharNGramLM(2).fit("ab" + UNK)
    with pytest.raises(ValueError, match="fewer than max_order=3"):
        CharNGramLM(3).fit("ab")
    with pytest.raises(RuntimeError, match="not fitted"):
        CharNGramLM(2).prob("a")
    lm = CharNGramLM(2).fit(TEXT)
    with pytest.raises(TypeError, match="context must be a str"):
        lm.distribution(context=3)
    with pytest.raises(ValueError, match="single character"):
        lm.prob("ab")
    with pytest.raises(ValueError, match="empty"):
        lm.evaluate("")
    with pytest.raises(ValueError, match="seed must be"):
        lm.sample(5, seed=-1)
    with pytest.raises(ValueError, match=">= 0 nats"):
        ngram.perplexity(-0.1)


@pytest.mark.parametrize("smoothing", ngram.SMOOTHINGS)
def test_scoring_from_the_first_character_matches_prob(smoothing):
    lm = CharNGramLM(4, smoothing).fit(TEXT)
    # the first characters have less than order - 1 characters of history
    text = "the dot sat in a hat"
    logp = lm.log_probs(text)
    for t, ch in enumerate(text):
        assert logp[t] == pytest.approx(math.log(lm.prob(ch, text[:t])), rel=1e-12)
