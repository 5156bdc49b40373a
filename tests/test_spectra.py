"""The input spectrum, Gaussian a_lm draws and the exact spectra of g^2 and g^3 - 3 sigma^2 g."""

import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.sky.spectra import (cubed_field_cl, gaussian_alm, pixel_variance, planck2018_cl,
                                 squared_field_cl)


def test_planck_table_is_a_cmb_spectrum():
    cl = planck2018_cl(3000)
    ell = np.arange(cl.size)
    dl = ell * (ell + 1) * cl / (2 * np.pi)
    assert cl[0] == cl[1] == 0 and np.all(cl[2:] > 0)
    assert 180 < np.argmax(dl) < 260            # first acoustic peak near ell ~ 220
    assert 5000 < dl.max() < 6500               # its height, uK^2
    with pytest.raises(CmbscatError):
        planck2018_cl(10**5)


def test_gaussian_alm_has_the_input_spectrum():
    lmax, n = 64, 200
    cl = planck2018_cl(lmax)
    rng = np.random.default_rng(3)
    mean = np.mean([hp.alm2cl(gaussian_alm(cl, rng)) for _ in range(n)], axis=0)
    ell = np.arange(2, lmax + 1)
    # each alm2cl is chi^2 with 2l+1 dof: sd of the mean = C_l sqrt(2 / ((2l+1) n))
    z = (mean[2:] - cl[2:]) / (cl[2:] * np.sqrt(2 / ((2 * ell + 1) * n)))
    assert np.all(np.abs(z) < 4.5), np.abs(z).max()
    assert abs(np.mean(z**2) - 1) < 0.4


def test_gaussian_alm_is_a_function_of_the_seed():
    cl = planck2018_cl(32)
    a = gaussian_alm(cl, np.random.default_rng(7))
    b = gaussian_alm(cl, np.random.default_rng(7))
    c = gaussian_alm(cl, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(a[hp.Alm.getidx(32, np.arange(33), 0)].imag == 0)


def test_squared_field_spectrum_matches_monte_carlo():
    """Exact (Gauss-Legendre) spectrum of g^2 vs g^2 formed on a grid that resolves it."""
    lmax, nside, n = 24, 32, 300
    cl = planck2018_cl(lmax)
    expected = squared_field_cl(cl)
    rng = np.random.default_rng(0)
    sigma2 = pixel_variance(cl)
    est = []
    for _ in range(n):
        g = hp.alm2map(gaussian_alm(cl, rng), nside, lmax=lmax)
        est.append(hp.alm2cl(hp.map2alm(g * g - sigma2, lmax=lmax, iter=3)))
    est = np.array(est)
    ratio = est.mean(0)[2:] / expected[2:]
    err = est.std(0)[2:] / np.sqrt(n) / expected[2:]
    assert np.all(np.abs(ratio - 1) < 5 * err), np.max(np.abs(ratio - 1) / err)
    # and the pixel variance is the sum of the spectrum
    assert np.isclose(sigma2, np.mean([np.var(hp.alm2map(gaussian_alm(cl, rng), nside, lmax=lmax))
                                       for _ in range(50)]), rtol=0.2)


def test_cubed_field_spectrum_matches_monte_carlo():
    """Exact spectrum H_l of h = g^3 - 3 sigma^2 g vs h formed on a grid that resolves it
    (g^3 reaches l = 3 lmax = 48 < 3 nside); h is uncorrelated with g at every l."""
    lmax, nside, n = 16, 32, 300
    cl = planck2018_cl(lmax)
    expected = cubed_field_cl(cl)
    rng = np.random.default_rng(1)
    sigma2 = pixel_variance(cl)
    auto, cross = [], []
    for _ in range(n):
        g_alm = gaussian_alm(cl, rng)
        g = hp.alm2map(g_alm, nside, lmax=lmax)
        h_alm = hp.map2alm(g * (g * g - 3 * sigma2), lmax=lmax, iter=3)
        auto.append(hp.alm2cl(h_alm))
        cross.append(hp.alm2cl(h_alm, g_alm))
    auto, cross = np.array(auto)[:, 2:], np.array(cross)[:, 2:]
    ratio = auto.mean(0) / expected[2:]
    err = auto.std(0) / np.sqrt(n) / expected[2:]
    assert np.all(np.abs(ratio - 1) < 5 * err), np.max(np.abs(ratio - 1) / err)
    z_cross = cross.mean(0) / (cross.std(0) / np.sqrt(n))
    assert np.all(np.abs(z_cross) < 5), np.abs(z_cross).max()


def test_field_power_spectra_sum_to_the_variance():
    """Exactness of the quadrature: the spectra vanish above their band limits (2 lmax for
    g^2, 3 lmax for h) and sum to the pixel variances <(g^2 - sigma^2)^2> = 2 sigma^4 and
    <h^2> = 6 sigma^6."""
    lmax = 40
    cl = planck2018_cl(lmax)
    sigma2 = pixel_variance(cl)
    for spectrum, limit, variance in ((squared_field_cl, 2 * lmax, 2 * sigma2**2),
                                      (cubed_field_cl, 3 * lmax, 6 * sigma2**3)):
        full = spectrum(cl, limit + 10)
        ell = np.arange(full.size)
        assert np.abs(full[limit + 1:]).max() < 1e-10 * full.max()
        assert np.isclose(np.sum((2 * ell + 1) * full) / (4 * np.pi), variance, rtol=1e-8)
        assert np.allclose(spectrum(cl), full[: lmax + 1], rtol=1e-10)


def test_synthesis_matches_healpy():
    """ducc0 synthesis: the scalar map as healpy.alm2map, the spin-1 gradient as alm2map_der1."""
    import healpy as hp

    from cmbscat.healpix import alm_ell_m, synthesis

    lmax, nside = 47, 16
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(5))
    scale = np.abs(hp.alm2map(alm, nside, lmax=lmax)).max()
    assert np.abs(synthesis(alm, nside, lmax) - hp.alm2map(alm, nside, lmax=lmax)).max() < 1e-12 * scale
    ell = alm_ell_m(lmax)[0]
    gradient = synthesis(alm * np.sqrt(ell * (ell + 1.0)), nside, lmax, spin=1)
    _, d_theta, d_phi = hp.alm2map_der1(alm, nside, lmax=lmax)
    assert np.abs(gradient - np.stack([d_theta, d_phi])).max() < 1e-11 * np.abs(d_theta).max()
