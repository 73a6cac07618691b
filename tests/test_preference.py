"""Tests for book_utils.preference (chapter 4c.5): tiny tokenizer, tiny random Llama,
synthetic SFT records; the DPO loss is checked by hand, in closed form, against
PyTorch's ``logsigmoid`` and against TRL's ``DPOTrainer``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from book_utils import preference as pref
from book_utils.sft_data import parse_answer
from book_utils.sft_data.masks import IGNORE_INDEX, tokenize_for_sft
from book_utils.tokenization import train_bpe_tokenizer

TEXT = (
    "the dress is lovely and the fit is great. the fabric is poor and it runs small. "
    * 20
)
REVIEWS = [
    ("the dress is lovely", "positive"),
    ("the fit is great", "positive"),
    ("the fabric is poor", "negative"),
    ("it runs small", "negative"),
]


def record(i, text, answer, split="train", task="sentiment", reply=None):
    return {
        "id": f"r{i}",
        "task": task,
        "source": "reviews" if task == "sentiment" else "chitchat",
        "source_id": f"src:{i}",
        "split": split,
        "messages": [
            {"role": "user", "content": f"Review: {text}\nSentiment?"},
            {"role": "assistant", "content": reply or answer},
        ],
        "answer": answer if task == "sentiment" else None,
    }


def pair(i, chosen="positive", rejected="negative", split="train", source=None):
    return {
        "id": f"r{i}",
        "task": "sentiment",
        "split": split,
        "source_id": source or f"src:{i}",
        "prompt": [{"role": "user", "content": f"Review: text {i}\nSentiment?"}],
        "chosen": chosen,
        "rejected": rejected,
    }


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], vocab_size=300)


def tiny_model(tokenizer, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def pairs():
    """Four training pairs: the right sentiment chosen, the wrong one rejected."""
    flip = {"positive": "negative", "negative": "positive"}
    records = [record(i, t, a) for i, (t, a) in enumerate(REVIEWS)]
    replies = [flip[a] for _, a in REVIEWS]
    return pref.preference_pairs(records, replies, parse_answer)


@pytest.fixture(scope="module")
def rows(tokenizer, pairs):
    rows, dropped = pref.tokenize_pairs(tokenizer, pairs, 64)
    assert dropped == 0
    return rows


def perturbed(model, seed=1, scale=0.05):
    """A copy of ``model`` with every weight nudged: a policy that moved."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other


# --- the loss ------------------------------------------------------------------------


def test_sequence_logprobs_equals_a_hand_computation(tokenizer, rows):
    model = tiny_model(tokenizer).eval()
    batch = pref.PreferenceCollator(tokenizer.pad_token_id)(rows[:2])
    ids, mask, labels = (batch[f"chosen_{k}"] for k in pref.data.KEYS)
    got = pref.sequence_logprobs(model, ids, mask, labels)
    with torch.no_grad():
        for b, row in enumerate(rows[:2]):
            x = torch.tensor([row["chosen_input_ids"]])  # unpadded, alone
            logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
            want = sum(
                logp[t - 1, label].item()
                for t, label in enumerate(row["chosen_labels"])
                if t > 0 and label != IGNORE_INDEX
            )
            n = sum(label != IGNORE_INDEX for label in row["chosen_labels"][1:])
            assert got[b].item() == pytest.approx(want, rel=1e-5)
            average = pref.sequence_logprobs(model, ids, mask, labels, average=True)
            assert average[b].item() == pytest.approx(want / n, rel=1e-5)
    got.sum().backward()  # gradients flow to the model
    assert model.model.embed_tokens.weight.grad is not None
    with pytest.raises(ValueError, match="must match"):
        pref.sequence_logprobs(model, ids, mask[:, 1:], labels)
    with pytest.raises(ValueError, match="2-D"):
        pref.sequence_logprobs(model, ids[0], mask[0], labels[0])
    with pytest.raises(ValueError, match=r"rows \[1\] have no completion token"):
        empty = labels.clone()
        empty[1] = IGNORE_INDEX
        pref.sequence_logprobs(model, ids, mask, empty)


def test_dpo_loss_equals_the_closed_form_and_logsigmoid():
    pc = torch.tensor([-3.0, -5.0, -2.0], dtype=torch.float64)
    pr = torch.tensor([-4.0, -4.0, -2.5], dtype=torch.float64)
    rc = torch.tensor([-3.5, -4.0, -2.0], dtype=torch.float64)
    rr = torch.tensor([-3.5, -4.5, -2.0], dtype=torch.float64)
    beta = 0.5
    out = pref.dpo_loss(pc, pr, rc, rr, beta)
    margins = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc, pr, rc, rr)]
    closed = sum(-math.log(1 / (1 + math.exp(-float(m)))) for m in margins) / 3
    assert out["loss"].item() == pytest.approx(closed, rel=1e-12)
    reference = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    torch.testing.assert_close(out["loss"], reference)
    torch.testing.assert_close(out["chosen_rewards"], beta * (pc - rc))
    torch.testing.assert_close(out["rejected_rewards"], beta * (pr - rr))
    torch.testing.assert_close(out["margins"], torch.tensor(margins).double())
    # margins: 0.5*(0.5+0.5)=0.5, 0.5*(-1-0.5)=-0.75, 0.5*(0+0.5)=0.25
    assert out["accuracy"] == pytest.approx(2 / 3)
    # the gradient pushes chosen up and rejected down
    pc32 = pc.float().requires_grad_()
    pref.dpo_loss(pc32, pr.float(), rc.float(), rr.float(), beta)["loss"].backward()
    assert (pc32.grad < 0).all()


def test_dpo_loss_validates_its_input():
    x = torch.zeros(3)
    for beta in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            pref.dpo_loss(x, x, x, x, beta)
    with pytest.raises(ValueError, match="reference_rejected of shape \\(2,\\)"):
        pref.dpo_loss(x, x, x, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="1-D tensors"):
        pref.dpo_loss(x[None], x[None], x[None], x[None], 0.1)
    with pytest.raises(ValueError, match="1-D tensors"):
        pref.dpo_loss(x[:0], x[:0], x[:0], x[:0], 0.1)


def test_reference_equal_to_policy_gives_log_2_and_zero_rewards(tokenizer, rows):
    policy = tiny_model(tokenizer)
    reference = copy.deepcopy(policy)
    batch = pref.PreferenceCollator(tokenizer.pad_token_id)(rows)
    out = pref.dpo_loss(
        *pref.pair_logprobs(policy, batch), *pref.pair_logprobs(reference, batch), 0.1
    )
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out["chosen_rewards"].abs().max() < 1e-6
    assert out["rejected_rewards"].abs().max() < 1e-6
    assert out["accuracy"] == 0.0  # ties are not wins
    with pytest.raises(KeyError, match="PreferenceCollator"):
        pref.pair_logprobs(policy, {"input_ids": batch["chosen_input_ids"]})


def trl_and_ours(tokenizer, pairs, tmp_path, **config):
    """TRL's ``DPOTrainer`` loss on a batch of ``pairs`` (``config`` goes to
    ``DPOConfig``; beta 0.1) and our sequence log-probabilities on TRL's own tokens
    (labels = input_ids on TRL's ``completion_mask``, -100 elsewhere), from the same
    perturbed policy and reference: (trainer, examples, trl loss, policy logps,
    reference logps, labels)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    reference = tiny_model(tokenizer)
    policy = perturbed(reference)
    ours_policy, ours_reference = copy.deepcopy(policy), copy.deepcopy(reference)
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        max_length=64,
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        per_device_train_batch_size=len(pairs),
        **config,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(pref.trl_rows(pairs)),
        processing_class=tokenizer,
    )
    examples = [trainer.train_dataset[i] for i in range(len(pairs))]
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        labels = batch["input_ids"].masked_fill(
            batch["completion_mask"] == 0, IGNORE_INDEX
        )
        inputs = (batch["input_ids"], batch["attention_mask"], labels)
        policy_logps = pref.sequence_logprobs(ours_policy, *inputs).chunk(2)
        reference_logps = pref.sequence_logprobs(ours_reference, *inputs).chunk(2)
    return trainer, examples, trl_loss, policy_logps, reference_logps, labels


def test_dpo_loss_matches_trl_on_trls_own_tokens(tokenizer, pairs, rows, tmp_path):
    """Our loss equals TRL 1.16's ``DPOTrainer`` loss (sigmoid loss, beta 0.1) on the
    same tokens, within 1e-5 relative.

    TRL tokenizes a conversational pair itself: the completion is what follows
    ``apply_chat_template(prompt, add_generation_prompt=True)`` in the rendered
    prompt + reply, i.e. the reply, ``<|im_end|>`` *and the newline the template
    writes after it*; our SFT mask (``tokenize_for_sft``) stops at ``<|im_end|>``. So
    the check feeds our functions TRL's own collated batch (labels = input_ids on
    TRL's ``completion_mask``, -100 elsewhere), and separately asserts that the only
    difference is that one trailing token per side. The policy is perturbed so the
    loss is not log 2 (policy = reference would hide a sign error)."""
    trainer, examples, trl_loss, policy_logps, reference_logps, _ = trl_and_ours(
        tokenizer, pairs, tmp_path
    )
    assert trainer.loss_types == ["sigmoid"]
    ours = pref.dpo_loss(*policy_logps, *reference_logps, beta=0.1)
    assert abs(trl_loss.item() - math.log(2)) > 1e-3
    torch.testing.assert_close(ours["loss"], trl_loss, rtol=1e-5, atol=0)
    # the implicit rewards TRL logs are ours too
    logged = trainer._metrics["train"]
    for key, value in (
        ("rewards/chosen", ours["chosen_rewards"].mean()),
        ("rewards/rejected", ours["rejected_rewards"].mean()),
        ("rewards/margins", ours["margins"].mean()),
    ):
        assert logged[key][-1] == pytest.approx(value.item(), rel=1e-5, abs=1e-7)
    assert logged["rewards/accuracies"][-1] == ours["accuracy"]

    # the tokenization difference: TRL's completion = our trained tokens + "\n"
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for example, row in zip(examples, rows):
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
            start = labels.index(next(x for x in labels if x != IGNORE_INDEX))
            assert example["prompt_ids"] == ids[:start]
            assert example[f"{side}_ids"] == trained + newline


def test_rpo_adds_the_sft_loss_and_matches_trl(tokenizer, pairs, tmp_path):
    """``sft_weight`` adds the mean NLL per chosen token (RPO), as TRL's
    ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, w]`` does."""
    pc = torch.tensor([-3.0, -6.0], dtype=torch.float64)
    pr, ref = torch.tensor([-4.0, -4.0]).double(), torch.tensor([-3.5, -5.0]).double()
    tokens = torch.tensor([2, 4])
    plain = pref.dpo_loss(pc, pr, ref, ref, 0.5)
    rpo = pref.dpo_loss(pc, pr, ref, ref, 0.5, sft_weight=2.0, chosen_tokens=tokens)
    assert rpo["sft_loss"].item() == pytest.approx(9.0 / 6)  # 9 nats over 6 tokens
    assert rpo["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * 1.5)
    assert plain["sft_loss"].item() == 0.0
    with pytest.raises(ValueError, match="needs chosen_tokens"):
        pref.dpo_loss(pc, pr, ref, ref, 0.5, sft_weight=1.0)
    with pytest.raises(ValueError, match="sft_weight must be"):
        pref.dpo_loss(pc, pr, ref, ref, 0.5, sft_weight=-1.0, chosen_tokens=tokens)

    _, _, trl_loss, policy_logps, reference_logps, labels = trl_and_ours(
        tokenizer, pairs, tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1, 0.5]
    )
    chosen_tokens = pref.completion_tokens(labels).chunk(2)[0]
    ours = pref.dpo_loss(
        *policy_logps,
        *reference_logps,
        beta=0.1,
        sft_weight=0.5,
        chosen_tokens=chosen_tokens,
    )
    assert ours["sft_loss"] > 1.0  # a random model: the SFT term is not negligible
    torch.testing.assert_close(ours["loss"], trl_loss, rtol=1e-5, atol=0)


# --- data ----------------------------------------------------------------------------


def test_preference_pairs_follow_the_stated_rule():
    loop = "i like it i like it i like it i like it"
    records = [
        record(0, "the dress is lovely", "positive"),  # wrong -> pair
        record(1, "the fit is great", "positive"),  # unparsed -> pair
        record(2, "the fabric is poor", "negative"),  # right -> no pair
        record(3, "hi", None, task="chat", reply="Hello! How can I help?"),
        record(4, "hey", None, task="chat", reply="Hey there."),  # fine -> none
        record(5, "it runs small", "negative"),  # no reply -> none
        record(6, "poor fit", "negative"),  # empty reply -> none
        record(7, "hello", None, task="chat", reply="Hi."),  # too short -> none
    ]
    replies = [
        "negative",
        "positive or negative",
        "Negative.",
        loop,
        "Hello, nice to meet you.",
        None,
        "  ",
        "hi hi",
    ]
    pairs = pref.preference_pairs(records, replies, parse_answer, max_repeat=0.3)
    assert [(p["id"], p["reason"]) for p in pairs] == [
        ("r0", "wrong"),
        ("r1", "unparsed"),
        ("r3", "degenerate"),
    ]
    first = pairs[0]
    assert first["chosen"] == "positive" and first["rejected"] == "negative"
    assert first["prompt"] == records[0]["messages"][:-1]
    assert (first["task"], first["split"], first["source_id"]) == (
        "sentiment",
        "train",
        "src:0",
    )
    assert pairs[2]["chosen"] == "Hello! How can I help?"
    assert pref.validate_pairs(pairs) == 3
    # a stricter threshold finds no degenerate chat reply
    strict = pref.preference_pairs(records, replies, parse_answer, max_repeat=0.9)
    assert [p["id"] for p in strict] == ["r0", "r1"]
    with pytest.raises(ValueError, match="8 records but 7 replies"):
        pref.preference_pairs(records, replies[:-1], parse_answer)
    no_split = [{k: v for k, v in records[0].items() if k != "split"}]
    with pytest.raises(ValueError, match="pass split="):
        pref.preference_pairs(no_split, ["negative"], parse_answer)
    given = pref.preference_pairs(no_split, ["negative"], parse_answer, split="test")
    assert given[0]["split"] == "test"
    with pytest.raises(ValueError, match="max_repeat"):
        pref.preference_pairs(records, replies, parse_answer, max_repeat=0)


def test_generic_replies_become_pairs_and_are_measured():
    chats = [
        record(i, f"question {i}", None, task="chat", reply=f"A real answer {i}.")
        for i in range(6)
    ]
    replies = ["I'm not sure.", "i'm  NOT sure.", "I'm not sure.", "Fine.", "Fine."]
    replies.append("Paris is the capital.")
    assert pref.generic_replies(replies) == {"i'm not sure."}
    assert pref.generic_replies(replies, min_prompts=2) == {"i'm not sure.", "fine."}
    pairs = pref.preference_pairs(chats, replies, parse_answer)
    assert [(p["id"], p["reason"]) for p in pairs] == [
        ("r0", "generic"),
        ("r1", "generic"),
        ("r2", "generic"),
    ]
    assert pairs[1]["rejected"] == "i'm  NOT sure." and pairs[1]["chosen"] == (
        "A real answer 1."
    )
    # a closed task's replies never count towards the open tasks' generic ones
    mixed = [record(9, "the fit is great", "positive"), *chats[3:]]
    pairs = pref.preference_pairs(mixed, ["Fine.", *replies[3:]], parse_answer)
    assert [p["reason"] for p in pairs] == ["unparsed"]
    assert pref.generic_share(replies) == pytest.approx(3 / 6)
    assert pref.generic_flags(replies) == [True] * 3 + [False] * 3
    assert pref.generic_share([*replies, None], min_prompts=2) == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="no replies"):
        pref.generic_share([])
    with pytest.raises(ValueError, match="min_prompts"):
        pref.generic_replies(replies, min_prompts=0)


def test_validate_pairs_catches_each_bad_case():
    good = [pair(0), pair(1), pair(2, split="test")]
    assert pref.validate_pairs(good) == 3
    cases = {
        "empty prompt": {**pair(0), "prompt": []},
        "empty rejected reply": {**pair(0), "rejected": " "},
        "empty chosen reply": {**pair(0), "chosen": ""},
        "chosen == rejected": pair(0, rejected="positive "),
        "must end with a user message": {
            **pair(0),
            "prompt": [*pair(0)["prompt"], {"role": "assistant", "content": "x"}],
        },
        "is not one of": pair(0, split="train+test"),
        "missing fields": {k: v for k, v in pair(0).items() if k != "source_id"},
    }
    for message, bad in cases.items():
        with pytest.raises(pref.PreferenceValidationError, match=message):
            pref.validate_pairs([pair(5), bad])
    with pytest.raises(pref.PreferenceValidationError, match="mixed splits"):
        pref.validate_pairs([pair(0), pair(1, split="validation")], split="train")
    with pytest.raises(pref.PreferenceValidationError, match="leakage: source_id"):
        pref.validate_pairs([pair(0), pair(1, split="test", source="src:0")])
    with pytest.raises(pref.PreferenceValidationError, match="duplicate id") as info:
        pref.validate_pairs([pair(0), pair(0, source="src:9")])
    assert info.value.problems == [(1, "duplicate id 'r0' (pair 0)")]
    with pytest.raises(TypeError):
        pref.validate_pairs(pair(0))


def test_tokenize_pair_uses_the_sft_mask(tokenizer, pairs):
    p = pairs[0]
    row = pref.tokenize_pair(tokenizer, p["prompt"], p["chosen"], p["rejected"], 64)
    for side in ("chosen", "rejected"):
        messages = [*p["prompt"], {"role": "assistant", "content": p[side]}]
        sft = tokenize_for_sft(tokenizer, messages, 64)
        assert row[f"{side}_input_ids"] == sft["input_ids"]
        assert row[f"{side}_labels"] == sft["labels"]
        trained = [t for t in row[f"{side}_labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(trained) == p[side] + "<|im_end|>"
    labels = row["chosen_labels"]
    prompt_tokens = labels.index(next(x for x in labels if x != IGNORE_INDEX))
    with pytest.raises(ValueError, match="no token left within max_length"):
        pref.tokenize_pair(
            tokenizer, p["prompt"], p["chosen"], p["rejected"], prompt_tokens
        )
    rows, dropped = pref.tokenize_pairs(tokenizer, pairs, prompt_tokens)
    assert dropped >= 1 and len(rows) + dropped == len(pairs)
    assert pref.tokenize_pairs(tokenizer, pairs, 3) == ([], len(pairs))


def test_collator_pads_both_sides_to_one_length(tokenizer):
    rows = [
        {
            "chosen_input_ids": [5, 6, 7],
            "chosen_attention_mask": [1, 1, 1],
            "chosen_labels": [-100, 6, 7],
            "rejected_input_ids": [5, 8],
            "rejected_attention_mask": [1, 1],
            "rejected_labels": [-100, 8],
        },
        {
            "chosen_input_ids": [5],
            "chosen_attention_mask": [1],
            "chosen_labels": [-100],
            "rejected_input_ids": [5, 9, 9, 9],
            "rejected_attention_mask": [1, 1, 1, 1],
            "rejected_labels": [-100, 9, 9, 9],
        },
    ]
    pad = tokenizer.pad_token_id
    batch = pref.PreferenceCollator(pad)(rows)
    assert batch["chosen_input_ids"].tolist() == [[5, 6, 7, pad], [5, pad, pad, pad]]
    assert batch["rejected_labels"].tolist() == [[-100, 8, -100, -100], [-100, 9, 9, 9]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert {v.shape for v in batch.values()} == {torch.Size([2, 4])}
    with pytest.raises(ValueError, match="empty batch"):
        pref.PreferenceCollator(pad)([])
    with pytest.raises(ValueError, match="pad token"):
        pref.PreferenceCollator(None)
    batches = pref.preference_batches(rows * 2 + rows[:1], 2, pad)
    assert [len(b["chosen_input_ids"]) for b in batches] == [2, 2, 1]


# --- measures ------------------------------------------------------------------------


def test_measures_against_hand_computations(tokenizer, rows):
    reference = tiny_model(tokenizer)
    policy = perturbed(reference)
    batches = pref.preference_batches(rows, 3, tokenizer.pad_token_id)
    assert pref.kl_to_reference(reference, copy.deepcopy(reference), batches) < 1e-6
    # KL by hand with PyTorch's kl_div, position by position
    terms = []
    with torch.no_grad():
        for row in rows:
            for side in ("chosen", "rejected"):
                x = torch.tensor([row[f"{side}_input_ids"]])
                logp = torch.log_softmax(policy(x).logits[0, :-1], -1)
                logq = torch.log_softmax(reference(x).logits[0, :-1], -1)
                kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
                keep = torch.tensor(row[f"{side}_labels"][1:]) != IGNORE_INDEX
                terms += kl[keep].tolist()
    want = sum(terms) / len(terms)
    got = pref.kl_to_reference(policy, reference, batches)
    assert got == pytest.approx(want, rel=1e-4) and got > 0
    # implicit reward accuracy and win rate from sequence log-probabilities
    with torch.no_grad():
        batch = pref.PreferenceCollator(tokenizer.pad_token_id)(rows)
        pc, pr = pref.pair_logprobs(policy, batch)
        rc, rr = pref.pair_logprobs(reference, batch)
        nc, nr = pref.pair_logprobs(policy, batch, average=True)
    accuracy = pref.implicit_reward_accuracy(policy, reference, batches)
    assert accuracy == ((pc - rc) > (pr - rr)).sum().item() / len(rows)
    assert pref.implicit_reward_accuracy(reference, reference, batches) == 0.0
    assert pref.preference_win_rate(policy, batches) == (pc > pr).sum() / len(rows)
    assert pref.preference_wins(policy, batches).tolist() == (pc > pr).tolist()
    normalized = pref.preference_win_rate(policy, batches[0], normalize=True)
    assert normalized == (nc[:3] > nr[:3]).sum().item() / 3
    with pytest.raises(ValueError, match="no batches"):
        pref.preference_win_rate(policy, [])


# --- training ------------------------------------------------------------------------


def test_lr_factor_and_pair_order():
    factors = [pref.lr_factor(s, 10, 0.2, "cosine") for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] < 0.05
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert pref.lr_factor(9, 10, 2, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        pref.lr_factor(0, 10, 0.1, "linear")
    order = list(pref.pair_order(4, 2, 4, seed=0))
    assert order == list(pref.pair_order(4, 2, 4, seed=0))
    assert sorted(order[0] + order[1]) == [0, 1, 2, 3]  # one pass covers all
    assert sorted(order[2] + order[3]) == [0, 1, 2, 3]


def test_train_dpo_learns_the_preferences(tokenizer, rows):
    reference = tiny_model(tokenizer)
    policy = copy.deepcopy(reference)
    before = [p.clone() for p in reference.parameters()]
    run = dict(beta=0.1, steps=30, learning_rate=1e-2, batch_size=4, seed=0)
    one_step = dict(run, steps=1, learning_rate=1e-3)
    history = pref.train_dpo(policy, reference, rows, **run)
    assert set(history) == set(pref.HISTORY_KEYS)
    assert len(history["loss"]) == 30 and history["step"][-1] == 29
    assert history["sft_loss"] == [0.0] * 30
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert history["accuracy"][-1] == 1.0 and history["margins"][-1] > 0
    assert history["loss"][-1] < history["loss"][0]
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters()))
    batches = pref.preference_batches(rows, 4, tokenizer.pad_token_id)
    assert pref.implicit_reward_accuracy(policy, reference, batches) == 1.0
    assert pref.kl_to_reference(policy, reference, batches) > 0
    # the reference's log-probabilities computed once give the same run
    precomputed = pref.precompute_reference(
        reference, rows, batch_size=3, pad_token_id=tokenizer.pad_token_id
    )
    assert set(pref.REFERENCE_KEYS) <= set(precomputed[0])
    batch = pref.PreferenceCollator(tokenizer.pad_token_id)(precomputed)
    torch.testing.assert_close(
        torch.stack([batch[k] for k in pref.REFERENCE_KEYS]),
        torch.stack(pref.pair_logprobs(reference, batch)).detach(),
    )
    again = copy.deepcopy(reference)
    fast = pref.train_dpo(again, None, precomputed, **run)
    assert fast["loss"] == pytest.approx(history["loss"], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="no reference log-probabilities"):
        pref.train_dpo(again, None, rows, **one_step)
    with pytest.raises(ValueError, match="larger than the 4 pairs"):
        pref.train_dpo(policy, reference, rows, **dict(one_step, batch_size=5))
    with pytest.raises(ValueError, match="beta"):
        pref.train_dpo(policy, reference, rows, **dict(one_step, beta=0))
