"""The amplitude at which a method reaches 95 % accuracy, fitted on a scan."""

import numpy as np
import pytest

from cmbscat.experiment.sensitivity import amplitude_at_accuracy, describe, model_accuracy, ratio


@pytest.mark.parametrize("a95, p", [(10.0, 1.0), (35.0, 2.0)])
def test_recovers_the_amplitude_of_a_known_curve(a95, p):
    rng = np.random.default_rng(3)
    amplitudes = np.array([5, 10, 20, 30, 50, 80.0])
    n = np.full(amplitudes.size, 200)
    hits = []
    for trial in range(12):
        k = rng.binomial(n, model_accuracy(amplitudes, a95, p))
        fit = amplitude_at_accuracy(amplitudes, k, n)
        low, high = fit["interval68"]
        hits.append(low <= a95 <= high)
        assert fit["status"] == "ok" and 0.5 * a95 < fit["estimate"] < 2 * a95
    # a 68 % interval covers the truth in roughly 68 % of trials (12 trials: >= 5 is generous)
    assert sum(hits) >= 5, sum(hits)


def test_a_method_at_chance_is_reported_as_not_reaching_the_target():
    amplitudes = np.array([5, 10, 20, 30, 50, 80.0])
    k = np.array([98, 103, 99, 101, 97, 104])
    fit = amplitude_at_accuracy(amplitudes, k, np.full(6, 200))
    assert fit["status"] == "above scan" and "not reached" in describe(fit)
    assert ratio(fit, fit) is None


def test_perfect_everywhere_is_below_the_scan():
    fit = amplitude_at_accuracy([20, 30, 50], [200, 200, 200], [200, 200, 200])
    assert fit["status"] == "below scan" and describe(fit).startswith("< ")


def test_ratio_of_two_fits():
    amplitudes = np.array([5, 10, 20, 30, 50, 80.0])
    n = np.full(6, 400)
    a = amplitude_at_accuracy(amplitudes, np.round(n * model_accuracy(amplitudes, 10, 1)), n)
    b = amplitude_at_accuracy(amplitudes, np.round(n * model_accuracy(amplitudes, 30, 2)), n)
    value, low, high = ratio(b, a)
    assert value == pytest.approx(3.0, rel=0.05) and low < value < high


def test_a_narrow_interval_brackets_its_estimate():
    # a steep, well-measured curve: its 68 % interval is narrower than the profile
    # grid's spacing, and must still contain the estimate (regression: it was one
    # grid point, [39.6, 39.6] around an estimate of 39.0)
    fit = amplitude_at_accuracy([10, 20, 30, 50, 80], np.array([100, 127, 178, 198, 200]),
                                np.full(5, 200))
    low, high = fit["interval68"]
    assert fit["status"] == "ok"
    assert low < fit["estimate"] < high
    assert 0.02 < np.log(high / low) < 0.3
