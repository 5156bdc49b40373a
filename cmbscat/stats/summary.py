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
the map once per call, whatever subset is asked for.
"""

from __future__ import annotations

import numpy as np

from cmbscat.healpix import synthesis
from cmbscat.stats.cubic import CubicStatistic
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
    """

    def __init__(self, nside: int, lmax: int, cl: np.ndarray, thresholds=DEFAULT_THRESHOLDS):
        self.nside, self.lmax = int(nside), int(lmax)
        self.powspec_edges = power_spectrum_bins(self.lmax)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._cubic = CubicStatistic(cl, self.nside, self.lmax)
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
