"""Classical summary statistics a cosmologist would try first.

* binned angular power spectrum (from band-limited a_lm);
* one-point statistics of the full-resolution map: skewness and excess kurtosis.
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


def one_point_statistics(sky_map: np.ndarray) -> np.ndarray:
    """(skewness, excess kurtosis) of a map's pixel values; shape (2,)."""
    d = np.asarray(sky_map, dtype=np.float64)
    d = d - d.mean()
    var = np.mean(d * d)
    return np.array([np.mean(d**3) / var**1.5, np.mean(d**4) / var**2 - 3.0])
