"""Tests for book_utils.instruction_tuning: tiny tokenizer, tiny random Llama, synthetic
chat records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book_utils import instruction_tuning as it
from book_utils.tokenization import train_bpe_tokenizer

TEXT = (
    "the dress is lovely and the fit is great. the fabric is poor and it runs small. "
    * 20
)


def chat_tokenize(tokenizer, messages, max_length):
    """Stand-in for sft_data.tokenize_for_sft (same contract): labels only on assistant
    tokens."""
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(enc["input_ids"])[:max_length]
    mask = list(enc["assistant_masks"])[:max_length]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [t if m else -100 for t, m in zip(ids, mask)],
    }


def record(i, text, answer):
    return {
        "id": f"r{i}",
        "task": "sentiment",
        "source": "reviews",
        "source_id": f"reviews:{i}",
        "messages": [
            {"role": "user", "content": f"Review: {text}\nSentiment?"},
            {"role": "assistant", "content": answer},
        ],
        "answer": answer,
    }


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def records():
    good = ["the dress is lovely", "the fit is great", "lovely fabric"]
    bad = ["the fabric is poor", "it runs small", "poor fit"]
    rows = [record(i, t, "positive") for i, t in enumerate(good)]
    rows += [record(10 + i, t, "negative") for i, t in enumerate(bad)]
    return rows


def tiny_model(tokenizer, context=64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def sft_arguments(output_dir, **settings):
    """``it.training_arguments`` on the CPU with chapter 4c's SFT defaults
    (the shared builder's cosine schedule and 5 % warmup, and
    ``it.SFT_ARGUMENTS``' log every 10 steps)."""
    return it.training_arguments(
        output_dir, seed=0, device="cpu", **{**it.SFT_ARGUMENTS, **settings}
    )


def test_tokenize_records_masks_and_drops(tokenizer, records):
    data, dropped = it.tokenize_records(
        records, tokenizer, 64, tokenize_fn=chat_tokenize
    )
    assert dropped == 0 and len(data) == len(records)
    row = data[0]
    ids, labels = row["input_ids"], row["labels"]
    trained = [t for t, lab in zip(ids, labels) if lab != -100]
    assert tokenizer.decode(trained) == "positive<|im_end|>"
    unmasked, _ = it.tokenize_records(
        records, tokenizer, 64, mask_prompt=False, tokenize_fn=chat_tokenize
    )
    assert unmasked[0]["labels"] == unmasked[0]["input_ids"]
    longest = max(len(ids) for ids in data["input_ids"])
    short, dropped = it.tokenize_records(
        records, tokenizer, longest - 1, tokenize_fn=chat_tokenize
    )
    assert dropped == len(records) - len(short) and 0 < dropped < len(records)
    with pytest.raises(ValueError, match="longer than max_length"):
        it.tokenize_records(records, tokenizer, 3, tokenize_fn=chat_tokenize)
    with pytest.raises(ValueError, match="record 1 has no 'messages'"):
        it.tokenize_records(
            [records[0], {"id": "x"}], tokenizer, 64, tokenize_fn=chat_tokenize
        )


def test_collator_pads_labels_with_ignore_index(tokenizer):
    collate = it.SFTCollator(tokenizer.pad_token_id)
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [
        [5, 6, 7],
        [8, tokenizer.pad_token_id, tokenizer.pad_token_id],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    from transformers import DataCollatorForSeq2Seq

    reference = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    for key in ("input_ids", "labels"):
        assert torch.equal(batch[key], reference[key])
    with pytest.raises(ValueError, match="pad token"):
        it.SFTCollator(None)


def test_masked_nll_matches_cross_entropy_and_model_loss(tokenizer, records):
    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    batch = it.SFTCollator(tokenizer.pad_token_id)([data[i] for i in range(4)])
    model = tiny_model(tokenizer).eval()
    out = model(**batch)
    ours = it.masked_nll(out.logits, batch["labels"])
    reference = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.size(-1)),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours, out.loss)
    with pytest.raises(ValueError, match="every label is -100"):
        it.masked_nll(out.logits, torch.full_like(batch["labels"], -100))


def test_replay_mix_fraction(tokenizer, records):
    from datasets import Dataset

    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    blocks = Dataset.from_dict({"input_ids": [list(range(10, 30))] * 3})
    mixed = it.replay_mix(data, blocks, 0.5, max_length=16)
    assert len(mixed) == 2 * len(data)
    replayed = [
        r for r in mixed if r["labels"] == r["input_ids"] and len(r["input_ids"]) == 16
    ]
    assert len(replayed) == len(data)
    assert it.replay_mix(data, blocks, 0.0) is data
    with pytest.raises(ValueError, match="fraction"):
        it.replay_mix(data, blocks, 1.0)


def test_train_sft_learns_and_generation_is_scored(tokenizer, records, tmp_path):
    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    model = tiny_model(tokenizer)
    args = sft_arguments(
        tmp_path,
        max_steps=60,
        batch_size=6,
        learning_rate=1e-2,
        logging_steps=20,
        disable_tqdm=True,
    )
    run = it.train_sft(model, tokenizer, data, data, args=args)
    assert run["steps"] == 60 and run["tokens"] > 0 and run["tokens_per_second"] > 0
    assert run["val_loss"] < 0.5, run["val_loss"]  # memorised the six answers
    assert run["trainable"] == run["total"] and run["memory"]["activations"] > 0
    frame = it.evaluate_closed(
        model, tokenizer, records, parse=lambda task, text: text.strip() or None
    )
    assert frame["correct"].all(), frame
    table = it.score_table(frame, n_boot=50)
    assert table.loc["all", "accuracy"] == 1.0 and table.loc["all", "n"] == len(records)


def test_generate_replies_batched_equals_single_and_skips_long(tokenizer, records):
    model = tiny_model(tokenizer, seed=1).eval()
    prompts = [it.prompt_of(r["messages"]) for r in records]
    batched = it.generate_replies(
        model, tokenizer, prompts, max_new_tokens=5, batch_size=6
    )
    single = [
        it.generate_replies(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts
    ]
    assert batched == single
    long = [{"role": "user", "content": "the dress " * 80}]
    assert it.generate_replies(model, tokenizer, [long], max_new_tokens=5) == [None]
    # sampled replies: seeded, so reproducible; they differ from greedy; the
    # caller's RNG stream is left where it was
    state = torch.random.get_rng_state()
    sample = dict(max_new_tokens=5, temperature=1.5)
    first = it.generate_replies(model, tokenizer, prompts * 4, seed=3, **sample)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert it.generate_replies(model, tokenizer, prompts * 4, seed=3, **sample) == first
    assert first != batched * 4
    with pytest.raises(ValueError, match="temperature must be > 0"):
        it.generate_replies(model, tokenizer, prompts, temperature=0)
    too_long = dict(records[0], messages=long + records[0]["messages"][-1:])
    frame = it.evaluate_closed(
        model, tokenizer, [records[0], too_long], max_new_tokens=5
    )
    assert (
        frame["fits"].tolist() == [True, False]
        and not frame.loc[1, "format_ok"]
        and not frame.loc[1, "correct"]
    )


def test_lora_trains_few_parameters_and_memory_accounting(tokenizer, records):
    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    batch = it.SFTCollator(tokenizer.pad_token_id)([data[i] for i in range(4)])
    model = tiny_model(tokenizer)
    full = it.training_memory(model, batch)
    lora = it.add_lora(model, r=4, alpha=8)
    trainable, total = it.count_trainable(lora)
    assert 0 < trainable < total / 5
    small = it.training_memory(lora, batch)
    assert (
        small["gradients"] < full["gradients"]
        and small["optimizer"] == 2 * small["gradients"]
    )
    before = model.get_output_embeddings().weight.clone()
    merged = lora.merge_and_unload()  # B = 0 at init: merging changes nothing
    torch.testing.assert_close(merged.get_output_embeddings().weight, before)


def test_gradient_checkpointing_saves_activation_memory(tokenizer, records):
    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    batch = it.SFTCollator(tokenizer.pad_token_id)([data[i] for i in range(6)])
    model = tiny_model(tokenizer)
    plain = it.training_memory(model, batch)["activations"]
    it.enable_checkpointing(model)
    assert it.training_memory(model, batch)["activations"] < plain


def test_accuracy_ci_and_paired_difference():
    after = np.array([1] * 80 + [0] * 20)
    before = np.array([1] * 30 + [0] * 70)
    ci = it.accuracy_ci(after, n_boot=200)
    assert ci["estimate"] == pytest.approx(0.8) and ci["low"] < 0.8 < ci["high"]
    diff = it.accuracy_ci(after, before, n_boot=200)
    assert diff["estimate"] == pytest.approx(0.5) and diff["low"] > 0


def test_mixed_precision_flags_and_training_time():
    assert it.mixed_precision_flags("cpu") == {"bf16": False, "fp16": False}
    assert it.training_seconds(1e8, 1e6, 1e12, mfu=0.5) == pytest.approx(
        6 * 1e8 * 1e6 / 5e11
    )
    with pytest.raises(ValueError):
        it.training_seconds(1e8, 1e6, 1e12, mfu=0)


def test_closed_records_and_prompt_of(records):
    rows = it.closed_records(
        records + [{**records[0], "id": "open", "answer": None}], limit_per_task=4
    )
    assert len(rows) == 4 and all(r["answer"] for r in rows)
    assert it.prompt_of(records[0]["messages"])[-1]["role"] == "user"
    with pytest.raises(ValueError, match="assistant turn"):
        it.prompt_of(records[0]["messages"][:1])


def test_trl_prompt_completion_matches_our_labels_and_trains(
    tokenizer, records, tmp_path
):
    ours, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    config = it.trl_config(
        tmp_path,
        seed=0,
        device="cpu",
        max_steps=2,
        batch_size=2,
        learning_rate=1e-3,
        max_length=64,
    )
    assert (
        config.gradient_checkpointing is False
        and config.bf16 is False
        and config.completion_only_loss
    )
    trainer = it.trl_trainer(
        tiny_model(tokenizer), tokenizer, it.prompt_completion(records), args=config
    )
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for mine, theirs in zip(ours, trainer.train_dataset):
        assert (
            theirs["input_ids"] == mine["input_ids"]
            and mine["input_ids"][-1:] == newline
        )
        # TRL also trains the template's newline after <|im_end|>; everything else is
        # labelled the same
        assert (
            theirs["labels"] == mine["labels"][:-1] + newline
            and mine["labels"][-1] == -100
        )
    run = it.run_trainer(trainer)
    assert run["steps"] == 2 and run["tokens"] > 0 and run["val_loss"] is None


def test_format_duration():
    assert it.format_duration(42) == "42.0 s"
    assert it.format_duration(90) == "1.5 min"
    assert it.format_duration(2 * 86400) == "2.0 days"


def test_saved_sft_model_generation_stops_at_end_of_turn(
    tokenizer, tmp_path, monkeypatch
):
    from transformers import GenerationConfig

    monkeypatch.setenv("BOOK_CACHE", str(tmp_path / "cache"))
    folder = it.save_sft_model(
        "ci", tiny_model(tokenizer), tokenizer, {"recipe": "test"}
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [
        im_end,
        tokenizer.eos_token_id,
    ]
    assert (folder / "sft_info.json").exists()


def test_mixed_precision_wrapper_is_removed_after_training(
    tokenizer, records, tmp_path
):
    """With bf16, accelerate wraps ``model.forward`` in autocast; after training the
    model must compute in float32 again, exactly like the same weights reloaded (on a
    GPU it silently kept bf16 logits)."""
    import copy

    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    model = tiny_model(tokenizer)
    args = sft_arguments(
        tmp_path,
        max_steps=2,
        batch_size=3,
        learning_rate=1e-3,
        bf16=True,
        disable_tqdm=True,
    )
    it.train_sft(model, tokenizer, data, args=args)
    assert "_original_forward" not in model.__dict__
    fresh = tiny_model(tokenizer)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    batch = it.SFTCollator(tokenizer.pad_token_id)([data[0], data[1]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=batch["input_ids"]).logits,
            fresh.eval()(input_ids=batch["input_ids"]).logits,
        )


def test_per_example_nll_weights_each_conversation_once():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor(
        [[-100, 1, 2, 3, 4], [-100, -100, -100, 5, -100]]
    )  # 4 targets, then 1 target
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, 7),
        labels[:, 1:].reshape(-1),
        reduction="none",
        ignore_index=-100,
    ).view(2, 4)
    expected = (nll[0].sum() / 4 + nll[1].sum() / 1) / 2
    torch.testing.assert_close(it.per_example_nll(logits, labels), expected)
    assert not torch.isclose(
        it.masked_nll(logits, labels), expected
    )  # the per-token mean weights row 0 x4
    empty = labels.clone()
    empty[1] = -100  # a conversation without labels is skipped, not counted as zero
    torch.testing.assert_close(it.per_example_nll(logits, empty), nll[0].sum() / 4)
    with pytest.raises(ValueError, match="-100"):
        it.per_example_nll(logits, torch.full_like(labels, -100))


def test_per_example_trainer_reports_the_same_loss_in_training_and_evaluation(
    tokenizer, records, tmp_path
):
    data, _ = it.tokenize_records(records, tokenizer, 64, tokenize_fn=chat_tokenize)
    model = tiny_model(tokenizer)
    args = sft_arguments(
        tmp_path,
        max_steps=2,
        batch_size=3,
        learning_rate=1e-3,
        group_by_length=True,
        per_device_eval_batch_size=4,
    )
    run = it.train_sft(model, tokenizer, data, data, args=args, per_example=True)
    batch = it.SFTCollator(tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    # evaluation batches of 4 and 2 conversations, weighted by size: the mean over all
    # six conversations
    assert run["val_loss"] == pytest.approx(
        it.per_example_nll(logits, batch["labels"]).item(), rel=1e-5
    )
    assert args.train_sampling_strategy == "group_by_length"


def test_warmup_steps_is_a_share_or_a_count(tmp_path):
    assert (
        it.training_arguments(
            tmp_path,
            seed=0,
            device="cpu",
            max_steps=200,
            batch_size=2,
            learning_rate=1e-3,
            warmup_steps=0.05,
        ).get_warmup_steps(200)
        == 10
    )
    assert (
        it.training_arguments(
            tmp_path,
            seed=0,
            device="cpu",
            max_steps=200,
            batch_size=2,
            learning_rate=1e-3,
            warmup_steps=30,
        ).get_warmup_steps(200)
        == 30
    )
    with pytest.raises(ValueError, match="warmup_steps"):
        it.training_arguments(
            tmp_path,
            seed=0,
            device="cpu",
            max_steps=200,
            batch_size=2,
            learning_rate=1e-3,
            warmup_steps=1.5,
        )


def play_record(options, answer="Macbeth"):
    prompt = (
        "Which Shakespeare play is this passage from?\n\n"
        f"Othello, thou art\n\nOptions: {', '.join(options)}"
    )
    return {
        "id": "p",
        "task": "play",
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
        "answer": answer,
    }


def test_options_and_random_valid_accuracy(records):
    four = ["Macbeth", "Hamlet", "The Tempest", "A Midsummer Night's Dream"]
    assert it.options_of(play_record(four)) == tuple(
        four
    )  # "Othello" in the passage is not an option
    assert it.options_of(records[0]) == ("positive", "negative")
    np.testing.assert_allclose(
        it.random_valid_accuracy([records[0], play_record(four)]), [0.5, 0.25]
    )
    with pytest.raises(ValueError, match="no list of plays"):
        it.options_of(
            {
                **play_record(four),
                "messages": [
                    {"role": "user", "content": "Which play?"},
                    {"role": "assistant", "content": "Macbeth"},
                ],
            }
        )
    with pytest.raises(ValueError, match="not closed"):
        it.options_of({**records[0], "task": "chat"})


def test_accuracy_ci_against_a_fractional_baseline():
    correct = np.array([1] * 70 + [0] * 30)
    chance = np.full(100, 0.5)
    gain = it.accuracy_ci(correct, chance, n_boot=200)
    assert (
        gain["estimate"] == pytest.approx(0.2) and 0 < gain["low"] < 0.2 < gain["high"]
    )
    with pytest.raises(ValueError, match="same items"):
        it.accuracy_ci(correct, chance[:10])


def test_mix_tasks_repeats_a_task_and_the_mixture_table_counts_targets(
    tokenizer, records
):
    rows = records + [{**records[0], "id": "c", "task": "chat"}]
    data, _ = it.tokenize_records(rows, tokenizer, 64, tokenize_fn=chat_tokenize)
    mixed = it.mix_tasks(data, {"chat": 3}, seed=0)
    assert sorted(mixed["task"]).count("chat") == 3 and len(mixed) == len(data) + 2
    table = it.mixture_table(mixed)
    assert table.loc["chat", "records"] == 3 and table[
        "loss share, per example"
    ].sum() == pytest.approx(1)
    targets = sum(
        sum(label != -100 for label in labels[1:]) for labels in data["labels"][:1]
    )
    assert table.loc["sentiment", "labelled tokens"] >= targets > 0
    assert table["loss share, per token"].sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="no records of task"):
        it.mix_tasks(data, {"play": 2})
    with pytest.raises(ValueError, match="repeats"):
        it.mix_tasks(data, {"chat": 0})


def test_midtraining_documents_keep_the_sft_split_and_replay_plays(monkeypatch):
    from book_utils import assets
    from book_utils import sft_data as sd

    words = (
        "lovely dress fits well runs small fabric soft color bright would buy again"
    ).split()
    reviews = [
        {
            "source": "reviews",
            "source_id": f"reviews:{i}",
            "rating": 5,
            "recommended": True,
            "text": " ".join(words[(i + j) % len(words)] for j in range(9))
            + f" number {i}",
        }
        for i in range(60)
    ]
    reviews.append(
        {**reviews[0], "source_id": "reviews:copy"}
    )  # an exact duplicate: only one survives
    chats = [
        {
            "source": "chatterbot",
            "source_id": f"chatterbot:t:{i}",
            "turns": ["hi there", f"hello {i} friend"],
            "text": f"hi there\nhello {i} friend",
        }
        for i in range(20)
    ]
    monkeypatch.setattr("book_utils.sft_data.sources.review_items", lambda: reviews)
    monkeypatch.setattr("book_utils.sft_data.sources.chatterbot_items", lambda: chats)
    monkeypatch.setattr(
        "book_utils.sft_data.sources.chitchat_items", lambda limit=None: []
    )
    monkeypatch.setattr(
        assets,
        "shakespeare_splits",
        lambda: {"train": {"a": "x" * 500, "b": "y" * 500}},
    )
    docs = it.midtraining_documents("full", replay_share=0.25)
    for split in ("train", "validation"):
        for key in docs[split]:
            assert key.startswith("shakespeare:") or sd.split_of(key) == split, key
    texts = [t for d in docs.values() for t in d.values()]
    assert len(texts) == len(set(texts))
    replay = sum(
        len(t) for k, t in docs["train"].items() if k.startswith("shakespeare:")
    )
    assert replay / sum(map(len, docs["train"].values())) >= 0.25
    with pytest.raises(ValueError, match="replay_share"):
        it.midtraining_documents("full", replay_share=1.0)


def test_score_table_adds_the_gain_over_the_random_valid_baseline():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "task": ["a"] * 50 + ["b"] * 50,
            "fits": True,
            "format_ok": True,
            "correct": [True] * 45 + [False] * 5 + [True] * 25 + [False] * 25,
            "random_valid": [0.5] * 50 + [0.25] * 50,
        }
    )
    table = it.score_table(frame, n_boot=200)
    assert (
        table.loc["a", "gain"] == pytest.approx(0.4) and table.loc["a", "gain_low"] > 0
    )
    assert table.loc["all", "random_valid"] == pytest.approx(0.375)
    assert "gain" not in it.score_table(frame.drop(columns="random_valid"), n_boot=50)
