"""What the classical statistics need to know of an observed sims file (DESIGN.md, "Observations").

An observed file (``cmbscat simulate --beam-fwhm/--noise/--hits/--mask``) holds
d = b_l T_lm + n_lm (band-limited, not masked) and its mask. Every statistic then reads
the same observed map, the apodized masked map w d, each in the way its field does:

* ``powspec``: the pseudo-C_l of w d (no mode-coupling correction: both classes share
  the mask, so a classifier needs none);
* ``onepoint`` and ``minkowski``: over the fully observed pixels only (w = 1, away from
  the mask and its apodized edge), the Minkowski derivatives taken from w d's a_lm;
* ``cubic``: :class:`~cmbscat.stats.cubic.ObservedCubicStatistic` with the beam, the
  noise spectrum and the mask, its linear (mean-field) terms from Gaussian maps of the
  same observation (:func:`gaussian_observed_alms`: their own seeds, their own noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import healpy as hp
import numpy as np

from cmbscat.errors import CmbscatError

#: Run seed of the Gaussian maps that estimate the cubic statistic's mean field; their
#: per-map seeds come from it as a sims file's do (:func:`cmbscat.sky.simulate.map_seeds`).
MEAN_FIELD_SEED = 0x6D66
DEFAULT_MEAN_FIELD_MAPS = 100
#: A pixel counts as fully observed when its apodized weight is at least this.
FULLY_OBSERVED = 1.0 - 1e-6


@dataclass(frozen=True)
class ObservedSky:
    """An observed file's beam, noise and mask, ready for the statistics at (nside, lmax).

    beam : float64 (lmax+1,) b_l (1 without a beam).
    noise_cl : float64 (lmax+1,) N_l in uK^2 sr, the sky-averaged white-noise power
        (mean over observed pixels of sigma_i^2 times the pixel area), 0 without noise;
        zero at l < 2, where the statistics never look (the sky has no monopole or dipole).
    mask : float32 (npix,) apodized weights w (RING; 1 = fully observed), or None.
    observation : the file's :class:`~cmbscat.sky.observe.Observation`, to make Gaussian
        maps of the same observation (:func:`gaussian_observed_alms`).
    settings : the file's observation attributes, recorded in the statistics file.
    """

    beam: np.ndarray
    noise_cl: np.ndarray
    mask: np.ndarray | None
    observation: object
    settings: dict

    @property
    def fully_observed(self) -> np.ndarray | None:
        """bool (npix,): pixels with w >= :data:`FULLY_OBSERVED`, or None without a mask."""
        return None if self.mask is None else self.mask >= FULLY_OBSERVED


def observed_sky(path: str | Path, nside: int, lmax: int) -> ObservedSky | None:
    """The observation of the sims file ``path`` at band limit ``lmax``, or None for a
    noiseless, unbeamed full-sky file (every statistic is then computed as before)."""
    from cmbscat.sky.observe import ObservationConfig
    from cmbscat.sky.simulate import OBSERVATION_FIELDS

    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        hits = np.asarray(f["hits"][()], np.float64) if "hits" in f else None
        mask = np.asarray(f["mask"][()], np.float32) if "mask" in f else None
    settings = {name: attrs[name].item() if hasattr(attrs[name], "item") else attrs[name]
                for name in OBSERVATION_FIELDS if name in attrs}
    if not settings and mask is None:
        return None
    if float(settings.get("beam_fwhm_arcmin", 0.0)) > 0 and attrs.get("pixel_window") == "not applied":
        raise CmbscatError(f"{path} was simulated before the beam carried the HEALPix pixel window; "
                           "simulate it again (its regenerate attribute has the command)")
    try:
        config = ObservationConfig(float(settings.get("beam_fwhm_arcmin", 0.0)),
                                   float(settings.get("noise_uk_arcmin", 0.0)), str(settings.get("hits", "")),
                                   str(settings.get("mask", "")), float(settings.get("apodize_deg", 0.0)))
    except (TypeError, ValueError):
        raise CmbscatError(f"{path}: its observation attributes cannot be read") from None
    if mask is not None and mask.shape != (hp.nside2npix(nside),):
        raise CmbscatError(f"{path}: /mask has shape {mask.shape}, expected ({hp.nside2npix(nside)},)")
    # the stored hit map stands in for the FITS file it was made from (which may be gone)
    return prepared_sky(config, settings, mask, hits, nside, lmax)


def source_observed_sky(source, lmax: int) -> ObservedSky | None:
    """The observation of a :class:`~cmbscat.sky.source.Source` at band limit ``lmax``: a
    sims file's (:func:`observed_sky`), or a FITS map's as declared on the command line
    (:func:`cmbscat.sky.fits_map.open_fits_map`: its mask at the analysis nside with the
    map's invalid pixels in it, the declared beam, noise and hits); None for a full-sky map
    with no observation declared. A FITS map's ``settings`` are its whole observation record
    (hashes included), a sims file's its observation attributes."""
    from cmbscat.sky.observe import ObservationConfig
    from cmbscat.sky.source import OBSERVATION_DEFAULTS

    if source.kind == "sims":
        return observed_sky(source.path, source.nside, lmax)
    record = source.observation
    if record == OBSERVATION_DEFAULTS and source.mask is None:
        return None
    config = ObservationConfig(record["beam_fwhm_arcmin"], record["noise_uk_arcmin"], record["hits"],
                               record["mask"], record["apodize_deg"])
    return prepared_sky(config, dict(record), source.mask, source.hits, source.nside, lmax)


def prepared_sky(config, settings: dict, mask: np.ndarray | None, hits: np.ndarray | None,
                 nside: int, lmax: int) -> ObservedSky:
    """An :class:`ObservedSky` at (nside, lmax) from an observation's settings
    (:class:`~cmbscat.sky.observe.ObservationConfig` ``config``), its mask weights
    (float32 (npix,), RING, or None) and its hit map (float64 (npix,), RING, or None)."""
    from cmbscat.sky.observe import white_noise_power

    observation = config.prepare(nside, lmax, hits=hits)
    beam = np.ones(lmax + 1) if observation.beam is None else np.asarray(observation.beam, np.float64)
    noise_cl = np.zeros(lmax + 1)
    if config.noise_uk_arcmin > 0:
        if observation.sigma is not None:
            sigma2 = observation.sigma[observation.sigma > 0] ** 2
            noise_cl[:] = float(np.mean(sigma2)) * hp.nside2pixarea(nside)
        else:
            noise_cl[:] = white_noise_power(config.noise_uk_arcmin)
        noise_cl[:2] = 0.0
    return ObservedSky(beam, noise_cl, mask, observation, settings)


def gaussian_observed_alms(sky: ObservedSky, cl: np.ndarray, n_maps: int, seed: int = MEAN_FIELD_SEED):
    """Yield ``n_maps`` observed Gaussian a_lm (complex128, healpy order at the sky's lmax):
    sky a_lm of spectrum ``cl`` and noise drawn as the file's own maps are
    (:meth:`~cmbscat.sky.observe.Observation.observe`), from per-map seeds of run seed ``seed``."""
    from cmbscat.sky.simulate import map_seeds
    from cmbscat.sky.spectra import gaussian_alm

    for map_seed in map_seeds(seed, n_maps):
        alm = gaussian_alm(cl, np.random.default_rng(int(map_seed)))
        yield sky.observation.observe(alm, int(map_seed))
