"""The ``scatter`` stage: scattering coefficients of every map of a sims file (or a FITS map).

Reads a sims file (DESIGN.md layout: ``/alm`` and/or ``/maps``, ``/labels``,
``/seeds``) or a HEALPix FITS map, and writes the scattering file::

    /coeffs  float32 (N, C, npix_out)  S[p] f in RING order at nside_out, unit of the input (uK)
    /labels  int8 (N,)                 copied (-1 for a FITS map)
    /seeds   int64 (N,)                copied (-1 for a FITS map)
    /paths   int64 (C, depth)          scale index j of each step of each channel's path, -1 padded
    attrs    kind="scattering", lmax, lam, J0, depth, nside_out, lmax_out, oversample,
             map2alm_iter, source ("<name> content-sha256:<hex>"), input ("alm" | "maps" | "fits"),
             cmbscat_version, unit, ordering, channel_names, ...

Maps are processed one at a time (memory independent of N), each finished map is
saved on its own (resumable, see :mod:`cmbscat.store`), and ``shard`` restricts the
run to one slice of the maps (join shard files with ``cmbscat combine``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat import __version__
from cmbscat.errors import CmbscatError
from cmbscat.scattering.transform import DEFAULT_ITER, DEFAULT_OVERSAMPLE, Scattering, default_J0, resize_alm
from cmbscat.store import ItemWriter, Shard, content_hash, file_sha256
from cmbscat.scattering.wavelets import n_scales

INPUT_MAP2ALM_ITER = 3  # maps given as input (no /alm): map2alm iterations, ~4e-7 relative error


@dataclass
class Source:
    """What ``scatter`` reads: N maps of one band-limit, one at a time via :meth:`alm`."""

    path: Path
    kind: str            # "sims" or "fits"
    dataset: str         # "alm", "maps" or "fits"
    nside: int
    lmax: int            # largest lmax the source supports
    labels: np.ndarray   # int8 (N,)
    seeds: np.ndarray    # int64 (N,)
    fits_map: np.ndarray | None = None

    @property
    def n_maps(self) -> int:
        return int(self.labels.size)

    def alm(self, index: int, lmax: int, h5: h5py.File | None = None) -> np.ndarray:
        """a_lm (complex128, healpy order, band-limit lmax) of map ``index``."""
        if self.dataset == "alm":
            row = np.asarray(h5["alm"][index], dtype=np.complex128)
            return resize_alm(row, self.lmax, lmax)
        m = self.fits_map if self.dataset == "fits" else np.asarray(h5["maps"][index], np.float64)
        return hp.map2alm(m, lmax=lmax, mmax=lmax, iter=INPUT_MAP2ALM_ITER, use_weights=False)


def _is_fits(path: Path) -> bool:
    """FITS by its first card, or a gzipped file named *.fits.gz / *.fit.gz (healpy reads both)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head == b"SIMPLE  =":
        return True
    return head[:2] == b"\x1f\x8b" and path.name.lower().endswith((".fits.gz", ".fit.gz"))


def open_source(path: str | Path) -> Source:
    """Inspect ``path`` (a cmbscat sims file or a HEALPix FITS map); one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CmbscatError(f"input {path} does not exist or is not a file")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
            if kind is not None and kind != "sims":
                raise CmbscatError(f"{path} is a {kind} file, not a sims file "
                                   "(scatter reads the output of `cmbscat simulate` or a FITS map)")
            if "labels" not in f or not ("alm" in f or "maps" in f):
                raise CmbscatError(f"{path} is not a cmbscat sims file (needs /labels and /alm or /maps)")
            try:
                nside, lmax = int(f.attrs["nside"]), int(f.attrs["lmax"])
            except KeyError:
                raise CmbscatError(f"{path} is not a cmbscat sims file (no nside/lmax attributes)") from None
            dataset = "alm" if "alm" in f else "maps"
            labels = np.asarray(f["labels"][()], dtype=np.int8)
            seeds = (np.asarray(f["seeds"][()], dtype=np.int64) if "seeds" in f
                     else -np.ones(labels.size, np.int64))
            expected = (labels.size, hp.Alm.getsize(lmax)) if dataset == "alm" else \
                (labels.size, hp.nside2npix(nside))
            if f[dataset].shape != expected:
                raise CmbscatError(f"{path}: /{dataset} has shape {f[dataset].shape}, expected "
                                   f"{expected} for nside {nside}, lmax {lmax}")
        return Source(path, "sims", dataset, nside, lmax, labels, seeds)
    if _is_fits(path):
        try:
            m = hp.read_map(str(path), field=0, dtype=np.float64)
        except Exception as exc:  # astropy/healpy raise many types for a bad FITS file
            raise CmbscatError(f"{path} is a FITS file but not a readable HEALPix map ({exc})") from None
        if np.any(~np.isfinite(m)) or np.any(m == hp.UNSEEN):
            raise CmbscatError(f"{path} has masked or non-finite pixels; scatter needs a full-sky map")
        nside = hp.npix2nside(m.size)
        return Source(path, "fits", "fits", nside, 3 * nside - 1, -np.ones(1, np.int8),
                      -np.ones(1, np.int64), fits_map=m)
    raise CmbscatError(f"{path} is neither a cmbscat sims file (HDF5) nor a HEALPix FITS map")


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
                 iter: int = DEFAULT_ITER, min_nside: int | None = None) -> ScatterPlan:
    """Check the options against the input ``in_path`` and build the transform (see :func:`scatter`).

    The plan's ``params`` record the input's content hash (:func:`cmbscat.store.content_hash`:
    a cmbscat sims file's ``content_sha256``; the bytes of a FITS map), so an output made
    from other input data is never taken for current.
    """
    if depth not in (1, 2, 3):
        raise CmbscatError(f"--depth must be 1, 2 or 3, got {depth}")
    source = open_source(in_path)
    if lmax is None:
        lmax = source.lmax
    if lmax > source.lmax:
        raise CmbscatError(f"--lmax {lmax} is above the input's lmax {source.lmax} ({in_path})")
    if lmax < 1:
        raise CmbscatError(f"--lmax must be >= 1, got {lmax}")
    if not lam > 1:
        raise CmbscatError(f"--lam must be > 1, got {lam}")
    if not oversample >= 1:
        raise CmbscatError(f"--oversample must be >= 1, got {oversample}")
    if iter < 0:
        raise CmbscatError(f"--iter must be >= 0, got {iter}")
    if min_nside is not None and min_nside < 0:
        raise CmbscatError(f"--min-nside must be >= 0, got {min_nside}")
    J = n_scales(lmax, lam)
    if J0 is None:
        J0 = default_J0(lmax, lam)
    if not 0 <= J0 <= J:
        raise CmbscatError(f"--J0 must be in 0..{J} for lmax {lmax} and lam {lam:g}, got {J0}")
    sc = Scattering(lmax, nside=source.nside, depth=depth, J0=J0, lam=lam,
                    oversample=oversample, iter=iter, input_iter=INPUT_MAP2ALM_ITER,
                    min_nside=min_nside)
    digest = content_hash(source.path) if source.kind == "sims" else file_sha256(source.path)
    params = {"stage": "scatter", "source_name": source.path.name, "source_content_sha256": digest,
              "input": source.dataset, "lmax": lmax, "lam": float(lam), "J0": J0, "depth": depth,
              "oversample": float(oversample), "min_nside": sc.min_nside, "map2alm_iter": iter,
              "input_map2alm_iter": INPUT_MAP2ALM_ITER, "n_maps": source.n_maps}
    return ScatterPlan(source, sc, params)


def scatter(in_path: str | Path, out_path: str | Path, depth: int = 2, J0: int | None = None,
            lam: float = 2.0, lmax: int | None = None, oversample: float = DEFAULT_OVERSAMPLE,
            iter: int = DEFAULT_ITER, min_nside: int | None = None, shard: Shard | None = None,
            progress: bool = True) -> int:
    """Write (or resume, or find complete) the scattering file ``out_path`` of ``in_path``.

    lmax : band-limit of the transform; default the source's (sims: its ``lmax``
        attribute; FITS: 3 nside - 1); larger values are refused.
    J0 : default :func:`cmbscat.scattering.default_J0` (5 for lam = 2: nside_out 16).
    Other parameters: see :class:`cmbscat.scattering.transform.Scattering`.

    Returns the number of maps computed by this call (0 if the file was complete).
    """
    plan = scatter_plan(in_path, depth, J0, lam, lmax, oversample, iter, min_nside)
    source, sc, params = plan.source, plan.transform, plan.params
    lmax, J0, digest = params["lmax"], params["J0"], params["source_content_sha256"]
    n = source.n_maps
    start, stop = shard.bounds(n) if shard else (0, n)
    writer = ItemWriter(out_path, plan.shard_params(shard), start, stop)
    if writer.complete:
        return 0
    todo = writer.pending()
    h5 = h5py.File(source.path, "r") if source.kind == "sims" else None
    try:
        for i in tqdm(todo, desc="scatter", unit="map", disable=not progress,
                      initial=(stop - start) - len(todo), total=stop - start):
            coeffs = sc(source.alm(i, lmax, h5)).astype(np.float32)
            writer.put(i, {"coeffs": coeffs})
    finally:
        if h5 is not None:
            h5.close()
    attrs = {
        "kind": "scattering", "lmax": lmax, "lam": float(lam), "J0": J0, "depth": depth,
        "nside_out": sc.nside_out, "lmax_out": sc.lmax_out, "n_channels": sc.n_channels,
        "oversample": float(oversample), "min_nside": sc.min_nside, "map2alm_iter": iter,
        "input_map2alm_iter": INPUT_MAP2ALM_ITER, "input": source.dataset,
        "source": f"{source.path.name} content-sha256:{digest}", "source_nside": source.nside,
        "n_maps": n, "ordering": "RING", "unit": "uK (unit of the input map)",
        "normalisation": "raw S[p] = U[p] f * Phi, no log or per-channel scaling",
        "channel_names": [f"S[{','.join(map(str, p))}]" for p in sc.paths],
        "paths_meaning": "scale j of each step; wavelet j covers lam^(j-1) < l < lam^(j+1); -1 = none",
        "cmbscat_version": __version__,
    }
    writer.finalize(per_item={"labels": source.labels[start:stop], "seeds": source.seeds[start:stop]},
                    whole={"paths": sc.paths_array()}, attrs=attrs)
    return len(todo)
