"""Maps to analyse: a sims file or a HEALPix FITS map, read one map at a time.

Every stage that reads maps (``scatter``, ``stats``, the networks' inputs) goes
through :func:`open_source`, so they accept and refuse the same files:

* a sims file in the DESIGN.md layout, whoever wrote it: ``/labels`` with ``/alm``
  (complex, healpy order at attribute ``lmax``) and/or ``/maps`` (RING at attribute
  ``nside``); ``/seeds`` and ``/fnl`` (each map's f_NL) optional. Recognised by its datasets
  (:func:`cmbscat.store.file_kind`), not by cmbscat's own ``kind`` attribute;
* a HEALPix FITS map (``healpy.read_map``, RING or NESTED from its header), one unlabelled
  map (label -1, f_NL NaN), converted to uK from its header's unit (or ``--unit``), its
  monopole and dipole removed. Its NaN / UNSEEN pixels are masked, and a declared mask,
  beam and noise (and an analysis nside) make it an observed map at the model's
  resolution: :mod:`cmbscat.sky.fits_map`.

Non-finite a_lm or pixels are refused with a one-line error naming the map: they
would otherwise flow silently into every statistic.

Each map's f_NL (:attr:`Source.fnl`) is the file's ``/fnl``; a sims file made before
``/fnl`` existed has one f_NL for its non-Gaussian class, so its maps' are recovered
from the labels and attributes (:func:`stored_fnl`); NaN where unknown (FITS maps, a
file with neither). The per-map stages copy it into their outputs beside the labels.

An observed sims file (``cmbscat simulate --mask``) carries its mask, exposed as
:attr:`Source.mask` (the apodized weights) and :attr:`Source.mask_binary`; None for a
file without one and for a full-sky FITS map with no mask declared. The networks' stages
read the masked map w d through :meth:`Source.masked_alm`. :attr:`Source.observation` is
the file's observation identity (:func:`observation_record`: beam, noise, hits, mask SPEC,
apodization, the mask's content hash), which the stages copy so that a model's training
data can be checked against a test file (a mask by its content:
:func:`comparable_observations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import hashlib

import h5py
import healpy as hp
import numpy as np
from tqdm import tqdm

from cmbscat.errors import CmbscatError
from cmbscat.healpix import resize_alm, synthesis
from cmbscat.store import ItemWriter, Shard, file_kind

INPUT_MAP2ALM_ITER = 3  # maps given as input (no /alm): map2alm iterations, ~4e-7 relative error
# w d is not band-limited (the mask's edge has power at every l): one quadrature pass
# (iter 0) leaves an error of ~2e-4 that leaks the mask's edge into every multipole;
# three Jacobi iterations bring it down to the level of the maps given as input
MASKED_MAP2ALM_ITER = 3

#: The observation identity of a file (:func:`observation_record`) and each entry's value
#: for a file without it (the settings of ``cmbscat simulate``, plus the SHA-256 of any FITS
#: file they name and of the stored mask weights): a file made before observations existed
#: reads as not observed.
OBSERVATION_DEFAULTS = {"beam_fwhm_arcmin": 0.0, "noise_uk_arcmin": 0.0, "hits": "", "hits_sha256": "",
                        "mask": "", "mask_sha256": "", "apodize_deg": 0.0, "mask_content_sha256": "",
                        "pixel_window": ""}


@dataclass
class Source:
    """N maps of one band limit, read one at a time via :meth:`alm`."""

    path: Path
    kind: str            # "sims" or "fits"
    dataset: str         # "alm", "maps" or "fits"
    nside: int
    lmax: int            # largest lmax the source supports
    labels: np.ndarray   # int8 (N,); -1 = unlabelled
    seeds: np.ndarray    # int64 (N,); -1 = unknown
    fits_map: np.ndarray | None = None
    fnl: np.ndarray | None = None  # float64 (N,): each map's local f_NL; NaN = unknown (None: all)
    mask: np.ndarray | None = None  # float32 (npix,), RING at nside: weights, 1 = observed; None = full sky
    mask_binary: np.ndarray | None = None  # bool (npix,), RING: True where observed (mask > 0)
    observation: dict | None = None  # observation_record of the file (None: not observed, defaults)
    hits: np.ndarray | None = None  # float64 (npix,), RING: a FITS map's declared hit map (--hits)
    fits_info: dict | None = None  # a FITS map's reading (cmbscat.sky.fits_map.FITS_INFO_KEYS)

    def __post_init__(self):
        n = int(np.asarray(self.labels).size)
        self.fnl = (np.full(n, np.nan) if self.fnl is None
                    else np.asarray(self.fnl, dtype=np.float64).reshape(n))
        if self.observation is None:
            self.observation = dict(OBSERVATION_DEFAULTS)

    @property
    def n_maps(self) -> int:
        return int(self.labels.size)

    def open(self) -> h5py.File | None:
        """The HDF5 handle to pass to :meth:`alm` (None for a FITS map); close it after."""
        return h5py.File(self.path, "r") if self.kind == "sims" else None

    def alm(self, index: int, lmax: int, h5: h5py.File | None = None) -> np.ndarray:
        """a_lm (complex128, healpy order, band limit ``lmax``) of map ``index``.

        /alm rows are truncated to ``lmax``; maps are analysed with ``map2alm``
        (``INPUT_MAP2ALM_ITER`` iterations). Non-finite values are refused.
        """
        if self.dataset == "alm":
            row = np.asarray(h5["alm"][index], dtype=np.complex128)
            self._check_finite(row, index)
            return resize_alm(row, self.lmax, lmax)
        return hp.map2alm(self.pixels(index, h5), lmax=lmax, mmax=lmax, iter=INPUT_MAP2ALM_ITER,
                          use_weights=False)

    def masked_alm(self, index: int, lmax: int, h5: h5py.File | None = None) -> np.ndarray:
        """a_lm (complex128, healpy order, band limit ``lmax``) of map ``index`` as the
        networks see it: the apodized masked map w d when the file has a mask, else
        :meth:`alm` (the same numbers, bitwise).

        d is the observed map at this file's nside: /maps as stored, or /alm synthesised at
        the file's full band limit (so that the mask's mode coupling brings the multipoles
        above ``lmax`` down, as on the sky); w d is analysed with ``map2alm`` and
        ``MASKED_MAP2ALM_ITER`` iterations.
        """
        if self.mask is None:
            return self.alm(index, lmax, h5)
        if self.dataset == "alm":
            row = np.asarray(h5["alm"][index], dtype=np.complex128)
            self._check_finite(row, index)
            sky_map = synthesis(row, self.nside, self.lmax)
        else:
            sky_map = self.pixels(index, h5)
        return hp.map2alm(self.mask * sky_map, lmax=lmax, mmax=lmax, iter=MASKED_MAP2ALM_ITER,
                          use_weights=False)

    def pixels(self, index: int, h5: h5py.File | None = None) -> np.ndarray:
        """The stored map ``index`` (float64, RING at self.nside); only for /maps and FITS sources."""
        if self.dataset == "alm":
            raise ValueError("this source stores a_lm, not maps")
        m = self.fits_map if self.dataset == "fits" else np.asarray(h5["maps"][index], np.float64)
        self._check_finite(m, index)
        return m

    def check_finite(self, start: int = 0, stop: int | None = None) -> None:
        """Refuse (one-line error naming the first bad map) non-finite values in maps
        ``start..stop-1``; reads the stored rows in blocks of at most 64 MiB. A stage calls
        it before writing anything, so that bad input leaves no partial output behind."""
        if self.kind != "sims":
            return  # a FITS map was checked when opened
        stop = self.n_maps if stop is None else stop
        with h5py.File(self.path, "r") as f:
            rows = f[self.dataset]
            step = max(1, (1 << 26) // max(1, rows.dtype.itemsize * int(np.prod(rows.shape[1:]))))
            for lo in range(start, stop, step):
                block = rows[lo:min(stop, lo + step)]
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    self._check_finite(block[int(np.argmin(finite))], lo + int(np.argmin(finite)))

    def _check_finite(self, values: np.ndarray, index: int) -> None:
        if not np.all(np.isfinite(values)):
            what = "a_lm" if self.dataset == "alm" else "pixels"
            raise CmbscatError(f"{self.path}: map {index} has non-finite {what} (NaN or inf)")


def stored_fnl(f: h5py.File, labels: np.ndarray) -> np.ndarray | None:
    """Each map's local f_NL (float64, (N,), dimensionless) of an open sims file, or None.

    ``/fnl`` when the file has it. A file made before ``/fnl`` existed has one f_NL per
    file: with attribute ``ng_model`` "local" (or none) it is ``labels * fnl`` (attribute
    ``fnl``, else the contract's ``ng_amplitude``), with "gnl" it is 0; None when the
    attributes do not tell (a file from another program without them).
    """
    if "fnl" in f:
        return np.asarray(f["fnl"][()], dtype=np.float64)
    model = f.attrs.get("ng_model", "local")
    model = model.decode() if isinstance(model, bytes) else str(model)
    if model == "gnl":
        return np.zeros(labels.size)
    if model != "local":
        return None
    amplitude = f.attrs.get("fnl", f.attrs.get("ng_amplitude"))
    try:
        amplitude = float(amplitude)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(amplitude):
        return None
    return np.asarray(labels, dtype=np.float64) * amplitude


def stored_mask(f: h5py.File, path: Path, nside: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The mask of an open sims file: (weights float32 (npix,), binary bool (npix,)), RING
    at ``nside``, or (None, None) without ``/mask``. ``/mask_binary`` defaults to
    ``/mask > 0``; a mask of the wrong size is refused in one line."""
    if "mask" not in f:
        return None, None
    npix = hp.nside2npix(nside)
    mask = np.asarray(f["mask"][()], dtype=np.float32)
    binary = (np.asarray(f["mask_binary"][()]) != 0 if "mask_binary" in f else mask > 0)
    if mask.shape != (npix,) or binary.shape != (npix,):
        raise CmbscatError(f"{path}: /mask has shape {mask.shape}, expected ({npix},) for nside {nside}")
    return mask, binary


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 (hex) of mask weights as float32 (npix,) RING bytes: the mask's identity."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.float32).tobytes()).hexdigest()


def observation_record(attrs: Mapping, mask: np.ndarray | None = None) -> dict:
    """The observation identity of a file from its attributes: every key of
    :data:`OBSERVATION_DEFAULTS`, its default where the attributes lack it.

    ``mask``: the file's ``/mask`` weights (a sims file), whose :func:`mask_digest` is
    ``mask_content_sha256``; without it that entry is read from the attributes (a
    scattering file, which copies it). Two files observed alike have equal records.
    """
    out = {}
    for key, default in OBSERVATION_DEFAULTS.items():
        value = attrs.get(key, default)
        value = value.decode() if isinstance(value, bytes) else value
        out[key] = float(value) if isinstance(default, float) else str(value)
    if mask is not None:
        out["mask_content_sha256"] = mask_digest(mask)
    return out


def comparable_observations(a: Mapping, b: Mapping) -> tuple[dict, dict]:
    """Two observation records (:func:`observation_record`) as they are compared.

    A mask is known by its content: where both records hold the same non-empty
    ``mask_content_sha256`` (the apodized weights at the same nside, bitwise), how each
    file named its mask (``mask``: a built-in SPEC or a FITS path; ``mask_sha256``: that
    FITS file's bytes) is left out, so a model trained with ``--mask galactic:20`` meets a
    user's map analysed with the same mask written as a FITS file. Everything else is
    compared as recorded.
    """
    a, b = dict(a), dict(b)
    content = a.get("mask_content_sha256", "")
    if content and content == b.get("mask_content_sha256", ""):
        for key in ("mask", "mask_sha256"):
            a.pop(key, None)
            b.pop(key, None)
    return a, b


def _is_fits(path: Path) -> bool:
    """FITS by its first card, or a gzipped file named *.fits.gz / *.fit.gz (healpy reads both)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head == b"SIMPLE  =":
        return True
    return head[:2] == b"\x1f\x8b" and path.name.lower().endswith((".fits.gz", ".fit.gz"))


def open_source(path: str | Path, purpose: str = "this stage", observation=None,
                nside: int | None = None, note: Callable[[str], None] | None = None) -> Source:
    """Inspect ``path`` (a sims file or a HEALPix FITS map); one-line error otherwise.

    ``observation`` (an :class:`~cmbscat.sky.observe.ObservationConfig`: mask, apodization,
    beam, noise, hits) and ``nside`` (the analysis nside) describe a FITS map
    (:func:`cmbscat.sky.fits_map.open_fits_map`, which tells ``note`` what it does to
    the map); a sims file carries its own, so they are refused with one.
    """
    path = Path(path)
    if not path.is_file():
        raise CmbscatError(f"input {path} does not exist or is not a file")
    declared = (observation is not None and not observation.is_trivial) or nside is not None
    if h5py.is_hdf5(path):
        if declared:
            raise CmbscatError(f"{path} is a sims file, which records its own observation; --mask, "
                               "--apodize, --beam-fwhm, --noise, --hits and --nside describe a FITS map")
        from cmbscat.sky.fits_map import current_reading

        if not current_reading().is_default:
            raise CmbscatError(f"{path} is a sims file, in uK with l = 0, 1 at zero; --unit and "
                               "--keep-dipole describe a FITS map")
        kind = file_kind(path)
        if kind != "sims":
            raise CmbscatError(f"{path} is a {kind} file, not a sims file ({purpose} reads maps: "
                               "the output of `cmbscat simulate`, a sims file in its layout, or a FITS map)")
        with h5py.File(path, "r") as f:
            try:
                nside, lmax = int(f.attrs["nside"]), int(f.attrs["lmax"])
            except (KeyError, TypeError, ValueError):
                raise CmbscatError(f"{path} is a sims file without integer nside/lmax attributes") from None
            dataset = "alm" if "alm" in f else "maps"
            labels = np.asarray(f["labels"][()], dtype=np.int8)
            seeds = (np.asarray(f["seeds"][()], dtype=np.int64) if "seeds" in f
                     else -np.ones(labels.size, np.int64))
            expected = (labels.size, hp.Alm.getsize(lmax)) if dataset == "alm" else \
                (labels.size, hp.nside2npix(nside))
            if f[dataset].shape != expected:
                raise CmbscatError(f"{path}: /{dataset} has shape {f[dataset].shape}, expected "
                                   f"{expected} for nside {nside}, lmax {lmax}")
            if "fnl" in f and f["fnl"].shape != labels.shape:
                raise CmbscatError(f"{path}: /fnl has shape {f['fnl'].shape}, expected {labels.shape} "
                                   "(one f_NL per map)")
            fnl = stored_fnl(f, labels)
            mask, mask_binary = stored_mask(f, path, nside)
            observation = observation_record(f.attrs, mask)
        return Source(path, "sims", dataset, nside, lmax, labels, seeds, fnl=fnl, mask=mask,
                      mask_binary=mask_binary, observation=observation)
    if _is_fits(path):
        from cmbscat.sky.fits_map import open_fits_map

        return open_fits_map(path, observation, nside, note)
    raise CmbscatError(f"{path} is neither a cmbscat sims file (HDF5) nor a HEALPix FITS map")


def process_maps(source: Source, out_path: str | Path, params: Mapping, shard: Shard | None,
                 per_map: Callable[[Source, int, h5py.File | None], dict], desc: str,
                 progress: bool = True) -> tuple[ItemWriter, tuple[int, int], int]:
    """The loop of a per-map stage: every pending map of ``source`` (or of its shard) through
    ``per_map(source, index, h5) -> {dataset: array}``, each result saved on its own.

    Non-finite input is refused before anything is written (unless the output already
    exists: it was checked when made). Returns (writer, (start, stop), maps computed now);
    the caller finalizes the writer with its attributes unless ``writer.complete`` was
    already True (then 0 maps were computed). The caller holds ``OutputLock(out_path)``
    around this call and the finalize (:mod:`cmbscat.lock`).
    """
    start, stop = shard.bounds(source.n_maps) if shard else (0, source.n_maps)
    if not Path(out_path).exists():
        source.check_finite(start, stop)
    writer = ItemWriter(out_path, params, start, stop)
    if writer.complete:
        return writer, (start, stop), 0
    todo = writer.pending()
    h5 = source.open()
    try:
        for i in tqdm(todo, desc=desc, unit="map", disable=not progress,
                      initial=(stop - start) - len(todo), total=stop - start):
            writer.put(i, per_map(source, i, h5))
    finally:
        if h5 is not None:
            h5.close()
    return writer, (start, stop), len(todo)
