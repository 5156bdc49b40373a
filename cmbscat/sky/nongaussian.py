"""Local-type primordial non-Gaussianity in the Sachs-Wolfe approximation.

Model ``local`` (DESIGN.md). In the Sachs-Wolfe limit Delta T / T_CMB = -Phi / 3, so
the local ansatz Phi = Phi_G + f_NL (Phi_G^2 - <Phi_G^2>) becomes, for a Gaussian
temperature map g in uK,

    T = g - a (g^2 - <g^2>),      a = 3 f_NL / T_CMB.

Positive f_NL therefore gives a *negative* skewness, <T^3> ~ -6 a sigma^4 to first order.

The quadratic term adds power, C^T_l = C_l + a^2 D_l with D_l the spectrum of g^2
(the cross term vanishes: odd moments of a Gaussian are zero). So that the two
classes have the same expected spectrum, the non-Gaussian a_lm are multiplied by
the fixed, ensemble-level transfer function sqrt(C_l / (C_l + a^2 D_l)), with D_l
computed exactly (:func:`cmbscat.sky.spectra.squared_field_cl`), never per map.

Approximations, stated plainly: the Sachs-Wolfe relation is applied to the whole
lensed temperature map, acoustic peaks included, rather than to the primordial
potential (a toy model of non-Gaussianity, as in the scattering-network paper,
not a physical f_NL forecast); g^2 is formed on the HEALPix grid at the output
nside and its a_lm taken up to lmax (aliasing of the l > 3 nside power of g^2 was
measured at < 2e-4 of D_l at nside 512, lmax 1023); monopole and dipole are zero
in both classes.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from cmbscat.healpix import alm_ell_m
from cmbscat.sky.spectra import pixel_variance, squared_field_cl

T_CMB_UK = 2.7255e6  # CMB monopole temperature in uK (Fixsen 2009)


class LocalFNL:
    """Turn Gaussian a_lm into local-f_NL non-Gaussian a_lm with the same expected C_l.

    Parameters
    ----------
    cl : (lmax+1,) spectrum of the Gaussian field in uK^2.
    nside : HEALPix resolution on which g^2 is formed (RING ordering).
    fnl : f_NL (dimensionless); 0 gives back the Gaussian field.

    The transfer function and constants are computed once here; :meth:`__call__`
    costs one ``alm2map`` and one ``map2alm`` (iter=0) at (nside, lmax).
    """

    def __init__(self, cl: np.ndarray, nside: int, fnl: float):
        self.cl = np.asarray(cl, dtype=np.float64)
        self.lmax = len(self.cl) - 1
        self.nside = int(nside)
        self.fnl = float(fnl)
        self.a = 3.0 * self.fnl / T_CMB_UK            # 1/uK
        self.sigma2 = pixel_variance(self.cl)         # uK^2
        self.quadratic_cl = squared_field_cl(self.cl)  # uK^4, spectrum of g^2
        total = self.cl + self.a**2 * self.quadratic_cl
        with np.errstate(invalid="ignore", divide="ignore"):
            transfer = np.where(total > 0, np.sqrt(self.cl / total), 0.0)
        self.transfer = transfer                      # (lmax+1,), dimensionless
        self._transfer_alm = transfer[alm_ell_m(self.lmax)[0]]

    def quadratic_alm(self, g_map: np.ndarray) -> np.ndarray:
        """a_lm (up to lmax) of g^2 - <g^2> for a map g in uK (RING, npix of self.nside)."""
        return hp.map2alm(g_map * g_map - self.sigma2, lmax=self.lmax, iter=0)

    def __call__(self, g_alm: np.ndarray, g_map: np.ndarray | None = None) -> np.ndarray:
        """Non-Gaussian a_lm (complex128, healpy order) from Gaussian a_lm ``g_alm``.

        ``g_map`` (the map of ``g_alm`` at self.nside) may be passed to save a transform.
        """
        if self.fnl == 0.0:
            return g_alm * self._transfer_alm
        if g_map is None:
            g_map = hp.alm2map(g_alm, self.nside, lmax=self.lmax)
        return (g_alm - self.a * self.quadratic_alm(g_map)) * self._transfer_alm
