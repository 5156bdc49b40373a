"""Scattering transform: channels, paths, resolutions, equivariance, stability, input forms."""

from math import comb

import healpy as hp
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.healpix import rotate_alm
from cmbscat.scattering.transform import Scattering, alm_weights, nside_for_band
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl

LMAX = 127


@pytest.fixture(scope="module")
def cmb_alm():
    cl = planck2018_cl(LMAX)
    return gaussian_alm(cl, np.random.default_rng(7))


def rel_err(a, b, w):
    """Relative L2 (sphere) norm of a - b over all channels, a_lm arrays (C, n_alm)."""
    return float(np.sqrt(np.sum(w * np.abs(a - b) ** 2) / np.sum(w * np.abs(b) ** 2)))


def random_euler(rng):
    return rng.uniform(0, 2 * np.pi), np.arccos(rng.uniform(-1, 1)), rng.uniform(0, 2 * np.pi)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_channels_and_paths(depth, cmb_alm):
    sc = Scattering(LMAX, depth=depth, J0=3)
    assert sc.scales == list(range(3, 8))  # J = 7 for L = 128
    n = len(sc.scales)
    assert sc.n_channels == 1 + sum(comb(n, k) for k in range(1, depth + 1))
    assert sc.paths[0] == ()
    assert len(set(sc.paths)) == len(sc.paths)
    for p in sc.paths:
        assert len(p) <= depth and all(a > b for a, b in zip(p, p[1:]))
    arr = sc.paths_array()
    assert arr.shape == (sc.n_channels, depth) and np.all(arr[0] == -1)
    for row, p in zip(arr, sc.paths):
        assert tuple(row[row >= 0]) == p and np.all(row[len(p):] == -1)
    out = sc(cmb_alm)
    assert sc.lmax_out == 7 and sc.nside_out == 4
    assert out.shape == (sc.n_channels, hp.nside2npix(4))
    assert np.all(np.isfinite(out))
    # U[p] f >= 0 so its low-pass has a positive mean; S[()] of a CMB sky has ~zero mean
    assert np.all(out[1:].mean(axis=1) > 0)


def test_output_resolution_rule():
    for J0, nside_out in [(5, 16), (6, 32), (4, 8)]:
        sc = Scattering(1023, depth=1, J0=J0)
        assert sc.nside_out == nside_out and sc.lmax_out == 2 ** J0 - 1
        assert sc.lmax_out <= 2 * sc.nside_out - 1
    assert Scattering(1023, depth=1).J0 == 5  # default: nside_out 16
    assert nside_for_band(63, 1.0) == 32 and nside_for_band(63, 1.5) == 64
    assert nside_for_band(63, 1.5, power_of_two=False) == 48


def test_multiresolution_grids():
    sc = Scattering(1023, depth=2, J0=5, min_nside=0)
    for j, (nside_j, lhi, lmax_down) in sc.grid.items():
        assert lhi == min(1023, 2 ** (j + 1) - 1)      # band top of wavelet j
        assert nside_j == (lhi + 1) // 2               # oversample 1: l_band = 2 nside_j
        assert lmax_down == max(31, min(1023, 2 ** j - 1))  # what wavelets j' < j still need
    assert Scattering(1023, depth=2).grid[5][0] == 256  # default floor on coarse grids


def test_lowpass_channel_is_linear_and_exact(cmb_alm):
    sc = Scattering(LMAX, depth=1, J0=4)
    s = sc.forward_alm(cmb_alm)
    expected = hp.almxfl(hp.resize_alm(cmb_alm, LMAX, LMAX, 15, 15), sc.phi)
    assert np.allclose(s[0], expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_homogeneity(cmb_alm):
    sc = Scattering(LMAX, depth=2, J0=4)
    s1, s2 = sc.forward_alm(cmb_alm), sc.forward_alm(-2.5 * cmb_alm)
    assert np.allclose(s2[1:], 2.5 * s1[1:], atol=1e-9 * np.abs(s1).max())
    assert np.allclose(s2[0], -2.5 * s1[0], atol=1e-9 * np.abs(s1).max())


def test_non_expansive(cmb_alm):
    """Tight frame + modulus: sum_p ||S[p]f - S[p]g||^2 <= ||f - g||^2 (up to discretisation)."""
    sc = Scattering(LMAX, depth=2, J0=3)
    g_alm = gaussian_alm(planck2018_cl(LMAX), np.random.default_rng(8))
    w_in, w_out = alm_weights(LMAX), alm_weights(sc.lmax_out)
    d_in = np.sum(w_in * np.abs(cmb_alm - g_alm) ** 2)
    d_out = np.sum(w_out * np.abs(sc.forward_alm(cmb_alm) - sc.forward_alm(g_alm)) ** 2)
    assert 0 < d_out <= 1.01 * d_in


def test_map_input_matches_alm_input(cmb_alm):
    sc = Scattering(LMAX, nside=64, depth=2, J0=4)
    m = hp.alm2map(cmb_alm, 64, lmax=LMAX)
    a, b = sc.forward_alm(m), sc.forward_alm(cmb_alm)
    assert rel_err(a, b, alm_weights(sc.lmax_out)) < 1e-4
    assert np.allclose(sc(m), sc(cmb_alm), atol=1e-3 * np.abs(sc(cmb_alm)).max())
    with pytest.raises(CmbscatError, match="pixels"):
        sc(np.zeros(hp.nside2npix(32)))


@pytest.mark.parametrize("depth,bound", [(1, 1e-2), (2, 1e-2), (3, 1.5e-2)])
def test_rotation_equivariance(depth, bound, cmb_alm):
    """||S(Rf) - R S(f)|| / ||S(f)|| for rotations applied exactly to the a_lm."""
    sc = Scattering(LMAX, depth=depth, J0=4)
    w = alm_weights(sc.lmax_out)
    s = sc.forward_alm(cmb_alm)
    rng = np.random.default_rng(3)
    errs = []
    for _ in range(2):
        angles = random_euler(rng)
        s_rot = sc.forward_alm(rotate_alm(cmb_alm, LMAX, *angles))
        rot_s = np.stack([rotate_alm(c, sc.lmax_out, *angles) for c in s])
        errs.append(rel_err(s_rot, rot_s, w))
    assert max(errs) < bound
    # and the error is not trivially zero: a wrong rotation is far off
    assert rel_err(s_rot, s, w) > 10 * bound


def test_oversampling_reduces_equivariance_error(cmb_alm):
    rng = np.random.default_rng(5)
    angles = random_euler(rng)
    rotated = rotate_alm(cmb_alm, LMAX, *angles)
    errs = []
    for oversample in (1.0, 2.0):
        sc = Scattering(LMAX, depth=2, J0=4, oversample=oversample, min_nside=0)
        s = sc.forward_alm(cmb_alm)
        rot_s = np.stack([rotate_alm(c, sc.lmax_out, *angles) for c in s])
        errs.append(rel_err(sc.forward_alm(rotated), rot_s, alm_weights(sc.lmax_out)))
    assert errs[1] < 0.5 * errs[0]


def _deformed_map(alm, lmax, nside, eps, seed=11):
    """f(x - eps tau(x)) at the pixel centres, tau = grad g for a smooth random g (l <= 4).

    The band-limited f is synthesised on a 16x finer grid and interpolated bilinearly,
    for eps = 0 too, so interpolation error is common to both maps.
    """
    rng = np.random.default_rng(seed)
    cl_g = np.zeros(5)
    cl_g[2:] = 1.0
    g_alm = gaussian_alm(cl_g, rng)
    theta, phi = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)))
    _, d_theta, d_phi = hp.alm2map_der1(g_alm, nside, lmax=4)  # d/dtheta, d/dphi / sin(theta)
    scale = eps / np.max(np.hypot(d_theta, d_phi))             # max displacement = eps radians
    th = np.clip(theta - scale * d_theta, 1e-9, np.pi - 1e-9)
    ph = phi - scale * d_phi / np.sin(theta)
    fine = hp.alm2map(alm, 16 * nside, lmax=lmax)
    return hp.get_interp_val(fine, th, ph)


def test_stability_to_small_deformation(cmb_alm):
    nside = 64
    sc = Scattering(LMAX, nside=nside, depth=2, J0=4)
    w = alm_weights(sc.lmax_out)
    f0 = _deformed_map(cmb_alm, LMAX, nside, 0.0)
    s0 = sc.forward_alm(f0)
    ratios = []
    changes = []
    pix = hp.nside2resol(nside)
    for eps in (0.25 * pix, 0.5 * pix):
        f = _deformed_map(cmb_alm, LMAX, nside, eps)
        raw = np.linalg.norm(f - f0) / np.linalg.norm(f0)
        scat = rel_err(sc.forward_alm(f), s0, w)
        ratios.append(scat / raw)
        changes.append(scat)
        assert 0 < scat < 0.35 * raw, (eps, scat, raw)
    # small and bounded: the change grows about linearly with the deformation size
    assert 1.4 < changes[1] / changes[0] < 2.6


def test_bad_arguments():
    with pytest.raises(CmbscatError, match="depth"):
        Scattering(LMAX, depth=4)
    with pytest.raises(CmbscatError, match="J0"):
        Scattering(LMAX, J0=8)
    with pytest.raises(CmbscatError, match="oversample"):
        Scattering(LMAX, oversample=0.5)


@pytest.mark.parametrize("lam,J0", [(1.5, 7), (3.0, 2)])
def test_non_dyadic_lambda(lam, J0):
    lmax = 95
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(1))
    sc = Scattering(lmax, depth=2, lam=lam, J0=J0)
    assert sc.lmax_out == int(np.ceil(lam ** J0)) - 1
    assert 2 * sc.nside_out >= lam ** J0 > sc.nside_out
    for j, (nside_j, lhi, lmax_down) in sc.grid.items():
        assert lhi < lam ** (j + 1) and 2 * nside_j >= lhi + 1
        assert sc.lmax_out <= lmax_down <= lhi
    assert all(len(p) <= 2 and (len(p) < 2 or p[0] > p[1]) for p in sc.paths)
    s = sc.forward_alm(alm)
    angles = (0.3, 1.1, 2.0)
    rot_s = np.stack([rotate_alm(c, sc.lmax_out, *angles) for c in s])
    assert rel_err(sc.forward_alm(rotate_alm(alm, lmax, *angles)), rot_s, alm_weights(sc.lmax_out)) < 2e-2
