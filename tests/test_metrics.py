"""Metrics and their uncertainties: logits, Wilson intervals, paired comparisons."""

import math

import numpy as np
import pytest
import torch

from cmbscat.experiment.evaluate import network_logits
from cmbscat.experiment.metrics import classification_metrics, mcnemar_exact, paired_difference, wilson_interval


class _FixedLogits(torch.nn.Module):
    """A 'network' that returns the first input value of each map as its logit."""

    def forward(self, x):
        return x[:, 0, 0]


def test_confident_predictions_do_not_tie():
    """The review's case: float32 sigmoids of logits 20, 30, 40 are all exactly 1.0, so AUC 0.75."""
    labels = np.array([0, 1, 1, 0])
    x = np.array([20, 30, 40, -5], np.float32).reshape(4, 1, 1)
    logits = network_logits(_FixedLogits(), x, "cpu", batch_size=3)
    assert logits.dtype == np.float64 and np.array_equal(logits, [20, 30, 40, -5])
    assert classification_metrics(labels, logits)["auc"] == 1.0
    as_stored_before = torch.sigmoid(torch.from_numpy(x[:, 0, 0])).numpy()
    assert classification_metrics(labels, np.log(as_stored_before))["auc"] != 1.0  # the old defect


@pytest.mark.parametrize("k, n", [(0, 20), (20, 20), (13, 20), (766, 800), (1, 3)])
def test_wilson_interval_solves_its_defining_equation(k, n):
    """Bounds p satisfy |k/n - p| = z sqrt(p (1 - p) / n) (z = 1), and enclose k/n."""
    low, high = wilson_interval(k, n)
    p_hat = k / n
    assert low <= p_hat <= high and 0 <= low < high <= 1
    for p in (low, high):
        assert abs(abs(p_hat - p) - math.sqrt(p * (1 - p) / n)) < 1e-12
    if k == n:  # not the Wald interval's empty "100.0 +- 0.0 %"
        assert high == 1.0 and low < 1.0 - 0.5 / n


def test_mcnemar_exact_against_hand_computed_binomial():
    a = np.array([True] * 10 + [False] * 0 + [True] * 5)
    b = np.array([False] * 10 + [True] * 5)
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**10)  # 10 discordant, all one way
    a = np.array([True, False, True, False])
    b = np.array([False, True, True, False])
    assert mcnemar_exact(a, b) == 1.0  # one each way
    assert mcnemar_exact(a, a) == 1.0


def test_paired_difference_is_the_difference_of_seed_mean_accuracies():
    rng = np.random.default_rng(1)
    a = rng.random((3, 400)) < 0.9
    b = rng.random(400) < 0.8
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(a.mean() - b.mean())
    low, high = d["interval68"]
    assert low < d["difference"] < high
    # pairing: identical predictions have no spread at all, unlike two independent errors
    same = paired_difference(b, b)
    assert same["difference"] == 0 and same["interval68"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
    # the bootstrap's 68 % half-width is close to the analytic paired standard error
    per_map = a.mean(axis=0) - b
    se = per_map.std(ddof=1) / np.sqrt(per_map.size)
    assert (high - low) / 2 == pytest.approx(se, rel=0.15)


def test_sign_flip_test_is_mcnemar_for_one_seed_and_exact_against_enumeration():
    """One seed per method: the sign-flip p-value is McNemar's; several seeds: it equals the
    p-value counted over all 2^n sign vectors, and a real difference gives a small p."""
    import itertools

    from cmbscat.experiment.metrics import paired_sign_flip_p

    rng = np.random.default_rng(3)
    a, b = rng.random(60) < 0.8, rng.random(60) < 0.6
    assert paired_difference(a, b)["p"] == pytest.approx(mcnemar_exact(a, b), rel=1e-9)
    scores = np.array([3, -1, 2, 0, 1, 1, -2, 3, 1, 2])
    signs = np.array(list(itertools.product([-1, 1], repeat=scores.size)))
    counted = np.mean(np.abs(signs @ scores) >= abs(scores.sum()))
    assert paired_sign_flip_p(scores) == pytest.approx(counted, rel=1e-12)
    assert paired_sign_flip_p(np.zeros(5, int)) == 1.0
    three = rng.random((3, 400)) < 0.9
    worse = rng.random((3, 400)) < 0.8
    assert paired_difference(three, worse)["p"] < 1e-4
    assert paired_difference(three, three)["p"] == 1.0
