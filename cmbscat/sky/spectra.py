"""CMB angular power spectra and Gaussian skies drawn from them.

Units: C_ell in uK^2 (raw C_ell, not ell(ell+1)C_ell/2pi); maps in uK.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from scipy.special import roots_legendre

from cmbscat.errors import CmbscatError
from cmbscat.healpix import alm_ell_m, alm_size

PLANCK2018_TABLE = "planck2018_lensed_tt.txt"
CL_SOURCE = "Planck 2018 best-fit lensed TT (CAMB), data/" + PLANCK2018_TABLE


@functools.lru_cache(maxsize=1)
def _planck2018_table() -> np.ndarray:
    text = resources.files("cmbscat.data").joinpath(PLANCK2018_TABLE).read_text()
    table = np.loadtxt(text.splitlines())
    return table[:, 1]


def planck2018_cl(lmax: int) -> np.ndarray:
    """Planck 2018 best-fit lensed TT C_ell in uK^2, shape (lmax+1,); C_0 = C_1 = 0."""
    cl = _planck2018_table()
    if lmax >= cl.size:
        raise CmbscatError(f"--lmax {lmax} is beyond the shipped spectrum table (ell <= {cl.size - 1})")
    return cl[: lmax + 1].copy()


def gaussian_alm(cl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a_lm of a statistically isotropic Gaussian real field with spectrum ``cl``.

    Returns complex128 of shape (alm_size(lmax),) in healpy order, lmax = len(cl) - 1:
    <|a_lm|^2> = C_ell, with a_l0 real and Re, Im of a_lm (m > 0) each of variance C_ell/2.
    The draw consumes exactly 2 * alm_size(lmax) standard normals from ``rng``, so a
    map is a function of the generator's seed alone.
    """
    lmax = len(cl) - 1
    ell, m = alm_ell_m(lmax)
    z = rng.standard_normal((2, alm_size(lmax)))
    scale = np.sqrt(np.asarray(cl, dtype=np.float64)[ell] / 2.0)
    alm = (z[0] + 1j * z[1]) * scale
    m0 = m == 0
    alm[m0] = z[0, m0] * np.sqrt(2.0) * scale[m0]
    return alm


def pixel_variance(cl: np.ndarray) -> float:
    """Ensemble variance <g^2> of a field with spectrum ``cl``: sum (2l+1) C_l / 4 pi."""
    ell = np.arange(len(cl))
    return float(np.sum((2 * ell + 1) * cl) / (4 * np.pi))


def _legendre_series(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_l coeffs[l] P_l(x) by the three-term recurrence (stable for |x| <= 1)."""
    p_prev, p = np.ones_like(x), x.copy()
    total = coeffs[0] * p_prev + (coeffs[1] * p if len(coeffs) > 1 else 0.0)
    for ell in range(2, len(coeffs)):
        p_prev, p = p, ((2 * ell - 1) * x * p - (ell - 1) * p_prev) / ell
        total += coeffs[ell] * p
    return total


def _legendre_transform(values: np.ndarray, x: np.ndarray, w: np.ndarray, lmax: int) -> np.ndarray:
    """2 pi * integral_{-1}^{1} f(x) P_l(x) dx for l = 0..lmax by the quadrature (x, w)."""
    out = np.empty(lmax + 1)
    p_prev, p = np.ones_like(x), x.copy()
    fw = values * w
    out[0] = fw.sum()
    if lmax >= 1:
        out[1] = (fw * p).sum()
    for ell in range(2, lmax + 1):
        p_prev, p = p, ((2 * ell - 1) * x * p - (ell - 1) * p_prev) / ell
        out[ell] = (fw * p).sum()
    return 2 * np.pi * out


def _correlation_at_nodes(cl: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes x = cos(theta) and weights w, exact for polynomials in x of
    degree <= ``degree``, and the correlation function xi(x) = sum_l (2l+1)/(4 pi) C_l P_l(x)
    of a field with spectrum ``cl`` at those nodes (units of cl)."""
    x, w = roots_legendre(degree // 2 + 1)
    ell = np.arange(len(cl))
    xi = _legendre_series((2 * ell + 1) / (4 * np.pi) * np.asarray(cl, dtype=np.float64), x)
    return x, w, xi


def squared_field_cl(cl: np.ndarray, lmax_out: int | None = None) -> np.ndarray:
    """Angular power spectrum of g^2 for a Gaussian field g with spectrum ``cl``.

    By Wick's theorem the correlation function of g^2 - <g^2> is 2 xi(theta)^2,
    where xi(theta) = sum_l (2l+1)/(4 pi) C_l P_l(cos theta). Its Legendre
    coefficients are computed with Gauss-Legendre quadrature that is exact for the
    polynomial degree involved (xi^2 P_l has degree 2 lmax + lmax_out), so the result
    is exact up to rounding. The monopole (l = 0) refers to g^2 - <g^2>.

    Returns shape (lmax_out + 1,), units of cl squared (uK^4 for cl in uK^2).
    """
    lmax = len(cl) - 1
    lmax_out = lmax if lmax_out is None else lmax_out
    x, w, xi = _correlation_at_nodes(cl, 2 * lmax + lmax_out)
    return _legendre_transform(2.0 * xi**2, x, w, lmax_out)


def cubed_field_cl(cl: np.ndarray, lmax_out: int | None = None) -> np.ndarray:
    """Angular power spectrum H_l of h = g^3 - 3 sigma^2 g for a Gaussian field g with spectrum ``cl``.

    sigma^2 = <g^2> is the ensemble pixel variance (:func:`pixel_variance`). Subtracting
    3 sigma^2 g removes exactly the part of g^3 correlated with g: <h(x) g(y)> = 0, and
    by Wick's theorem the correlation function of h is 6 xi(theta)^3 (the 9 sigma^4 xi
    terms of <g^3 g^3> cancel). So g^3 = 3 sigma^2 g + h splits the spectrum of g^3 into
    9 sigma^4 C_l + H_l with no cross term. The Legendre coefficients of 6 xi^3 are
    computed with Gauss-Legendre quadrature exact for xi^3 P_l (degree 3 lmax + lmax_out),
    so the result is exact up to rounding; H_l vanishes for l > 3 lmax, and
    sum_l (2l+1)/(4 pi) H_l over l <= 3 lmax equals <h^2> = 6 sigma^6.

    Parameters
    ----------
    cl : (lmax+1,) spectrum of g, raw C_l (not l(l+1)C_l/2pi), e.g. uK^2.
    lmax_out : largest multipole returned (default lmax; 3 lmax holds all of H_l).

    Returns
    -------
    (lmax_out + 1,) float64, units of cl cubed (uK^6 for cl in uK^2).
    """
    lmax = len(cl) - 1
    lmax_out = lmax if lmax_out is None else lmax_out
    x, w, xi = _correlation_at_nodes(cl, 3 * lmax + lmax_out)
    return _legendre_transform(6.0 * xi**3, x, w, lmax_out)
