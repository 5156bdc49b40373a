"""Model inputs read from the stage files (sims, scattering and statistics HDF5, DESIGN.md layouts).

Files are recognised by their layout (:func:`cmbscat.store.file_kind`), so one written
by another program in the contract's layout is read like cmbscat's own. Every input
is checked for non-finite values before a model sees it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat.errors import CmbscatError
from cmbscat.sky.source import open_source, stored_fnl
from cmbscat.store import file_kind, require_kind

__all__ = ["file_kind", "require_kind", "read_labels", "read_fnl", "scattering_inputs", "iter_alm",
           "lowres_maps", "band_limit", "classical_features"]


def read_labels(path: str | Path) -> np.ndarray:
    """Labels (int64, (N,)) of a sims, scattering or statistics file."""
    with h5py.File(path, "r") as f:
        return f["labels"][()].astype(np.int64)


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


def iter_alm(path: str | Path, lmax: int):
    """Yield each map's a_lm (complex128) at band limit ``lmax``, as every stage reads them:
    /alm truncated when stored, else /maps analysed with map2alm (:mod:`cmbscat.sky.source`)."""
    source = open_source(path, "this model")
    if lmax > source.lmax:
        raise CmbscatError(f"lmax {lmax} is above the file's lmax {source.lmax}")
    h5 = source.open()
    try:
        for i in range(source.n_maps):
            yield source.alm(i, lmax, h5)
    finally:
        if h5 is not None:
            h5.close()


def lowres_maps(path: str | Path, nside: int, lmax: int, progress: bool = True) -> np.ndarray:
    """Maps band-limited at ``lmax`` and pixelised at ``nside`` (float32, (N, 1, npix), uK).

    This is the input of the paper's baseline: the raw map reduced to the resolution
    that a conventional spherical CNN can afford (a sharp cut of the a_lm at lmax).
    """
    require_kind(path, "sims", "the low-resolution baseline")
    n = read_labels(path).size
    out = np.empty((n, 1, hp.nside2npix(nside)), np.float32)
    for i, alm in enumerate(tqdm(iter_alm(path, lmax), total=n, desc="low-res maps",
                                 disable=not progress)):
        out[i, 0] = hp.alm2map(alm, nside, lmax=lmax)
    return out


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
