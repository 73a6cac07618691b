"""The baselines fine-tuning must beat: the majority class, TF-IDF + logistic
regression, and a linear probe on frozen mean-pooled MiniLM embeddings.

Taught in chapter 4a, book/04_sft/01_classification.ipynb (the FAQ,
book/06_reference/01_faq.ipynb, uses the embeddings for zero-shot classification).
"""

from __future__ import annotations

import numpy as np


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
