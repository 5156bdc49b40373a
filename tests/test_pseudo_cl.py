"""Decoupled band powers: the coupling matrix against its identities, and unbiased band
powers on masked, beamed, noisy Gaussian maps."""

import healpy as hp
import numpy as np
import pytest

from cmbscat.sky.spectra import gaussian_alm, planck2018_cl
from cmbscat.stats.pseudo_cl import BandPowers, mask_power, mode_coupling_matrix

NSIDE, LMAX = 32, 63


def test_full_sky_couples_nothing():
    full = np.ones(hp.nside2npix(NSIDE))
    m = mode_coupling_matrix(mask_power(full, 2 * LMAX), LMAX)
    np.testing.assert_allclose(m, np.eye(LMAX + 1), atol=1e-3)  # quadrature of the mask power: 3e-4


def test_rows_sum_to_the_mask_mean_square():
    """sum_l' M_ll' = sum_l'' (2l''+1) W_l'' / 4pi = mean of w^2 over the sphere, for every l
    (a constant C_l' = 1 is seen as 1 times the observed fraction)."""
    theta, _ = hp.pix2ang(NSIDE, np.arange(hp.nside2npix(NSIDE)))
    mask = (np.abs(np.pi / 2 - theta) > np.radians(20)).astype(float)
    w = mask_power(mask, 2 * LMAX)
    m = mode_coupling_matrix(w, 3 * LMAX)[: LMAX + 1]  # the sum over l' needs l' up to l + 2 lmax
    assert m.sum(axis=1)[2:LMAX // 2] == pytest.approx(np.mean(mask**2), rel=2e-2)


def test_band_powers_are_unbiased_on_masked_noisy_maps():
    cl = planck2018_cl(LMAX)
    theta, _ = hp.pix2ang(NSIDE, np.arange(hp.nside2npix(NSIDE)))
    binary = (np.abs(np.pi / 2 - theta) > np.radians(20)).astype(float)
    mask = np.clip(hp.smoothing(binary, fwhm=np.radians(8), lmax=3 * NSIDE - 1, iter=0), 0, 1) * binary
    beam = hp.gauss_beam(np.radians(1.0), LMAX)
    noise = np.full(LMAX + 1, 0.2 * cl[30])
    edges = np.array([2, 8, 16, 24, 32, 40, 48, 56, 64])  # up to lmax: no power outside the bins
    bands = BandPowers(mask, LMAX, edges, beam, noise)
    rng = np.random.default_rng(5)
    estimates = []
    for _ in range(150):
        d = hp.almxfl(gaussian_alm(cl, rng), beam) + gaussian_alm(noise, rng)
        estimates.append(bands(hp.map2alm(mask * hp.alm2map(d, NSIDE, lmax=LMAX), lmax=LMAX, iter=3)))
    estimates = np.array(estimates)
    # what the estimator is unbiased for: the spectrum through the band-power window
    # K^-1 P M B^2 C (for D_l constant within each bin it is exactly the bin's value)
    expected = bands._inverse @ (bands.p @ bands.coupling @ (beam**2 * cl))
    error = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(axis=0) - expected) < 3.5 * error), (estimates.mean(0) - expected) / error
    # and close to the plain bin averages of D_l (the window's leakage is small here)
    ell = np.arange(LMAX + 1)
    d_ell = ell * (ell + 1) * cl / (2 * np.pi)
    truth = np.array([d_ell[lo:hi].mean() for lo, hi in zip(edges[:-1], edges[1:])])
    np.testing.assert_allclose(expected, truth, rtol=0.05)
