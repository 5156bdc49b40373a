"""Classification metrics and their uncertainties for a binary test set (0 Gaussian, 1 non-Gaussian).

Scores are **logits** (log-odds of class 1), float64: ranking by them never ties
two confident predictions the way float32 probabilities do (sigmoid(x) is exactly
1.0 in float32 for x above about 17).

Uncertainties:

* one accuracy: the Wilson score interval (:func:`wilson_interval`), which stays
  inside [0, 1] and is not empty at 0 or 100 % (the Wald interval sqrt(p(1-p)/n) is);
* two methods on the same test maps: a paired comparison (:func:`paired_difference`:
  a bootstrap over maps of the difference in accuracy, and McNemar's exact test on
  the discordant maps), not two independent errors added in quadrature.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

#: z of a central 68.27 % (one-sigma) interval.
Z_68 = 1.0


def wilson_interval(n_correct: int | float, n: int, z: float = Z_68) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``n_correct / n``.

    ``z = 1`` gives the 68.27 % interval. ``n_correct`` may be fractional (a mean
    accuracy times n). Returns (low, high) in [0, 1].
    """
    if n <= 0:
        raise ValueError("n must be positive")
    p = n_correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1; rounding would put it a hair inside
    low = 0.0 if n_correct <= 0 else max(0.0, centre - half)
    high = 1.0 if n_correct >= n else min(1.0, centre + half)
    return low, high


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy with its 68 % Wilson interval, ROC AUC, confusion matrix and counts.

    labels : (n,) ints in {0, 1}; logits : (n,) log-odds of class 1 (float64).
    A map is called non-Gaussian when its logit is >= 0 (probability >= 1/2). The AUC
    ranks the logits themselves. ``confusion`` is [[TN, FP], [FN, TP]] (rows: true
    class 0, 1; columns: predicted).
    """
    labels = np.asarray(labels).astype(int)
    logits = np.asarray(logits, dtype=np.float64)
    predicted = (logits >= 0).astype(int)
    n = labels.size
    n_correct = int(np.sum(predicted == labels))
    low, high = wilson_interval(n_correct, n)
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(n),
        "n_correct": n_correct,
        "accuracy": n_correct / n,
        "accuracy_interval68": [low, high],
        "interval": "Wilson score, 68.27 %",
        "auc": float(roc_auc_score(labels, logits)) if both_classes else None,
        "confusion": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        "scores": "logit",
    }


def roc_points(labels: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(logits, dtype=np.float64))
    return fpr, tpr


def correct_predictions(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Boolean (..., n): whether each map is classified right (logit >= 0 means class 1)."""
    return (np.asarray(logits) >= 0) == (np.asarray(labels).astype(int) == 1)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value that methods A and B are equally accurate.

    correct_a, correct_b : (n,) booleans on the same test maps. Only the discordant
    maps count: b of them A gets right and B wrong, c the reverse; under the null
    hypothesis b ~ Binomial(b + c, 1/2). Returns 1.0 when there is no discordant map.
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def paired_sign_flip_p(scores: np.ndarray) -> float:
    """Exact two-sided p-value of the paired sign-flip test on integer per-map differences.

    scores : (n,) integers, one per test map (method A's minus method B's score on that
        map). Under the null hypothesis that the two methods are exchangeable on every
        map, each difference is as likely to have either sign, independently; the
        p-value is P(|sum s_i x_i| >= |sum x_i|) over the 2^n sign vectors s, computed
        exactly by convolving the per-map distributions (no sampling). With one seed per
        method (differences in {-1, 0, 1}) it is McNemar's exact test.
    """
    values = np.abs(np.asarray(scores, dtype=np.int64))
    if np.any(np.asarray(scores) != np.round(scores)):
        raise ValueError("the sign-flip test takes integer per-map differences")
    values = values[values > 0]
    observed = abs(int(np.sum(scores)))
    if values.size == 0:
        return 1.0
    total = int(values.sum())
    dist = np.zeros(2 * total + 1)  # index k: the sum k - total
    dist[total] = 1.0
    for v in values:  # each map adds +v or -v with probability 1/2
        dist = 0.5 * (np.roll(dist, v) + np.roll(dist, -v))  # no wrap: |sum| <= total
    sums = np.arange(-total, total + 1)
    return float(min(1.0, dist[np.abs(sums) >= observed].sum()))


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 4000,
                      seed: int = 0, z: float = Z_68) -> dict:
    """Accuracy of A minus accuracy of B on the same test maps, with a paired interval.

    correct_a, correct_b : booleans (n,) or (n_seeds, n): one row per training seed;
    a method's per-map score is the fraction of its seeds that classify the map right,
    so the difference is that of the seed-mean accuracies. The interval resamples test
    maps (a paired bootstrap, ``n_boot`` resamples, generator seeded by ``seed``) and
    takes the central ``z``-sigma percentiles. ``p`` is one test of the seed-mean
    difference, combined over seeds: the exact paired sign-flip test
    (:func:`paired_sign_flip_p`) on the per-map differences of the numbers of right
    seeds, scaled to integers (McNemar's exact test when each method has one seed).
    ``mcnemar_p`` is the largest exact McNemar p-value over the pairs of seeds (the
    least significant one), kept for the tables made before ``p`` existed.
    """
    a = np.atleast_2d(np.asarray(correct_a, bool))
    b = np.atleast_2d(np.asarray(correct_b, bool))
    if a.shape[1] != b.shape[1]:
        raise ValueError("the two methods were scored on different numbers of maps")
    per_map = a.mean(axis=0) - b.mean(axis=0)
    n = per_map.size
    rng = np.random.default_rng(seed)
    boot = per_map[rng.integers(0, n, (n_boot, n))].mean(axis=1)
    tail = 0.5 * math.erfc(z / math.sqrt(2))
    low, high = np.quantile(boot, [tail, 1 - tail])
    p_values = [mcnemar_exact(x, y) for x in a for y in b]
    # the per-map difference of seed-mean scores times n_seeds_a * n_seeds_b: integers
    scaled = a.sum(axis=0).astype(np.int64) * b.shape[0] - b.sum(axis=0).astype(np.int64) * a.shape[0]
    return {"difference": float(per_map.mean()), "interval68": [float(low), float(high)],
            "p": paired_sign_flip_p(scaled), "mcnemar_p": max(p_values), "n": int(n), "seeds": [int(a.shape[0]), int(b.shape[0])]}
