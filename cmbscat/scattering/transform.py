"""Rotation-equivariant spherical scattering transform on HEALPix, multiresolution.

Transform only: the filters come from :mod:`cmbscat.scattering.wavelets`; the file-to-file
``scatter`` stage lives in :mod:`cmbscat.scattering.stage`.

Definitions (DESIGN.md): U[j] f = |f * Psi_j|; for a path p = (j1, ..., jd),
U[p] f = |...||f * Psi_j1| * Psi_j2| ... * Psi_jd|; S[p] f = U[p] f * Phi, and
S[()] f = f * Phi. Only frequency-decreasing paths (j1 > j2 > ... > jd, all >= J0)
are kept: they carry the energy. Convolution with an axisymmetric kernel is a
multiplication of a_lm by the kernel's harmonic profile (``healpy.almxfl``).

Multiresolution (what makes L = 1024 cheap):

* Band of wavelet j: l <= lhi_j (last nonzero multipole of its kernel, < lam^(j+1)).
  The band is synthesised on the HEALPix RING grid ``nside_j`` =
  max(ceil(oversample * (lhi_j + 1) / 2), min_nside) (any integer: healpy's RING
  transforms accept nside that are not powers of two), the modulus is taken pixel by pixel
  there, and the result is analysed (``map2alm``) only up to the multipole still
  needed downstream: lhi of the widest wavelet j' < j (frequency-decreasing paths),
  or the scaling band l < lam^J0 at the last layer.
* ``min_nside`` floors nside_j: the coarse scales are cheap on any grid and their
  relative aliasing error is the largest, so they get a finer grid almost for free
  (default min(256, the input's natural nside); at lmax 1023 no grid exceeds nside 512).
* ``oversample = 1`` puts the band edge at l = 2 nside_j (the grid can represent up to
  about 3 nside_j); the modulus output is not band-limited, and what lies above the grid's
  reach aliases into the kept multipoles. ``oversample = 2`` doubles nside_j (4x the
  pixels) and cuts that aliasing; the measured error/time trade-off is in
  docs/scattering.md.
* Coefficients S[p] are band-limited at l < lam^J0 and returned as RING maps at
  ``nside_out`` = the smallest power of two with 2 * nside_out >= lam^J0 (so
  lmax_out = 2 nside_out - 1 at most: exact synthesis, and healpy's iterative map2alm
  recovers the a_lm from the map).

Odd channels (``odd=True``; DESIGN.md "Keeping the sign"). Every S[p] with p != () is
even in f (the modulus forgets the sign), so the squeezed bispectrum that carries local
f_NL reaches them only through S[()]. The odd channels keep it:

    C[j1, j2] f = ((f * Psi_j1) . |f * Psi_j2|^q) * Phi,   j1 < j2,

for every wavelet scale j2 and every j1 below it, the scaling band included (j1 = -1
stands for f * Phi), except pairs whose two bands end at the same multipole (the two
top wavelets at the band limit: no long mode, see :func:`odd_pairs`). They are odd, C(-f) = -C(f), and equivariant (pointwise products
of equivariant maps). Multiresolution: only multipoles l < lam^J0 of the product are
kept, and a product of a field band-limited at lhi_j1 with one at l' has multipoles
l >= l' - lhi_j1, so the envelope |f * Psi_j2|^q is needed only up to
lhi_j1 + lmax_out: it is analysed once on its modulus grid up to lhi_(j2-1) + lmax_out
(with q = 1 this is the same map2alm as U[j2]'s, a little higher), and each product is
formed on the grid of the lower band, nside for lhi_j1 + lmax_out, which is coarse for
all but the top pairs.

Units and conventions: input in uK (or any unit; the transform is positively
1-homogeneous: S[p](c f) = |c| S[p] f for p != (), c S[()] f; odd channels
C(c f) = c |c|^q C(f), unit uK^(1+q)), a_lm in healpy's
ordering for a real field, maps in RING ordering. Outputs are the raw S[p] (same unit
as the input); no log or normalisation is applied -- standardise per channel downstream.
"""

from __future__ import annotations

from itertools import combinations

import healpy as hp
import numpy as np

from cmbscat.errors import CmbscatError
from cmbscat.healpix import alm_ell_m, alm_size, check_nside_lmax, resize_alm
from cmbscat.scattering.wavelets import axisym_kernels, n_scales, support

DEFAULT_OVERSAMPLE = 1.0
DEFAULT_ITER = 0
DEFAULT_MIN_NSIDE = 256  # floor of the modulus grids (capped at the input's natural nside)
DEFAULT_ODD_POWER = 2  # q of the odd channels: chosen by measurement (docs/odd_channels.md)
SCALING_BAND = -1  # j1 of an odd channel whose long-scale factor is f * Phi
DEFAULT_OUT_BAND = 32  # default J0: the smallest with lam^J0 >= 32 (nside_out 16 for lam = 2)


def default_J0(lmax: int, lam: float = 2.0) -> int:
    """Default lowest scale: the smallest J0 with lam^J0 >= 32, capped at J.

    For lam = 2 this is J0 = 5: coefficients band-limited at l < 32, stored at
    nside_out = 16 (lmax >= 31); smaller lmax gives J0 = J.
    """
    J = n_scales(lmax, lam)
    return min(J, n_scales(DEFAULT_OUT_BAND - 1, lam))


def nside_for_band(lmax_band: int, oversample: float = 1.0, power_of_two: bool = True) -> int:
    """Smallest nside with 2 * nside >= oversample * (lmax_band + 1).

    ``power_of_two=True`` (output maps: NEST-compatible) rounds up to a power of two;
    ``False`` (internal RING grids for the modulus, which healpy accepts at any nside)
    gives ceil(oversample * (lmax_band + 1) / 2), so the oversampling is continuous.
    """
    need = oversample * (lmax_band + 1) / 2.0
    if not power_of_two:
        return max(1, int(np.ceil(need - 1e-9)))
    nside = 1
    while nside < need:
        nside *= 2
    return nside


def alm_weights(lmax: int) -> np.ndarray:
    """Weights w with sum(w |a_lm|^2) = sum over all m (negative too) of |a_lm|^2 for a real field.

    That is 1 for m = 0 and 2 for m > 0; equals integral of f^2 over the sphere.
    """
    _, m = alm_ell_m(lmax)
    return np.where(m == 0, 1.0, 2.0)


def frequency_decreasing_paths(scales: list[int], depth: int) -> list[tuple[int, ...]]:
    """All paths () and (j1 > j2 > ... > jk) for k = 1..depth, ordered by length then by scales.

    Within one length, paths are sorted lexicographically on (j1, j2, ...) ascending.
    """
    paths: list[tuple[int, ...]] = [()]
    for k in range(1, depth + 1):
        paths += sorted(tuple(sorted(c, reverse=True)) for c in combinations(scales, k))
    return paths


def odd_pairs(scales: list[int], band_top: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """Pairs (j1, j2), j1 < j2, of the odd channels: j2 a wavelet scale, j1 the scaling band
    (:data:`SCALING_BAND` = -1) or a lower wavelet scale. Sorted by j1, then j2.

    ``band_top`` (j -> last multipole of band j) drops the pairs whose bands end at the
    same multipole (at the band limit, the two highest wavelets do): they are not
    squeezed (no long mode), cost a product at full resolution, and their mean carries
    the least signal of the high pairs (docs/odd_channels.md).
    """
    pairs = sorted((j1, j2) for j2 in scales for j1 in [SCALING_BAND, *scales] if j1 < j2)
    if band_top is not None:
        pairs = [(j1, j2) for j1, j2 in pairs if j1 == SCALING_BAND or band_top[j1] < band_top[j2]]
    return pairs


class Scattering:
    """Spherical scattering network S[p] for band-limit lmax (NumPy face).

    Parameters
    ----------
    lmax : maximum multipole of the input (band-limit L = lmax + 1).
    nside : HEALPix nside of input maps (needed only to take maps; default: the
        smallest nside with lmax <= 2 nside - 1).
    depth : 1, 2 or 3: longest path.
    J0 : lowest wavelet scale and scaling-function scale; default :func:`default_J0`.
    lam : dilation factor lambda > 1.
    oversample : grid factor for the modulus (see module docstring); >= 1.
    min_nside : floor on the modulus grids nside_j. Coarse scales cost almost nothing but
        carry most of the equivariance error at a fixed oversampling, so they are
        computed on grids of at least this nside. Default
        min(256, smallest power of two nside with lmax <= 2 nside - 1).
    iter : healpy ``map2alm`` Jacobi iterations used after each modulus (0 = plain
        quadrature). Maps given as input are always analysed with ``input_iter``.
    input_iter : ``map2alm`` iterations for map inputs (default 3).
    odd : add the odd channels C[j1, j2] (module docstring) after the S[p] channels.
    odd_power : q of the odd channels' envelope |f * Psi_j2|^q (1 or 2).

    Attributes
    ----------
    paths : list of tuples, one per even channel: () for S[()] f, (j1,), (j1, j2), ...
        with absolute scale indices j (wavelet j covers lam^(j-1) < l < lam^(j+1)).
    odd_pairs : list of (j1, j2), one per odd channel (empty unless ``odd``); channel
        ``len(paths) + k`` is C[odd_pairs[k]].
    nside_out, lmax_out : resolution and band-limit of the coefficients.
    scales : wavelet scales used (J0..J, minus any whose band is empty below lmax).
    grid : dict j -> (nside_j, lhi_j, lmax_down_j): synthesis grid, band top, analysis
        band-limit after the modulus when further layers follow.
    """

    def __init__(self, lmax: int, nside: int | None = None, depth: int = 2, J0: int | None = None,
                 lam: float = 2.0, oversample: float = DEFAULT_OVERSAMPLE, iter: int = DEFAULT_ITER,
                 input_iter: int = 3, min_nside: int | None = None, odd: bool = False,
                 odd_power: int = DEFAULT_ODD_POWER):
        if depth not in (1, 2, 3):
            raise CmbscatError(f"--depth must be 1, 2 or 3, got {depth}")
        if not oversample >= 1.0:
            raise CmbscatError(f"oversample must be >= 1, got {oversample}")
        if lmax < 1:
            raise CmbscatError(f"lmax must be >= 1, got {lmax}")
        if odd_power not in (1, 2):
            raise CmbscatError(f"--odd-power must be 1 or 2, got {odd_power}")
        self.odd, self.odd_power = bool(odd), int(odd_power)
        self.lmax, self.depth, self.lam = int(lmax), int(depth), float(lam)
        self.J = n_scales(self.lmax, self.lam)
        self.J0 = default_J0(self.lmax, self.lam) if J0 is None else int(J0)
        self.nside = nside_for_band(self.lmax) if nside is None else int(nside)
        check_nside_lmax(self.nside, self.lmax, what="nside")
        self.oversample, self.iter, self.input_iter = float(oversample), int(iter), int(input_iter)
        self.min_nside = (min(DEFAULT_MIN_NSIDE, nside_for_band(self.lmax)) if min_nside is None
                          else int(min_nside))

        phi, psi = axisym_kernels(self.lmax, self.lam, self.J0)  # validates J0
        self.lmax_out = support(phi)[1]
        self.phi = phi[: self.lmax_out + 1]
        self.nside_out = nside_for_band(self.lmax_out)
        self.psi: dict[int, np.ndarray] = {}
        for i, row in enumerate(psi):
            lhi = support(row)[1]
            if lhi >= 0:
                self.psi[self.J0 + i] = row[: lhi + 1]
        self.scales = sorted(self.psi)
        self.grid: dict[int, tuple[int, int, int]] = {}
        for j in self.scales:
            lhi = self.psi[j].size - 1
            below = [self.psi[k].size - 1 for k in self.scales if k < j]
            lmax_down = max([self.lmax_out, *below])
            nside_j = max(nside_for_band(lhi, self.oversample, power_of_two=False), self.min_nside)
            self.grid[j] = (nside_j, lhi, lmax_down)
        self.paths = frequency_decreasing_paths(self.scales, self.depth)
        self._index = {p: c for c, p in enumerate(self.paths)}
        self.odd_pairs = (odd_pairs(self.scales, {j: g[1] for j, g in self.grid.items()})
                          if self.odd else [])
        # the envelope of band j2 is analysed up to the highest l any product needs,
        # and each product is formed on the grid of its lower band
        self.envelope_lmax: dict[int, int] = {}
        self.product_grid: dict[int, int] = {}  # j1 -> nside of its products
        for j1, j2 in self.odd_pairs:
            # the modulus grid of band j2 holds multipoles up to 3 nside_j2 - 1
            env = min(self._band_top(j1) + self.lmax_out, 3 * self.grid[j2][0] - 1)
            self.envelope_lmax[j2] = max(self.envelope_lmax.get(j2, 0), env)
        for j1 in dict.fromkeys(j1 for j1, _ in self.odd_pairs):
            # no min_nside floor here: the products' error comes from the envelope's
            # modulus grid, not from this one (studies/odd_channels.py)
            self.product_grid[j1] = nside_for_band(self._band_top(j1) + self.lmax_out,
                                                   self.oversample, power_of_two=False)

    def _band_top(self, j: int) -> int:
        """Highest multipole of band j (the scaling band for j = SCALING_BAND)."""
        return self.lmax_out if j == SCALING_BAND else self.grid[j][1]

    # -- descriptions ------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.paths) + len(self.odd_pairs)

    def channel_names(self) -> list[str]:
        """``S[j1,j2,...]`` for the even channels, ``C[j1,j2]`` (``phi`` for the scaling band) for the odd."""
        names = [f"S[{','.join(map(str, p))}]" for p in self.paths]
        return names + [f"C[{'phi' if j1 == SCALING_BAND else j1},{j2}]" for j1, j2 in self.odd_pairs]

    def odd_pairs_array(self) -> np.ndarray:
        """Odd channels' pairs as int64 (K, 2): (j1, j2), j1 = -1 for the scaling band."""
        return np.asarray(self.odd_pairs, dtype=np.int64).reshape(-1, 2)

    @property
    def npix_out(self) -> int:
        return hp.nside2npix(self.nside_out)

    def paths_array(self) -> np.ndarray:
        """Paths as int64 (C, depth): scale index of each step, -1 padded (row 0 is S[()])."""
        out = -np.ones((len(self.paths), self.depth), dtype=np.int64)
        for c, p in enumerate(self.paths):
            out[c, : len(p)] = p
        return out

    def __repr__(self) -> str:
        return (f"Scattering(lmax={self.lmax}, nside={self.nside}, depth={self.depth}, J0={self.J0}, "
                f"lam={self.lam:g}, oversample={self.oversample:g}, iter={self.iter}"
                + (f", odd=True, odd_power={self.odd_power}" if self.odd else "") + "; "
                f"{self.n_channels} channels at nside_out={self.nside_out})")

    # -- input -------------------------------------------------------------
    def to_alm(self, x: np.ndarray) -> np.ndarray:
        """a_lm (complex128, healpy order, lmax = self.lmax) of an a_lm array or a RING map.

        Complex input is read as a_lm of any band-limit (truncated, or zero-padded, to
        self.lmax); real input must be a RING map with npix of self.nside and is analysed with
        ``map2alm(iter=input_iter)``.
        """
        x = np.asarray(x)
        if np.iscomplexobj(x):
            if x.ndim != 1:
                raise CmbscatError(f"a_lm must be one-dimensional, got shape {x.shape}")
            lmax_in = hp.Alm.getlmax(x.size)
            if lmax_in < 0:
                raise CmbscatError(f"{x.size} is not a valid healpy a_lm length")
            return resize_alm(x.astype(np.complex128), lmax_in, self.lmax)
        if x.ndim != 1 or x.size != hp.nside2npix(self.nside):
            raise CmbscatError(f"a map must have {hp.nside2npix(self.nside)} pixels (nside "
                               f"{self.nside}), got shape {x.shape}")
        return hp.map2alm(x.astype(np.float64), lmax=self.lmax, mmax=self.lmax,
                          iter=self.input_iter, use_weights=False)

    # -- the transform -----------------------------------------------------
    def _lowpass(self, alm: np.ndarray, lmax: int) -> np.ndarray:
        return hp.almxfl(resize_alm(alm, lmax, self.lmax_out), self.phi)

    def band(self, alm: np.ndarray, lmax: int, j: int) -> np.ndarray:
        """(f * Psi_j)_lm at band-limit lhi_j, from f_lm given at band-limit lmax."""
        lhi = self.grid[j][1]
        return hp.almxfl(resize_alm(alm, lmax, lhi), self.psi[j])

    def _analyse(self, m: np.ndarray, lmax: int) -> np.ndarray:
        return hp.map2alm(m, lmax=lmax, mmax=lmax, iter=self.iter, use_weights=False)

    def modulus(self, band_alm: np.ndarray, j: int, lmax_analysis: int,
                envelope: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """a_lm up to lmax_analysis of |f * Psi_j|, computed on the grid nside_j.

        With ``envelope``, also returns the a_lm of |f * Psi_j|^q up to
        ``envelope_lmax[j]`` (the odd channels' envelope; one analysis serves both for q = 1).
        """
        nside_j, lhi, _ = self.grid[j]
        m = hp.alm2map(band_alm, nside_j, lmax=lhi, mmax=lhi)
        np.abs(m, out=m)
        if not envelope:
            return self._analyse(m, lmax_analysis)
        env_lmax = self.envelope_lmax[j]
        if self.odd_power == 1:
            top = max(lmax_analysis, env_lmax)
            both = self._analyse(m, top)
            return resize_alm(both, top, lmax_analysis), resize_alm(both, top, env_lmax)
        return self._analyse(m, lmax_analysis), self._analyse(m * m, env_lmax)

    def odd_channels(self, alm: np.ndarray, envelopes: dict[int, np.ndarray]) -> np.ndarray:
        """a_lm (K, alm_size(lmax_out)) of the odd channels C[j1, j2], in ``odd_pairs`` order.

        ``alm``: f_lm at self.lmax; ``envelopes``: j2 -> a_lm of |f * Psi_j2|^q up to
        ``envelope_lmax[j2]``.
        """
        out = np.empty((len(self.odd_pairs), alm_size(self.lmax_out)), dtype=np.complex128)
        long_map, current = None, None
        for k, (j1, j2) in enumerate(self.odd_pairs):
            nside_p = self.product_grid[j1]
            top = self._band_top(j1)
            if j1 != current:  # the long-scale band, once per j1 on its product grid
                band = (self._lowpass(alm, self.lmax) if j1 == SCALING_BAND
                        else self.band(alm, self.lmax, j1))
                long_map = hp.alm2map(band, nside_p, lmax=top, mmax=top)
                current = j1
            # the envelope's multipoles above top + lmax_out cannot reach l <= lmax_out
            env_lmax = min(top + self.lmax_out, self.envelope_lmax[j2])
            env = resize_alm(envelopes[j2], self.envelope_lmax[j2], env_lmax)
            product = long_map * hp.alm2map(env, nside_p, lmax=env_lmax, mmax=env_lmax)
            out[k] = hp.almxfl(self._analyse(product, self.lmax_out), self.phi)
        return out

    def forward_alm(self, x: np.ndarray) -> np.ndarray:
        """Coefficients as a_lm: complex128 (C, alm_size(lmax_out)), channel c = paths[c]."""
        alm = self.to_alm(x)
        out = np.empty((self.n_channels, alm_size(self.lmax_out)), dtype=np.complex128)
        out[self._index[()]] = self._lowpass(alm, self.lmax)
        envelopes: dict[int, np.ndarray] = {}

        def descend(u_alm: np.ndarray, u_lmax: int, path: tuple[int, ...]) -> None:
            for j in self.scales:
                if path and j >= path[-1]:
                    break
                p = path + (j,)
                last = len(p) == self.depth
                lmax_a = self.lmax_out if last else self.grid[j][2]
                band = self.band(u_alm, u_lmax, j)
                if not path and j in self.envelope_lmax:  # first layer: also the odd envelope
                    v, envelopes[j] = self.modulus(band, j, lmax_a, envelope=True)
                else:
                    v = self.modulus(band, j, lmax_a)
                out[self._index[p]] = self._lowpass(v, lmax_a)
                if not last:
                    descend(v, lmax_a, p)

        descend(alm, self.lmax, ())
        if self.odd_pairs:
            out[len(self.paths):] = self.odd_channels(alm, envelopes)
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Coefficients S[p] f as RING maps: float64 (C, npix_out) at nside_out, unit of f.

        ``x``: a_lm (complex, healpy order) or a RING map at ``self.nside``.
        """
        return self.synthesise(self.forward_alm(x))

    forward = __call__

    def synthesise(self, coeff_alm: np.ndarray) -> np.ndarray:
        """RING maps (C, npix_out) of coefficient a_lm (C, alm_size(lmax_out))."""
        return np.stack([hp.alm2map(a, self.nside_out, lmax=self.lmax_out, mmax=self.lmax_out)
                         for a in coeff_alm])

    def weight_map(self, mask: np.ndarray) -> np.ndarray:
        """The pooling weight of coefficients computed from a masked map: float64 (npix_out,),
        RING at ``nside_out``, in [0, 1].

        ``mask``: weights w (npix,), RING at ``self.nside``, in [0, 1] (1 = observed). The
        weight is w low-passed like the coefficients, (w * Phi) sampled at nside_out (phi_0
        = 1: the mean of w is kept, a constant mask stays that constant), clipped to
        [0, 1]: the low-pass rings a little (below 0 in a wide cut, above 1 near its edge).
        w is analysed with ``map2alm(iter=3)`` up to lmax_out: it is not band-limited.
        """
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != (hp.nside2npix(self.nside),):
            raise CmbscatError(f"a mask must have {hp.nside2npix(self.nside)} pixels (nside "
                               f"{self.nside}), got shape {mask.shape}")
        w_alm = hp.map2alm(mask, lmax=self.lmax_out, mmax=self.lmax_out, iter=3, use_weights=False)
        low = hp.alm2map(hp.almxfl(w_alm, self.phi), self.nside_out, lmax=self.lmax_out,
                         mmax=self.lmax_out)
        return np.clip(low, 0.0, 1.0)

    def order(self) -> np.ndarray:
        """Path length of each channel (0 for S[()]; -1 for the odd channels)."""
        return np.array([len(p) for p in self.paths] + [-1] * len(self.odd_pairs))
