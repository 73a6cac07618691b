"""Task fine-tuning (微调) of a pretrained encoder for text classification, and the
baselines it must beat.

Taught in chapter 4 ("SFT for classification"): the clothing-review task and its
stratified splits, a tokenised ``datasets.DatasetDict``,
``AutoModelForSequenceClassification`` + ``Trainer`` with early stopping and warmup as a
ratio, frozen-embedding features for a linear probe, and the same architecture from
random initialisation. Every function validates its inputs and says what to do when they
are wrong.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

LABEL_NAMES = ("negative", "positive")


# --- data -----------------------------------------------------------------------------


def review_sentiment_frame(
    df, *, negative_max: int = 2, positive_min: int = 4, verbose: bool = True
):
    """Reviews → ``(text, label, rating)``: rating ≤ ``negative_max`` is 0 (negative), ≥
    ``positive_min`` is 1.

    Rows without text, and rows whose rating is between the two thresholds (rating 3:
    mixed) or not a rating at all, are *dropped and counted*, never mislabelled. Title
    and body are joined when a title exists ("Title. Body"). Returns a new DataFrame and
    prints what was dropped.
    """
    import pandas as pd

    for column in ("Review Text", "Rating"):
        if column not in df.columns:
            raise ValueError(
                f"expected a column {column!r} "
                "(load with book_utils.assets.load_clothing_reviews())"
            )
    if not negative_max < positive_min:
        raise ValueError(
            f"negative_max ({negative_max}) must be below positive_min ({positive_min})"
        )
    text = df["Review Text"].astype("string").str.strip()
    no_text = text.isna() | (text.fillna("") == "")
    rating = pd.to_numeric(df["Rating"], errors="coerce")
    label = pd.Series(
        np.where(rating <= negative_max, 0, np.where(rating >= positive_min, 1, -1)),
        index=df.index,
    )
    label[rating.isna()] = -1
    no_label = ~no_text & (label == -1)
    keep = ~no_text & ~no_label
    if "Title" in df.columns:
        title = df["Title"].astype("string").str.strip().fillna("")
        text = (title + ". ").where(title != "", "") + text.fillna("")
    out = pd.DataFrame(
        {
            "text": text[keep].astype(str),
            "label": label[keep].astype(int),
            "rating": rating[keep].astype(int),
        }
    )
    out = out.reset_index(drop=True)
    if verbose:
        print(
            f"{len(df):,} reviews: dropped {int(no_text.sum()):,} without text "
            f"and {int(no_label.sum()):,} with a rating "
            f"outside ≤{negative_max} / ≥{positive_min}; kept {len(out):,} "
            f"({int((out.label == 0).sum()):,} negative, "
            f"{int((out.label == 1).sum()):,} positive)"
        )
    return out


def stratified_splits(
    frame, *, validation: float = 0.1, test: float = 0.1, seed: int = 0
):
    """A ``DatasetDict`` with train/validation/test, each with the class balance of the
    whole set (stratified)."""
    from datasets import ClassLabel, Dataset, DatasetDict
    from sklearn.model_selection import train_test_split

    if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
        raise ValueError(
            f"validation ({validation}) and test ({test}) must be fractions "
            "with a sum below 1"
        )
    if "label" not in frame.columns or "text" not in frame.columns:
        raise ValueError(
            "frame needs 'text' and 'label' columns (see review_sentiment_frame)"
        )
    rest, test_part = train_test_split(
        frame, test_size=test, stratify=frame["label"], random_state=seed
    )
    train_part, val_part = train_test_split(
        rest,
        test_size=validation / (1 - test),
        stratify=rest["label"],
        random_state=seed,
    )

    def to_dataset(part):
        ds = Dataset.from_pandas(part.reset_index(drop=True), preserve_index=False)
        return ds.cast_column("label", ClassLabel(names=list(LABEL_NAMES)))

    return DatasetDict(
        train=to_dataset(train_part),
        validation=to_dataset(val_part),
        test=to_dataset(test_part),
    )


def stratified_subsample(dataset, n: int, *, seed: int = 0):
    """``n`` rows of a ``Dataset`` with its class balance (all rows when ``n`` ≥ its
    size)."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if n >= len(dataset):
        return dataset
    from sklearn.model_selection import train_test_split

    index = np.arange(len(dataset))
    chosen, _ = train_test_split(
        index, train_size=n, stratify=np.asarray(dataset["label"]), random_state=seed
    )
    return dataset.select(np.sort(chosen))


def tokenize_splits(dataset_dict, tokenizer, *, max_length: int = 128):
    """Tokenise the ``text`` column (truncating at ``max_length``; padding happens per
    batch in the collator)."""
    if not isinstance(max_length, int) or max_length < 8:
        raise ValueError(f"max_length must be an int >= 8, got {max_length!r}")

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return dataset_dict.map(encode, batched=True, desc="tokenise")


# --- models ---------------------------------------------------------------------------


def load_classifier(
    name: str | None = None,
    *,
    num_labels: int = 2,
    pretrained: bool = True,
    seed: int = 0,
):
    """Tokenizer + ``AutoModelForSequenceClassification``: the encoder with a fresh
    classification head (分类头).

    ``name=None`` is the book's offline MiniLM (``book_utils.assets.minilm_dir()``); any
    Hub name such as ``"bert-base-uncased"`` works the same way when online.
    ``pretrained=False`` builds the *same architecture* with random weights (the
    from-scratch baseline): only the config is read.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from book_utils.assets import minilm_dir

    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
    source = str(minilm_dir()) if name is None else name
    labels = (
        {
            "id2label": dict(enumerate(LABEL_NAMES)),
            "label2id": {n: i for i, n in enumerate(LABEL_NAMES)},
        }
        if num_labels == 2
        else {}
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source, num_labels=num_labels, **labels)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "yes")
        why = (
            "offline: HF_HUB_OFFLINE=1"
            if offline
            else "no local copy and the Hub did not answer"
        )
        raise RuntimeError(
            f"could not load {source!r} ({why}). "
            "Use name=None for the book's offline MiniLM, "
            "or connect to the internet to download this model."
        ) from error
    # the new head (and, from scratch, every weight) is drawn from this seed
    torch.manual_seed(seed)
    if pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config
        )
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    return tokenizer, model


def training_arguments(
    output_dir,
    *,
    learning_rate: float = 5e-5,
    epochs: float = 3,
    batch_size: int = 16,
    warmup_steps: float = 0.1,
    weight_decay: float = 0.01,
    eval_every: int | None = None,
    seed: int = 0,
    use_cpu: bool | None = None,
    best_metric: str = "macro_f1",
):
    """``TrainingArguments`` for classification: AdamW + linear warmup + linear decay,
    best by macro-F1.

    ``warmup_steps`` uses transformers 5's spelling: a float in [0, 1) is a fraction of
    the training steps (``warmup_ratio``, its old name, raises a TypeError in
    transformers 5), a whole number >= 1 is a count.

    Evaluates (and saves) every ``eval_every`` steps (default: once per epoch), keeps
    one checkpoint besides the best, restores the best at the end, logs nowhere
    (``report_to="none"``).
    """
    from transformers import TrainingArguments

    if not 0 < learning_rate < 1:
        raise ValueError(
            f"learning_rate must be in (0, 1), got {learning_rate!r} "
            "(2e-5 to 5e-5 is typical)"
        )
    if isinstance(warmup_steps, bool) or not (
        0 <= warmup_steps < 1 or float(warmup_steps).is_integer()
    ):
        raise ValueError(
            "warmup_steps is a fraction of the training steps in [0, 1) "
            f"or a whole number of steps, got {warmup_steps!r}"
        )
    if epochs <= 0 or batch_size < 1:
        raise ValueError(
            f"epochs ({epochs}) and batch_size ({batch_size}) must be positive"
        )
    steps = (
        {
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "eval_steps": eval_every,
            "save_steps": eval_every,
        }
        if eval_every
        else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    )
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=weight_decay,
        optim="adamw_torch",
        load_best_model_at_end=True,
        metric_for_best_model=best_metric,
        greater_is_better=True,
        save_total_limit=1,
        save_only_model=True,
        logging_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        use_cpu=(not _has_gpu()) if use_cpu is None else use_cpu,
        disable_tqdm=True,
        **steps,
    )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def weighted_cross_entropy(class_weights):
    """A ``Trainer`` ``compute_loss_func``: softmax cross-entropy with one weight per
    class.

    ``L = -Σ_i w_{y_i} log p(y_i | x_i) / Σ_i w_{y_i}`` (PyTorch's
    ``F.cross_entropy(..., weight=w)``). With ``w_c = N / (C·N_c)`` ("balanced"), each
    class contributes equally to the loss, whatever its frequency.
    """
    import torch
    import torch.nn.functional as F

    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.ndim != 1 or (weights <= 0).any():
        raise ValueError(
            "class_weights must be a 1-D sequence of positive numbers, "
            f"got {class_weights!r}"
        )

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return F.cross_entropy(logits.float(), labels, weight=weights.to(logits.device))

    return loss


def balanced_class_weights(labels) -> list[float]:
    """``w_c = N / (C · N_c)``: scikit-learn's ``class_weight="balanced"``."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    if not np.array_equal(values, np.arange(len(values))):
        raise ValueError(
            "labels must be 0..C-1 with every class present, "
            f"got classes {values.tolist()}"
        )
    return (counts.sum() / (len(counts) * counts)).tolist()


def fine_tune(
    model,
    tokenizer,
    train,
    validation,
    output_dir,
    *,
    patience: int = 2,
    class_weights=None,
    **kwargs,
):
    """Train ``model`` with ``Trainer`` on tokenised ``train``, early-stopping on
    ``validation`` macro-F1.

    ``class_weights`` (e.g. :func:`balanced_class_weights`) switches the loss to
    :func:`weighted_cross_entropy`; by default the model's own (unweighted)
    cross-entropy is used. Returns the ``Trainer`` (its model is the best checkpoint).
    ``kwargs`` go to :func:`training_arguments`.
    """
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
    )

    from book_utils.metrics import make_compute_metrics

    for name, ds in (("train", train), ("validation", validation)):
        if "input_ids" not in ds.column_names or "label" not in ds.column_names:
            raise ValueError(
                f"{name} must be tokenised and labelled (see tokenize_splits); "
                f"columns: {ds.column_names}"
            )
    trainer = Trainer(
        model=model,
        args=training_arguments(output_dir, **kwargs),
        train_dataset=train.remove_columns(
            [
                c
                for c in train.column_names
                if c not in ("input_ids", "attention_mask", "label", "token_type_ids")
            ]
        ),
        eval_dataset=validation.remove_columns(
            [
                c
                for c in validation.column_names
                if c not in ("input_ids", "attention_mask", "label", "token_type_ids")
            ]
        ),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
        compute_loss_func=None
        if class_weights is None
        else weighted_cross_entropy(class_weights),
    )
    # keep notebook output lean: results are read from trainer.state
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def predict_logits(model, dataset, collator, *, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` on a tokenised dataset, **in the dataset's order**, padded
    per batch.

    Why not ``trainer.predict``? With ``train_sampling_strategy="group_by_length"``
    transformers 5 also length-groups the *evaluation* sampler, so ``predict`` returns
    rows shuffled (its ``label_ids`` are shuffled the same way, which is why
    ``compute_metrics`` is right but comparing with the dataset's own labels is not).
    Here batches are sorted by length for speed and the order is restored. Token
    classification logits come back as ``(N, longest, labels)`` padded with 0.
    """
    import torch

    keep = [
        c
        for c in dataset.column_names
        if c in ("input_ids", "attention_mask", "token_type_ids")
    ]
    if "input_ids" not in keep:
        raise ValueError(
            "dataset must be tokenised (input_ids missing); "
            f"columns: {dataset.column_names}"
        )
    rows = dataset.select_columns(keep)
    order = np.argsort([len(ids) for ids in rows["input_ids"]], kind="stable")
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collator([rows[int(i)] for i in order[start : start + batch_size]])
            outputs.append(
                model(**{k: v.to(device) for k, v in batch.items()})
                .logits.float()
                .cpu()
                .numpy()
            )
    if outputs[0].ndim == 2:
        logits = np.concatenate(outputs)
    else:
        longest = max(o.shape[1] for o in outputs)
        logits = np.concatenate(
            [np.pad(o, ((0, 0), (0, longest - o.shape[1]), (0, 0))) for o in outputs]
        )
    result = np.empty_like(logits)
    result[order] = logits
    return result


def predict_probabilities(trainer, dataset) -> np.ndarray:
    """Softmax probabilities ``(N, num_labels)`` of a trained ``Trainer``'s model, in
    the dataset's order."""
    import torch
    from transformers import DataCollatorWithPadding

    logits = predict_logits(
        trainer.model, dataset, DataCollatorWithPadding(trainer.processing_class)
    )
    return torch.softmax(torch.as_tensor(logits), dim=-1).numpy()


def steps_for(
    n_train: int, *, batch_size: int, min_steps: int, max_epochs: int = 20
) -> float:
    """Epochs so that a small training set still gets ``min_steps`` optimiser steps
    (capped at ``max_epochs``)."""
    if n_train < 1 or batch_size < 1 or min_steps < 1:
        raise ValueError("n_train, batch_size and min_steps must be positive")
    per_epoch = math.ceil(n_train / batch_size)
    return float(min(max_epochs, max(1, math.ceil(min_steps / per_epoch))))


# --- baselines ------------------------------------------------------------------------


def mean_pooled_embeddings(
    texts, tokenizer, encoder, *, batch_size: int = 64, max_length: int = 128
) -> np.ndarray:
    """Frozen sentence embeddings: the encoder's token vectors averaged over real
    (non-padding) tokens.

    This is how all-MiniLM-L6-v2 was trained to be used (mean pooling); the encoder is
    *not* updated, so a logistic regression on top is a *linear probe* of what
    pretraining already put in the vectors.
    """
    import torch

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    encoder.eval()
    chunks = []
    # similar lengths per batch: less padding, same result
    order = np.argsort([len(t) for t in texts])
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            enc = tokenizer(
                batch,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def tfidf_logreg(
    train_texts, train_labels, *, seed: int = 0, max_features: int = 50_000
):
    """TF-IDF of words and word bigrams + logistic regression with balanced class
    weights (a strong classic baseline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(train_texts) != len(train_labels) or len(train_texts) < 2:
        raise ValueError("need at least two training texts and one label per text")
    model = make_pipeline(
        TfidfVectorizer(
            ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=max_features
        ),
        LogisticRegression(
            C=10.0, class_weight="balanced", max_iter=2000, random_state=seed
        ),
    )
    return model.fit(list(train_texts), np.asarray(train_labels))


def linear_probe(train_features, train_labels, *, seed: int = 0):
    """Standardised features + logistic regression (balanced class weights) on frozen
    embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_features) != len(train_labels):
        raise ValueError("one label per feature row is needed")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=0.1, class_weight="balanced", max_iter=2000, random_state=seed
        ),
    )
    return model.fit(np.asarray(train_features), np.asarray(train_labels))


def majority_class(train_labels, n: int) -> np.ndarray:
    """Predict the most frequent training class ``n`` times (the floor every model must
    clear)."""
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    if values.size == 0:
        raise ValueError("train_labels is empty")
    return np.full(n, values[np.argmax(counts)], dtype=np.int64)


def run_dir(name: str, profile: str) -> Path:
    """A Trainer ``output_dir`` under the book's cache (never inside the repository),
    emptied first."""
    import shutil

    from book_utils.cache import artifact_dir

    path = artifact_dir("ch4-trainer-runs", profile) / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --- token classification (named entity recognition) ----------------------------------

NER_LABELS = ("O", "B-PER", "I-PER")
_NOT_NAMES = {
    "Act",
    "Scene",
    "Persons",
    "Represented",
    "Dramatis",
    "Personae",
    "Prologue",
    "Epilogue",
    "Chorus",
    "All",
    "Both",
}
_ROMAN = __import__("re").compile(r"^[IVXLC]+$")
_HEADING = None
_WORD = None


def _patterns():
    import re

    global _HEADING, _WORD
    if _HEADING is None:
        # a speaker heading: "HELENA." on its own line
        _HEADING = re.compile(r"^([A-Z][A-Z' ]{1,40}[A-Z])\.$")
        _WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|[^\sA-Za-z]")
    return _HEADING, _WORD


def cast_names(play: str, *, corpus_lower_counts=None, max_common: int = 3) -> set[str]:
    """Character names of a play, read from its speaker headings ("HELENA." on its own
    line).

    A heading word counts as a name only if it is rarely used as an ordinary lowercase
    word in ``corpus_lower_counts`` (a ``Counter`` of lowercase words): "COUNTESS",
    "CLOWN", "FIRST", "LORD" are headings but not names. Returns title-cased names such
    as ``{"Helena", "Bertram"}``.
    """
    heading, _ = _patterns()
    names = set()
    for line in play.splitlines():
        match = heading.match(line.strip())
        if match:
            for word in match.group(1).split():
                if (
                    len(word) > 2
                    and "'" not in word
                    and not _ROMAN.match(word)
                    and word.title() not in _NOT_NAMES
                ):
                    names.add(word.title())
    if corpus_lower_counts is not None:
        names = {
            n for n in names if corpus_lower_counts.get(n.lower(), 0) <= max_common
        }
    return names


def name_tagged_lines(play: str, names: set[str]) -> list[tuple[list[str], list[str]]]:
    """Speech lines of a play as ``(words, BIO tags)``: a capitalised word equal to a
    cast name is ``PER``.

    Headings and lines with stage directions (``[Exit COUNTESS.]``) are skipped;
    consecutive names form one entity (B-PER I-PER). The tags are *silver* labels
    (derived by rule from the cast list, not by a human annotator): a name used as a
    common word, or a character absent from the headings, is mislabelled.
    """
    heading, word_re = _patterns()
    out = []
    for raw in play.splitlines():
        line = raw.strip()
        if (
            not line
            or heading.match(line)
            or "[" in line
            or "]" in line
            or line.isupper()
        ):
            continue
        words = word_re.findall(line)
        tags, previous = [], False
        for word in words:
            stem = word.split("'")[0]
            # "Bertram", "Bertram's", "CALIBAN"
            is_name = stem.title() in names and word[:1].isupper()
            tags.append(("I-PER" if previous else "B-PER") if is_name else "O")
            previous = is_name
        if words:
            out.append((words, tags))
    return out


def align_labels(
    word_ids, word_labels, *, label_all_pieces: bool = False, ignore_index: int = -100
) -> list[int]:
    """Word labels → one label per WordPiece: the first piece of a word gets the word's
    label.

    Special tokens (``word_id is None``) and, unless ``label_all_pieces``, the
    continuation pieces of a word get ``ignore_index`` so the loss skips them (for B-
    labels, continuation pieces would get the I- label when ``label_all_pieces``).
    ``word_labels`` are integer ids into :data:`NER_LABELS`.
    """
    labels, previous = [], None
    for wid in word_ids:
        if wid is None:
            labels.append(ignore_index)
        elif wid != previous:
            if not 0 <= wid < len(word_labels):
                raise ValueError(
                    f"word id {wid} is out of range for {len(word_labels)} word labels"
                )
            labels.append(word_labels[wid])
        elif label_all_pieces:
            label = word_labels[wid]
            labels.append(
                NER_LABELS.index("I-PER") if NER_LABELS[label] == "B-PER" else label
            )
        else:
            labels.append(ignore_index)
        previous = wid
    return labels


def word_predictions(word_ids, piece_predictions) -> list[int]:
    """Per-piece predicted label ids → per-word ids, reading each word's first piece (as
    in training)."""
    out, previous = [], None
    for wid, pred in zip(word_ids, piece_predictions):
        if wid is not None and wid != previous:
            out.append(int(pred))
        previous = wid
    return out


def fine_tune_token_classifier(
    model, tokenizer, train, validation, output_dir, *, patience: int = 1, **kwargs
):
    """``Trainer`` for token classification: pads labels with -100, early-stops on
    validation entity F1.

    ``train``/``validation`` need ``input_ids`` and piece-aligned ``labels`` (see
    :func:`align_labels`). ``kwargs`` go to :func:`training_arguments`. Returns the
    ``Trainer`` with the best checkpoint loaded.
    """
    from transformers import (
        DataCollatorForTokenClassification,
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
    )

    for name, ds in (("train", train), ("validation", validation)):
        if "input_ids" not in ds.column_names or "labels" not in ds.column_names:
            raise ValueError(
                f"{name} needs input_ids and piece-aligned labels; "
                f"columns: {ds.column_names}"
            )
    keep = ("input_ids", "attention_mask", "labels", "token_type_ids")
    trainer = Trainer(
        model=model,
        args=training_arguments(output_dir, best_metric="entity_f1", **kwargs),
        train_dataset=train.select_columns(
            [c for c in train.column_names if c in keep]
        ),
        eval_dataset=validation.select_columns(
            [c for c in validation.column_names if c in keep]
        ),
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=token_compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def piece_to_word_tags(
    logits_or_ids, labels
) -> tuple[list[list[str]], list[list[str]]]:
    """Reference and predicted BIO tags per sentence, at the word level (positions whose
    label is not -100)."""
    predictions = np.asarray(logits_or_ids)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    refs, preds = [], []
    for pred_row, label_row in zip(predictions, np.asarray(labels)):
        keep = label_row != -100
        refs.append([NER_LABELS[i] for i in label_row[keep]])
        preds.append([NER_LABELS[i] for i in pred_row[keep]])
    return refs, preds


def token_compute_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for token classification: entity-level precision/recall/F1
    (CoNLL convention)."""
    from book_utils.metrics import entity_f1

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    scores = entity_f1(*piece_to_word_tags(logits, labels))
    return {
        "entity_precision": scores["precision"],
        "entity_recall": scores["recall"],
        "entity_f1": scores["f1"],
    }


def shakespeare_name_dataset(
    *, n_train: int, n_eval: int, seed: int = 0, verbose: bool = True
):
    """A ``DatasetDict`` of Shakespeare speech lines with silver ``PER`` tags, split by
    whole play.

    train: the book's training plays; validation: *Macbeth* and *Twelfth Night*; test:
    *The Tempest*. (*Hamlet*, the other held-out play, abbreviates its speaker headings
    — "Hor.", "Mar." — so the cast rule finds no names in it; it is left out rather than
    labelled wrongly.) Plays whose headings yield no names are dropped and counted. Each
    split keeps every line with a name up to half its size and fills the rest with
    name-free lines, sampled with ``seed``. Columns: ``words``, ``tags`` (ids into
    :data:`NER_LABELS`), ``play``.
    """
    import random
    import re
    from collections import Counter

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    from book_utils.assets import shakespeare_splits

    if n_train < 4 or n_eval < 4:
        raise ValueError(
            f"n_train ({n_train}) and n_eval ({n_eval}) must be at least 4"
        )
    splits = shakespeare_splits()
    lower = Counter(
        w
        for works in splits.values()
        for text in works.values()
        for w in re.findall(r"\b[a-z]+\b", text)
    )
    plan = {
        "train": dict(splits["train"]),
        "validation": dict(splits["validation"]),
        "test": {"tempest": splits["test"]["tempest"]},
    }
    features = Features(
        {
            "words": Sequence(Value("string")),
            "tags": Sequence(ClassLabel(names=list(NER_LABELS))),
            "play": Value("string"),
        }
    )
    rng, out, dropped = random.Random(seed), {}, []
    for split, works in plan.items():
        with_name, without = [], []
        for title, text in sorted(works.items()):
            names = cast_names(text, corpus_lower_counts=lower)
            lines = name_tagged_lines(text, names) if names else []
            if not any("B-PER" in tags for _, tags in lines):
                dropped.append(title)
                continue
            for words, tags in lines:
                (with_name if "B-PER" in tags else without).append((words, tags, title))
        size = n_train if split == "train" else n_eval
        rng.shuffle(with_name), rng.shuffle(without)
        chosen = with_name[: size // 2]
        chosen += without[: size - len(chosen)]
        rng.shuffle(chosen)
        out[split] = Dataset.from_dict(
            {
                "words": [c[0] for c in chosen],
                "tags": [[NER_LABELS.index(t) for t in c[1]] for c in chosen],
                "play": [c[2] for c in chosen],
            },
            features=features,
        )
    if verbose:
        print(
            "plays without usable speaker headings (dropped): "
            f"{len(dropped)} {sorted(dropped)}"
        )
    return DatasetDict(out)
