"""The local `evaluate` metric modules load offline and compute accuracy, macro-F1 and AUROC correctly."""

import numpy as np
import pytest

from modeling_merge.training import classification_metrics, load_metric


def test_accuracy_is_the_share_of_correct_predictions():
    result = load_metric("accuracy").compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    assert result == {"accuracy": pytest.approx(3 / 4)}


def test_macro_f1_weights_every_class_equally():
    # class 0: P=1, R=1/2 -> F1=2/3; class 1: P=2/3, R=1 -> F1=4/5; class 2: never seen, listed -> 0.
    result = load_metric("macro_f1").compute(predictions=[0, 1, 1, 1], references=[0, 0, 1, 1], labels=[0, 1, 2])
    assert result["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)


def test_binary_auroc_counts_correctly_ordered_pairs():
    # positives score 0.8, 0.3; negatives 0.5, 0.1: 3 of the 4 (positive, negative) pairs are ordered.
    result = load_metric("roc_auc", "binary").compute(prediction_scores=[0.8, 0.3, 0.5, 0.1], references=[1, 1, 0, 0])
    assert result["roc_auc"] == pytest.approx(3 / 4)


def test_multiclass_auroc_averages_one_vs_rest_over_present_classes():
    scores = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    perfect = load_metric("roc_auc", "multiclass").compute(prediction_scores=scores, references=[0, 1, 2, 0])
    assert perfect["roc_auc"] == pytest.approx(1.0)
    reversed_scores = scores[:, ::-1]
    worst = load_metric("roc_auc", "multiclass").compute(prediction_scores=reversed_scores, references=[2, 1, 0, 2])
    assert worst["roc_auc"] == pytest.approx(1.0)
    inverted = load_metric("roc_auc", "multiclass").compute(prediction_scores=1 - scores, references=[0, 1, 2, 0])
    assert inverted["roc_auc"] == pytest.approx(0.0)


def test_auroc_refuses_a_single_class_and_nan_scores():
    with pytest.raises(ValueError, match="two classes"):
        load_metric("roc_auc", "binary").compute(prediction_scores=[0.1, 0.2], references=[1, 1])
    with pytest.raises(ValueError, match="NaN"):
        load_metric("roc_auc", "binary").compute(prediction_scores=[0.1, float("nan")], references=[0, 1])


def test_classification_metrics_picks_binary_or_one_vs_rest_auroc():
    binary = classification_metrics(np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]), np.array([0, 1, 1]))
    assert binary["accuracy"] == pytest.approx(2 / 3)
    assert binary["roc_auc"] == pytest.approx(1.0)  # class-1 probabilities still rank both positives first
    three = classification_metrics(np.eye(3) * 5, np.array([0, 1, 2]))
    assert three == {"accuracy": 1.0, "macro_f1": 1.0, "roc_auc": 1.0}


def test_classification_metrics_refuses_nan_logits_and_mismatched_shapes():
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="expected logits"):
        classification_metrics(np.zeros((3, 2)), np.zeros(2))


def test_binary_classification_metrics_add_average_precision():
    # class-1 probabilities 0.88, 0.5, 0.73, 0.27 (positives first two): ranked 0.88+, 0.73-, 0.5+, 0.27-
    # -> precision at each positive 1/1 and 2/3 -> AP = (1 + 2/3) / 2.
    logits = np.log(np.array([[0.12, 0.88], [0.5, 0.5], [0.27, 0.73], [0.73, 0.27]]))
    binary = classification_metrics(logits, np.array([1, 1, 0, 0]))
    assert binary["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert binary["roc_auc"] == pytest.approx(3 / 4)
    assert "average_precision" not in classification_metrics(np.eye(3) * 5, np.array([0, 1, 2]))
    assert "average_precision" not in classification_metrics(np.array([[2.0, 0.0], [1.0, 0.0]]), np.array([0, 0]))
