"""Decoupled band powers of a masked map (the MASTER method, Hivon et al. 2002), for display.

The classifier on the power spectrum reads the pseudo-C_l of the apodized masked map
directly (both classes share the mask, so it needs no correction). To show a spectrum
a cosmologist can compare with theory, the mask's mode coupling is undone in bins:

    <C~_l> = sum_l' M_ll' b_l'^2 C_l' + sum_l' M_ll' N_l',
    M_ll' = (2l' + 1) / (4 pi) sum_l'' (2l'' + 1) W_l'' (l l' l''; 0 0 0)^2,

with W_l the power spectrum of the mask w (its a_lm from ``map2alm``). The bands are
of D_l = l (l + 1) C_l / 2 pi, which the CMB keeps roughly flat within a bin: with P
the bin averages of l (l + 1) / 2 pi times C_l and Q its inverse, piecewise constant,
the band powers D_b = K^-1 P (C~ - M N), K = P M B^2 Q, are unbiased for the spectrum
seen through the band-power window K^-1 P M B^2 (exactly the bin's value for a D_l
constant in each bin). NaMaster (``pymaster``) is the field's library for this, but it builds from source
against CFITSIO and GSL and ``make install`` cannot install it on a fresh machine, so the
coupling is computed here with the Wigner 3j closed form of :mod:`cmbscat.stats.cubic`.
Cost O(lmax^2 l_mask): seconds at lmax 255, about a minute at lmax 1023 (one-off per mask).
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from cmbscat.stats.cubic import _log_factorials, wigner_3j_000_squared


def mask_power(mask: np.ndarray, lmax: int) -> np.ndarray:
    """W_l, the power spectrum of the mask ``mask`` (npix,) RING, for l = 0..lmax (float64)."""
    return hp.anafast(np.asarray(mask, dtype=np.float64), lmax=lmax, iter=3)


def mode_coupling_matrix(mask_cl: np.ndarray, lmax: int) -> np.ndarray:
    """M_ll' (float64 (lmax+1, lmax+1)) for a mask of power spectrum ``mask_cl``
    (W_l for l = 0..L, L >= 2 lmax for an exact matrix; shorter spectra truncate the sum)."""
    w = np.asarray(mask_cl, dtype=np.float64)
    l3 = np.arange(w.size)
    log_factorials = _log_factorials(2 * lmax + w.size + 2)
    ell = np.arange(lmax + 1)
    out = np.empty((lmax + 1, lmax + 1))
    weights = (2 * l3 + 1) * w
    for l1 in ell:
        threej = wigner_3j_000_squared(l1, ell[:, None], l3[None, :], log_factorials)  # (l2, l3)
        out[l1] = (2 * ell + 1) / (4 * np.pi) * (threej @ weights)
    return out


class BandPowers:
    """Decoupled band powers of maps seen through one mask, beam and noise spectrum.

    Parameters
    ----------
    mask : (npix,) RING weights in [0, 1] (apodized).
    lmax : band limit of the pseudo-C_l.
    edges : bin edges (n_bins + 1,), bins [edges[k], edges[k+1]) within 2..lmax.
    beam : (lmax+1,) b_l of the observation (default 1).
    noise_cl : (lmax+1,) N_l of the noise, uK^2 sr (default 0), removed as M N.

    The coupling matrix is computed once here; :meth:`__call__` costs one ``alm2cl``.
    """

    def __init__(self, mask: np.ndarray, lmax: int, edges: np.ndarray, beam: np.ndarray | None = None,
                 noise_cl: np.ndarray | None = None):
        self.lmax, self.edges = int(lmax), np.asarray(edges, dtype=int)
        if self.edges[0] < 2 or self.edges[-1] > self.lmax + 1 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("bin edges must increase within 2..lmax+1")
        beam = np.ones(self.lmax + 1) if beam is None else np.asarray(beam, np.float64)[: self.lmax + 1]
        noise = np.zeros(self.lmax + 1) if noise_cl is None else np.asarray(noise_cl, np.float64)[: self.lmax + 1]
        self.coupling = mode_coupling_matrix(mask_power(mask, min(2 * self.lmax, 3 * hp.npix2nside(len(mask)) - 1)),
                                             self.lmax)
        n_bins = self.edges.size - 1
        self.p = np.zeros((n_bins, self.lmax + 1))  # bin averages
        self.q = np.zeros((self.lmax + 1, n_bins))  # piecewise constant
        ell = np.arange(self.lmax + 1)
        to_d = ell * (ell + 1) / (2 * np.pi)  # C_l -> D_l
        for b, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            self.p[b, lo:hi] = to_d[lo:hi] / (hi - lo)
            self.q[lo:hi, b] = 1.0 / to_d[lo:hi]
        self.noise_bias = self.coupling @ noise
        self.kernel = self.p @ self.coupling @ (beam[:, None] ** 2 * self.q)
        self._inverse = np.linalg.inv(self.kernel)

    def __call__(self, masked_alm: np.ndarray) -> np.ndarray:
        """Band powers D_b = <l (l + 1) C_l / 2 pi> (uK^2, (n_bins,)) of the sky, beam and noise
        taken out, from the a_lm of the masked map w d."""
        pseudo = hp.alm2cl(np.asarray(masked_alm, dtype=np.complex128), lmax=self.lmax)
        return self._inverse @ (self.p @ (pseudo - self.noise_bias))
