"""Token classification (named entity recognition): silver ``PER`` tags for
Shakespeare's speech lines from the cast list, word labels aligned to WordPieces, a
``Trainer`` that early-stops on entity F1, and the entity-level metrics.

Taught in chapter 4a, book/04_sft/02_token_classification.ipynb.
"""

from __future__ import annotations

import numpy as np

from book_utils.classification.train import classification_arguments

#: BIO tags of the name-recognition task, in label-id order.
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
    :func:`align_labels`). ``kwargs`` go to
    :func:`~book_utils.classification.train.classification_arguments`. Returns the
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
        args=classification_arguments(output_dir, best_metric="entity_f1", **kwargs),
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
