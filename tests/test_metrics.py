"""book_utils.metrics: the offline evaluate modules agree with scikit-learn; bootstrap
and calibration."""

import numpy as np
import pytest
from sklearn import metrics as skm

from book_utils import metrics


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 3, 200)
    preds = np.where(rng.random(200) < 0.7, refs, rng.integers(0, 3, 200))
    return preds, refs


def test_each_module_matches_sklearn(labels):
    preds, refs = labels
    assert metrics.load_metric("accuracy").compute(predictions=preds, references=refs)[
        "accuracy"
    ] == pytest.approx(skm.accuracy_score(refs, preds))
    for name, fn in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        ours = metrics.load_metric(name).compute(predictions=preds, references=refs)[
            name
        ]
        assert ours == pytest.approx(fn(refs, preds, average="macro", zero_division=0))
    cm = metrics.load_metric("confusion_matrix").compute(
        predictions=preds, references=refs
    )["confusion_matrix"]
    np.testing.assert_array_equal(cm, skm.confusion_matrix(refs, preds))


def test_zero_division_and_missing_class_like_sklearn():
    refs, preds = (
        np.array([0, 0, 1, 1]),
        np.array([0, 0, 0, 0]),
    )  # class 1 never predicted
    ours = metrics.load_metric("f1").compute(predictions=preds, references=refs)["f1"]
    assert ours == pytest.approx(
        skm.f1_score(refs, preds, average="macro", zero_division=0)
    )
    assert metrics.macro_f1(preds[:2], refs[:2], labels=[0, 1]) == pytest.approx(
        skm.f1_score(
            refs[:2], preds[:2], average="macro", labels=[0, 1], zero_division=0
        )
    )


def test_combined_and_trainer_compute_metrics(labels):
    preds, refs = labels
    logits = np.eye(3)[preds] * 5.0
    scores = metrics.make_compute_metrics()((logits, refs))
    assert set(scores) == {"accuracy", "precision", "recall", "macro_f1"}
    assert scores["macro_f1"] == pytest.approx(
        skm.f1_score(refs, preds, average="macro")
    )


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.load_metric("bleu")
    with pytest.raises(ValueError, match="1-D"):
        metrics.confusion_counts(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="length"):
        metrics.confusion_counts([0, 1], [0])
    with pytest.raises(ValueError, match="argmax"):
        metrics.confusion_counts([0.2, 0.8], [0, 1])
    with pytest.raises(ValueError, match="not in labels"):
        metrics.confusion_counts([0, 2], [0, 1], labels=[0, 1])


def test_bootstrap_interval_contains_estimate_and_is_deterministic(labels):
    preds, refs = labels
    a = metrics.bootstrap_ci(refs, preds, n_boot=200, seed=1)
    assert a == metrics.bootstrap_ci(refs, preds, n_boot=200, seed=1)
    assert a["low"] <= a["estimate"] <= a["high"]
    same = metrics.bootstrap_ci(refs, preds, baseline=preds, n_boot=50)
    assert same["low"] == same["high"] == same["estimate"] == 0.0
    with pytest.raises(ValueError, match="n_boot"):
        metrics.bootstrap_ci(refs, preds, n_boot=1)


def test_reliability_table_and_ece():
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    refs = np.array([1, 0, 0, 0])
    table = metrics.reliability_table(probs, refs, n_bins=10)
    assert table["count"].sum() == 4
    conf, correct = probs.max(1), (probs.argmax(1) == refs).astype(float)
    bins = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
    ece = sum(
        abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() / 4
        for b in set(bins)
    )
    assert table["ece"] == pytest.approx(ece)
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.reliability_table(np.array([[2.0, 1.0]]), [0])


def test_entity_spans_and_f1_conll_convention():
    assert metrics.entity_spans(["B-PER", "I-PER", "O", "I-PER", "B-LOC"]) == {
        ("PER", 0, 2),
        ("PER", 3, 4),
        ("LOC", 4, 5),
    }
    refs = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-PER"]]
    preds = [
        ["B-PER", "O", "O", "B-PER"],
        ["O", "B-PER"],
    ]  # one boundary error: 2 of 3 found, 2 of 3 right
    scores = metrics.entity_f1(refs, preds)
    assert scores["precision"] == pytest.approx(2 / 3) and scores[
        "recall"
    ] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["entities"] == 3
    with pytest.raises(ValueError, match="BIO"):
        metrics.entity_spans(["PER"])
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_f1([["O"]], [["O", "O"]])
