"""Scale-discretised axisymmetric wavelets on the sphere (Leistedt et al. 2013; S2LET).

Filters only: this module builds the harmonic-space kernels; the transforms that
use them live in :mod:`cmbscat.scattering.transform`.

Definitions (DESIGN.md, "Spherical wavelets and scattering"):

* s(t) = exp(-1 / (1 - t^2)) for |t| < 1, else 0;
  s_lam(t) = s(2 lam / (lam - 1) * (t - 1/lam) - 1), supported on 1/lam < t < 1.
* k_lam(t) = int_t^1 s_lam(u)^2 / u du / int_{1/lam}^1 s_lam(u)^2 / u du
  (1 for t <= 1/lam, 0 for t >= 1, smooth and decreasing in between).
* kappa_lam(t) = sqrt(k_lam(t / lam) - k_lam(t))   (wavelet generating function),
  eta_lam(t) = sqrt(k_lam(t))                       (scaling generating function).
* Wavelet j multiplies f_lm by kappa_lam(l / lam^j) (support lam^(j-1) < l < lam^(j+1));
  the scaling function multiplies f_lm by eta_lam(l / lam^J0) (support l < lam^J0).
* Exact tiling: eta(l/lam^J0)^2 + sum_{j=J0}^{J} kappa(l/lam^j)^2 = 1 for all l < L,
  with J = ceil(log_lam L) (the sum telescopes to k_lam(l / lam^(J+1)) = 1).

Kernels are real, dimensionless, indexed by multipole l = 0..lmax, and act on a_lm
by plain multiplication (e.g. ``healpy.almxfl(alm, psi[i])``).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.polynomial.legendre import leggauss

from cmbscat.errors import CmbscatError

_N_QUAD = 200  # Gauss-Legendre nodes for the k_lam integral (integrand is C-infinity)


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not (np.isfinite(lam) and lam > 1.0):
        raise CmbscatError(f"--lam must be a number > 1, got {lam}")
    return lam


def n_scales(lmax: int, lam: float = 2.0) -> int:
    """J = ceil(log_lam(lmax + 1)): the largest wavelet scale index needed for band-limit lmax+1.

    Computed by integer search (smallest J with lam^J >= lmax + 1), so exact powers
    such as lmax + 1 = 1024, lam = 2 give J = 10 without floating-point surprises.
    """
    lam = _check_lam(lam)
    if lmax < 0:
        raise CmbscatError(f"lmax must be >= 0, got {lmax}")
    J, power = 0, 1.0
    while power < lmax + 1 - 1e-9 * (lmax + 1):
        J += 1
        power *= lam
    return J


def _s(t: np.ndarray) -> np.ndarray:
    """Bump s(t) = exp(-1/(1-t^2)) on |t| < 1, 0 elsewhere."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    inside = np.abs(t) < 1.0
    out[inside] = np.exp(-1.0 / (1.0 - t[inside] ** 2))
    return out


def s_lam(t: np.ndarray, lam: float = 2.0) -> np.ndarray:
    """s_lam(t) = s(2 lam/(lam-1) (t - 1/lam) - 1): bump supported on 1/lam < t < 1."""
    lam = _check_lam(lam)
    return _s(2.0 * lam / (lam - 1.0) * (np.asarray(t, dtype=np.float64) - 1.0 / lam) - 1.0)


def _integral(a: np.ndarray, lam: float) -> np.ndarray:
    """int_a^1 s_lam(u)^2 / u du for each a in [1/lam, 1], by Gauss-Legendre quadrature."""
    x, w = leggauss(_N_QUAD)
    a = np.asarray(a, dtype=np.float64)[..., None]
    half = (1.0 - a) / 2.0
    u = a + half * (x + 1.0)
    return np.sum(w * half * s_lam(u, lam) ** 2 / u, axis=-1)


@functools.lru_cache(maxsize=16)
def _norm(lam: float) -> float:
    return float(_integral(np.array(1.0 / lam), lam))


def k_lam(t: np.ndarray, lam: float = 2.0) -> np.ndarray:
    """k_lam(t): 1 for t <= 1/lam, 0 for t >= 1, smooth decreasing in between."""
    lam = _check_lam(lam)
    t = np.asarray(t, dtype=np.float64)
    out = np.where(t <= 1.0 / lam, 1.0, 0.0)
    mid = (t > 1.0 / lam) & (t < 1.0)
    if np.any(mid):
        out[mid] = np.clip(_integral(t[mid], lam) / _norm(lam), 0.0, 1.0)
    return out


def kappa_lam(t: np.ndarray, lam: float = 2.0) -> np.ndarray:
    """Wavelet generating function sqrt(k_lam(t/lam) - k_lam(t)); support 1/lam < t < lam."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(np.clip(k_lam(t / lam, lam) - k_lam(t, lam), 0.0, None))


def eta_lam(t: np.ndarray, lam: float = 2.0) -> np.ndarray:
    """Scaling generating function sqrt(k_lam(t)); 1 for t <= 1/lam, 0 for t >= 1."""
    return np.sqrt(k_lam(t, lam))


def axisym_kernels(lmax: int, lam: float = 2.0, J0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic kernels of the scaling function and wavelets for band-limit L = lmax + 1.

    Parameters
    ----------
    lmax : maximum multipole (the band-limit is L = lmax + 1).
    lam : dilation factor lambda > 1 (2 gives dyadic wavelets).
    J0 : lowest wavelet scale, 0 <= J0 <= J = ceil(log_lam(lmax + 1)).

    Returns
    -------
    phi : float64 (lmax + 1,), phi[l] = eta_lam(l / lam^J0); nonzero for l < lam^J0.
    psi : float64 (J - J0 + 1, lmax + 1), row i = kappa_lam(l / lam^(J0 + i)), i.e. the
        wavelet of scale j = J0 + i, nonzero for lam^(j-1) < l < lam^(j+1).

    phi^2 + sum_i psi[i]^2 = 1 for every l <= lmax, to rounding error.
    """
    lam = _check_lam(lam)
    J = n_scales(lmax, lam)
    if not 0 <= J0 <= J:
        raise CmbscatError(f"--J0 must be in 0..{J} for lmax {lmax} and lam {lam:g}, got {J0}")
    ell = np.arange(lmax + 1, dtype=np.float64)
    phi = eta_lam(ell / lam ** J0, lam)
    # Rows are differences of one function evaluated at consecutive dilations, so the
    # sum of squares telescopes exactly: compute k once per scale and difference it.
    ks = np.stack([k_lam(ell / lam ** j, lam) for j in range(J0, J + 2)])
    psi = np.sqrt(np.clip(ks[1:] - ks[:-1], 0.0, None))
    return phi, psi


def support(kernel: np.ndarray) -> tuple[int, int]:
    """(first, last) multipole where a kernel row is nonzero; (-1, -1) if it is zero."""
    nz = np.flatnonzero(np.asarray(kernel) != 0.0)
    return (-1, -1) if nz.size == 0 else (int(nz[0]), int(nz[-1]))
