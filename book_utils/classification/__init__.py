"""Task fine-tuning (微调) of a pretrained encoder for text classification and named
entity recognition, and the baselines it must beat.

Chapter 4a ("SFT for classification"): the clothing-review task and its stratified
splits, a tokenised ``datasets.DatasetDict``, ``AutoModelForSequenceClassification`` +
``Trainer`` with early stopping and warmup as a ratio, frozen-embedding features for a
linear probe, and the same architecture from random initialisation; then the same
recipe for token classification. Every function validates its inputs and says what to
do when they are wrong.

- :mod:`~book_utils.classification.data` — the review task, stratified splits,
  tokenisation (chapter 4a, book/04_sft/01_classification.ipynb)
- :mod:`~book_utils.classification.models` — the encoder with a classification head,
  pretrained or from scratch (chapter 4a, book/04_sft/01_classification.ipynb)
- :mod:`~book_utils.classification.train` — ``TrainingArguments``, the weighted loss,
  ``fine_tune``, predictions in dataset order, run folders (chapter 4a,
  book/04_sft/01_classification.ipynb)
- :mod:`~book_utils.classification.baselines` — majority class, TF-IDF + logistic
  regression, a linear probe on mean-pooled embeddings (chapter 4a,
  book/04_sft/01_classification.ipynb)
- :mod:`~book_utils.classification.ner` — silver name tags, label alignment, the token
  classification ``Trainer`` and entity metrics (chapter 4a,
  book/04_sft/02_token_classification.ipynb)

The FAQ (chapter 6, book/06_reference/01_faq.ipynb) reuses the review frame, the
classifier and the mean-pooled embeddings.
"""

from book_utils.classification.baselines import (
    linear_probe,
    majority_class,
    mean_pooled_embeddings,
    tfidf_logreg,
)
from book_utils.classification.data import (
    LABEL_NAMES,
    review_sentiment_frame,
    stratified_splits,
    stratified_subsample,
    tokenize_splits,
)
from book_utils.classification.models import load_classifier
from book_utils.classification.ner import (
    NER_LABELS,
    align_labels,
    cast_names,
    fine_tune_token_classifier,
    name_tagged_lines,
    piece_to_word_tags,
    shakespeare_name_dataset,
    token_compute_metrics,
    word_predictions,
)
from book_utils.classification.train import (
    balanced_class_weights,
    classification_arguments,
    fine_tune,
    predict_logits,
    predict_probabilities,
    run_dir,
    steps_for,
    weighted_cross_entropy,
)

__all__ = [
    "LABEL_NAMES",
    "NER_LABELS",
    "align_labels",
    "balanced_class_weights",
    "cast_names",
    "classification_arguments",
    "fine_tune",
    "fine_tune_token_classifier",
    "linear_probe",
    "load_classifier",
    "majority_class",
    "mean_pooled_embeddings",
    "name_tagged_lines",
    "piece_to_word_tags",
    "predict_logits",
    "predict_probabilities",
    "review_sentiment_frame",
    "run_dir",
    "shakespeare_name_dataset",
    "steps_for",
    "stratified_splits",
    "stratified_subsample",
    "tfidf_logreg",
    "token_compute_metrics",
    "tokenize_splits",
    "weighted_cross_entropy",
    "word_predictions",
]
