"""The ``stats`` stage: every classical statistic of every map of a sims file, computed once.

Like ``scatter`` for the networks, this caches what the classical classifiers read,
so that training several of them (and several seeds) never synthesises a map twice::

    /powspec    float64 (N, n_bins)            log10 binned C_l (edges in /powspec_edges)
    /onepoint   float64 (N, 2)                 skewness, excess kurtosis of the map
    /cubic      float64 (N, 1)                 the locally optimal cubic statistic S
    /minkowski  float64 (N, 3, n_thresholds)   V0, V1, V2 of the normalised map
    /labels, /seeds, /fnl                      copied from the source (/fnl: each map's f_NL,
                                               float64, NaN unknown; :attr:`Source.fnl`)
    /powspec_edges int (n_bins + 1,), /thresholds float64 (n_thresholds,)
    attrs       kind="stats", nside, lmax, source ("<name> content-sha256:<hex>"), cl_source, ...

Maps are read one at a time (:mod:`cmbscat.sky.source`: any sims file in the
DESIGN.md layout or a FITS map), each finished map is saved on its own (resumable,
see :mod:`cmbscat.store`), and ``shard`` restricts the run to one slice of the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.healpix import check_nside_lmax
from cmbscat.lock import OutputLock
from cmbscat.sky.fits_map import fits_attrs, fits_params
from cmbscat.sky.source import Source, open_source, process_maps
from cmbscat.sky.spectra import CL_SOURCE, planck2018_cl
from cmbscat.stats.minkowski import DEFAULT_THRESHOLDS
from cmbscat.stats.observed import DEFAULT_MEAN_FIELD_MAPS, MEAN_FIELD_SEED, source_observed_sky
from cmbscat.stats.summary import STATISTICS, MapStatistics
from cmbscat.store import Shard, content_hash, file_sha256


@dataclass
class StatsPlan:
    """A validated stats run: its source, the statistics and the parameters its output records."""

    source: Source
    statistics: MapStatistics
    params: dict

    def shard_params(self, shard: Shard | None) -> dict:
        return {**self.params, "shard": str(shard) if shard else None}


def stats_plan(in_path: str | Path, lmax: int | None = None,
               mean_field_maps: int = DEFAULT_MEAN_FIELD_MAPS, observation=None,
               nside: int | None = None) -> StatsPlan:
    """Check ``in_path`` and build the statistics at band limit ``lmax`` (default: the input's).

    An observed sims file (beam, noise, mask) gets the observed statistics
    (:mod:`cmbscat.stats.observed`), the cubic statistic's linear terms from
    ``mean_field_maps`` Gaussian maps of the same observation; its record then says so.
    A FITS map with a declared ``observation`` (:class:`~cmbscat.sky.observe.ObservationConfig`)
    and analysis ``nside`` (:func:`cmbscat.sky.fits_map.open_fits_map`), or with NaN /
    UNSEEN pixels, gets the same observed statistics, its mean field from Gaussian maps of
    the declared beam, noise and mask.
    """
    source = open_source(in_path, "stats", observation, nside)
    lmax = source.lmax if lmax is None else int(lmax)
    if not 2 <= lmax <= source.lmax:
        raise CmbscatError(f"--lmax must be in 2..{source.lmax} (the input's lmax), got {lmax}")
    check_nside_lmax(source.nside, lmax, "the input's nside")
    if mean_field_maps < 2:
        raise CmbscatError(f"--mean-field-maps must be at least 2, got {mean_field_maps}")
    observed = source_observed_sky(source, lmax)
    statistics = MapStatistics(source.nside, lmax, planck2018_cl(lmax), DEFAULT_THRESHOLDS,
                               observed=observed, mean_field_maps=mean_field_maps)
    digest = content_hash(source.path) if source.kind == "sims" else file_sha256(source.path)
    params = {"stage": "stats", "source_name": source.path.name, "source_content_sha256": digest,
              "input": source.dataset, "nside": source.nside, "lmax": lmax, "n_maps": source.n_maps,
              "cl_source": CL_SOURCE, "thresholds": statistics.thresholds.tolist(),
              "minkowski_width": statistics.minkowski_width,
              "powspec_edges": statistics.powspec_edges.tolist()}
    if observed is not None:  # recorded only for observed files: older records stay current
        params.update({"observation": observed.settings, "mean_field_maps": mean_field_maps,
                       "mean_field_seed": MEAN_FIELD_SEED})
    params.update(fits_params(source))
    return StatsPlan(source, statistics, params)


def compute_stats(in_path: str | Path, out_path: str | Path, lmax: int | None = None,
                  shard: Shard | None = None, progress: bool = True,
                  mean_field_maps: int = DEFAULT_MEAN_FIELD_MAPS, observation=None,
                  nside: int | None = None) -> int:
    """Write (or resume, or find complete) the statistics file ``out_path`` of ``in_path``.

    ``observation`` and ``nside``: a FITS map's declared observation and analysis nside
    (:func:`stats_plan`). Returns the number of maps computed by this call (0 if the file
    was complete).
    """
    plan = stats_plan(in_path, lmax, mean_field_maps, observation, nside)
    source, statistics = plan.source, plan.statistics
    n = source.n_maps

    def per_map(src, i, h5):
        alm = src.alm(i, statistics.lmax, h5)
        # a stored map at the band limit is used as it is (the one-point statistics then
        # see the very pixels the user gave); otherwise it is synthesised once
        stored = src.dataset != "alm" and statistics.lmax == src.lmax
        return statistics(alm, sky_map=src.pixels(i, h5) if stored else None, which=STATISTICS)

    with OutputLock(out_path):  # a second run on out_path is refused here, before any write
        writer, (start, stop), computed = process_maps(source, out_path, plan.shard_params(shard), shard,
                                                       per_map, "stats", progress)
        if writer.complete:
            return 0
        attrs = {
            "kind": "stats", "nside": source.nside, "lmax": statistics.lmax, "n_maps": n,
            "input": source.dataset, "source": f"{source.path.name} content-sha256:{plan.params['source_content_sha256']}",
            "cl_source": CL_SOURCE, "ordering": "RING", "cmbscat_version": __version__,
            "statistics": list(STATISTICS),
            "powspec_meaning": "log10 of the (2l+1)-weighted mean C_l (uK^2) in bins [edges[k], edges[k+1])",
            "onepoint_meaning": "skewness, excess kurtosis of the pixel values",
            "cubic_meaning": "S = -sum_x (C^-1 T)(x) (T(x)^2 - sigma^2) 4pi/npix, the local-f_NL score",
            "minkowski_meaning": "rows V0 (area), V1 (boundary length), V2 (total contour curvature / "
                                 "8 pi^2) of u = (T - mean)/std at /thresholds (Schmalzing & Gorski 1998)",
            "minkowski_width": statistics.minkowski_width,
        }
        if plan.statistics.observed is not None:
            attrs.update({
                # the observation identity (settings, hashes of the FITS files and of the mask
                # weights), for evaluate to hold a classical model's training observation against
                **{f"observation_{k}": v for k, v in source.observation.items()},
                "powspec_meaning": "log10 of the (2l+1)-weighted mean pseudo-C_l (uK^2) of the apodized "
                                   "masked map w d in bins [edges[k], edges[k+1]); no mode-coupling correction",
                "onepoint_meaning": "skewness, excess kurtosis of d over the fully observed pixels (w = 1)",
                "cubic_meaning": "S = -sum_x [W M^2 - W <M^2> - 2 M <W M>] 4pi/npix, W, M the b/C^d and "
                                 "b C/C^d filtered maps of w d, <> over Gaussian maps of the same observation",
                "minkowski_meaning": "as for a full sky, from the a_lm of w d, over the fully observed "
                                     "pixels (w = 1), per unit observed area",
            })
        attrs.update(fits_attrs(source))
        writer.finalize(per_item={"labels": source.labels[start:stop], "seeds": source.seeds[start:stop],
                                  "fnl": source.fnl[start:stop]},
                        whole={"powspec_edges": statistics.powspec_edges, "thresholds": statistics.thresholds},
                        attrs=attrs)
        return computed
