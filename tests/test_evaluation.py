"""Tests for book_utils.evaluation: log-likelihood scoring against a brute-force
reference, lm-eval's per-item choices, every IFEval-style check on passing and failing
replies, the judge's bookkeeping, and the statistics against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from book_utils import evaluation as ev
from book_utils.tokenization import train_bpe_tokenizer

TEXT = (
    "the dress is lovely and the fit is great. the fabric is poor and it runs small. "
    * 20
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], vocab_size=300)


def tiny_llama(tokenizer, width=32, kv_heads=1):
    """A 2-layer random Llama over ``tokenizer`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer).eval()


def record(i, text, task="sentiment", answer="positive"):
    return {
        "id": f"r{i}",
        "task": task,
        "messages": [
            {"role": "user", "content": f"Review: {text}\nSentiment?"},
            {"role": "assistant", "content": answer},
        ],
        "answer": answer,
    }


RECORDS = [
    record(0, "the dress is lovely"),
    record(1, "it runs small", answer="negative"),
    record(2, "the fit is great", task="rating", answer="4"),
]


def brute_force(model, context, continuation):
    """log p(continuation | context), one full forward pass per token, no cache."""
    total = 0.0
    with torch.no_grad():
        for j, token in enumerate(continuation):
            ids = torch.tensor([context + continuation[:j]])
            total += float(torch.log_softmax(model(ids).logits[0, -1], -1)[token])
    return total


def test_encode_pair_moves_trailing_whitespace_and_splits_the_whole(tokenizer):
    head, tail = ev.encode_pair(tokenizer, "the dress is ", "lovely")
    assert tokenizer.decode(head) == "the dress is"
    assert tokenizer.decode(tail) == " lovely"
    whole = tokenizer("the dress is lovely", add_special_tokens=False)["input_ids"]
    assert head + tail == whole


def test_continuation_logprobs_equal_brute_force(model, tokenizer):
    context = tokenizer("the fit is", add_special_tokens=False)["input_ids"]
    conts = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in (" great", " poor and it runs small", " lovely.")
    ]
    assert len({len(c) for c in conts}) > 1  # padding is exercised
    got = ev.continuation_logprobs(model, context, conts)
    want = [brute_force(model, context, c) for c in conts]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    single = ev.continuation_logprobs(model, context, [c[:1] for c in conts])
    np.testing.assert_allclose(
        single,
        [brute_force(model, context, c[:1]) for c in conts],
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="non-empty"):
        ev.continuation_logprobs(model, context, [[]])


def test_score_choices_picks_the_most_likely_option(model, tokenizer):
    frame = ev.score_choices(model, tokenizer, RECORDS)
    assert list(frame["options"].iloc[2]) == ["1", "2", "3", "4", "5"]
    for _, row in frame.iterrows():
        lp = np.array(row["logprobs"])
        assert row["pick"] == row["options"][int(np.argmax(lp))]
        assert row["correct"] == (row["pick"] == row["answer"])
        lengths = [len(o) + len("<|im_end|>") for o in row["options"]]
        assert row["pick_norm"] == row["options"][int(np.argmax(lp / lengths))]
    prompt, cont = ev.answer_continuation(tokenizer, RECORDS[0]["messages"], "positive")
    assert prompt.endswith("assistant\n") and cont == "positive<|im_end|>"
    context, tokens = ev.encode_pair(tokenizer, prompt, cont)
    assert frame["logprobs"].iloc[0][0] == pytest.approx(
        brute_force(model, context, tokens), abs=1e-4
    )


def test_lm_eval_makes_the_same_choices(model, tokenizer, tmp_path):
    ours = ev.score_choices(model, tokenizer, RECORDS)
    theirs, metrics = ev.lm_eval_choices(model, tokenizer, RECORDS, workdir=tmp_path)
    for a, b in zip(ours["logprobs"], theirs["logprobs"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert ours["correct"].tolist() == theirs["acc"].tolist()
    assert ours["correct_norm"].tolist() == theirs["acc_norm"].tolist()
    assert metrics["acc,none"] == pytest.approx(ours["correct"].mean())


PASS_FAIL = {
    ("words", (("relation", "at most"), ("n", 5))): (
        "Short and sweet, really.",
        "This reply has far more than five words.",
    ),
    ("sentences", (("relation", "exactly"), ("n", 2))): (
        "One here. Two there!",
        "Only one sentence here.",
    ),
    ("include", (("word", "garden"),)): (
        "My garden is green.",
        "My gardens are green.",
    ),
    ("forbidden", (("a", "the"), ("b", "is"))): ("A cat sat.", "The cat sat."),
    ("frequency", (("word", "river"), ("relation", "at least"), ("n", 2))): (
        "River after river.",
        "One river only.",
    ),
    ("json", ()): ('```json\n{"answer": "yes"}\n```', "answer: yes"),
    ("bullets", (("n", 2),)): ("* one\n* two", "* one\n* two\n* three"),
    ("lowercase", ()): ("all small here.", "Not all small."),
    ("uppercase", ()): ("ALL CAPS HERE.", "MOSTLY caps."),
    ("end_phrase", (("phrase", "That is all."),)): (
        "Done. That is all.",
        "That is all. More words.",
    ),
}


@pytest.mark.parametrize(("check", "kwargs"), list(PASS_FAIL))
def test_every_check_passes_and_fails(check, kwargs):
    good, bad = PASS_FAIL[check, kwargs]
    assert ev.follows(good, check, dict(kwargs))
    assert not ev.follows(bad, check, dict(kwargs))


def test_every_check_has_a_test():
    assert {check for check, _ in PASS_FAIL} == set(ev.CHECKS)


def test_loose_accepts_a_preamble_and_markdown_strict_does_not():
    reply = "Sure! Here it is:\n**all small here.**"
    assert not ev.follows(reply, "lowercase")
    assert ev.follows(reply, "lowercase", loose=True)
    assert not ev.follows(None, "json") and not ev.follows("  ", "json", loose=True)
    with pytest.raises(ValueError, match="unknown check"):
        ev.follows("x", "haiku")
    with pytest.raises(ValueError, match="relation"):
        ev.follows("x", "words", {"relation": "about", "n": 3})


def test_instruction_prompts_cycle_checks_avoid_conflicts_and_reproduce():
    prompts = [f"question {i}?" for i in range(3 * len(ev.CHECKS))]
    items = ev.instruction_prompts(prompts, seed=1)
    firsts = [i["instructions"][0]["check"] for i in items]
    assert {firsts.count(c) for c in ev.CHECKS} == {3}
    for item in items:
        checks = [i["check"] for i in item["instructions"]]
        assert len(set(checks)) == 2
        assert not any(set(pair) in ev.CONFLICTS for pair in [checks])
        assert item["prompt"].endswith(
            " ".join(i["text"] for i in item["instructions"])
        )
    assert items == ev.instruction_prompts(prompts, seed=1)
    assert items != ev.instruction_prompts(prompts, seed=2)
    with pytest.raises(ValueError, match="per_prompt"):
        ev.instruction_prompts(prompts, per_prompt=0)


def test_instruction_scores_prompt_and_instruction_level():
    items = [
        {
            "instructions": [
                {"check": "lowercase", "kwargs": {}},
                {"check": "words", "kwargs": {"relation": "at most", "n": 3}},
            ]
        },
        {
            "instructions": [
                {"check": "json", "kwargs": {}},
                {"check": "include", "kwargs": {"word": "yes"}},
            ]
        },
    ]
    replies = ["Sure:\nyes it is", '{"a": "yes"}']
    scores = ev.instruction_scores(items, replies)
    # strict: reply 1 fails lowercase and words; reply 2 passes both
    assert scores["prompt_strict"] == 0.5 and scores["instruction_strict"] == 0.5
    # loose drops the first line of reply 1: "yes it is" passes both
    assert scores["prompt_loose"] == 1.0 and scores["instruction_loose"] == 1.0
    with pytest.raises(ValueError, match="replies"):
        ev.instruction_scores(items, replies[:1])


def test_judge_pairs_scores_both_orders(model, tokenizer):
    pairs = [
        ("how are you?", "fine, thanks.", "dress dress dress"),
        ("what is this?", "a dress.", "the the the"),
    ]
    frame = ev.judge_pairs(model, tokenizer, pairs)
    assert len(frame) == 4 and frame["better_first"].tolist() == [True, False] * 2
    assert (frame["picked_first"] == (frame["verdict"] == "A")).all()
    assert (frame["correct"] == (frame["picked_first"] == frame["better_first"])).all()
    assert ((frame["margin"] >= 0) == (frame["verdict"] == "A")).all()


def test_items_for_halfwidth():
    assert ev.items_for_halfwidth(0.05) == 385
    assert ev.items_for_halfwidth(0.1, p=0.9) == 35
    with pytest.raises(ValueError):
        ev.items_for_halfwidth(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_matches_scipy_binomial_test(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(60) < 0.6, rng.random(60) < 0.45
    result = ev.mcnemar_exact(a, b)
    assert result["a_only"] == int(np.sum(a & ~b)) and result["b_only"] == int(
        np.sum(~a & b)
    )
    n = result["a_only"] + result["b_only"]
    want = stats.binomtest(result["a_only"], n, 0.5).pvalue
    assert result["p_value"] == pytest.approx(want)


def test_mcnemar_of_identical_systems_is_one_and_shapes_must_match():
    a = np.array([1, 0, 1], dtype=bool)
    assert ev.mcnemar_exact(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        ev.mcnemar_exact(a, a[:2])


def test_word_ngrams():
    grams = ev.word_ngrams("The cat sat on the mat", n=3)
    assert grams == {"the cat sat", "cat sat on", "sat on the", "on the mat"}
    assert ev.word_ngrams("too short", n=3) == set()


def test_continuation_match_finds_a_memorised_text(tokenizer):
    model = tiny_llama(tokenizer, width=64, kv_heads=2)
    seen = (
        "the fabric is poor and it runs small. the dress is lovely and the fit is good"
    )
    other = (
        "great fit. lovely fabric. the dress runs small and it is poor. small, poor."
    )
    ids = torch.tensor([tokenizer(seen, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):  # memorise one text
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    n = ids.shape[1]
    scores = ev.continuation_match(
        model, tokenizer, [seen, other, "too short"], prefix=n // 2, suffix=n - n // 2
    )
    assert scores[0] == 1.0 and scores[1] < 0.5 and np.isnan(scores[2])
