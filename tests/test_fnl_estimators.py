"""f_NL estimators and their metrics: checked on synthetic predictors with known errors,
and the cubic anchor against its Fisher information on Gaussian and non-Gaussian maps."""

import math

import numpy as np
import pytest
import torch

from cmbscat.experiment.fnl_estimators import (CubicFisherEstimator, FeatureRegressor, TargetScaling,
                                               calibration_factor, ensemble_estimate, gaussian_nll)
from cmbscat.experiment.fnl_metrics import Z_INTERVAL, coverage, fnl_bins, regression_metrics
from cmbscat.sky.nongaussian import T_CMB_UK
from cmbscat.sky.simulate import SkySimulator
from cmbscat.stats.cubic import CubicStatistic, fisher_information


def test_interval_half_widths_are_the_gaussian_quantiles():
    from scipy.stats import norm

    assert Z_INTERVAL["68"] == pytest.approx(norm.ppf(0.5 + 0.6827 / 2), abs=1e-4)
    assert Z_INTERVAL["95"] == pytest.approx(norm.ppf(0.975), abs=1e-12)


def test_coverage_of_a_predictor_with_known_errors():
    """Estimates true + N(0, s): intervals with sigma = s cover 68.27 % / 95 %; sigma = s / 2
    covers P(|z| < 0.497) = 38.1 % and 2 P(|z| < 0.98) - 1 = 67.3 %."""
    rng = np.random.default_rng(1)
    true = np.repeat(np.linspace(-60, 60, 9), 4000)
    s = 3.0
    mean = true + rng.normal(0, s, true.size)
    sigma = np.full(true.size, s)
    assert coverage(true, mean, sigma, "68") == pytest.approx(0.6827, abs=0.01)
    assert coverage(true, mean, sigma, "95") == pytest.approx(0.95, abs=0.005)
    assert coverage(true, mean, sigma / 2, "68") == pytest.approx(0.381, abs=0.01)
    assert coverage(true, mean, sigma / 2, "95") == pytest.approx(0.673, abs=0.01)


def test_ensemble_of_seeds_with_shared_and_own_errors():
    """Seeds estimate f + e + d_i (e shared, sd 3; d_i each seed's own, sd 2) with calibrated
    sigma_i = sqrt(13): the ensemble's sigma is the average's error, sqrt(9 + 4 / 3), and
    its intervals cover 68.27 % / 95 %; the deep-ensemble mixture variance would not."""
    rng = np.random.default_rng(4)
    n_seeds, n_maps = 3, 40000
    true = np.repeat(np.linspace(-60, 60, 5), n_maps // 5)
    means = true + 3.0 * rng.standard_normal(n_maps) + 2.0 * rng.standard_normal((n_seeds, n_maps))
    sigmas = np.full((n_seeds, n_maps), np.sqrt(13.0))
    mean, sigma = ensemble_estimate(means, sigmas)
    np.testing.assert_allclose(mean, means.mean(axis=0))
    assert np.std(mean - true) == pytest.approx(np.sqrt(9 + 4 / 3), rel=0.01)
    assert np.sqrt(np.mean(sigma ** 2)) == pytest.approx(np.sqrt(9 + 4 / 3), rel=0.02)
    assert coverage(true, mean, sigma, "68") == pytest.approx(0.6827, abs=0.01)
    assert coverage(true, mean, sigma, "95") == pytest.approx(0.95, abs=0.01)
    mixture = np.sqrt(13.0 + means.var(axis=0, ddof=1))
    assert coverage(true, mean, mixture, "68") > 0.78  # over-covers: why it is not used


def test_ensemble_estimate_edge_cases():
    rng = np.random.default_rng(5)
    means, sigmas = rng.normal(size=(1, 7)), rng.uniform(1, 2, (1, 7))
    mean, sigma = ensemble_estimate(means, sigmas)  # one seed: its own estimate
    np.testing.assert_array_equal(mean, means[0])
    np.testing.assert_array_equal(sigma, sigmas[0])
    # seeds that agree exactly share all their error: sigma stays the seeds' own
    agree = np.repeat(means, 4, axis=0)
    np.testing.assert_allclose(ensemble_estimate(agree, np.ones((4, 7)))[1], 1.0)
    # seeds far apart: the floor, sigma_i / sqrt(S) for equal sigma_i
    apart = np.array([[-100.0], [0.0], [100.0], [0.0]])
    assert ensemble_estimate(apart, np.ones((4, 1)))[1][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        ensemble_estimate(np.ones((2, 3)), np.ones((3, 2)))


def test_regression_metrics_bins_bias_and_scatter():
    rng = np.random.default_rng(2)
    true = np.repeat([-30.0, 0.0, 30.0], 3000)
    noise = rng.normal(0, 1, true.size) * np.where(true == 0, 2.0, 5.0)  # sigma 2 at 0, 5 elsewhere
    mean = true + noise + np.where(true == 30, 1.0, 0.0)                 # bias +1 at f_NL 30
    m = regression_metrics(true, mean, np.full(true.size, 4.0))
    assert [b["fnl_mean"] for b in m["bins"]] == [-30.0, 0.0, 30.0]
    assert m["at_zero"]["sigma_fnl"] == pytest.approx(2.0, rel=0.05)
    assert m["bins"][0]["sigma_fnl"] == pytest.approx(5.0, rel=0.05)
    assert m["bins"][2]["bias"] == pytest.approx(1.0, abs=0.3)
    assert m["bins"][1]["bias"] == pytest.approx(0.0, abs=0.15)
    assert m["max_abs_bias_over_sigma"] == pytest.approx(0.2, abs=0.06)
    # predicted sigma 4: too wide at f_NL 0 (coverage ~95 %), too narrow elsewhere (~58 %)
    assert m["at_zero"]["coverage68"] > 0.9
    assert m["bins"][0]["coverage68"] < 0.62
    lo, hi = m["coverage68_interval68"]
    assert lo < m["coverage68"] < hi
    assert m["bias_chi2_dof"] == 3 and m["bias_chi2_p"] < 1e-6  # +1 at 30 is 8 standard errors
    unbiased = regression_metrics(true, true + noise, np.full(true.size, 4.0))
    assert unbiased["bias_chi2_p"] > 1e-3


def test_continuous_truth_gets_equal_width_bins():
    true = np.random.default_rng(3).uniform(-60, 60, 1000)
    bins = fnl_bins(true)
    assert len(bins) == 8
    assert sum(len(b) for b in bins) == 1000
    assert max(true[bins[0]]) < min(true[bins[1]])


def test_regression_metrics_refuses_bad_predictions():
    with pytest.raises(ValueError):
        regression_metrics(np.zeros(3), np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        regression_metrics(np.zeros(3), np.array([0, np.nan, 0]), np.ones(3))


def test_gaussian_nll_is_the_gaussian_log_likelihood():
    torch.manual_seed(0)
    out = torch.randn(50, 2, dtype=torch.float64)
    y = torch.randn(50, dtype=torch.float64)
    ref = torch.nn.functional.gaussian_nll_loss(out[:, 0], y, (2 * out[:, 1]).exp(), full=True)
    assert float(gaussian_nll(out, y)) == pytest.approx(float(ref), rel=1e-12)
    assert float(gaussian_nll(out, y, "sum")) == pytest.approx(50 * float(ref), rel=1e-12)


def test_target_scaling_round_trip():
    scaling = TargetScaling.fit(np.array([-10.0, 0.0, 30.0]))
    z = scaling.standardise(np.array([5.0]))
    mean, sigma = scaling.to_fnl(np.array([[z[0], math.log(0.5)]]))
    assert mean[0] == pytest.approx(5.0)
    assert sigma[0] == pytest.approx(0.5 * scaling.std)


def test_calibration_factor():
    true = np.zeros(4)
    assert calibration_factor(true, np.array([1.0, -1.0, 1.0, -1.0]), np.full(4, 0.5)) == pytest.approx(2.0)


def test_feature_regressor_learns_mean_and_heteroscedastic_error():
    """Features x = (f + e, noise) with e ~ N(0, 1 + |f| / 20): the fitted MLP's mean tracks f
    and its calibrated intervals cover ~68 % of held-out maps, wider at large |f|."""
    rng = np.random.default_rng(4)

    def draw(n):
        f = rng.uniform(-60, 60, n)
        e = rng.normal(0, 1, n) * (1 + np.abs(f) / 20)
        return np.stack([f + e, rng.normal(0, 1, n)], axis=1), f

    x, f = draw(1600)
    regressor = FeatureRegressor(seed=0).fit(x[:1200], f[:1200], x[1200:], f[1200:])
    xt, ft = draw(2000)
    mean, sigma = regressor.predict(xt)
    assert np.sqrt(np.mean((mean - ft) ** 2)) < 2.6   # the noise alone: rms 2.5
    assert 0.63 < coverage(ft, mean, sigma, "68") < 0.74
    assert sigma[np.abs(ft) > 45].mean() > 1.8 * sigma[np.abs(ft) < 15].mean()
    again = FeatureRegressor(seed=0).fit(x[:1200], f[:1200], x[1200:], f[1200:]).predict(xt)
    assert np.array_equal(again[0], mean)  # deterministic


def test_cubic_fisher_estimator_sigma_is_cramer_rao():
    estimator = CubicFisherEstimator(lmax=31)
    from cmbscat.sky.spectra import planck2018_cl

    assert estimator.fisher == pytest.approx(fisher_information(planck2018_cl(31)), rel=1e-8)
    assert estimator.sigma == pytest.approx(T_CMB_UK / 3 / math.sqrt(estimator.fisher))
    mean, sigma = estimator.predict(np.array([[estimator.fisher * 3 / T_CMB_UK]]))
    assert mean[0] == pytest.approx(1.0) and sigma[0] == estimator.sigma


def test_cubic_fisher_estimator_on_maps_is_unbiased_with_the_fisher_sigma():
    """Small maps (nside 32, lmax 63; sigma_opt ~ 100): at f_NL 0 the estimates scatter by
    the Fisher sigma; at f_NL 300 (3 sigma) their mean is 300, each within 3 standard errors."""
    nside, lmax, n = 32, 63, 400
    estimator = CubicFisherEstimator(lmax)
    cubic = CubicStatistic(planck2018_cl_at(lmax), nside, lmax)
    for fnl in (0.0, 300.0):
        sim = SkySimulator(nside, lmax, fnl)
        s = np.array([cubic(sim.alm(seed, 1 if fnl else 0)[0]) for seed in range(n)])
        mean, sigma = estimator.predict(s)
        assert abs(mean.mean() - fnl) < 3 * sigma[0] / math.sqrt(n)
        if fnl == 0:
            # the sample sd of n Gaussian draws has relative standard error 1 / sqrt(2 (n - 1))
            assert mean.std(ddof=1) == pytest.approx(sigma[0], rel=3 / math.sqrt(2 * (n - 1)))


def planck2018_cl_at(lmax):
    from cmbscat.sky.spectra import planck2018_cl

    return planck2018_cl(lmax)
