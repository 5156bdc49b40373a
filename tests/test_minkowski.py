"""Minkowski functionals: harmonic derivatives, exact geometry, Gaussian expectations."""

import healpy as hp
import numpy as np
import pytest
from scipy.integrate import quad

from cmbscat.errors import CmbscatError
from cmbscat.healpix import synthesis
from cmbscat.sky.spectra import gaussian_alm, pixel_variance, planck2018_cl
from cmbscat.stats.minkowski import DEFAULT_THRESHOLDS, MinkowskiFunctionals, gaussian_expectations


def _analytic_field(nside):
    """u = cos t + sin^2 t cos 2p + sin t cos t sin p + sin^3 t cos 3p (l <= 3) at the pixel
    centres, with its partial derivatives in closed form: (u, u_t, u_p, u_tt, u_tp, u_pp)."""
    t, p = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)))
    s, c, s2, c2 = np.sin(t), np.cos(t), np.sin(2 * t), np.cos(2 * t)
    u = c + s**2 * np.cos(2 * p) + 0.5 * s2 * np.sin(p) + s**3 * np.cos(3 * p)
    u_t = -s + s2 * np.cos(2 * p) + c2 * np.sin(p) + 3 * s**2 * c * np.cos(3 * p)
    u_p = -2 * s**2 * np.sin(2 * p) + 0.5 * s2 * np.cos(p) - 3 * s**3 * np.sin(3 * p)
    u_tt = -c + 2 * c2 * np.cos(2 * p) - 2 * s2 * np.sin(p) + 3 * (2 * s * c**2 - s**3) * np.cos(3 * p)
    u_tp = -2 * s2 * np.sin(2 * p) + c2 * np.cos(p) - 9 * s**2 * c * np.sin(3 * p)
    u_pp = -4 * s**2 * np.cos(2 * p) - 0.5 * s2 * np.sin(p) - 9 * s**3 * np.cos(3 * p)
    return t, u, u_t, u_p, u_tt, u_tp, u_pp


def test_harmonic_derivatives_match_closed_form():
    """Covariant gradient and Hessian from harmonic space equal the analytic ones, and the
    spin-2 synthesis of sqrt((l-1)l(l+1)(l+2)) a_lm is minus the traceless Hessian."""
    nside, lmax = 32, 8
    t, u, u_t, u_p, u_tt, u_tp, u_pp = _analytic_field(nside)
    cot, s = np.cos(t) / np.sin(t), np.sin(t)
    h_tt = u_tt
    h_tp = (u_tp - cot * u_p) / s
    h_pp = u_pp / s**2 + cot * u_t
    alm = hp.map2alm(u, lmax=lmax, iter=20)    # band-limited field: iterations converge
    assert np.abs(synthesis(alm, nside, lmax) - u).max() < 1e-12

    ell = hp.Alm.getlm(lmax)[0].astype(float)
    spin2 = synthesis(alm * np.sqrt((ell - 1) * ell * (ell + 1) * (ell + 2)), nside, lmax, spin=2)
    np.testing.assert_allclose(spin2[0], -(h_tt - h_pp), atol=1e-11)
    np.testing.assert_allclose(spin2[1], -2 * h_tp, atol=1e-11)
    np.testing.assert_allclose(synthesis(-ell * (ell + 1) * alm, nside, lmax), h_tt + h_pp, atol=1e-11)

    grad, hess = MinkowskiFunctionals(nside, lmax).derivatives(alm)
    np.testing.assert_allclose(grad, [u_t, u_p / s], atol=1e-11)
    np.testing.assert_allclose(hess, [h_tt, h_tp, h_pp], atol=1e-11)
    assert np.abs(hess).max() > 5                 # the comparison is not between zeros


def test_gradient_matches_healpy_der1():
    nside, lmax = 64, 127
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(11))
    alm[hp.Alm.getidx(lmax, np.array([0, 1, 1]), np.array([0, 0, 1]))] = [30.0, -12.0, 5 + 7j]
    _, d_theta, d_phi = hp.alm2map_der1(alm, nside, lmax=lmax)
    grad, _ = MinkowskiFunctionals(nside, lmax).derivatives(alm)
    scale = np.abs(d_theta).max()
    np.testing.assert_allclose(grad[0], d_theta, atol=1e-9 * scale)
    np.testing.assert_allclose(grad[1], d_phi, atol=1e-9 * scale)


# Axisymmetric fields T = f(n . r) about a tilted axis n, whose excursion sets {T > c}
# are caps: V0 = area / 4 pi, V1 = boundary length / 16 pi, V2 = total geodesic
# curvature / 8 pi^2, as functions of the level c (x0 = cos of the caps' angular radius).
def _dipole_exact(c):
    return (1 - c) / 2, np.sqrt(1 - c**2) / 8, c / (4 * np.pi)            # one cap, chi = 1


def _quadrupole_exact(c):
    x0 = np.sqrt((2 * c + 1) / 3)                                          # two caps, chi = 2
    return 1 - x0, np.sqrt(1 - x0**2) / 4, x0 / (2 * np.pi)


@pytest.mark.parametrize("profile, exact, chi, thresholds", [
    (lambda x: x, _dipole_exact, 1, np.linspace(-1.2, 1.2, 7)),
    (lambda x: (3 * x**2 - 1) / 2, _quadrupole_exact, 2, np.linspace(-0.5, 1.5, 6)),
], ids=["dipole", "quadrupole"])
def test_caps_have_exact_functionals(profile, exact, chi, thresholds):
    """The estimator's normalisations, against cap geometry (the quadrupole's Hessian has a
    traceless part, so the spin-2 term enters); errors are pixelisation, < 3e-3 relative."""
    nside, lmax, width = 128, 4, 0.3
    axis = hp.ang2vec(1.0, 0.7)                   # tilted, so the contours cross the pixel rings
    t = profile(axis @ np.array(hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))))
    alm = hp.map2alm(t, lmax=lmax, iter=10)
    sky = synthesis(alm, nside, lmax)
    assert np.abs(sky - t).max() < 1e-10
    mean, std = sky.mean(), sky.std()
    v = MinkowskiFunctionals(nside, lmax, thresholds, width)(alm)

    level = lambda nu: mean + nu * std            # the threshold on T
    v0 = exact(level(thresholds))[0]
    binned = np.array([[quad(lambda x: exact(level(x))[i], nu - width / 2, nu + width / 2)[0] / width
                        for nu in thresholds] for i in (1, 2)])
    np.testing.assert_allclose(v[0], v0, atol=3e-4)
    np.testing.assert_allclose(v[1], binned[0], rtol=4e-3)
    np.testing.assert_allclose(v[2], binned[1], rtol=5e-3, atol=1e-4)
    # Gauss-Bonnet: chi = (total geodesic curvature + area) / 2 pi = 4 pi V2 + 2 V0
    # (V2 binned, V0 not: equal only where V2 is close to linear within the bin)
    np.testing.assert_allclose(4 * np.pi * v[2] + 2 * v[0], chi, atol=0.01)


def test_gaussian_maps_match_expectations_and_non_gaussian_maps_do_not():
    """Gaussian maps: the mean of each functional over 40 maps is within 4 standard errors of
    the analytic expectation at every threshold (39 comparisons), both for the ensemble
    spectrum and, sharper, for each map's own spectrum (which takes out the map-to-map
    scatter of the gradient variance tau: standard errors 0.1 % of V1's peak and 0.3 % of
    V2's, so a 1 % error in either normalisation fails). Normalising each map by its own
    variance biases the mean by ~1e-4 in V0 here, about one standard error at most.
    A skewed family T = g - a (g^2 - sigma^2), a sigma = 0.1, is far off (> 100 sigma)."""
    nside, lmax, n = 128, 255, 40
    cl = planck2018_cl(lmax)
    mf = MinkowskiFunctionals(nside, lmax)
    expected = gaussian_expectations(cl, mf.thresholds, mf.width)
    rng = np.random.default_rng(2024)
    v, v_own = [], []
    for _ in range(n):
        alm = gaussian_alm(cl, rng)
        v.append(mf(alm))
        v_own.append(v[-1] - gaussian_expectations(hp.alm2cl(alm), mf.thresholds, mf.width))
    v, v_own = np.array(v), np.array(v_own)
    sem = v.std(axis=0, ddof=1) / np.sqrt(n)
    z = (v.mean(axis=0) - expected) / sem
    assert np.all(np.abs(z) < 4), np.round(z, 1)
    z_own = v_own.mean(axis=0) / (v_own.std(axis=0, ddof=1) / np.sqrt(n))
    assert np.all(np.abs(z_own) < 4), np.round(z_own, 1)
    # the expectations are not trivially matched: the functionals are far from zero
    assert expected[1].max() > 100 * sem[1].max() and np.abs(expected[2]).max() > 50 * sem[2].max()

    # non-Gaussian maps, each against the Gaussian expectation for its own spectrum, so that
    # what is detected is not the power that the quadratic term adds
    sigma = np.sqrt(pixel_variance(cl))
    a = 0.1 / sigma                                # pixel skewness ~ -6 a sigma = -0.6
    resid_ng = []
    for _ in range(6):
        g = synthesis(gaussian_alm(cl, rng), nside, lmax)
        alm = hp.map2alm(g - a * (g * g - sigma**2), lmax=lmax, iter=0)
        resid_ng.append(mf(alm) - gaussian_expectations(hp.alm2cl(alm), mf.thresholds, mf.width))
    z_ng = np.mean(resid_ng, axis=0) / (v_own.std(axis=0, ddof=1) / np.sqrt(n))
    assert np.abs(z_ng[1]).max() > 30 and np.abs(z_ng[2]).max() > 30, np.round(z_ng, 1)


def test_gaussian_expectation_formulas():
    cl = planck2018_cl(300)
    ell = np.arange(cl.size)
    tau = np.sum((2 * ell + 1) * ell * (ell + 1) * cl) / (2 * np.sum((2 * ell + 1) * cl))
    nu = np.array([-2.0, -0.3, 0.0, 1.1])
    point = gaussian_expectations(cl, nu, width=0)
    g = np.exp(-nu**2 / 2)
    np.testing.assert_allclose(point[1], np.sqrt(tau) / 8 * g)
    np.testing.assert_allclose(point[2], tau * nu * g / (2 * np.pi) ** 1.5)
    binned = gaussian_expectations(cl, nu, width=0.4)
    np.testing.assert_array_equal(binned[0], point[0])                  # V0 is a step, not binned
    for k, x in enumerate(nu):
        for i in (1, 2):
            avg = quad(lambda y: gaussian_expectations(cl, [y], width=0)[i, 0], x - 0.2, x + 0.2)[0] / 0.4
            assert np.isclose(binned[i, k], avg, rtol=1e-9, atol=1e-14)
    # only ratios of C_l enter, and the monopole (subtracted by the estimator) does not
    shifted = cl * 7.0
    shifted[0] = 1e6
    np.testing.assert_allclose(gaussian_expectations(shifted, nu, 0.4), binned)


def test_shapes_thresholds_and_v0_is_the_pixel_fraction():
    nside, lmax = 32, 63
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(5))
    alm[0] = 50.0                                  # a monopole: removed by the normalisation
    mf = MinkowskiFunctionals(nside, lmax)
    v = mf(alm)
    assert v.shape == (3, DEFAULT_THRESHOLDS.size) and v.dtype == np.float64
    assert mf.width == pytest.approx(0.5)
    sky = hp.alm2map(alm, nside, lmax=lmax)
    u = (sky - sky.mean()) / sky.std()
    np.testing.assert_array_equal(v[0], [np.mean(u > nu) for nu in DEFAULT_THRESHOLDS])
    assert np.all(np.diff(v[0]) <= 0) and np.all(v[1] >= 0)

    # a precomputed map gives the same answer; scaling and offsetting the map change nothing
    np.testing.assert_array_equal(mf(alm, sky_map=synthesis(alm, nside, lmax)), v)
    scaled = 3.0 * alm
    scaled[0] -= 40.0
    np.testing.assert_allclose(mf(scaled), v, rtol=1e-9, atol=1e-12)

    one = MinkowskiFunctionals(nside, lmax, thresholds=[0.7], width=0.2)(alm)
    assert one.shape == (3, 1) and one[0, 0] == np.mean(u > 0.7)
    assert MinkowskiFunctionals(nside, lmax, thresholds=[0.7]).width == 0.5
    assert MinkowskiFunctionals(nside, lmax, thresholds=[-1, 0, 2]).width == 1.0

    # overlapping bins (width > spacing): the bin (-0.5, 0.5] is the mean of (-0.5, 0] and (0, 0.5]
    wide = MinkowskiFunctionals(nside, lmax, thresholds=[-0.25, 0.0, 0.25], width=1.0)(alm)
    halves = MinkowskiFunctionals(nside, lmax, thresholds=[-0.25, 0.25], width=0.5)(alm)
    np.testing.assert_allclose(wide[1:, 1], halves[1:].mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(wide[0], [np.mean(u > nu) for nu in (-0.25, 0.0, 0.25)])


@pytest.mark.parametrize("edges", [np.array([0.3]), np.linspace(-3.25, 3.25, 27),
                                   np.array([-1.0, -1.0 + 1e-7, 0.0, 2.0]), np.array([-2.0, 1e-4, 1e-3])])
def test_edge_counting_equals_searchsorted(edges):
    from cmbscat.stats.minkowski import _edges_below
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.normal(0, 2, 20000), edges, np.nextafter(edges, np.inf),
                             np.nextafter(edges, -np.inf), [-np.inf, np.inf, -1e300, 1e300]])
    np.testing.assert_array_equal(_edges_below(values, edges), np.searchsorted(edges, values, side="left"))


@pytest.mark.parametrize("kwargs", [dict(thresholds=[1.0, 0.0]), dict(thresholds=[]),
                                    dict(thresholds=[0.0, np.nan]), dict(width=0.0), dict(width=-1.0)])
def test_refuses_bad_thresholds_or_width(kwargs):
    with pytest.raises(CmbscatError):
        MinkowskiFunctionals(16, 31, **kwargs)


def test_refuses_bad_map_inputs():
    mf = MinkowskiFunctionals(16, 31)
    alm = gaussian_alm(planck2018_cl(31), np.random.default_rng(0))
    with pytest.raises(CmbscatError, match="nside 16"):
        mf(alm, sky_map=np.zeros(12 * 8**2))
    bad = synthesis(alm, 16, 31)
    bad[7] = np.nan
    with pytest.raises(CmbscatError, match="non-finite"):
        mf(alm, sky_map=bad)
    with pytest.raises(CmbscatError, match="constant"):
        mf(np.zeros_like(alm))
    with pytest.raises(CmbscatError):
        MinkowskiFunctionals(12, 31)
