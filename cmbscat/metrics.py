"""Classification metrics for a binary (Gaussian = 0 / non-Gaussian = 1) test set."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy with its binomial standard error, ROC AUC, confusion matrix and counts.

    labels : (n,) ints in {0, 1}; scores : (n,) predicted probabilities of class 1.
    The accuracy uses ``scores >= threshold``; its standard error is sqrt(p (1 - p) / n).
    ``confusion`` is [[TN, FP], [FN, TP]] (rows: true class 0, 1; columns: predicted).
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    predicted = (scores >= threshold).astype(int)
    n = labels.size
    accuracy = float(np.mean(predicted == labels))
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(n),
        "accuracy": accuracy,
        "accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / n)),
        "auc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "confusion": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        "threshold": threshold,
    }


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=float))
    return fpr, tpr
