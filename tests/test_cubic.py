"""The locally optimal cubic statistic S and the Fisher information F of local f_NL.

Claims checked (cmbscat/stats/cubic.py): the 3j closed form; the l-triple sum for F
against an independent O(lmax^2) evaluation; over Gaussian maps E[S] = 0 and
Var(S) = F; over local-f_NL maps E_a[S] = a F (the score identity), linear in a.
Small band limits (lmax 47, nside 32, where pixelisation error is negligible) keep
the Monte Carlo to a few seconds.
"""

import healpy as hp
import numpy as np
import pytest

from cmbscat.healpix import synthesis
from cmbscat.sky.nongaussian import LocalFNL
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl
from cmbscat.stats.cubic import (CubicStatistic, fisher_information, fisher_information_legendre,
                                 wigner_3j_000_squared)

LMAX, NSIDE = 47, 32


def gaussian_alms(n, seed, lmax=LMAX):
    rng = np.random.default_rng(seed)
    cl = planck2018_cl(lmax)
    return [gaussian_alm(cl, rng) for _ in range(n)]


def test_wigner_3j_closed_form():
    hand = {(1, 1, 2): 2 / 15, (2, 2, 2): 2 / 35, (1, 1, 0): 1 / 3, (2, 2, 0): 1 / 5,
            (2, 3, 3): 4 / 105, (0, 0, 0): 1.0, (1, 2, 3): 3 / 35}
    for ells, value in hand.items():
        assert np.isclose(wigner_3j_000_squared(*ells), value, rtol=1e-12), ells
        # symmetric under permutations of the columns
        assert np.isclose(wigner_3j_000_squared(*ells[::-1]), value, rtol=1e-12), ells
    assert wigner_3j_000_squared(1, 1, 1) == 0          # J odd
    assert wigner_3j_000_squared(2, 3, 6) == 0          # triangle broken
    assert wigner_3j_000_squared(10, 3, 6) == 0
    # orthogonality: sum_l3 (2 l3 + 1) (l1 l2 l3; 0 0 0)^2 = 1, up to large l
    l3 = np.arange(0, 2500)
    for l1, l2 in [(0, 0), (2, 5), (17, 17), (40, 300), (999, 1000)]:
        total = np.sum((2 * l3 + 1) * wigner_3j_000_squared(l1, l2, l3))
        assert abs(total - 1) < 1e-10, (l1, l2, total)


def test_wigner_3j_matches_sympy():
    wigner = pytest.importorskip("sympy.physics.wigner")
    for ells in [(3, 5, 6), (10, 20, 30), (50, 60, 70), (100, 120, 200), (7, 7, 12)]:
        exact = float(wigner.wigner_3j(*ells, 0, 0, 0)) ** 2
        assert np.isclose(wigner_3j_000_squared(*ells), exact, rtol=1e-10), ells


def test_fisher_information_two_independent_evaluations():
    """3j triple sum vs Gauss-Legendre quadrature of the expanded sum (no 3j symbols)."""
    cl = planck2018_cl(64)
    f = fisher_information(cl)
    assert f > 0 and np.isclose(f, fisher_information_legendre(cl), rtol=1e-9)
    # multipoles with C_l = 0 drop out of both the same way
    holes = cl.copy()
    holes[[5, 17, 40]] = 0
    assert np.isclose(fisher_information(holes), fisher_information_legendre(holes), rtol=1e-9)
    assert fisher_information(holes) != pytest.approx(f, rel=1e-3)
    # F scales as C^1 (b^2 ~ C^4 over C^3)
    assert np.isclose(fisher_information(4 * cl), 4 * f, rtol=1e-12)


def test_statistic_definition_matches_healpy():
    """S = -sum W (T^2 - sigma^2) Delta with W = map of a_lm / C_l, via healpy's transforms."""
    cl = planck2018_cl(LMAX)
    statistic = CubicStatistic(cl, NSIDE, LMAX)
    alm = gaussian_alms(1, seed=11)[0]
    t = hp.alm2map(alm, NSIDE, lmax=LMAX)
    inv = np.zeros_like(cl)
    inv[2:] = 1 / cl[2:]
    w = hp.alm2map(hp.almxfl(alm, inv), NSIDE, lmax=LMAX)
    sigma2 = np.sum((2 * np.arange(LMAX + 1) + 1) * cl) / (4 * np.pi)
    expected = -np.sum(w * (t * t - sigma2)) * hp.nside2pixarea(NSIDE)
    assert np.isclose(statistic(alm), expected, rtol=1e-10)
    assert statistic(alm, synthesis(alm, NSIDE, LMAX)) == statistic(alm)
    assert np.isclose(statistic(-alm), -statistic(alm), rtol=1e-12)   # odd in T


def test_input_checks():
    cl = planck2018_cl(LMAX)
    statistic = CubicStatistic(cl, NSIDE, LMAX)
    with pytest.raises(ValueError):
        statistic(np.zeros(10, dtype=complex))
    with pytest.raises(ValueError):
        statistic(gaussian_alms(1, seed=1)[0], np.zeros(12 * 16**2))
    dipole = cl.copy()
    dipole[1] = 1.0
    with pytest.raises(ValueError):
        CubicStatistic(dipole, NSIDE, LMAX)
    with pytest.raises(ValueError):
        fisher_information(dipole)
    with pytest.raises(ValueError):
        CubicStatistic(cl[:10], NSIDE, LMAX)


def test_pixelisation_error_is_negligible_at_half_lmax():
    """The pixel sum integrates a function band-limited at 3 lmax: at lmax 47, nside 32
    leaves S within ~0.3 % of sigma_S of a fine grid's value, whereas at the HEALPix
    limit lmax = 3 nside - 1 (nside 16) the error is ~30 % of sigma_S."""
    cl = planck2018_cl(LMAX)
    alms = gaussian_alms(100, seed=5)
    fine = np.array([CubicStatistic(cl, 128, LMAX)(a) for a in alms])
    half = np.array([CubicStatistic(cl, NSIDE, LMAX)(a) for a in alms])
    coarse = np.array([CubicStatistic(cl, 16, LMAX)(a) for a in alms])
    assert np.std(half - fine) < 0.01 * np.std(fine)
    assert np.std(coarse - fine) > 0.1 * np.std(fine)


@pytest.fixture(scope="module")
def gaussian_scores():
    """S of 20000 Gaussian maps at (lmax 47, nside 32), and F (~5 s)."""
    cl = planck2018_cl(LMAX)
    statistic = CubicStatistic(cl, NSIDE, LMAX)
    rng = np.random.default_rng(2024)
    scores = np.array([statistic(gaussian_alm(cl, rng)) for _ in range(20000)])
    return scores, fisher_information(cl)


def test_gaussian_maps_have_zero_mean(gaussian_scores):
    scores, fisher = gaussian_scores
    standard_error = scores.std(ddof=1) / np.sqrt(scores.size)
    assert abs(scores.mean()) < 4 * standard_error, scores.mean() / standard_error


def test_gaussian_variance_is_the_fisher_information(gaussian_scores):
    scores, fisher = gaussian_scores
    n = scores.size
    centred = scores - scores.mean()
    kurtosis = np.mean(centred**4) / np.mean(centred**2) ** 2
    # sd of a sample variance, relative: sqrt((kurtosis - 1) / n) (~0.010 here)
    relative_error = np.sqrt((kurtosis - 1) / n)
    ratio = scores.var(ddof=1) / fisher
    assert relative_error < 0.015
    assert abs(ratio - 1) < 4 * relative_error, (ratio, relative_error)


def test_mean_is_linear_in_a_with_slope_fisher():
    """E_a[S] = a F + O(a^3) on LocalFNL maps; the same Gaussian seeds at every a, so
    the Gaussian part of S cancels from each map's slope (a sqrt(F) <= 0.7 here)."""
    cl = planck2018_cl(LMAX)
    statistic = CubicStatistic(cl, NSIDE, LMAX)
    fisher = fisher_information(cl)
    fnls = np.array([-100.0, -50.0, 0.0, 50.0, 100.0])
    models = [LocalFNL(cl, NSIDE, fnl) for fnl in fnls]
    a = np.array([model.a for model in models])
    alms = gaussian_alms(2000, seed=99)
    scores = np.empty((len(alms), len(fnls)))
    for i, g_alm in enumerate(alms):
        g_map = synthesis(g_alm, NSIDE, LMAX)
        scores[i] = [statistic(model(g_alm, g_map)) for model in models]
    # per map: S(a) = c0 + c1 a + c2 a^2, fitted through the five a values
    c2, c1, _ = np.polyfit(a, scores.T, 2)
    slope, slope_error = c1.mean(), c1.std(ddof=1) / np.sqrt(len(alms))
    assert slope_error < 0.005 * fisher
    assert abs(slope - fisher) < 4 * slope_error, (slope / fisher, slope_error / fisher)
    # no quadratic term (E_a[S] is odd in a): its effect at the largest a is within noise
    curvature = c2.mean() * a.max()
    curvature_error = c2.std(ddof=1) / np.sqrt(len(alms)) * a.max()
    assert abs(curvature) < 4 * curvature_error + 1e-3 * fisher, (curvature / fisher, curvature_error / fisher)
    # the statistic is positive-going for positive f_NL (negative skewness, positive S)
    assert np.all(np.diff(scores.mean(0)) > 0)
