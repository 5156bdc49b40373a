"""Binned angular power spectrum: the statistic a cosmologist tries first.

A classifier on it must sit at chance: both classes have the same expected C_l
(DESIGN.md, the transfer function of :mod:`cmbscat.sky.nongaussian`).
"""

from __future__ import annotations

import healpy as hp
import numpy as np


def power_spectrum_bins(lmax: int, n_bins: int = 24) -> np.ndarray:
    """Edges (n_bins + 1,) of logarithmically spaced multipole bins covering 2..lmax."""
    edges = np.unique(np.round(np.geomspace(2, lmax + 1, n_bins + 1)).astype(int))
    return edges


def binned_power_spectrum(alm: np.ndarray, lmax: int, edges: np.ndarray) -> np.ndarray:
    """log10 of the mean (2l+1)-weighted C_l in each bin [edges[k], edges[k+1]); shape (n_bins,)."""
    cl = hp.alm2cl(np.asarray(alm, dtype=np.complex128), lmax=lmax)
    ell = np.arange(lmax + 1)
    weights = 2 * ell + 1
    out = [np.sum((weights * cl)[lo:hi]) / np.sum(weights[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])]
    return np.log10(np.asarray(out))
