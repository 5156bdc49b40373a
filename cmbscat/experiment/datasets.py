"""Model inputs read from the stage files (sims and scattering HDF5, DESIGN.md layouts)."""

from __future__ import annotations

from pathlib import Path

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat.errors import CmbscatError
from cmbscat.stats.onepoint import one_point_statistics
from cmbscat.stats.powspec import binned_power_spectrum, power_spectrum_bins
from cmbscat.scattering.stage import open_source


def file_kind(path: str | Path) -> str:
    """``"sims"`` or ``"scattering"`` for a cmbscat HDF5 file; one-line error otherwise."""
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
            if kind is None and "coeffs" in f:
                kind = "scattering"
    except (OSError, FileNotFoundError):
        raise CmbscatError(f"{path} is not a readable HDF5 file") from None
    if kind not in ("sims", "scattering"):
        raise CmbscatError(f"{path} is neither a sims file (cmbscat simulate) nor a scattering "
                           "file (cmbscat scatter)")
    return str(kind)


def require_kind(path: str | Path, kind: str, purpose: str) -> None:
    found = file_kind(path)
    if found != kind:
        stage = {"sims": "cmbscat simulate", "scattering": "cmbscat scatter"}[kind]
        raise CmbscatError(f"{purpose} needs a {kind} file (from {stage}); {path} is a {found} file")


def read_labels(path: str | Path) -> np.ndarray:
    """Labels (int64, (N,)) of a sims or scattering file."""
    with h5py.File(path, "r") as f:
        return f["labels"][()].astype(np.int64)


def scattering_inputs(path: str | Path) -> tuple[np.ndarray, dict]:
    """Coefficients (float32, (N, C, npix_out), RING) and geometry of a scattering file."""
    require_kind(path, "scattering", "this model")
    with h5py.File(path, "r") as f:
        coeffs = f["coeffs"][()].astype(np.float32)
        meta = {"nside": int(f.attrs["nside_out"]), "channels": int(coeffs.shape[1]),
                "paths": f["paths"][()].tolist() if "paths" in f else None,
                "lmax": int(f.attrs["lmax"])}
    return coeffs, meta


def iter_alm(path: str | Path, lmax: int):
    """Yield each map's a_lm (complex128) at band limit ``lmax``, as ``cmbscat scatter`` reads them:
    /alm truncated when stored, else /maps analysed with map2alm (see :class:`Source`)."""
    source = open_source(path)
    if lmax > source.lmax:
        raise CmbscatError(f"lmax {lmax} is above the file's lmax {source.lmax}")
    with h5py.File(path, "r") as f:
        for i in range(source.n_maps):
            yield source.alm(i, lmax, f)


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


def classical_features(path: str | Path, kind: str, progress: bool = True) -> np.ndarray:
    """Per-map features of a sims file: ``"powspec"`` (log binned C_l) or ``"onepoint"``.

    ``onepoint`` uses the full-resolution map (skewness, excess kurtosis): /maps if
    stored, else the synthesis of /alm at the file's nside.
    """
    require_kind(path, "sims", f"the {kind} baseline")
    with h5py.File(path, "r") as f:
        n, lmax, nside = f["labels"].shape[0], int(f.attrs["lmax"]), int(f.attrs["nside"])
        rows = []
        if kind == "powspec":
            edges = power_spectrum_bins(lmax)
            for alm in tqdm(iter_alm(path, lmax), total=n, desc="power spectra", disable=not progress):
                rows.append(binned_power_spectrum(alm, lmax, edges))
        elif kind == "onepoint":
            for i in tqdm(range(n), desc="one-point statistics", disable=not progress):
                if "maps" in f:
                    sky = f["maps"][i]
                else:
                    sky = hp.alm2map(f["alm"][i].astype(np.complex128), nside, lmax=lmax)
                rows.append(one_point_statistics(sky))
        else:
            raise ValueError(f"unknown classical feature set {kind!r}")
    return np.asarray(rows)
