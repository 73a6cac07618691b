"""The classification task and its data: clothing reviews → negative/positive labels,
stratified train/validation/test splits and subsamples, a tokenised ``DatasetDict``.

Taught in chapter 4a, book/04_sft/01_classification.ipynb (the FAQ,
book/06_reference/01_faq.ipynb, reuses the labelled frame). Every function validates
its inputs and says what to do when they are wrong.
"""

from __future__ import annotations

import numpy as np

#: Class names of the review task, in label-id order.
LABEL_NAMES = ("negative", "positive")


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
