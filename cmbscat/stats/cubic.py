"""The locally optimal cubic statistic for local f_NL and its Fisher information.

DESIGN.md, "The limit". For the local model T = g - a (g^2 - sigma^2) of
:mod:`cmbscat.sky.nongaussian` (a = 3 f_NL / T_CMB in 1/uK, g Gaussian with
spectrum C_l), the score d log p(T) / da at a = 0 is

    S(T) = - sum_x W(x) [T(x)^2 - sigma^2] Delta,

with W the map of a_lm / C_l (zero where C_l = 0), sigma^2 = sum_l (2l+1) C_l / 4 pi
the pixel variance of g, and Delta = 4 pi / npix the pixel area. (The score also has
a term 2 sum_x T(x) Delta, the monopole of T, which is zero for the project's maps.)
S is this model's KSW bispectrum estimator (Komatsu, Spergel & Wandelt 2005) for the
reduced bispectrum b_l1l2l3 = -2 (C_l1 C_l2 + C_l2 C_l3 + C_l1 C_l3) per unit a, so

* at a = 0: E[S] = 0 and Var(S) = F, the Fisher information of a (:func:`fisher_information`);
* for small a: E_a[S] = a F + O(a^3) (the score identity; E_a[S] is exactly odd in a,
  because S(-T) = -S(T) and the model maps g -> -g, a -> -a into each other; the
  transfer function of :class:`~cmbscat.sky.nongaussian.LocalFNL` is even in a);
* the best separation any test can reach between f_NL = 0 and small f_NL is
  d' = a sqrt(F) (Neyman-Pearson), which thresholding S attains.

Units: a_lm and maps in uK, C_l in uK^2, a in 1/uK, so S is in uK (a S is
dimensionless) and F in uK^2.

All formulas assume no monopole and no dipole (C_0 = C_1 = 0 and a_lm = 0 for
l < 2), as the project's spectra and maps have; the class and functions here refuse
a spectrum with C_0 or C_1 non-zero.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from cmbscat.healpix import alm_ell_m, alm_size, check_nside_lmax, synthesis
from cmbscat.sky.spectra import pixel_variance, squared_field_cl


def _checked_spectrum(cl: np.ndarray, lmax: int | None = None) -> np.ndarray:
    """``cl`` as float64 (lmax+1,) after checking it is a usable spectrum for the score."""
    cl = np.asarray(cl, dtype=np.float64)
    if cl.ndim != 1:
        raise ValueError(f"cl must be one-dimensional, got shape {cl.shape}")
    lmax = cl.size - 1 if lmax is None else lmax
    if cl.size < lmax + 1:
        raise ValueError(f"cl has {cl.size} entries, fewer than lmax + 1 = {lmax + 1}")
    cl = cl[: lmax + 1]
    if not np.all(np.isfinite(cl)) or np.any(cl < 0):
        raise ValueError("cl must be finite and non-negative")
    if lmax < 2 or np.any(cl[:2] != 0):
        # the l < 2 modes would bring the score's monopole term and change Var(S)
        raise ValueError("the cubic statistic needs lmax >= 2 and C_0 = C_1 = 0 (no monopole, no dipole)")
    if not np.any(cl > 0):
        raise ValueError("cl is zero at every multipole")
    return cl


def inverse_spectrum(cl: np.ndarray) -> np.ndarray:
    """1 / C_l where C_l > 0, else 0 (per multipole, shape of ``cl``, 1/uK^2)."""
    cl = np.asarray(cl, dtype=np.float64)
    out = np.zeros_like(cl)
    np.divide(1.0, cl, out=out, where=cl > 0)
    return out


class CubicStatistic:
    """The locally optimal cubic statistic S of full-sky, noiseless maps (see the module doc).

    Parameters
    ----------
    cl : (>= lmax+1,) spectrum of the Gaussian field in uK^2, C_0 = C_1 = 0; only
        entries 0..lmax are used.
    nside : HEALPix resolution (RING ordering) on which the product W (T^2 - sigma^2)
        is summed. The pixel sum stands for the integral of a function band-limited at
        3 lmax, which HEALPix does not integrate exactly. Measured against nside 256-512
        on the same maps (Planck spectrum): at the project's lmax = 2 nside - 1 the
        per-map error is ~2 % of sd(S) (lmax 63 and 127) and Var(S) moves by < 0.3 %;
        at lmax <= 1.5 nside, ~0.3 % of sd(S); at nside >= lmax + 1, < 0.1 %; at the
        HEALPix limit lmax = 3 nside - 1 it is ~30 % of sd(S) and Var(S) is 13 % high
        (lmax 47, nside 16), so avoid that.
    lmax : band limit of the a_lm.
    nthreads : threads of the ducc0 synthesis.

    The filter 1 / C_l per a_lm index and sigma^2 are computed once here;
    :meth:`__call__` costs one synthesis (two if the map itself is not passed).
    """

    def __init__(self, cl: np.ndarray, nside: int, lmax: int, nthreads: int = 1):
        check_nside_lmax(nside, lmax)
        self.lmax, self.nside, self.nthreads = int(lmax), int(nside), int(nthreads)
        self.cl = _checked_spectrum(cl, self.lmax)                 # uK^2
        self.sigma2 = pixel_variance(self.cl)                       # uK^2, <g^2>
        self.pixel_area = 4.0 * np.pi / (12 * self.nside**2)       # sr, Delta
        ell = alm_ell_m(self.lmax)[0]
        self._filter_alm = inverse_spectrum(self.cl)[ell]           # 1/uK^2 per a_lm index

    def inverse_filtered_map(self, alm: np.ndarray) -> np.ndarray:
        """W = map of a_lm / C_l (1/uK, RING, npix of self.nside); zero weight where C_l = 0."""
        return synthesis(self._alm(alm) * self._filter_alm, self.nside, self.lmax, nthreads=self.nthreads)

    def __call__(self, alm: np.ndarray, sky_map: np.ndarray | None = None) -> float:
        """S of the map with a_lm ``alm`` (complex, healpy order, uK); returns S in uK.

        ``sky_map`` is the map of ``alm`` at self.nside (RING, uK) if the caller has
        already synthesised it (for another statistic); otherwise it is made here.
        Positive f_NL gives negative skewness but positive E[S] (E[S] = a F, a > 0).
        """
        alm = self._alm(alm)
        if sky_map is None:
            sky_map = synthesis(alm, self.nside, self.lmax, nthreads=self.nthreads)
        sky_map = np.asarray(sky_map, dtype=np.float64)
        if sky_map.shape != (12 * self.nside**2,):
            raise ValueError(f"sky_map has shape {sky_map.shape}, expected ({12 * self.nside**2},) "
                             f"for nside {self.nside}")
        w = self.inverse_filtered_map(alm)
        # sum W T^2 - sigma^2 sum W: the second sum is W's monopole, zero up to
        # quadrature, but subtracting it keeps S exactly the Wick-ordered cubic
        return -float(np.dot(w, sky_map * sky_map - self.sigma2)) * self.pixel_area

    def _alm(self, alm: np.ndarray) -> np.ndarray:
        alm = np.asarray(alm)
        if alm.shape != (alm_size(self.lmax),):
            raise ValueError(f"alm has shape {alm.shape}, expected ({alm_size(self.lmax)},) for lmax {self.lmax}")
        return alm


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n (float64, shape (n+1,))."""
    return gammaln(np.arange(n + 1, dtype=np.float64) + 1.0)


def wigner_3j_000_squared(l1, l2, l3, log_factorials: np.ndarray | None = None) -> np.ndarray:
    """(l1 l2 l3; 0 0 0)^2 for non-negative integer arrays (broadcast together), float64.

    Closed form (Edmonds 1957, eq. 3.7.17) with J = l1 + l2 + l3 = 2 g:

        (l1 l2 l3; 0 0 0)^2 = (J-2l1)! (J-2l2)! (J-2l3)! / (J+1)!
                              * [g! / ((g-l1)! (g-l2)! (g-l3)!)]^2,

    evaluated in logarithms; zero unless J is even and |l1 - l2| <= l3 <= l1 + l2.
    ``log_factorials`` (log k! for k = 0..>= J+1, e.g. from a loop's caller) saves
    recomputing the log-gamma function on every call.
    """
    l1, l2, l3 = (np.asarray(x, dtype=np.int64) for x in np.broadcast_arrays(l1, l2, l3))
    big_j = l1 + l2 + l3
    allowed = (big_j % 2 == 0) & (l3 >= np.abs(l1 - l2)) & (l3 <= l1 + l2) & (np.minimum(l1, l2) >= 0)
    # forbidden entries get harmless arguments; they are zeroed at the end
    big_j = np.where(allowed, big_j, 0)
    l1, l2, l3 = (np.where(allowed, x, 0) for x in (l1, l2, l3))
    g = big_j // 2
    if log_factorials is None or log_factorials.size < int(big_j.max(initial=0)) + 2:
        log_factorials = _log_factorials(int(big_j.max(initial=0)) + 1)
    lf = log_factorials
    log_value = (lf[big_j - 2 * l1] + lf[big_j - 2 * l2] + lf[big_j - 2 * l3] - lf[big_j + 1]
                 + 2.0 * (lf[g] - lf[g - l1] - lf[g - l2] - lf[g - l3]))
    return np.where(allowed, np.exp(log_value), 0.0)


def fisher_information(cl: np.ndarray) -> float:
    """Fisher information F of a (uK^2) in a full-sky, noiseless map, by the l-triple sum.

    F = sum_{l1, l2, l3} B^2 / (6 C_l1 C_l2 C_l3) over all ordered triples with
    2 <= l_i <= lmax = len(cl) - 1 and C_l > 0, where B = h b is the angle-averaged
    bispectrum per unit a, b = -2 (C_l1 C_l2 + C_l2 C_l3 + C_l1 C_l3) and
    h^2 = (2l1+1)(2l2+1)(2l3+1) / (4 pi) (l1 l2 l3; 0 0 0)^2. It equals Var(S) at
    a = 0, and the optimal d' between f_NL = 0 and a small f_NL is a sqrt(F).

    Cost O(lmax^3): a loop over l1 of (lmax, lmax) arrays, about 0.03 s at lmax 100 and
    2 s at lmax 300 (one core); at lmax ~ 1000 use :func:`fisher_information_legendre`
    (the same value to ~1e-10 relative, in O(lmax^2): 0.1 s at lmax 1023).
    With a mask, a beam or noise this is not the information of the observed map.
    """
    cl = _checked_spectrum(cl)
    ells = np.flatnonzero(cl > 0)
    c = cl[ells]
    log_factorials = _log_factorials(3 * int(ells.max()) + 2)
    l2, l3 = ells[:, None], ells[None, :]
    c2, c3 = c[:, None], c[None, :]
    total = 0.0
    for l1, c1 in zip(ells, c):
        h2 = (2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * np.pi) \
            * wigner_3j_000_squared(l1, l2, l3, log_factorials)
        b = -2.0 * (c1 * c2 + c2 * c3 + c1 * c3)
        total += float(np.sum(h2 * b * b / (6.0 * c1 * c2 * c3)))
    return total


def fisher_information_legendre(cl: np.ndarray) -> float:
    """The same F as :func:`fisher_information` (uK^2), in O(lmax^2) by Gauss-Legendre quadrature.

    Expanding b^2 / (C1 C2 C3) and using the symmetry of the sum over ordered triples,
    F = sum_l (2l+1) [D_l / C_l + 2 C_l E_l] over l >= 2 with C_l > 0, where D_l is the
    spectrum of g^2 (:func:`~cmbscat.sky.spectra.squared_field_cl`) and E_l that of
    the square of a field with unit spectrum on the same multipoles: the sums over
    (l1, l2) of h^2 C_l1 C_l2 and of h^2 are Legendre coefficients of xi(theta)^2 and
    of the projector's kernel squared, both computed exactly. Full sky, no noise.
    """
    cl = _checked_spectrum(cl)
    present = cl > 0
    d = squared_field_cl(cl)
    e = squared_field_cl(present.astype(np.float64))
    ell = np.arange(cl.size)
    return float(np.sum(((2 * ell + 1) * (d * inverse_spectrum(cl) + 2.0 * cl * e))[present]))


class ObservedCubicStatistic:
    """The cubic statistic of an observed map: beam, noise and a mask (DESIGN.md, "The limit").

    The observation is d = B T + n (harmonic: d_lm = b_l a_lm + n_lm), seen through a
    mask w(x) in [0, 1] (apodized; 1 = observed). With C^d_l = b_l^2 C_l + N_l, the
    masked map's a_lm d^w_lm = a_lm of w d are filtered into two maps,

        W = map of b_l d^w_lm / C^d_l,      M = map of b_l C_l d^w_lm / C^d_l
        (M is the Wiener-filtered T),

    and S = - sum_x [W M^2 - W <M^2> - 2 M <W M>] Delta: the cubic term with its
    linear (mean-field) terms taken out (Creminelli et al. 2006), <.> being pixel-wise
    averages over Gaussian maps of the same observation (:meth:`fit_mean_field`).
    Their expectation is zero on Gaussian maps with or without the linear terms (odd
    moments of a Gaussian vanish); the linear terms remove the variance that the mask's
    and the noise's anisotropy add. The filtering is diagonal in l (the masked map is
    treated as if full-sky, as the KSW analyses that apodize rather than inverse-variance
    filter), so S is not exactly the masked likelihood's score: with a mask its
    normalisation comes from simulations, not from :func:`fisher_information`.

    With no mask and isotropic noise, the mean fields are constants computed exactly
    (``mean_field=None``): <M^2> = sum_l (2l+1)/(4 pi) b_l^2 C_l^2 / C^d_l and
    <W M> = sum_l (2l+1)/(4 pi) b_l^2 C_l / C^d_l; with b_l = 1, N_l = 0 this is
    :class:`CubicStatistic` exactly (<W M> multiplies the monopole of T, which is 0).

    Parameters
    ----------
    cl : (>= lmax+1,) spectrum of the sky (uK^2), C_0 = C_1 = 0.
    nside, lmax : the maps' HEALPix resolution (RING) and band limit.
    beam : (lmax+1,) b_l applied to the sky (beam times pixel window), default 1.
    noise_cl : (lmax+1,) N_l (uK^2 sr), the noise spectrum of the observed a_lm; for
        inhomogeneous noise, its full-sky average. Default 0.
    mask : (npix,) w(x) in [0, 1] (RING), default none (full sky).
    """

    def __init__(self, cl: np.ndarray, nside: int, lmax: int, beam: np.ndarray | None = None,
                 noise_cl: np.ndarray | None = None, mask: np.ndarray | None = None, nthreads: int = 1):
        check_nside_lmax(nside, lmax)
        self.lmax, self.nside, self.nthreads = int(lmax), int(nside), int(nthreads)
        self.npix = 12 * self.nside**2
        self.cl = _checked_spectrum(cl, self.lmax)
        self.beam = np.ones(self.lmax + 1) if beam is None else np.asarray(beam, np.float64)[: self.lmax + 1]
        self.noise_cl = np.zeros(self.lmax + 1) if noise_cl is None else \
            np.asarray(noise_cl, np.float64)[: self.lmax + 1]
        if self.beam.shape != (self.lmax + 1,) or self.noise_cl.shape != (self.lmax + 1,):
            raise ValueError(f"beam and noise_cl need lmax + 1 = {self.lmax + 1} entries")
        if np.any(self.noise_cl < 0) or not np.all(np.isfinite(self.beam)):
            raise ValueError("noise_cl must be >= 0 and beam finite")
        self.mask = None if mask is None else np.asarray(mask, np.float64)
        if self.mask is not None and self.mask.shape != (self.npix,):
            raise ValueError(f"mask has shape {self.mask.shape}, expected ({self.npix},)")
        self.data_cl = self.beam**2 * self.cl + self.noise_cl             # C^d_l, uK^2
        inv = inverse_spectrum(self.data_cl)
        # no sky at l < 2: the noise's monopole and dipole would only add variance
        self.w_filter = np.where(self.cl > 0, self.beam * inv, 0.0)        # 1/uK^2 (b / C^d)
        self.m_filter = self.beam * self.cl * inv                          # dimensionless (b C / C^d)
        ell = alm_ell_m(self.lmax)[0]
        self._w_alm, self._m_alm = self.w_filter[ell], self.m_filter[ell]
        self.pixel_area = 4.0 * np.pi / self.npix
        # isotropic mean fields (no mask): exact constants
        modes = (2 * np.arange(self.lmax + 1) + 1) / (4 * np.pi)
        self.mean_m2 = np.full(self.npix, np.sum(modes * self.beam**2 * self.cl**2 * inv))
        self.mean_wm = np.full(self.npix, np.sum(modes * self.beam**2 * self.cl * inv))
        self.mean_field_maps = 0 if self.mask is None else None  # None: fit_mean_field needed

    def masked_alm(self, alm: np.ndarray, sky_map: np.ndarray | None = None) -> np.ndarray:
        """a_lm of w d (complex128, healpy order): ``alm`` itself without a mask."""
        if self.mask is None:
            return np.asarray(alm, dtype=np.complex128)
        import healpy as hp

        if sky_map is None:
            sky_map = synthesis(alm, self.nside, self.lmax, nthreads=self.nthreads)
        # iter=3: the masked map is not band-limited; the residual quadrature error of
        # iter=0 (~2e-4) would otherwise leak the mask's edge into every statistic
        return hp.map2alm(self.mask * sky_map, lmax=self.lmax, iter=3)

    def filtered_maps(self, alm: np.ndarray, sky_map: np.ndarray | None = None,
                      masked_alm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(W, M) of an observed map (a_lm ``alm``, uK; its map ``sky_map`` if at hand; the
        a_lm of w d ``masked_alm`` if already computed), RING."""
        alm_w = self.masked_alm(alm, sky_map) if masked_alm is None else masked_alm
        return (synthesis(alm_w * self._w_alm, self.nside, self.lmax, nthreads=self.nthreads),
                synthesis(alm_w * self._m_alm, self.nside, self.lmax, nthreads=self.nthreads))

    def fit_mean_field(self, gaussian_alms) -> int:
        """Estimate <M^2>(x) and <W M>(x) from observed Gaussian a_lm (an iterable, each of
        the same observation: beam, noise, mask). Returns the number of maps used.
        Needed with a mask (or inhomogeneous noise); replaces the isotropic constants."""
        sum_m2, sum_wm, n = np.zeros(self.npix), np.zeros(self.npix), 0
        for alm in gaussian_alms:
            w, m = self.filtered_maps(alm)
            sum_m2 += m * m
            sum_wm += w * m
            n += 1
        if n < 2:
            raise ValueError("the mean field needs at least 2 Gaussian maps")
        self.mean_m2, self.mean_wm = sum_m2 / n, sum_wm / n
        self.mean_field_maps = n
        return n

    def __call__(self, alm: np.ndarray, sky_map: np.ndarray | None = None, linear: bool = True,
                 masked_alm: np.ndarray | None = None) -> float:
        """S (uK) of the observed map with a_lm ``alm`` (band-limited d, uK; its RING map
        ``sky_map`` at self.nside if at hand; the a_lm of w d ``masked_alm`` if already
        computed). ``linear=False`` leaves the linear terms out (to show what they remove)."""
        if self.mean_field_maps is None:
            raise ValueError("with a mask, call fit_mean_field on Gaussian maps of the same "
                             "observation first")
        w, m = self.filtered_maps(alm, sky_map, masked_alm)
        cubic = np.dot(w, m * m)
        if linear:
            cubic -= np.dot(w, self.mean_m2) + 2.0 * np.dot(m, self.mean_wm)
        return -float(cubic) * self.pixel_area
