"""The HEALPix pixel window computed here (cmbscat.sky.pixel_window) and the shipped table."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.sky.pixel_window import (SHIPPED_NSIDES, compute_pixel_window, pixel_window, symmetric_pixels,
                                      window_squared)


def window_squared_by_harmonics(nside: int, lmax: int, level: int) -> np.ndarray:
    """w_l^2 the other way round: each Y_lm synthesised at nside 2^level nside, averaged
    over every pixel's children by ud_grade, then (4 pi / (2l + 1)) sum_m |average|^2,
    averaged over all pixels. The same quadrature as window_squared's, with neither its
    pair distances, its binning, its Legendre recurrence nor its symmetry reduction."""
    fine = nside * 2**level
    size = hp.Alm.getsize(lmax)
    out = np.empty(lmax + 1)
    for ell in range(lmax + 1):
        total = np.zeros(hp.nside2npix(nside))
        for m in range(ell + 1):
            index = hp.Alm.getidx(lmax, ell, m)
            for value in ((1.0,) if m == 0 else (1.0, 1j)):
                alm = np.zeros(size, complex)
                alm[index] = value
                # a_lm = 1 gives Y_l0 (m = 0) or 2 Re Y_lm; a_lm = i gives -2 Im Y_lm
                average = hp.ud_grade(hp.alm2map(alm, fine, lmax=lmax), nside)
                total += average**2 if m == 0 else average**2 / 2.0
        out[ell] = 4 * np.pi / (2 * ell + 1) * total.mean()
    return out


def test_symmetric_pixels_stand_for_all_pixels():
    for nside in (1, 2, 4, 8):
        pixels, weights = symmetric_pixels(nside)
        assert weights.sum() == 12 * nside**2 and len(np.unique(pixels)) == len(pixels)
    every = window_squared(4, 16, 2, np.arange(hp.nside2npix(4)))
    assert np.allclose(window_squared(4, 16, 2), every, rtol=0, atol=1e-13)


def test_pair_quadrature_equals_the_harmonic_computation():
    for nside, level in ((2, 3), (4, 2)):
        lmax = 3 * nside
        by_pairs = window_squared(nside, lmax, level)
        by_harmonics = window_squared_by_harmonics(nside, lmax, level)
        assert np.abs(by_pairs - by_harmonics).max() < 1e-6


def test_extrapolation_converges():
    """Richardson over levels (2, 3) and (3, 4) agree: the quadrature error is O(4^-k)."""
    nside = 8
    a = compute_pixel_window(nside, levels=(2, 3))
    b = compute_pixel_window(nside, levels=(3, 4))
    assert np.abs(a - b)[:2 * nside + 1].max() < 1e-4
    assert np.abs(a - b).max() < 5e-4
    # unextrapolated, the finer level is ~4x closer than the coarser
    fine, coarse = (np.sqrt(window_squared(nside, 4 * nside, k)) for k in (3, 2))
    assert np.abs(coarse - b).max() > 3 * np.abs(fine - b).max()


def test_shipped_table():
    for nside in SHIPPED_NSIDES:
        w = pixel_window(nside, 4 * nside)
        assert w.shape == (4 * nside + 1,) and w[0] == pytest.approx(1.0, abs=1e-14)
        low = w[:2 * nside + 1]
        assert np.all(np.diff(low) < 0) and low[-1] > 0.7
    assert np.allclose(pixel_window(8, 32), compute_pixel_window(8), rtol=0, atol=1e-14)
    assert pixel_window(16).shape == (48,)   # default lmax 3 nside - 1
    with pytest.raises(CmbscatError, match="no HEALPix pixel window for nside 3"):
        pixel_window(3)
    with pytest.raises(CmbscatError, match="tabulated up to l = 64"):
        pixel_window(16, 65)
