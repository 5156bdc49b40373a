"""Local-type primordial non-Gaussianity in the Sachs-Wolfe approximation.

Both models start from a Gaussian temperature map g in uK with the Planck spectrum
C_l and use the Sachs-Wolfe limit Delta T / T_CMB = -Phi / 3 (T_CMB = ``T_CMB_UK``).

Model ``local`` (DESIGN.md, :class:`LocalFNL`). The ansatz
Phi = Phi_G + f_NL (Phi_G^2 - <Phi_G^2>) becomes

    T = g - a (g^2 - <g^2>),      a = 3 f_NL / T_CMB.

Positive f_NL therefore gives a *negative* skewness, <T^3> ~ -6 a sigma^4 to first order.
The quadratic term adds power, C^T_l = C_l + a^2 D_l with D_l the spectrum of g^2
(the cross term vanishes: odd moments of a Gaussian are zero).

Model ``gnl`` (:class:`LocalGNL`). The cubic ansatz Phi = Phi_G + g_NL Phi_G^3 becomes

    T = g + b g^3,                b = 9 g_NL / T_CMB^2.

T is odd in g, so its bispectrum and skewness vanish; its trispectrum does not, and
positive g_NL gives a *positive* excess kurtosis, 24 b sigma^2 to first order
(sigma^2 = <g^2>, the ensemble pixel variance; see :attr:`LocalGNL.excess_kurtosis`
for the band-limited value). Unlike g^2, g^3 is correlated with g. The exact split

    g^3 = 3 sigma^2 g + h,        <h(x) g(y)> = 0,   <h(x) h(y)> = 6 xi(theta)^3 (Wick),

gives T = (1 + 3 b sigma^2) g + b h and C^T_l = (1 + 3 b sigma^2)^2 C_l + b^2 H_l, with
H_l the spectrum of h (:func:`cmbscat.sky.spectra.cubed_field_cl`).

Matched spectra, both models: so that the two classes have the same expected
spectrum, the non-Gaussian a_lm are multiplied by the fixed, ensemble-level transfer
function sqrt(C_l / C^T_l), with D_l or H_l computed exactly by Gauss-Legendre
quadrature, never per map. The transfer function is O(a^2) from 1 for ``local``, but
O(b) for ``gnl`` (it undoes the linear factor 1 + 3 b sigma^2); kurtosis and skewness
are scale-free, so it does not change their first-order values. Monopole and dipole
are zero in both classes (C_0 = C_1 = 0 makes the transfer function 0 there).

Approximations, stated plainly: the Sachs-Wolfe relation is applied to the whole
lensed temperature map, acoustic peaks included, rather than to the primordial
potential (a toy model of non-Gaussianity, as in the scattering-network paper, not a
physical f_NL or g_NL forecast: the values are not comparable with Planck's bounds).
g^2, and h = g^3 - 3 sigma^2 g, are formed on the HEALPix grid at the output nside and
their a_lm taken up to lmax with ``map2alm(iter=0)``; the linear part of g^3 never
goes through the grid, it is applied exactly in harmonic space. Their power above
3 nside aliases back (g^2 reaches l = 2 lmax, g^3 l = 3 lmax; 0.4 % of <h^2> lies above
l = 1536 at lmax 1023). Measured with 12 maps at nside 512 against nside 1024 (which
resolves both), lmax 1023: the grid raises H_l by 1.7e-3 on average over the top 20
multipoles (3e-3 at worst, l ~ 1000) and by < 1e-3 below l = 900; D_l by 5e-4 over
the top 20 (1e-3 at worst). These are fractions of the non-Gaussian terms, which are
small parts of C^T_l (b^2 H_l / C_l <= 4e-5 at g_NL = 1e5, a^2 D_l / C_l <= 0.075 at
f_NL = 1000), so the matched spectra are off by < 1e-4 from aliasing.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from cmbscat.healpix import alm_ell_m
from cmbscat.sky.spectra import cubed_field_cl, pixel_variance, squared_field_cl

T_CMB_UK = 2.7255e6  # CMB monopole temperature in uK (Fixsen 2009)


def matching_transfer(cl: np.ndarray, total_cl: np.ndarray) -> np.ndarray:
    """Transfer function sqrt(cl / total_cl), shape (lmax+1,), dimensionless.

    Multiplying a_lm of spectrum ``total_cl`` by it gives spectrum ``cl``; multipoles
    where ``total_cl`` is 0 (monopole and dipole of the CMB) get 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_cl > 0, np.sqrt(cl / total_cl), 0.0)


class LocalFNL:
    """Turn Gaussian a_lm into local-f_NL non-Gaussian a_lm with the same expected C_l.

    Parameters
    ----------
    cl : (lmax+1,) spectrum of the Gaussian field in uK^2.
    nside : HEALPix resolution on which g^2 is formed (RING ordering).
    fnl : f_NL (dimensionless); 0 gives back the Gaussian field.

    The transfer function and constants are computed once here; :meth:`__call__`
    costs one ``alm2map`` and one ``map2alm`` (iter=0) at (nside, lmax). The costly
    constant, D_l (``quadratic_cl``, a Gauss-Legendre quadrature), does not depend on
    f_NL: :meth:`with_fnl` gives the model at another f_NL sharing it.
    """

    def __init__(self, cl: np.ndarray, nside: int, fnl: float):
        self.cl = np.asarray(cl, dtype=np.float64)
        self.lmax = len(self.cl) - 1
        self.nside = int(nside)
        self.sigma2 = pixel_variance(self.cl)         # uK^2
        self.quadratic_cl = squared_field_cl(self.cl)  # uK^4, spectrum of g^2
        self.quadratic_cl.flags.writeable = False     # shared by the models of with_fnl
        self._set_fnl(fnl)

    def _set_fnl(self, fnl: float) -> None:
        """The f_NL-dependent part: a, the transfer function sqrt(C_l / (C_l + a^2 D_l))."""
        self.fnl = float(fnl)
        self.a = 3.0 * self.fnl / T_CMB_UK            # 1/uK
        self.transfer = matching_transfer(self.cl, self.cl + self.a**2 * self.quadratic_cl)
        self._transfer_alm = self.transfer[alm_ell_m(self.lmax)[0]]

    def with_fnl(self, fnl: float) -> "LocalFNL":
        """The same model at f_NL ``fnl``: bitwise ``LocalFNL(self.cl, self.nside, fnl)``, but
        sharing this one's ``cl``, ``sigma2`` and D_l (``quadratic_cl``, read-only), so it
        costs only the transfer function: a square root of lmax + 1 numbers, spread over
        the a_lm. ``self`` is unchanged."""
        other = object.__new__(type(self))
        other.cl, other.lmax, other.nside = self.cl, self.lmax, self.nside
        other.sigma2, other.quadratic_cl = self.sigma2, self.quadratic_cl
        other._set_fnl(fnl)
        return other

    def quadratic_alm(self, g_map: np.ndarray) -> np.ndarray:
        """a_lm (up to lmax) of g^2 - <g^2> for a map g in uK (RING, npix of self.nside)."""
        return hp.map2alm(g_map * g_map - self.sigma2, lmax=self.lmax, iter=0)

    def __call__(self, g_alm: np.ndarray, g_map: np.ndarray | None = None,
                 quadratic_alm: np.ndarray | None = None) -> np.ndarray:
        """Non-Gaussian a_lm (complex128, healpy order) from Gaussian a_lm ``g_alm``.

        ``g_map`` (the map of ``g_alm`` at self.nside) may be passed to save a transform;
        ``quadratic_alm`` (:meth:`quadratic_alm` of that map, the same at every f_NL)
        saves both, e.g. when one field is taken to several f_NL.
        """
        if self.fnl == 0.0:
            return g_alm * self._transfer_alm
        if quadratic_alm is None:
            if g_map is None:
                g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
            quadratic_alm = self.quadratic_alm(g_map)
        return (g_alm - self.a * quadratic_alm) * self._transfer_alm


class LocalGNL:
    """Turn Gaussian a_lm into local-g_NL non-Gaussian a_lm with the same expected C_l.

    T = g + b g^3 = (1 + 3 b sigma^2) g + b h, b = 9 g_NL / T_CMB^2, h = g^3 - 3 sigma^2 g
    (module docstring), then rescaled by sqrt(C_l / ((1 + 3 b sigma^2)^2 C_l + b^2 H_l)).

    Parameters
    ----------
    cl : (lmax+1,) spectrum of the Gaussian field in uK^2.
    nside : HEALPix resolution on which h is formed (RING ordering).
    gnl : g_NL (dimensionless); 0 gives back the Gaussian field.

    The transfer function and constants are computed once here; :meth:`__call__`
    costs one ``alm2map`` and one ``map2alm`` (iter=0) at (nside, lmax), as
    :class:`LocalFNL`.
    """

    def __init__(self, cl: np.ndarray, nside: int, gnl: float):
        self.cl = np.asarray(cl, dtype=np.float64)
        self.lmax = len(self.cl) - 1
        self.nside = int(nside)
        self.gnl = float(gnl)
        self.b = 9.0 * self.gnl / T_CMB_UK**2          # 1/uK^2
        self.sigma2 = pixel_variance(self.cl)          # uK^2
        self.linear = 1.0 + 3.0 * self.b * self.sigma2  # dimensionless factor on g
        self.cubic_cl = cubed_field_cl(self.cl)         # uK^6, spectrum of h
        total = self.linear**2 * self.cl + self.b**2 * self.cubic_cl
        self.transfer = matching_transfer(self.cl, total)
        self._transfer_alm = self.transfer[alm_ell_m(self.lmax)[0]]

    @property
    def excess_kurtosis(self) -> float:
        """First-order (in b) expected one-point excess kurtosis of the output maps.

        <T^4>/<T^2>^2 - 3 = 4 b <g^3 P h> / sigma^4 = 4 b <(P h)^2> / sigma^4, with P the
        band limit l <= lmax that h's a_lm are cut to: 24 b sigma^2 times the fraction of
        <h^2> = 6 sigma^6 below lmax (the transfer function does not enter: kurtosis is
        scale-free and the transfer is 1 / (1 + 3 b sigma^2) + O(b^2)).
        """
        ell = np.arange(self.lmax + 1)
        h_var = np.sum((2 * ell + 1) * self.cubic_cl) / (4 * np.pi)
        return float(4.0 * self.b * h_var / self.sigma2**2)

    def cubic_alm(self, g_map: np.ndarray) -> np.ndarray:
        """a_lm (up to lmax) of h = g^3 - 3 sigma^2 g for a map g in uK (RING, npix of self.nside).

        Forming h, not g^3, on the grid keeps the part correlated with g out of the
        map2alm quadrature and aliasing errors: that part is applied exactly in
        harmonic space by :meth:`__call__`.
        """
        return hp.map2alm(g_map * (g_map * g_map - 3.0 * self.sigma2), lmax=self.lmax, iter=0)

    def __call__(self, g_alm: np.ndarray, g_map: np.ndarray | None = None) -> np.ndarray:
        """Non-Gaussian a_lm (complex128, healpy order, uK) from Gaussian a_lm ``g_alm``.

        ``g_map`` (the map of ``g_alm`` at self.nside) may be passed to save a transform.
        """
        if self.gnl == 0.0:
            return g_alm * self._transfer_alm
        if g_map is None:
            g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
        return (self.linear * g_alm + self.b * self.cubic_alm(g_map)) * self._transfer_alm
