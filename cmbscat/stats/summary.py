"""Every classical statistic of one map, sharing its syntheses.

The statistics a cosmologist reads a map with, as the classical classifiers use
them (one feature vector per statistic and map):

=============  ===========================  =============================================
name           features                     from
=============  ===========================  =============================================
``powspec``    (n_bins,) log10 binned C_l   the a_lm (:mod:`cmbscat.stats.powspec`)
``onepoint``   (2,) skewness, kurtosis      the map (:mod:`cmbscat.stats.onepoint`)
``cubic``      (1,) the score S             map + one synthesis (:mod:`cmbscat.stats.cubic`)
``minkowski``  (3 n_thresholds,) V0, V1, V2 map + derivatives (:mod:`cmbscat.stats.minkowski`)
=============  ===========================  =============================================

:class:`MapStatistics` precomputes filters and geometry once and synthesises
the map once per call, whatever subset is asked for. For an observed file (beam,
noise, mask: :class:`~cmbscat.stats.observed.ObservedSky`) every statistic reads the
apodized masked map w d (:mod:`cmbscat.stats.observed`).
"""

from __future__ import annotations

import numpy as np

from cmbscat.healpix import synthesis
from cmbscat.stats.cubic import CubicStatistic, ObservedCubicStatistic
from cmbscat.stats.minkowski import DEFAULT_THRESHOLDS, MinkowskiFunctionals
from cmbscat.stats.onepoint import one_point_statistics
from cmbscat.stats.powspec import binned_power_spectrum, power_spectrum_bins

STATISTICS = ("powspec", "onepoint", "cubic", "minkowski")
#: Statistics that need the full-resolution map (not only its power spectrum).
MAP_STATISTICS = ("onepoint", "cubic", "minkowski")


class MapStatistics:
    """Classical statistics of maps band-limited at ``lmax`` on the RING grid ``nside``.

    Parameters
    ----------
    nside, lmax : the maps' HEALPix resolution and band limit.
    cl : (lmax + 1,) spectrum (uK^2) of the Gaussian class, for the cubic statistic's
        inverse-variance filter (the shipped Planck 2018 table in the pipeline).
    thresholds : Minkowski-functional thresholds, in units of the map's standard deviation.
    observed : the file's beam, noise and mask (:func:`cmbscat.stats.observed.observed_sky`),
        or None for noiseless full-sky maps.
    mean_field_maps : Gaussian maps of the same observation for the cubic statistic's
        linear terms (made on the first call that needs them: with a mask or
        inhomogeneous noise).
    """

    def __init__(self, nside: int, lmax: int, cl: np.ndarray, thresholds=DEFAULT_THRESHOLDS,
                 observed=None, mean_field_maps: int = 100):
        self.nside, self.lmax = int(nside), int(lmax)
        self.powspec_edges = power_spectrum_bins(self.lmax)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.cl, self.observed, self.mean_field_maps = cl, observed, int(mean_field_maps)
        if observed is None:
            self._cubic = CubicStatistic(cl, self.nside, self.lmax)
        else:
            self._cubic = ObservedCubicStatistic(cl, self.nside, self.lmax, observed.beam, observed.noise_cl,
                                                 observed.mask)
        self._minkowski = MinkowskiFunctionals(self.nside, self.lmax, self.thresholds)
        self.minkowski_width = float(self._minkowski.width)  # the delta function's bin width

    def __call__(self, alm: np.ndarray, sky_map: np.ndarray | None = None,
                 which: tuple[str, ...] = STATISTICS) -> dict[str, np.ndarray]:
        """Features of one map: ``{name: float64 array}`` for each name in ``which``.

        alm : complex a_lm (healpy order, lmax). sky_map : the map itself if already at
        hand (RING, nside; e.g. a stored map), else it is synthesised from ``alm``.
        """
        unknown = set(which) - set(STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; choose from {STATISTICS}")
        if self.observed is not None:
            return self._observed_statistics(alm, sky_map, which)
        out = {}
        if "powspec" in which:
            out["powspec"] = binned_power_spectrum(alm, self.lmax, self.powspec_edges)
        if set(which) & set(MAP_STATISTICS):
            if sky_map is None:
                sky_map = synthesis(alm, self.nside, self.lmax)
            if "onepoint" in which:
                out["onepoint"] = one_point_statistics(sky_map)
            if "cubic" in which:
                out["cubic"] = np.atleast_1d(np.float64(self._cubic(alm, sky_map=sky_map)))
            if "minkowski" in which:
                out["minkowski"] = np.asarray(self._minkowski(alm, sky_map=sky_map), np.float64)
        return out

    def needs_mean_field(self) -> bool:
        """True when the cubic statistic's linear terms must come from Gaussian maps (an
        observed file with a mask or inhomogeneous noise) and are not estimated yet."""
        # the cubic's mean_field_maps: None (masked, not fitted), 0 (isotropic constants) or
        # the number of maps it was fitted on
        if self.observed is None or self._cubic.mean_field_maps:
            return False
        return self.observed.mask is not None or self.observed.observation.sigma is not None

    def fit_mean_field(self, progress: bool = False) -> int:
        """Estimate the cubic statistic's mean field from :attr:`mean_field_maps` Gaussian
        maps of the observation (:func:`~cmbscat.stats.observed.gaussian_observed_alms`)."""
        from tqdm import tqdm

        from cmbscat.stats.observed import gaussian_observed_alms

        alms = gaussian_observed_alms(self.observed, self.cl, self.mean_field_maps)
        return self._cubic.fit_mean_field(tqdm(alms, total=self.mean_field_maps, desc="cubic mean field",
                                               unit="map", disable=not progress))

    def _observed_statistics(self, alm, sky_map, which) -> dict[str, np.ndarray]:
        """The statistics of an observed map d (a_lm ``alm``) through the file's mask."""
        import healpy as hp

        if "cubic" in which and self.needs_mean_field():
            self.fit_mean_field()
        mask = self.observed.mask
        if sky_map is None:
            sky_map = synthesis(alm, self.nside, self.lmax)
        if mask is None:
            alm_w, full = np.asarray(alm, np.complex128), None
        else:
            # iter=3: w d is not band-limited; iter 0's quadrature error would leak the mask edge
            alm_w, full = hp.map2alm(mask * sky_map, lmax=self.lmax, iter=3), self.observed.fully_observed
        out = {}
        if "powspec" in which:  # the pseudo-C_l of w d: both classes share the mask
            out["powspec"] = binned_power_spectrum(alm_w, self.lmax, self.powspec_edges)
        if "onepoint" in which:
            out["onepoint"] = one_point_statistics(sky_map if full is None else sky_map[full])
        if "cubic" in which:
            out["cubic"] = np.atleast_1d(np.float64(self._cubic(alm, sky_map=sky_map, masked_alm=alm_w)))
        if "minkowski" in which:
            out["minkowski"] = np.asarray(self._minkowski(alm_w, pixels=full), np.float64)
        return out
