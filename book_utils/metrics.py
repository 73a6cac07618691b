"""Classification metrics that work offline, as ``evaluate`` modules, plus bootstrap
intervals and calibration.

Taught in chapter 4 ("SFT for classification"). ``evaluate.load`` with a hub name
(``"accuracy"``) fetches a metric *script* from the Hugging Face Hub, so it fails
without a network. The metrics below are ``evaluate.Metric`` subclasses shipped with the
book: same ``compute(predictions=..., references=...)`` interface, same
``evaluate.combine``, no download. Each is checked against scikit-learn in
``tests/test_metrics.py``.
"""

from __future__ import annotations

from typing import Callable

import datasets
import evaluate
import numpy as np

_FEATURES = datasets.Features(
    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
)
_CITATION = "Computed with numpy in book_utils.metrics (checked against scikit-learn)."


def _as_labels(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D sequence of integer class ids, "
            f"got shape {array.shape}"
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(
                f"{name} must hold integer class ids (take argmax of logits first), "
                f"got {array[:5]}"
            )
        array = array.astype(np.int64)
    return array


def confusion_counts(
    predictions, references, labels=None
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix ``C[i, j]`` = number of examples with true class ``labels[i]``
    predicted as ``labels[j]``.

    Rows are true classes, columns predictions (scikit-learn's convention). Returns
    ``(matrix, labels)``.
    """
    predictions, references = (
        _as_labels("predictions", predictions),
        _as_labels("references", references),
    )
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions ({predictions.shape[0]}) and references "
            f"({references.shape[0]}) differ in length"
        )
    if predictions.size == 0:
        raise ValueError("no predictions: a metric of zero examples is undefined")
    labels = (
        np.unique(np.concatenate([references, predictions]))
        if labels is None
        else np.sort(np.asarray(labels))
    )
    known = np.isin(references, labels) & np.isin(predictions, labels)
    if not known.all():
        bad = sorted(
            set(np.concatenate([references[~known], predictions[~known]]).tolist())
            - set(labels.tolist())
        )
        raise ValueError(f"classes {bad} are not in labels={labels.tolist()}")
    rows, cols = (
        np.searchsorted(labels, references),
        np.searchsorted(labels, predictions),
    )
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return matrix, labels


def per_class_prf(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 from a confusion matrix (0 where undefined, like
    scikit-learn's zero_division=0)."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = (
        matrix.sum(axis=0).astype(float),
        matrix.sum(axis=1).astype(float),
    )
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall,
        denominator,
        out=np.zeros_like(tp),
        where=denominator > 0,
    )
    return precision, recall, f1


class _BookMetric(evaluate.Metric):
    """Shared plumbing: a description, integer features, no download."""

    description = ""

    def _info(self):
        return evaluate.MetricInfo(
            description=self.description,
            citation=_CITATION,
            features=_FEATURES,
            license="MIT (book code)",
        )


class Accuracy(_BookMetric):
    """Fraction of predictions equal to the reference: ``{"accuracy": float}``."""

    description = "accuracy = mean(prediction == reference)"

    def _compute(self, predictions, references):
        matrix, _ = confusion_counts(predictions, references)
        return {"accuracy": float(np.trace(matrix) / matrix.sum())}


class MacroPrecision(_BookMetric):
    """Unweighted mean over classes of TP / (TP + FP): ``{"precision": float}``."""

    description = "macro precision: mean over classes of TP/(TP+FP)"

    def _compute(self, predictions, references, labels=None):
        precision, _, _ = per_class_prf(
            confusion_counts(predictions, references, labels)[0]
        )
        return {"precision": float(precision.mean())}


class MacroRecall(_BookMetric):
    """Unweighted mean over classes of TP / (TP + FN): ``{"recall": float}``."""

    description = "macro recall: mean over classes of TP/(TP+FN)"

    def _compute(self, predictions, references, labels=None):
        _, recall, _ = per_class_prf(
            confusion_counts(predictions, references, labels)[0]
        )
        return {"recall": float(recall.mean())}


class MacroF1(_BookMetric):
    """Unweighted mean over classes of the per-class F1 (each class counts the same):
    ``{"f1": float}``."""

    description = "macro F1: mean over classes of 2PR/(P+R)"

    def _compute(self, predictions, references, labels=None):
        _, _, f1 = per_class_prf(confusion_counts(predictions, references, labels)[0])
        return {"f1": float(f1.mean())}


class ConfusionMatrix(_BookMetric):
    """The confusion matrix as nested lists (rows: true class, columns: prediction):
    ``{"confusion_matrix": [[...]]}``."""

    description = "confusion matrix, rows = references, columns = predictions"

    def _compute(self, predictions, references, labels=None):
        return {
            "confusion_matrix": confusion_counts(predictions, references, labels)[
                0
            ].tolist()
        }


METRICS: dict[str, type[_BookMetric]] = {
    "accuracy": Accuracy,
    "precision": MacroPrecision,
    "recall": MacroRecall,
    "f1": MacroF1,
    "confusion_matrix": ConfusionMatrix,
}


def load_metric(name: str) -> evaluate.Metric:
    """The offline stand-in for ``evaluate.load(name)`` for the metrics this book uses
    (see :data:`METRICS`)."""
    if name not in METRICS:
        raise ValueError(
            f"unknown metric {name!r}; the book ships {sorted(METRICS)} "
            "(evaluate.load needs the Hub)"
        )
    return METRICS[name]()


def classification_metrics() -> evaluate.CombinedEvaluations:
    """``evaluate.combine`` of accuracy and macro precision/recall/F1 (the scalars a
    Trainer logs)."""
    return evaluate.combine(
        [load_metric(n) for n in ("accuracy", "precision", "recall", "f1")]
    )


def make_compute_metrics() -> Callable:
    """A ``compute_metrics`` for ``transformers.Trainer``: argmax of the logits, then
    the combined metrics.

    Keys come back as ``accuracy``, ``precision``, ``recall``, ``macro_f1`` (so
    ``metric_for_best_model`` can name ``macro_f1`` unambiguously).
    """
    combined = classification_metrics()

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        scores = combined.compute(
            predictions=np.argmax(logits, axis=-1), references=labels
        )
        scores["macro_f1"] = scores.pop("f1")
        return scores

    return compute_metrics


def macro_f1(predictions, references, labels=None) -> float:
    """Macro F1 as a plain function (used in loops such as the bootstrap).

    Pass ``labels`` when a sample may miss a class (a bootstrap resample), so the mean
    is over all classes.
    """
    return float(
        per_class_prf(confusion_counts(predictions, references, labels)[0])[2].mean()
    )


def bootstrap_ci(
    references,
    predictions,
    baseline=None,
    *,
    metric: Callable = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap (Efron 1979) of a metric on a test set, or of a paired
    difference to a baseline.

    Resamples test *examples* with replacement ``n_boot`` times. With ``baseline``
    predictions the same resample scores both systems and the interval is for
    ``metric(predictions) - metric(baseline)``: the paired interval is narrower than
    comparing two separate intervals, because both systems see the same hard examples.
    Returns ``{"estimate", "low", "high"}``.
    """
    if metric is None:
        classes = np.unique(np.asarray(references))

        def metric(p, r):
            return macro_f1(p, r, labels=classes)

    references = _as_labels("references", references)
    predictions = _as_labels("predictions", predictions)
    if predictions.shape != references.shape:
        raise ValueError("predictions and references must have the same length")
    if baseline is not None:
        baseline = _as_labels("baseline", baseline)
        if baseline.shape != references.shape:
            raise ValueError(
                "baseline predictions must have the same length as references"
            )
    if not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an int >= 10, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")

    def score(index):
        value = metric(predictions[index], references[index])
        return (
            value - metric(baseline[index], references[index])
            if baseline is not None
            else value
        )

    rng = np.random.default_rng(seed)
    n = len(references)
    samples = np.array([score(rng.integers(0, n, n)) for _ in range(n_boot)])
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return {
        "estimate": float(score(np.arange(n))),
        "low": float(low),
        "high": float(high),
    }


def reliability_table(
    probabilities, references, n_bins: int = 10
) -> dict[str, np.ndarray | float]:
    """Calibration (Guo et al. 2017): bin the predicted confidence, compare with the
    accuracy in each bin.

    ``probabilities`` is ``(N, C)`` (rows sum to 1). Confidence = max probability; a
    calibrated model is right 80 % of the time when it says 0.8. Returns the bin
    centres, mean confidence, accuracy and count per bin, and the expected calibration
    error ``ece = Σ_b (n_b / N) |acc_b − conf_b|``.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    references = _as_labels("references", references)
    if probabilities.ndim != 2 or probabilities.shape[0] != references.shape[0]:
        raise ValueError(
            "probabilities must be (N, C) with N = len(references); "
            f"got {probabilities.shape}"
        )
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "rows of probabilities must sum to 1 (apply softmax to logits first)"
        )
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == references).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    conf = np.divide(
        np.bincount(which, confidence, n_bins),
        count,
        out=np.full(n_bins, np.nan),
        where=count > 0,
    )
    acc = np.divide(
        np.bincount(which, correct, n_bins),
        count,
        out=np.full(n_bins, np.nan),
        where=count > 0,
    )
    used = count > 0
    ece = float(np.sum(count[used] / count.sum() * np.abs(acc[used] - conf[used])))
    return {
        "centre": (edges[:-1] + edges[1:]) / 2,
        "confidence": conf,
        "accuracy": acc,
        "count": count,
        "ece": ece,
    }


# --- entity-level scores for token classification (NER) -------------------------------


def entity_spans(tags) -> set[tuple[str, int, int]]:
    """``(type, start, end)`` spans (end exclusive) from BIO tags such as
    ``["B-PER", "I-PER", "O"]``.

    Follows the CoNLL convention: an ``I-X`` that does not continue an ``X`` entity
    starts a new one.
    """
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if not isinstance(tag, str) or not (tag == "O" or tag[:2] in ("B-", "I-")):
            raise ValueError(
                f"tag {tag!r} at position {i} is not BIO (O, B-TYPE or I-TYPE)"
            )
        continues = tag.startswith("I-") and kind == tag[2:]
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if tag != "O" and not continues:
            kind, start = tag[2:], i
    return spans


def entity_f1(references, predictions) -> dict[str, float]:
    """Entity-level precision, recall and F1 over sentences (a span counts only if type
    and both ends match).

    ``references`` and ``predictions`` are lists of BIO tag lists, one per sentence,
    same lengths. This is the CoNLL-2003 score (what ``seqeval`` computes): a name found
    with the wrong boundary is both a false positive and a false negative.
    """
    if len(references) != len(predictions):
        raise ValueError(
            f"{len(references)} reference sentences but {len(predictions)} predicted"
        )
    tp = n_true = n_pred = 0
    for i, (ref, pred) in enumerate(zip(references, predictions)):
        if len(ref) != len(pred):
            raise ValueError(
                f"sentence {i}: {len(ref)} reference tags but {len(pred)} predicted"
            )
        true, guess = entity_spans(ref), entity_spans(pred)
        tp, n_true, n_pred = (
            tp + len(true & guess),
            n_true + len(true),
            n_pred + len(guess),
        )
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "entities": n_true}
