"""The ``scatter`` stage: scattering coefficients of every map of a sims file (or a FITS map).

Reads a sims file (DESIGN.md layout: ``/alm`` and/or ``/maps``, ``/labels``,
``/seeds``) or a HEALPix FITS map, and writes the scattering file::

    /coeffs  float32 (N, C, npix_out)  S[p] f in RING order at nside_out, unit of the input (uK)
    /labels  int8 (N,)                 copied (-1 for a FITS map)
    /seeds   int64 (N,)                copied (-1 for a FITS map)
    /fnl     float64 (N,)              each map's local f_NL, copied (:attr:`Source.fnl`; NaN unknown)
    /paths   int64 (P, depth)          scale index j of each step of each S[p] channel's path, -1 padded
    /odd_pairs int64 (K, 2)            (j1, j2) of each odd channel C[j1, j2] (``odd=True`` only;
                                       j1 = -1: the scaling band); channel P + k is C[odd_pairs[k]],
                                       so C = P + K (files without it: K = 0, C = P)
    /weight  float32 (npix_out,)       only from a masked sims file: the mask w low-passed like the
                                       coefficients ((w * Phi) at nside_out, RING, clipped to [0, 1]),
                                       the weight of the networks' pooling; one map for the file
    attrs    kind="scattering", lmax, lam, J0, depth, nside_out, lmax_out, oversample,
             map2alm_iter, odd, odd_power, source ("<name> content-sha256:<hex>"),
             input ("alm" | "maps" | "fits"), cmbscat_version, unit, ordering, channel_names, ...;
             from an observed sims file also its observation identity
             (:func:`cmbscat.sky.source.observation_record`: beam_fwhm_arcmin, noise_uk_arcmin,
             hits, mask, apodize_deg, FITS hashes, mask_content_sha256) and, with a mask,
             masked=True and mask_map2alm_iter

With a mask (DESIGN.md "Observations"), the transform's input is the apodized masked map
w d (:meth:`cmbscat.sky.source.Source.masked_alm`), not d: the networks see what an
analysis of the observed sky would, the cut region at zero, and pool with ``/weight``.
A user's FITS map with a declared mask and observation (or with NaN / UNSEEN pixels) takes
the same path at the model's nside (:mod:`cmbscat.sky.fits_map`); its output records the
observation as a sims file's does, and label -1, /fnl NaN.

Maps are processed one at a time (memory independent of N), each finished map is
saved on its own (resumable, see :mod:`cmbscat.store`), and ``shard`` restricts the
run to one slice of the maps (join shard files with ``cmbscat combine``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.lock import OutputLock
from cmbscat.scattering.transform import (DEFAULT_ITER, DEFAULT_ODD_POWER, DEFAULT_OVERSAMPLE,
                                          Scattering, default_J0)
from cmbscat.scattering.wavelets import n_scales
from cmbscat.sky.fits_map import fits_attrs, fits_params
from cmbscat.sky.source import (INPUT_MAP2ALM_ITER, MASKED_MAP2ALM_ITER, OBSERVATION_DEFAULTS,
                                Source, open_source, process_maps)
from cmbscat.store import Shard, content_hash, file_sha256

@dataclass
class ScatterPlan:
    """A validated scatter run: its source, its transform and the parameters its output records."""

    source: Source
    transform: Scattering
    params: dict  # without the shard; see :meth:`shard_params`

    def shard_params(self, shard: Shard | None) -> dict:
        return {**self.params, "shard": str(shard) if shard else None}


def scatter_plan(in_path: str | Path, depth: int = 2, J0: int | None = None, lam: float = 2.0,
                 lmax: int | None = None, oversample: float = DEFAULT_OVERSAMPLE,
                 iter: int = DEFAULT_ITER, min_nside: int | None = None, odd: bool = False,
                 odd_power: int = DEFAULT_ODD_POWER, observation=None,
                 nside: int | None = None) -> ScatterPlan:
    """Check the options against the input ``in_path`` and build the transform (see :func:`scatter`).

    The plan's ``params`` record the input's content hash (:func:`cmbscat.store.content_hash`:
    a cmbscat sims file's ``content_sha256``; the bytes of a FITS map), so an output made
    from other input data is never taken for current; for a FITS map also its declared
    observation and analysis nside (:func:`cmbscat.sky.fits_map.fits_params`).
    """
    if depth not in (1, 2, 3):
        raise CmbscatError(f"--depth must be 1, 2 or 3, got {depth}")
    source = open_source(in_path, "scatter", observation, nside)
    if lmax is None:
        lmax = source.lmax
    if lmax > source.lmax:
        raise CmbscatError(f"--lmax {lmax} is above the input's lmax {source.lmax} ({in_path})")
    if lmax < 1:
        raise CmbscatError(f"--lmax must be >= 1, got {lmax}")
    for name, value in (("--lam", lam), ("--oversample", oversample)):
        if not math.isfinite(value):
            raise CmbscatError(f"{name} must be a finite number, got {value}")
    if not lam > 1:
        raise CmbscatError(f"--lam must be > 1, got {lam}")
    if not oversample >= 1:
        raise CmbscatError(f"--oversample must be >= 1, got {oversample}")
    if iter < 0:
        raise CmbscatError(f"--iter must be >= 0, got {iter}")
    if odd_power not in (1, 2):
        raise CmbscatError(f"--odd-power must be 1 or 2, got {odd_power}")
    if min_nside is not None and min_nside < 0:
        raise CmbscatError(f"--min-nside must be >= 0, got {min_nside}")
    J = n_scales(lmax, lam)
    if J0 is None:
        J0 = default_J0(lmax, lam)
    if not 0 <= J0 <= J:
        raise CmbscatError(f"--J0 must be in 0..{J} for lmax {lmax} and lam {lam:g}, got {J0}")
    sc = Scattering(lmax, nside=source.nside, depth=depth, J0=J0, lam=lam,
                    oversample=oversample, iter=iter, input_iter=INPUT_MAP2ALM_ITER,
                    min_nside=min_nside, odd=odd, odd_power=odd_power)
    digest = content_hash(source.path) if source.kind == "sims" else file_sha256(source.path)
    params = {"stage": "scatter", "source_name": source.path.name, "source_content_sha256": digest,
              "input": source.dataset, "lmax": lmax, "lam": float(lam), "J0": J0, "depth": depth,
              "oversample": float(oversample), "min_nside": sc.min_nside, "map2alm_iter": iter,
              "input_map2alm_iter": INPUT_MAP2ALM_ITER, "n_maps": source.n_maps}
    if odd:  # recorded only when on, so files made before odd channels existed stay current
        params.update(odd=True, odd_power=int(odd_power),
                      odd_pairs=[[int(j1), int(j2)] for j1, j2 in sc.odd_pairs])
    if source.mask is not None:  # likewise; and a file of the unmasked transform of a masked
        # sims file (made before masks were applied) is refused rather than taken for current
        params.update(masked=True, mask_map2alm_iter=MASKED_MAP2ALM_ITER)
    params.update(fits_params(source))
    return ScatterPlan(source, sc, params)


def scatter(in_path: str | Path, out_path: str | Path, depth: int = 2, J0: int | None = None,
            lam: float = 2.0, lmax: int | None = None, oversample: float = DEFAULT_OVERSAMPLE,
            iter: int = DEFAULT_ITER, min_nside: int | None = None, odd: bool = False,
            odd_power: int = DEFAULT_ODD_POWER, shard: Shard | None = None,
            progress: bool = True, observation=None, nside: int | None = None) -> int:
    """Write (or resume, or find complete) the scattering file ``out_path`` of ``in_path``.

    lmax : band-limit of the transform; default the source's (sims: its ``lmax``
        attribute; FITS: 3 nside - 1 at the analysis nside); larger values are refused.
    J0 : default :func:`cmbscat.scattering.default_J0` (5 for lam = 2: nside_out 16).
    odd, odd_power : add the odd channels C[j1, j2] with envelope power q = odd_power.
    observation : a FITS map's declared observation (:class:`cmbscat.sky.observe.ObservationConfig`:
        mask, apodization, beam, noise, hits); its NaN / UNSEEN pixels are masked too.
    nside : a FITS map's analysis nside, the model's (default: the map's own);
        :func:`cmbscat.sky.fits_map.open_fits_map`.
    Other parameters: see :class:`cmbscat.scattering.transform.Scattering`.

    Returns the number of maps computed by this call (0 if the file was complete).
    """
    plan = scatter_plan(in_path, depth, J0, lam, lmax, oversample, iter, min_nside, odd, odd_power,
                        observation, nside)
    source, sc, params = plan.source, plan.transform, plan.params
    lmax, J0, digest = params["lmax"], params["J0"], params["source_content_sha256"]
    n = source.n_maps
    with OutputLock(out_path):  # a second run on out_path is refused here, before any write
        # without a mask masked_alm is alm: the same numbers as before masks existed
        writer, (start, stop), computed = process_maps(
            source, out_path, plan.shard_params(shard), shard,
            lambda src, i, h5: {"coeffs": sc(src.masked_alm(i, lmax, h5)).astype(np.float32)},
            "scatter", progress)
        if writer.complete:
            return 0
        attrs = {
            "kind": "scattering", "lmax": lmax, "lam": float(lam), "J0": J0, "depth": depth,
            "nside_out": sc.nside_out, "lmax_out": sc.lmax_out, "n_channels": sc.n_channels,
            "oversample": float(oversample), "min_nside": sc.min_nside, "map2alm_iter": iter,
            "input_map2alm_iter": INPUT_MAP2ALM_ITER, "input": source.dataset,
            "source": f"{source.path.name} content-sha256:{digest}", "source_nside": source.nside,
            "n_maps": n, "ordering": "RING", "unit": "uK (unit of the input map)",
            "normalisation": "raw S[p] = U[p] f * Phi, no log or per-channel scaling",
            "odd": bool(odd), "odd_power": int(odd_power) if odd else 0,
            "channel_names": sc.channel_names(),
            "paths_meaning": "scale j of each step; wavelet j covers lam^(j-1) < l < lam^(j+1); -1 = none",
            "odd_pairs_meaning": ("C[j1,j2] = ((f*Psi_j1) |f*Psi_j2|^odd_power) * Phi, channels after "
                                  "/paths' in /odd_pairs order; j1 = -1: the scaling band f*Phi"),
            "cmbscat_version": __version__,
        }
        whole = {"paths": sc.paths_array(), **({"odd_pairs": sc.odd_pairs_array()} if odd else {})}
        if source.observation != OBSERVATION_DEFAULTS:  # copied so that later stages can compare
            attrs.update(source.observation)  # a model's training data with a test file
        if source.mask is not None:
            # one map for the file, not per map: a shard file holds it whole, and combine
            # takes the first shard's (cmbscat.store.combine_shards)
            whole["weight"] = sc.weight_map(source.mask).astype(np.float32)
            attrs.update(masked=True, mask_map2alm_iter=MASKED_MAP2ALM_ITER,
                         weight_meaning="/weight: the mask w low-passed like the coefficients, "
                                        "(w * Phi) at nside_out, RING, clipped to [0, 1]; /coeffs are "
                                        "S[p] of the apodized masked map w d")
        attrs.update(fits_attrs(source))
        writer.finalize(per_item={"labels": source.labels[start:stop], "seeds": source.seeds[start:stop],
                                  "fnl": source.fnl[start:stop]},
                        whole=whole, attrs=attrs)
        return computed
