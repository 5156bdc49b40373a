"""The cubic statistic of observed maps (beam, noise, mask) against the full-sky one and
against Gaussian simulations: zero mean, smaller variance with the linear terms, a response
to f_NL of the right sign."""

import healpy as hp
import numpy as np
import pytest

from cmbscat.sky.simulate import SkySimulator
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl
from cmbscat.stats.cubic import CubicStatistic, ObservedCubicStatistic, fisher_information

NSIDE, LMAX = 32, 63


def observe(alm, beam, noise_cl, rng, noise_scale=None):
    """b_l a_lm plus noise: isotropic (noise_cl) or, with ``noise_scale`` (npix,), white
    noise whose pixel sd is modulated by it (analysed back to lmax)."""
    out = hp.almxfl(alm, beam)
    if noise_scale is None:
        return out + gaussian_alm(noise_cl, rng)
    sigma_pix = np.sqrt(noise_cl[2] / (4 * np.pi / hp.nside2npix(NSIDE)))
    noise = rng.normal(0, 1, hp.nside2npix(NSIDE)) * sigma_pix * noise_scale
    return out + hp.map2alm(noise, lmax=LMAX, iter=3)


@pytest.fixture(scope="module")
def setting():
    cl = planck2018_cl(LMAX)
    beam = hp.gauss_beam(np.radians(2.0), LMAX)  # 2 degrees: the beam matters at l ~ 60
    noise_cl = np.full(LMAX + 1, 0.3 * cl[40] * beam[40] ** 2)  # signal = noise near l ~ 50
    theta, _ = hp.pix2ang(NSIDE, np.arange(hp.nside2npix(NSIDE)))
    lat = np.degrees(np.pi / 2 - theta)
    binary = (np.abs(lat) > 20).astype(float)
    mask = hp.smoothing(binary, fwhm=np.radians(6), lmax=3 * NSIDE - 1, iter=0) * binary  # soft edge
    mask = np.clip(mask, 0, 1)
    noise_scale = 1.0 + 0.8 * np.abs(np.sin(np.radians(lat)))  # deeper at the equator
    return cl, beam, noise_cl, mask, noise_scale


def test_reduces_to_the_full_sky_statistic():
    cl = planck2018_cl(LMAX)
    full, observed = CubicStatistic(cl, NSIDE, LMAX), ObservedCubicStatistic(cl, NSIDE, LMAX)
    sd = np.sqrt(fisher_information(cl))  # sd of S on Gaussian maps
    sim = SkySimulator(NSIDE, LMAX, 500.0)
    for seed in range(3):
        alm = sim.alm(seed, 1)[0]
        # the only difference: 2 <W M> times the map's monopole, zero but for the pixel
        # quadrature of a band-limited map (measured 1e-3 sd(S) at lmax = 2 nside - 1)
        assert observed(alm) == pytest.approx(full(alm), abs=1e-2 * sd)


def test_masked_needs_a_mean_field(setting):
    cl, beam, noise_cl, mask, _ = setting
    stat = ObservedCubicStatistic(cl, NSIDE, LMAX, beam, noise_cl, mask)
    with pytest.raises(ValueError, match="fit_mean_field"):
        stat(np.zeros(hp.Alm.getsize(LMAX), complex))


def test_masked_noisy_gaussian_maps_have_zero_mean_and_the_linear_terms_cut_the_variance(setting):
    cl, beam, noise_cl, mask, noise_scale = setting
    stat = ObservedCubicStatistic(cl, NSIDE, LMAX, beam, noise_cl, mask)
    rng = np.random.default_rng(0)
    stat.fit_mean_field(observe(gaussian_alm(cl, rng), beam, noise_cl, rng, noise_scale) for _ in range(150))
    rng = np.random.default_rng(1)  # independent maps
    with_linear, without = [], []
    for _ in range(150):
        alm = observe(gaussian_alm(cl, rng), beam, noise_cl, rng, noise_scale)
        with_linear.append(stat(alm))
        without.append(stat(alm, linear=False))
    s, s0 = np.array(with_linear), np.array(without)
    assert abs(s.mean()) < 3 * s.std(ddof=1) / np.sqrt(s.size)
    assert s.var(ddof=1) < 0.3 * s0.var(ddof=1)  # measured 0.03 here


def test_masked_noisy_statistic_responds_to_fnl(setting):
    cl, beam, noise_cl, mask, noise_scale = setting
    stat = ObservedCubicStatistic(cl, NSIDE, LMAX, beam, noise_cl, mask)
    rng = np.random.default_rng(2)
    stat.fit_mean_field(observe(gaussian_alm(cl, rng), beam, noise_cl, rng, noise_scale) for _ in range(100))
    sim = SkySimulator(NSIDE, LMAX, 1500.0)
    rng = np.random.default_rng(3)
    s_ng = np.array([stat(observe(sim.alm(seed, 1)[0], beam, noise_cl, rng, noise_scale)) for seed in range(60)])
    s_g = np.array([stat(observe(sim.alm(seed, 0)[0], beam, noise_cl, rng, noise_scale)) for seed in range(60)])
    # positive f_NL gives E[S] > 0 (as on the full sky), well separated from the Gaussian maps
    d_prime = (s_ng.mean() - s_g.mean()) / s_g.std(ddof=1)
    assert d_prime > 2.0
