"""Model inputs read from the stage files (sims, scattering and statistics HDF5, DESIGN.md layouts).

Files are recognised by their layout (:func:`cmbscat.store.file_kind`), so one written
by another program in the contract's layout is read like cmbscat's own. Every input
is checked for non-finite values before a model sees it.

Masked files (DESIGN.md "Observations"): the networks' inputs are computed from the
apodized masked map w d, and each input file has one pooling weight map for all its maps
(:func:`scattering_weight`, :func:`lowres_weight`; None without a mask).
:func:`observation_identity` tells how a file's maps were observed, so that a model
trained on one observation is not silently tested on another.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat.errors import CmbscatError
from cmbscat.sky.source import observation_record, open_source, stored_fnl
from cmbscat.store import file_kind, require_kind

__all__ = ["file_kind", "require_kind", "read_labels", "read_seeds", "read_fnl", "scattering_inputs", "iter_alm",
           "lowres_maps", "band_limit", "classical_features", "scattering_weight", "lowres_weight",
           "observation_identity"]


def read_labels(path: str | Path) -> np.ndarray:
    """Labels (int64, (N,)) of a sims, scattering or statistics file."""
    with h5py.File(path, "r") as f:
        return f["labels"][()].astype(np.int64)


def read_seeds(path: str | Path) -> np.ndarray:
    """Per-map seeds (int64, (N,): :func:`cmbscat.sky.simulate.map_seeds`) of a sims,
    scattering or statistics file; they identify its maps."""
    with h5py.File(path, "r") as f:
        return f["seeds"][()].astype(np.int64)


def read_fnl(path: str | Path) -> np.ndarray:
    """Each map's true local f_NL (float64, (N,), dimensionless) of a sims, scattering or
    statistics file: its ``/fnl`` (NaN for a map whose f_NL is unknown, e.g. a FITS input).

    A sims file made before ``/fnl`` existed gives ``labels * fnl`` from its attributes
    (0 for a g_NL file; :func:`cmbscat.sky.source.stored_fnl`). Any other file without
    ``/fnl`` is refused in one line: the stage that made it must be run again.
    """
    kind = require_kind(path, ("sims", "scattering", "stats"), "reading f_NL")
    with h5py.File(path, "r") as f:
        labels = np.asarray(f["labels"][()]) if "labels" in f else None
        if "fnl" in f:
            fnl = np.asarray(f["fnl"][()], dtype=np.float64)
        elif kind == "sims":
            fnl = stored_fnl(f, labels)
            if fnl is None:
                raise CmbscatError(f"{path} has no /fnl and no ng_model/fnl attributes to recover "
                                   "each map's f_NL from")
        else:
            raise CmbscatError(f"{path} has no /fnl (made before per-map f_NL existed); rerun its stage "
                               "(delete it first: the stage finds an existing output complete)")
    if labels is not None and fnl.shape != labels.shape:
        raise CmbscatError(f"{path}: /fnl has shape {fnl.shape}, expected {labels.shape} (one per map)")
    return fnl


def _require_finite(x: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.size else np.zeros(0, bool)
    if bad.any():
        raise CmbscatError(f"{path}: {what} of map {int(np.flatnonzero(bad)[0])} are not finite "
                           f"({int(bad.sum())} maps affected)")
    return x


def scattering_inputs(path: str | Path) -> tuple[np.ndarray, dict]:
    """Coefficients (float32, (N, C, npix_out), RING) and geometry of a scattering file."""
    require_kind(path, "scattering", "this model")
    with h5py.File(path, "r") as f:
        coeffs = f["coeffs"][()].astype(np.float32)
        meta = {"nside": int(f.attrs["nside_out"]), "channels": int(coeffs.shape[1]),
                "paths": f["paths"][()].tolist() if "paths" in f else None,
                "odd_pairs": f["odd_pairs"][()].tolist() if "odd_pairs" in f else [],
                "lmax": int(f.attrs["lmax"])}
    return _require_finite(coeffs, path, "scattering coefficients"), meta


def scattering_weight(path: str | Path) -> np.ndarray | None:
    """The pooling weight of a scattering file made from a masked sims file: its ``/weight``,
    float32 (npix_out,), RING at ``nside_out``, in [0, 1]; None for a file without one.
    A weight of another size, or outside [0, 1], is refused in one line."""
    with h5py.File(path, "r") as f:
        if "weight" not in f:
            return None
        weight = np.asarray(f["weight"][()], dtype=np.float32)
        npix = hp.nside2npix(int(f.attrs["nside_out"]))
    if weight.shape != (npix,):
        raise CmbscatError(f"{path}: /weight has shape {weight.shape}, expected ({npix},) for its nside_out")
    return _check_weight(weight, path, "/weight")


def _check_weight(weight: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    if not (np.all(np.isfinite(weight)) and weight.min() >= 0 and weight.max() <= 1):
        raise CmbscatError(f"{path}: {what} must lie in [0, 1] (a pooling weight)")
    if not weight.any():
        raise CmbscatError(f"{path}: {what} is zero everywhere: no pixel to pool over")
    return weight


def iter_alm(path: str | Path, lmax: int, masked: bool = False):
    """Yield each map's a_lm (complex128) at band limit ``lmax``, as every stage reads them:
    /alm truncated when stored, else /maps analysed with map2alm (:mod:`cmbscat.sky.source`).
    ``masked``: the a_lm of the apodized masked map w d where the file has a mask
    (:meth:`cmbscat.sky.source.Source.masked_alm`)."""
    source = open_source(path, "this model")
    if lmax > source.lmax:
        raise CmbscatError(f"lmax {lmax} is above the file's lmax {source.lmax}")
    h5 = source.open()
    try:
        for i in range(source.n_maps):
            yield source.masked_alm(i, lmax, h5) if masked else source.alm(i, lmax, h5)
    finally:
        if h5 is not None:
            h5.close()


def lowres_maps(path: str | Path, nside: int, lmax: int, progress: bool = True) -> np.ndarray:
    """Maps band-limited at ``lmax`` and pixelised at ``nside`` (float32, (N, 1, npix), uK, RING).

    This is the input of the paper's baseline: the raw map reduced to the resolution
    that a conventional spherical CNN can afford (a sharp cut of the a_lm at lmax). From
    a file with a mask, the apodized masked map w d, analysed at the file's resolution and
    then cut to lmax (its pooling weight: :func:`lowres_weight`).
    """
    require_kind(path, "sims", "the low-resolution baseline")
    n = read_labels(path).size
    out = np.empty((n, 1, hp.nside2npix(nside)), np.float32)
    for i, alm in enumerate(tqdm(iter_alm(path, lmax, masked=True), total=n, desc="low-res maps",
                                 disable=not progress)):
        out[i, 0] = hp.alm2map(alm, nside, lmax=lmax)
    return out


def lowres_weight(path: str | Path, nside: int) -> np.ndarray | None:
    """The baseline's pooling weight from a sims file with a mask: the mask w at ``nside``,
    float32 (npix,), RING, in [0, 1]; None without a mask.

    To a lower nside each pixel takes the mean of the fine pixels it contains (the
    fraction of it observed, apodization included: ``healpy.ud_grade``); to a higher
    nside each child copies its parent.
    """
    source = open_source(path, "the low-resolution baseline")
    if source.mask is None:
        return None
    weight = hp.ud_grade(source.mask.astype(np.float64), nside, order_in="RING", order_out="RING")
    return _check_weight(np.clip(weight, 0.0, 1.0).astype(np.float32), path, "the mask")


def observation_identity(path: str | Path) -> dict:
    """How the maps of a sims or scattering file were observed
    (:func:`cmbscat.sky.source.observation_record`): beam, noise, hits, mask SPEC,
    apodization, the SHA-256 of the FITS files they name and of the mask weights
    (``mask_content_sha256``, "" without a mask). A sims file's is read from its attributes
    and ``/mask``; a scattering file's from the attributes it copied from its sims file, a
    statistics file's from its ``observation_*`` attributes (a file without them: not
    observed, every entry at its default)."""
    kind = require_kind(path, ("sims", "scattering", "stats"), "reading the observation")
    if kind == "sims":
        return open_source(path, "reading the observation").observation
    with h5py.File(path, "r") as f:
        if kind == "stats":  # stored as observation_<key>
            return observation_record({k[len("observation_"):]: v for k, v in f.attrs.items()
                                       if k.startswith("observation_")})
        return observation_record(f.attrs)


def band_limit(path: str | Path) -> int:
    """The ``lmax`` attribute of a sims or statistics file (the band limit its maps were read at)."""
    with h5py.File(path, "r") as f:
        return int(f.attrs["lmax"])


def classical_features(path: str | Path, kind: str, progress: bool = True) -> np.ndarray:
    """Per-map features (float64, (N, F)) of the statistic ``kind`` (see :mod:`cmbscat.stats.summary`).

    From a statistics file (``cmbscat stats``) they are read; from a sims file they are
    computed here, map by map, with the same code, at the file's nside and lmax.
    """
    from cmbscat.stats.summary import MapStatistics

    found = require_kind(path, ("stats", "sims"), f"the {kind} classifier")
    if found == "stats":
        with h5py.File(path, "r") as f:
            if kind not in f:
                raise CmbscatError(f"{path} has no /{kind} statistics")
            x = np.asarray(f[kind][()], dtype=np.float64)
        return _require_finite(x.reshape(len(x), -1), path, f"{kind} statistics")

    from cmbscat.sky.spectra import planck2018_cl

    source = open_source(path, f"the {kind} classifier")
    statistics = MapStatistics(source.nside, source.lmax, planck2018_cl(source.lmax))
    rows = []
    h5 = source.open()
    try:
        for i in tqdm(range(source.n_maps), desc=f"{kind} statistics", disable=not progress):
            alm = source.alm(i, source.lmax, h5)
            sky_map = source.pixels(i, h5) if source.dataset != "alm" else None
            rows.append(statistics(alm, sky_map=sky_map, which=(kind,))[kind].reshape(-1))
    finally:
        if h5 is not None:
            h5.close()
    return _require_finite(np.asarray(rows), path, f"{kind} statistics")
