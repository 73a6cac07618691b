"""book_utils.classification: task definition, stratified splits, models and baselines
(small and fast)."""

import numpy as np
import pandas as pd
import pytest

from book_utils import classification as C


def reviews(n=60):
    rng = np.random.default_rng(0)
    ratings = rng.choice([1, 2, 3, 4, 5], n, p=[0.1, 0.1, 0.2, 0.3, 0.3])
    text = [
        f"review {i} {'great' if r >= 4 else 'awful'}" for i, r in enumerate(ratings)
    ]
    text[0], text[1] = None, "   "
    return pd.DataFrame({"Review Text": text, "Rating": ratings, "Title": ["t"] * n})


def test_frame_drops_and_counts_never_mislabels(capsys):
    df = reviews()
    out = C.review_sentiment_frame(df)
    message = capsys.readouterr().out
    assert "dropped 2 without text" in message
    assert set(out.label) <= {0, 1}
    assert (out.rating[out.label == 0] <= 2).all() and (
        out.rating[out.label == 1] >= 4
    ).all()
    assert len(out) == len(df) - 2 - int((df.Rating[2:] == 3).sum())
    with pytest.raises(ValueError, match="Review Text"):
        C.review_sentiment_frame(pd.DataFrame({"Rating": [1]}))


def test_stratified_splits_keep_balance_and_are_disjoint():
    frame = pd.DataFrame(
        {"text": [f"t{i}" for i in range(400)], "label": [0] * 80 + [1] * 320}
    )
    dd = C.stratified_splits(frame, validation=0.1, test=0.2, seed=0)
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [280, 40, 80]
    for split in dd.values():
        assert np.mean(split["label"]) == pytest.approx(0.8)
    assert not set(dd["train"]["text"]) & set(dd["test"]["text"])
    sub = C.stratified_subsample(dd["train"], 50)
    assert len(sub) == 50 and np.mean(sub["label"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="fractions"):
        C.stratified_splits(frame, validation=0.6, test=0.5)


def test_baselines_and_helpers():
    texts = ["good nice", "bad awful", "nice great", "awful terrible"] * 5
    labels = [1, 0, 1, 0] * 5
    model = C.tfidf_logreg(texts, labels)
    assert (model.predict(["great good", "terrible bad"]) == [1, 0]).all()
    assert (C.majority_class([1, 1, 0], 4) == 1).all()
    assert C.steps_for(50, batch_size=16, min_steps=40) == 10.0
    with pytest.raises(ValueError, match="min_steps"):
        C.steps_for(50, batch_size=16, min_steps=0)


def test_classification_arguments_keep_the_chapter_defaults(tmp_path):
    # the builder itself is tested in tests/test_training.py
    args = C.classification_arguments(tmp_path / "run", device="cpu")
    assert (args.learning_rate, args.num_train_epochs) == (5e-5, 3)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (
        16,
        64,
    )
    assert (args.weight_decay, args.get_warmup_steps(200)) == (0.01, 20)
    assert args.lr_scheduler_type == "linear" and args.logging_strategy == "no"
    assert args.train_sampling_strategy == "group_by_length"
    assert args.eval_strategy == args.save_strategy == "epoch"
    assert args.load_best_model_at_end and args.metric_for_best_model == "macro_f1"
    every = C.classification_arguments(
        tmp_path / "run", eval_every=10, best_metric="entity_f1", device="cpu"
    )
    assert every.eval_strategy == every.save_strategy == "steps"
    assert every.eval_steps == every.save_steps == 10
    assert every.metric_for_best_model == "entity_f1"
    with pytest.raises(ValueError, match="learning_rate"):
        C.classification_arguments(tmp_path / "run", learning_rate=3)


def test_minilm_classifier_loss_is_cross_entropy_and_scratch_differs():
    import torch
    import torch.nn.functional as F

    tokenizer, model = C.load_classifier()
    _, scratch = C.load_classifier(pretrained=False)
    a = model.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(
        a, scratch.bert.encoder.layer[0].attention.self.query.weight
    )
    batch = tokenizer(
        ["lovely dress", "too small, returned"], padding=True, return_tensors="pt"
    )
    y = torch.tensor([1, 0])
    out = model(**batch, labels=y)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
    emb = C.mean_pooled_embeddings(["a", "a longer text here"], tokenizer, model.bert)
    assert emb.shape == (2, 384)


def test_unknown_model_name_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="name=None"):
        C.load_classifier("no-such-org/no-such-model-xyz")


def test_shakespeare_names_and_alignment():
    from collections import Counter

    play = (
        "HELENA.\nO Bertram, my Bertram's love.\n\n"
        "COUNTESS.\nGo, Helena BERTRAM.\n[Exit COUNTESS.]\n"
    )
    counts = Counter({"countess": 10, "helena": 0})
    names = C.cast_names(play + "BERTRAM.\nHi.\n", corpus_lower_counts=counts)
    assert names == {"Helena", "Bertram"}
    lines = C.name_tagged_lines(play, names)
    assert lines[0] == (
        ["O", "Bertram", ",", "my", "Bertram's", "love", "."],
        ["O", "B-PER", "O", "O", "B-PER", "O", "O"],
    )
    assert lines[1][1] == ["O", "O", "B-PER", "I-PER", "O"] and len(lines) == 2
    word_ids = [None, 0, 1, 1, 2, None]
    assert C.align_labels(word_ids, [0, 1, 0]) == [-100, 0, 1, -100, 0, -100]
    assert C.align_labels(word_ids, [0, 1, 0], label_all_pieces=True) == [
        -100,
        0,
        1,
        2,
        0,
        -100,
    ]
    assert C.word_predictions(word_ids, [0, 0, 1, 2, 0, 0]) == [0, 1, 0]
    with pytest.raises(ValueError, match="out of range"):
        C.align_labels([0, 3], [0, 1])


def test_predict_logits_keeps_dataset_order():
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    tokenizer, model = C.load_classifier()
    texts = [
        "a much longer review text than the others, about a dress",
        "short",
        "medium length text",
    ]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"]), batched=True
    )
    logits = C.predict_logits(
        model, ds, DataCollatorWithPadding(tokenizer), batch_size=2
    )
    with torch.no_grad():
        one_by_one = [
            model(**tokenizer(t, return_tensors="pt")).logits[0].numpy() for t in texts
        ]
    np.testing.assert_allclose(logits, np.stack(one_by_one), atol=1e-4)
