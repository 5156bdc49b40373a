"""Minkowski functionals of a full-sky HEALPix map: area, boundary length and genus.

For the normalised map u = (T - mean(T)) / std(T) (the map's own pixel mean and
standard deviation) and the excursion set {u > nu}, as in Schmalzing & Gorski 1998
(MNRAS 297, 355), eqs. (9)-(11) with their 1/4pi normalisation per unit sky area:

    V0(nu) = 1/(4 pi)           int Theta(u - nu) dOmega
    V1(nu) = 1/(4 pi) 1/4       int delta(u - nu) |grad u| dOmega
    V2(nu) = 1/(4 pi) 1/(2 pi)  int delta(u - nu) N dOmega,
             N = (2 u_1 u_2 u_12 - u_1^2 u_22 - u_2^2 u_11) / (u_1^2 + u_2^2),

with covariant derivatives in the orthonormal frame (e_theta, e_phi) of the unit
sphere (index 1 = theta, 2 = phi). delta(u - nu) dOmega = ds / |grad u| along the
contour u = nu, so V1 is the contour length / 16 pi and, N / |grad u| being the
contour's geodesic curvature (positive where {u > nu} is locally convex, as round a
hot spot), V2 = (1 / 8 pi^2) times the total geodesic curvature of the boundary of
{u > nu}. By Gauss-Bonnet that equals (1 / 4 pi) (chi - Area / 2 pi): the genus
(Euler characteristic) with the sphere's own curvature term taken out, so that the
Gaussian expectation is the flat-sky one (:func:`gaussian_expectations`).

Discretisation: HEALPix pixels have equal area, so integrals are sums x 4 pi / npix;
delta(u - nu) is 1[nu - width/2 < u <= nu + width/2] / width per pixel, i.e. each V1,
V2 value is the functional averaged over that threshold bin (which end is closed
matters only on a set of measure zero). V0 is not binned: it is exactly the fraction
of pixels with u > nu.

Derivatives come from harmonic space at full resolution (exact at the pixel
centres for a band-limited map), by three syntheses besides the map's own:

* spin 1 of sqrt(l (l+1)) a_lm -> (u_;theta, u_;phi) = (d_theta u, d_phi u / sin theta),
  the gradient that ``healpy.alm2map_der1`` returns;
* spin 0 of -l (l+1) a_lm -> the Laplacian H_thth + H_phph;
* spin 2 of sqrt((l-1) l (l+1) (l+2)) a_lm -> (-(H_thth - H_phph), -2 H_thph):
  healpy's spin-2 components of gradient-only a_lm are *minus* the traceless
  Hessian, as Q + iU = -sum E_lm 2Y_lm with 2Y_lm = edth^2 Y_lm / sqrt((l-1)l(l+1)(l+2))
  and edth^2 u = (H_thth - H_phph) + 2i H_thph. Established numerically against
  closed-form derivatives (tests/test_minkowski.py).

Here H_thth = d_theta^2 u, H_thph = (d_theta d_phi u - cot theta d_phi u) / sin theta,
H_phph = d_phi^2 u / sin^2 theta + cot theta d_theta u (covariant Hessian, unit sphere).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from cmbscat.errors import CmbscatError
from cmbscat.healpix import alm_ell_m, check_nside_lmax, synthesis

DEFAULT_THRESHOLDS = np.linspace(-3.0, 3.0, 13)
DEFAULT_WIDTH = 0.5  # bin width for a single threshold given without a width

NAMES = ("V0", "V1", "V2")  # the rows of MinkowskiFunctionals' output


def check_thresholds(thresholds) -> np.ndarray:
    """Thresholds as a read-only float64 (n,) array; refuse empty, non-finite or unsorted ones."""
    nu = np.array(thresholds, dtype=np.float64).reshape(-1)
    if nu.size == 0 or not np.all(np.isfinite(nu)):
        raise CmbscatError("Minkowski thresholds must be one or more finite numbers")
    if np.any(np.diff(nu) <= 0):
        raise CmbscatError("Minkowski thresholds must be strictly increasing")
    nu.setflags(write=False)
    return nu


def bin_width(thresholds: np.ndarray, width: float | None = None) -> float:
    """The delta-function bin width Delta nu (in units of the map's std).

    ``None``: the smallest spacing between consecutive thresholds, so that bins never
    overlap and, for evenly spaced thresholds, tile the range (0.5 for the default
    thresholds); :data:`DEFAULT_WIDTH` for a single threshold.
    """
    if width is None:
        return float(np.min(np.diff(thresholds))) if len(thresholds) > 1 else DEFAULT_WIDTH
    width = float(width)
    if not (np.isfinite(width) and width > 0):
        raise CmbscatError(f"Minkowski bin width must be a positive number, got {width}")
    return width


def _harmonic_factors(lmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-a_lm factors (healpy order) for the gradient, Laplacian and spin-2 syntheses."""
    ell = alm_ell_m(lmax)[0].astype(np.float64)
    ll1 = ell * (ell + 1.0)
    # (l-1) l (l+1) (l+2) = l(l+1) (l(l+1) - 2) vanishes at l = 0, 1: no traceless Hessian there
    return np.sqrt(ll1), -ll1, np.sqrt(ll1 * (ll1 - 2.0))


class MinkowskiFunctionals:
    """V0, V1, V2 of full-sky maps at fixed thresholds; one instance per (nside, lmax).

    Parameters
    ----------
    nside, lmax
        HEALPix resolution of the maps and band limit of the a_lm.
    thresholds
        Increasing thresholds nu, in units of the map's standard deviation.
    width
        Bin width Delta nu of the delta function, in the same units; see :func:`bin_width`.
    nthreads
        Threads for each spherical-harmonic synthesis (ducc0).

    Calling the instance on a_lm returns float64 of shape (3, n_thresholds): rows
    V0 (fraction of the sky above nu), V1 (dimensionless, contour length / 16 pi on the
    unit sphere) and V2 (dimensionless), each per unit sky area (divided by 4 pi).
    Cost at nside 512, lmax 1023 on one thread: about 4x one ``healpy.alm2map``
    (3.3x when ``sky_map`` is passed); the spin-1 and spin-2 syntheses are each ~2.8x
    a spin-0 one (~1.2x an alm2map), the pixel work (all thresholds in one pass) ~0.4x.
    """

    def __init__(self, nside: int, lmax: int, thresholds=DEFAULT_THRESHOLDS, width: float | None = None,
                 nthreads: int = 1):
        check_nside_lmax(nside, lmax, "nside")
        self.nside, self.lmax, self.nthreads = int(nside), int(lmax), int(nthreads)
        self.npix = 12 * self.nside**2
        self.thresholds = check_thresholds(thresholds)
        self.width = bin_width(self.thresholds, width)
        self._f_grad, self._f_lap, self._f_spin2 = _harmonic_factors(self.lmax)

    def _synth(self, alm: np.ndarray, factor: np.ndarray, spin: int) -> np.ndarray:
        return synthesis(alm * factor, self.nside, self.lmax, spin=spin, nthreads=self.nthreads)

    def derivatives(self, alm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Covariant gradient and Hessian of the map T of ``alm`` (not normalised).

        Returns ``grad`` (2, npix): (T_;theta, T_;phi) = (d_theta T, d_phi T / sin theta)
        and ``hess`` (3, npix): (H_thth, H_thph, H_phph) as defined in the module notes,
        in the map's units per radian (per radian^2), RING ordering, orthonormal frame
        (e_theta, e_phi) with e_theta pointing south.
        """
        alm = np.asarray(alm, dtype=np.complex128)
        grad = self._synth(alm, self._f_grad, 1)
        lap = self._synth(alm, self._f_lap, 0)
        minus_traceless = self._synth(alm, self._f_spin2, 2)  # -(H_thth - H_phph, 2 H_thph)
        hess = np.empty((3, self.npix))
        np.subtract(lap, minus_traceless[0], out=hess[0])
        hess[0] *= 0.5
        np.multiply(minus_traceless[1], -0.5, out=hess[1])
        np.subtract(lap, hess[0], out=hess[2])
        return grad, hess

    def __call__(self, alm: np.ndarray, sky_map: np.ndarray | None = None,
                 pixels: np.ndarray | None = None) -> np.ndarray:
        """(V0, V1, V2) at each threshold, shape (3, n_thresholds), float64.

        ``alm``: complex (alm_size(lmax),), healpy order; a monopole and dipole are
        allowed (the map is normalised by its own pixel mean and std). ``sky_map``:
        the map of ``alm`` at this nside (RING), if already synthesised; saves one
        synthesis. Its pixels define u, so it must be the map of these a_lm.
        ``pixels``: bool (npix,), the pixels to use (a masked sky's fully observed ones):
        u is normalised by their mean and std and the functionals are per unit observed
        area; None: the full sky.
        """
        if sky_map is None:
            sky_map = synthesis(alm, self.nside, self.lmax, nthreads=self.nthreads)
        sky_map = np.asarray(sky_map, dtype=np.float64)
        if sky_map.shape != (self.npix,):
            raise CmbscatError(f"map of shape {sky_map.shape} is not a full-sky map at nside {self.nside}")
        if pixels is not None:
            pixels = np.asarray(pixels, dtype=bool)
            if pixels.shape != (self.npix,) or not pixels.any():
                raise CmbscatError("Minkowski pixel selection must be a non-empty (npix,) boolean map")
        seen = sky_map if pixels is None else sky_map[pixels]
        mean, std = seen.mean(), seen.std()
        if not np.isfinite(std):
            raise CmbscatError("map has non-finite pixels (NaN or inf); Minkowski functionals need a full sky")
        if not std > 0:
            raise CmbscatError("a constant map has no Minkowski functionals (its standard deviation is 0)")
        u = (sky_map - mean) / std
        # derivatives of u: scale the a_lm (n_alm values) rather than five maps (npix each)
        grad, hess = self.derivatives(np.asarray(alm, dtype=np.complex128) / std)
        if pixels is not None:
            u, grad, hess = u[pixels], grad[:, pixels], hess[:, pixels]
        return minkowski_from_derivatives(u, grad, hess, self.thresholds, self.width)


def minkowski_from_derivatives(u: np.ndarray, grad: np.ndarray, hess: np.ndarray, thresholds: np.ndarray,
                               width: float) -> np.ndarray:
    """V0, V1, V2 (3, n) from a normalised map u (npix,), its gradient (2, npix) and Hessian (3, npix).

    ``grad`` and ``hess`` are covariant derivatives of u itself (already divided by
    std), ordered as :meth:`MinkowskiFunctionals.derivatives` returns them. V0 counts
    u > nu; the delta bins are (nu - width/2, nu + width/2] (which end is closed
    matters only on a set of measure zero).
    """
    npix = u.size
    g1, g2 = grad
    h11, h12, h22 = hess
    g1sq, g2sq = g1 * g1, g2 * g2
    g2sum = g1sq + g2sq
    grad_norm = np.sqrt(g2sum)
    numer = 2.0 * g1 * g2 * h12
    numer -= g1sq * h22
    numer -= g2sq * h11
    # |grad u| = 0 only at critical points, a set of measure zero: such a pixel adds nothing
    curv = np.divide(numer, g2sum, out=np.zeros(npix), where=g2sum > 0)

    # One pass over the pixels, however many thresholds: locate each pixel among all
    # thresholds and bin ends (idx = number of edges < u), total per elementary
    # interval, then sum intervals per bin. Bins may overlap (width > spacing).
    half = 0.5 * width
    edges = np.unique(np.concatenate([thresholds, thresholds - half, thresholds + half]))
    idx = _edges_below(u, edges)
    nbin = edges.size + 1
    counts = np.cumsum(np.bincount(idx, minlength=nbin))
    length = np.cumsum(np.bincount(idx, weights=grad_norm, minlength=nbin))
    curvature = np.cumsum(np.bincount(idx, weights=curv, minlength=nbin))
    # positions of the thresholds and bin ends in ``edges`` (exact: the same float values)
    k_nu, k_lo, k_hi = (np.searchsorted(edges, x) for x in (thresholds, thresholds - half, thresholds + half))
    out = np.empty((3, len(thresholds)))
    out[0] = npix - counts[k_nu]            # pixels with idx > k_nu, i.e. u > nu
    out[1] = length[k_hi] - length[k_lo]    # lo < u <= hi
    out[2] = curvature[k_hi] - curvature[k_lo]
    # sum x (4 pi / npix) / (4 pi), with delta -> 1 / width in the bin
    out[0] /= npix
    out[1] /= 4.0 * width * npix
    out[2] /= 2.0 * np.pi * width * npix
    return out


def _edges_below(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Number of ``edges`` (sorted, distinct) strictly below each value, as intp.

    Equal to ``np.searchsorted(edges, values, side="left")``, about 4x faster for a few
    dozen edges: values are binned on a uniform grid of step h = (smallest gap) / 3,
    and each is compared with the single edge that can lie within h / 2 of its cell,
    so rounding in the cell index (far below h / 2) never changes the count.
    """
    if edges.size < 2:
        return np.searchsorted(edges, values, side="left")
    h = np.min(np.diff(edges)) / 3.0
    start = edges[0] - 2.0 * h
    ncell = int(np.ceil((edges[-1] - start) / h)) + 3
    if ncell > 100_000:                        # edges too close for a small table
        return np.searchsorted(edges, values, side="left")
    reach = start + (np.arange(ncell) - 0.5) * h          # cell c, widened by h/2 each side
    below = np.searchsorted(edges, reach, side="left")    # edges below the widened cell
    nearest = edges[np.minimum(below, edges.size - 1)]
    cand = np.where((below < edges.size) & (nearest < reach + 2.0 * h), nearest, np.inf)
    x = (values - start) * (1.0 / h)
    np.clip(x, 0, ncell - 1, out=x)
    cell = x.astype(np.intp)
    return below[cell] + (values > cand[cell])


def gaussian_expectations(cl: np.ndarray, thresholds=DEFAULT_THRESHOLDS, width: float | None = None) -> np.ndarray:
    """Expected (V0, V1, V2), shape (3, n), of an isotropic Gaussian field with spectrum ``cl``.

    ``cl``: C_l for l = 0..lmax (any units; only ratios enter). The monopole is
    ignored, as the estimator subtracts the map's mean. For the unit-variance field u
    and tau = sum (2l+1) l(l+1) C_l / (2 sum (2l+1) C_l), the variance of one
    covariant gradient component of u:

        V0 = erfc(nu / sqrt 2) / 2
        V1 = sqrt(tau) / 8 * exp(-nu^2 / 2)
        V2 = tau nu exp(-nu^2 / 2) / (2 pi)^(3/2)

    (V1: u and grad u are independent at a point and |grad u| is Rayleigh,
    <|grad u|> = sqrt(pi tau / 2); V2: given u = nu and grad u, <H_ij> = -tau nu delta_ij,
    since <u H_ij> = <u lap u> / 2 = -tau delta_ij, and <u_i H_jk> = 0 by isotropy, so
    <N> = tau nu.) These hold exactly on the sphere for the estimator as defined (V2
    without the Gauss-Bonnet area term, see the module notes).

    V1 and V2 are averaged over [nu - width/2, nu + width/2] as the estimator's
    delta binning does (``width`` as for :class:`MinkowskiFunctionals`; ``width=0``
    gives the unbinned values). V0 is a step, not binned. Exact for the ensemble mean
    with the ensemble's own mean and variance; normalising each map by its own pixel
    mean and std biases the estimator at second order in the relative scatter of the
    map's variance, eps^2 = 2 sum (2l+1) C_l^2 / (sum (2l+1) C_l)^2 (1.6e-3 for the
    Planck spectrum at lmax 255, 8e-4 at 1023): ~1e-4 in V0 there, about one standard error
    of a mean over 40 maps at nside 128 (tests/test_minkowski.py).
    """
    cl = np.asarray(cl, dtype=np.float64)
    nu = check_thresholds(thresholds)
    width = 0.0 if width == 0 else bin_width(nu, width)
    ell = np.arange(cl.size, dtype=np.float64)[1:]
    w = (2 * ell + 1) * cl[1:]
    if not w.sum() > 0:
        raise CmbscatError("spectrum has no power beyond the monopole")
    tau = np.sum(w * ell * (ell + 1)) / (2.0 * w.sum())
    out = np.empty((3, nu.size))
    out[0] = ndtr(-nu)  # erfc(nu / sqrt 2) / 2
    if width == 0:
        gauss = np.exp(-0.5 * nu**2)
        out[1] = np.sqrt(tau) / 8.0 * gauss
        out[2] = tau * nu * gauss / (2 * np.pi) ** 1.5
    else:
        lo, hi = nu - width / 2, nu + width / 2
        # (1/width) int exp(-x^2/2) dx = sqrt(2 pi) (Phi(hi) - Phi(lo)) / width, taken in
        # the tail nearer zero so that the difference keeps its precision far out
        mass = np.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
        out[1] = np.sqrt(tau) / 8.0 * np.sqrt(2 * np.pi) * mass / width
        # (1/width) int x exp(-x^2/2) dx = (exp(-lo^2/2) - exp(-hi^2/2)) / width
        out[2] = tau / (2 * np.pi) ** 1.5 * (np.exp(-0.5 * lo**2) - np.exp(-0.5 * hi**2)) / width
    return out
