"""Crash-safe, resumable writing of per-item arrays into one HDF5 file.

Every per-map stage (``simulate``, ``scatter``) produces a few arrays per item
(map) and a few whole-file datasets. This module gives them all the same
guarantees:

* The output file appears only when it is complete: it is assembled under a
  temporary name and renamed into place (an atomic ``os.replace``).
* Work survives Ctrl-C and ``kill -9``: each finished item is saved on its own in
  ``<OUT>.partial/`` by write-then-rename, so a killed run loses at most the item
  in flight. Re-running the same command skips the finished items.
* Parameters are checked: a partial or finished output written with other
  parameters is refused with a one-line error instead of being mixed or
  overwritten.
* Memory does not grow with the number of items: items are written, and later
  assembled, one at a time.
* Shards: a run may cover a slice ``[start, stop)`` of the items (``--shard K/N``);
  :func:`combine_shards` joins shard files into one HDF5 file of virtual
  datasets, without copying data. Which datasets are per item is recorded in
  the file (attribute ``per_item_datasets``), never guessed from shapes.
* Content identity: every file records ``content_sha256``, a hash of its datasets'
  names, dtypes, shapes and bytes (:func:`content_digest`; attributes excluded), so
  a downstream stage can record exactly which input it was computed from, and a
  sharded run gives the same hash as an unsharded one.
* One writer at a time: a stage holds ``<OUT>.lock`` (:class:`cmbscat.lock.OutputLock`)
  while it writes OUT, so a second run on the same output is refused at start in one
  line naming the holder; the lock of a killed run is taken over by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import h5py
import numpy as np

from cmbscat.errors import CmbscatError
from cmbscat.lock import OutputLock

PARAMS_ATTR = "cmbscat_params"  # JSON of the parameters that define the file's content
CONTENT_ATTR = "content_sha256"  # hash of the datasets' content (content_digest)
PER_ITEM_ATTR = "per_item_datasets"  # names of the datasets indexed by item along axis 0
_HASH_BLOCK_BYTES = 1 << 26  # rows hashed per read: 64 MiB at most


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` equal slices of a run (0-based ``index``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse ``"K/N"`` with 0 <= K < N."""
        try:
            k, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise CmbscatError(f"--shard must look like K/N (e.g. 0/8), got {text!r}") from None
        if n < 1 or not 0 <= k < n:
            raise CmbscatError(f"--shard K/N needs 0 <= K < N, got {text!r}")
        return cls(k, n)

    def bounds(self, n_items: int) -> tuple[int, int]:
        """Item range ``[start, stop)`` of this shard; shards tile ``range(n_items)``."""
        return self.index * n_items // self.count, (self.index + 1) * n_items // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def canonical_params(params: Mapping) -> str:
    """Stable JSON text of a parameter mapping, for equality checks across runs."""
    return json.dumps(params, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as a parameter")


def read_params(path: str | os.PathLike) -> dict | None:
    """Parameters recorded in a cmbscat HDF5 file, or None if it has none."""
    with h5py.File(path, "r") as f:
        text = f.attrs.get(PARAMS_ATTR)
    return None if text is None else json.loads(text)


def differing_keys(old: Mapping, new: Mapping, defaults: Mapping | None = None) -> list[str]:
    """Keys whose values differ between two parameter records (sorted).

    Values are compared after a JSON round trip, so 2000 and 2000.0 are equal while
    2000 and "2000" are not. A key missing from ``old`` whose ``new`` value equals
    ``defaults[key]`` does not count: settings added to a stage since ``old`` was
    written count as their defaults.
    """
    defaults = defaults or {}
    old, new = _json_round_trip(old), _json_round_trip(new)
    defaults = _json_round_trip(defaults)
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue
        if key not in old or key not in new or old[key] != new[key]:
            out.append(key)
    return out


def _json_round_trip(params: Mapping) -> dict:
    return json.loads(canonical_params(params))


def describe_difference(old: Mapping, new: Mapping, defaults: Mapping | None = None) -> str:
    """``"fnl 3000.0 != 0.0, n_maps 20 != 30"``: the first three differing keys, old then new."""
    diffs = [f"{k} {old.get(k)!r} != {new.get(k)!r}" for k in differing_keys(old, new, defaults)]
    return ", ".join(diffs[:3]) + (", ..." if len(diffs) > 3 else "")



def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks (memory independent of size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dataset_header(name: str, dtype: np.dtype, shape: tuple) -> bytes:
    return f"{name}\0{np.dtype(dtype).str}\0{tuple(int(n) for n in shape)}\0".encode()


def _array_bytes(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def _combine_digests(parts: Iterable[tuple[bytes, bytes]]) -> str:
    """sha256 over (header, sha256 of the dataset's bytes) pairs in name order."""
    total = hashlib.sha256()
    for header, digest in sorted(parts):
        total.update(header)
        total.update(digest)
    return total.hexdigest()


def content_digest(f: h5py.File) -> str:
    """Hash of every dataset of an open HDF5 file: names, dtypes, shapes and bytes (C order).

    Attributes are excluded, so two files with the same data have the same digest
    whatever their provenance attributes, sharding or chunking; virtual datasets
    are read through. Reads at most ``_HASH_BLOCK_BYTES`` at a time.
    """
    parts = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        digest = hashlib.sha256()
        if obj.shape is None or obj.ndim == 0:
            digest.update(_array_bytes(np.asarray(obj[()])))
        else:
            row_bytes = max(1, obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64)))
            step = max(1, _HASH_BLOCK_BYTES // row_bytes)
            for lo in range(0, obj.shape[0], step):
                digest.update(_array_bytes(obj[lo:lo + step]))
        parts.append((_dataset_header(name, obj.dtype, obj.shape or ()), digest.digest()))

    f.visititems(visit)
    return _combine_digests(parts)


def content_hash(path: str | os.PathLike) -> str:
    """Content identity of an HDF5 file: its ``content_sha256`` attribute when it has one
    (written by cmbscat at creation), else :func:`content_digest` computed now (a file
    written by another program). One-line error for a file that is not readable HDF5."""
    try:
        with h5py.File(path, "r") as f:
            recorded = f.attrs.get(CONTENT_ATTR)
            return str(recorded) if recorded is not None else content_digest(f)
    except OSError:
        raise CmbscatError(f"{path} is not a readable HDF5 file") from None


class ItemWriter:
    """Resumable writer of items ``start..stop-1`` of a run into the HDF5 file ``path``.

    Parameters
    ----------
    path : path of the final HDF5 file.
    params : JSON-serialisable mapping that fully defines the content; stored as
        the attribute ``cmbscat_params`` and compared on every re-run.
    start, stop : item range written by this run (a shard, or ``0, n_items``).
    defaults : values of parameters added to the stage after some files were
        written: such a file, lacking the key, matches when ``params`` has the default.

    Usage (the lock first: it keeps a second run off ``path`` and its partial folder)::

        with OutputLock(path):
            writer = ItemWriter(path, params, 0, n)
            if not writer.complete:
                for i in writer.pending():
                    writer.put(i, {"maps": ..., "alm": ...})
                writer.finalize(per_item={"labels": labels, "seeds": seeds}, attrs={...})
    """

    def __init__(self, path: str | os.PathLike, params: Mapping, start: int, stop: int,
                 defaults: Mapping | None = None):
        self.path = Path(path)
        self.params = dict(params)
        self.defaults = dict(defaults or {})
        self.start, self.stop = int(start), int(stop)
        self.partial_dir = self.path.with_name(self.path.name + ".partial")
        self._params_text = canonical_params(self.params)
        self.complete = self._check_existing()
        if not self.complete:
            self._prepare_partial_dir()

    # -- set-up and checks -------------------------------------------------
    def _check_existing(self) -> bool:
        if not self.path.exists():
            return False
        try:
            old = read_params(self.path)
        except OSError:
            raise CmbscatError(f"{self.path} exists but is not a readable HDF5 file; "
                               "move it away or choose another output path") from None
        if old is None:
            raise CmbscatError(f"{self.path} exists and was not written by this stage; "
                               "choose another output path")
        if differing_keys(old, self.params, self.defaults):
            raise CmbscatError(f"{self.path} exists and was written with different parameters "
                               f"({describe_difference(old, self.params, self.defaults)}); "
                               "delete it or choose another output path")
        return True

    def _prepare_partial_dir(self) -> None:
        manifest = self.partial_dir / "params.json"
        for parent in [self.path.parent, *self.path.parent.parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise CmbscatError(f"cannot write output {self.path}: {parent} is not a folder")
                break
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial_dir.mkdir(exist_ok=True)
            if manifest.exists():
                old = json.loads(manifest.read_text())
                if differing_keys(old, self.params, self.defaults):
                    raise CmbscatError(
                        f"an unfinished run at {self.partial_dir} used different parameters "
                        f"({describe_difference(old, self.params, self.defaults)}); re-run it with those, "
                        "or delete that folder to start over")
            else:
                atomic_write_text(manifest, self._params_text)
        except OSError as exc:
            raise CmbscatError(f"cannot write output {self.path}: {exc.strerror or exc}") from None

    # -- items -------------------------------------------------------------
    def _item_path(self, index: int) -> Path:
        return self.partial_dir / f"item{index:09d}.npz"

    def pending(self) -> list[int]:
        """Indices in ``[start, stop)`` that have no saved result yet."""
        return [i for i in range(self.start, self.stop) if not self._item_path(i).exists()]

    def put(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Save item ``index`` atomically (write a temporary file, then rename)."""
        final = self._item_path(index)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self._item_path(index)) as data:
            return {k: data[k] for k in data.files}

    # -- assembly ----------------------------------------------------------
    def finalize(self, per_item: Mapping[str, np.ndarray] | None = None,
                 whole: Mapping[str, np.ndarray] | None = None,
                 attrs: Mapping | None = None) -> None:
        """Assemble all saved items into ``path`` and remove the partial folder.

        per_item : arrays of length ``stop - start`` (labels, seeds, ...) stored as is.
        whole : other datasets stored as is (e.g. ``paths`` of a scattering file).
        attrs : file attributes; ``cmbscat_params``, ``item_start``, ``item_stop``
            are added here.
        """
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{len(missing)} items are not computed yet (first: {missing[0]})")
        n = self.stop - self.start
        tmp = self.path.with_name(self.path.name + ".tmp")
        per_item, whole = dict(per_item or {}), dict(whole or {})
        with h5py.File(tmp, "w") as f:
            first = self._load(self.start) if n else {}
            dsets = {
                name: f.create_dataset(name, shape=(n,) + arr.shape, dtype=arr.dtype,
                                       chunks=(1,) + arr.shape)
                for name, arr in first.items()
            }
            hashers = {name: hashlib.sha256() for name in dsets}
            for row, index in enumerate(range(self.start, self.stop)):
                item = first if row == 0 else self._load(index)
                for name, arr in item.items():
                    arr = np.asarray(arr, dtype=dsets[name].dtype)
                    dsets[name][row] = arr
                    hashers[name].update(_array_bytes(arr))
            parts = [(_dataset_header(name, d.dtype, d.shape), hashers[name].digest())
                     for name, d in dsets.items()]
            for name, arr in {**per_item, **whole}.items():
                d = f.create_dataset(name, data=arr)
                parts.append((_dataset_header(name, d.dtype, d.shape),
                              hashlib.sha256(_array_bytes(d[()])).digest()))
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            f.attrs["item_start"] = self.start
            f.attrs["item_stop"] = self.stop
            f.attrs[PARAMS_ATTR] = self._params_text
            f.attrs[PER_ITEM_ATTR] = sorted([*dsets, *per_item])
            f.attrs[CONTENT_ATTR] = _combine_digests(parts)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.complete = True

    def discard(self) -> None:
        """Remove the output and any unfinished run's saved items (to recompute from scratch)."""
        remove_output(self.path)


def remove_output(path: str | os.PathLike) -> None:
    """Delete an item-writer output ``path``, its ``.partial`` folder and temporary file.

    Holds the output's lock meanwhile: refused (one line) while another run writes it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return  # nothing there
    with OutputLock(path):
        for leftover in (path, path.with_name(path.name + ".tmp")):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(path.with_name(path.name + ".partial"), ignore_errors=True)


#: What identifies each kind of stage file (DESIGN.md "HDF5 layout"): datasets, not attributes.
STAGE_FILE_LAYOUTS = {
    "scattering": "/coeffs (N, C, npix_out) with attribute nside_out",
    "stats": "/onepoint, /cubic, /minkowski, /powspec per map (cmbscat stats)",
    "sims": "/labels with /alm and/or /maps and attributes nside, lmax",
}
STATS_DATASETS = ("powspec", "onepoint", "cubic", "minkowski")


def file_kind(path: str | os.PathLike) -> str:
    """``"sims"``, ``"scattering"`` or ``"stats"``: what a stage file is, read from its layout.

    Recognised by its datasets, as the contract defines them, so a file written by
    another program in the DESIGN.md layout is accepted without cmbscat's own ``kind``
    attribute. One-line error for anything else, naming what is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise CmbscatError(f"no such file: {path}")
    try:
        with h5py.File(path, "r") as f:
            names = set(f.keys())
    except OSError:
        raise CmbscatError(f"{path} is not a readable HDF5 file") from None
    if "coeffs" in names:
        return "scattering"
    if names & set(STATS_DATASETS) and "alm" not in names and "maps" not in names:
        return "stats"
    if "labels" in names and names & {"alm", "maps"}:
        return "sims"
    if "labels" in names:
        raise CmbscatError(f"{path} has /labels but no /alm and no /maps: a sims file needs one of them")
    raise CmbscatError(f"{path} is not a cmbscat stage file: a sims file has /labels with /alm or "
                       "/maps, a scattering file /coeffs, a statistics file /onepoint, /cubic, ...")


def require_kind(path: str | os.PathLike, kinds: str | tuple[str, ...], purpose: str) -> str:
    """The file's kind if it is one of ``kinds``; else a one-line error naming the stage to run."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    found = file_kind(path)
    if found not in kinds:
        made_by = {"sims": "cmbscat simulate", "scattering": "cmbscat scatter", "stats": "cmbscat stats"}
        wanted = " or ".join(f"a {k} file (from {made_by[k]})" for k in kinds)
        raise CmbscatError(f"{purpose} needs {wanted}; {path} is a {found} file")
    return found


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_LEGACY_WHOLE_DATASETS = ("paths",)  # shard files from before per_item_datasets was recorded


def combine_shards(out_path: str | os.PathLike, shard_paths: Iterable[str | os.PathLike],
                   shard_key: str = "shard") -> int:
    """Join shard files into ``out_path`` with HDF5 virtual datasets (no data copied).

    Each shard file must carry the attributes ``item_start``/``item_stop`` and the same
    parameters apart from ``shard_key``; together they must tile ``0..n_items-1``
    without gap or overlap. The datasets each shard declares per item (attribute
    ``per_item_datasets``) are concatenated; other datasets (e.g. ``/paths``) and the
    attributes are taken from the first shard. Shard files written before that
    attribute existed count every dataset except ``/paths`` as per item.
    Source paths are stored relative to ``out_path``'s folder, so the set of files
    can be moved together. Returns the number of items.
    """
    out_path = Path(out_path)
    shards = []
    for p in shard_paths:
        p = Path(p)
        try:
            with h5py.File(p, "r") as f:
                params = json.loads(f.attrs[PARAMS_ATTR])
                declared = f.attrs.get(PER_ITEM_ATTR)
                per_item = (set(map(str, declared)) if declared is not None
                            else {k for k in f if k not in _LEGACY_WHOLE_DATASETS})
                shards.append((int(f.attrs["item_start"]), int(f.attrs["item_stop"]), p, params, per_item))
        except (OSError, KeyError):
            raise CmbscatError(f"{p} is not a finished cmbscat shard file") from None
    if not shards:
        raise CmbscatError("no shard files given")
    shards.sort(key=lambda s: s[0])
    common = {k: v for k, v in shards[0][3].items() if k != shard_key}
    expected_start = 0
    for start, stop, p, params, per_item in shards:
        if per_item != shards[0][4]:
            raise CmbscatError(f"{p} declares other per-item datasets than {shards[0][2]}")
        if {k: v for k, v in params.items() if k != shard_key} != common:
            raise CmbscatError(f"{p} was written with different parameters from {shards[0][2]}")
        if start != expected_start:
            raise CmbscatError(f"shards do not tile the items: {p} starts at {start}, "
                               f"expected {expected_start}")
        expected_start = stop
    n_items = expected_start
    if "n_maps" in common and common["n_maps"] != n_items:
        raise CmbscatError(f"shards cover {n_items} of {common['n_maps']} items; some are missing")

    with OutputLock(out_path):  # one combiner at a time
        tmp = out_path.with_name(out_path.name + ".tmp")
        with h5py.File(shards[0][2], "r") as first, h5py.File(tmp, "w", libver="latest") as out:
            per_item = shards[0][4]
            for name, dset in first.items():
                if not isinstance(dset, h5py.Dataset):
                    continue
                if name in per_item:
                    layout = h5py.VirtualLayout(shape=(n_items,) + dset.shape[1:], dtype=dset.dtype)
                    for start, stop, p, *_ in shards:
                        rel = os.path.relpath(p.resolve(), out_path.resolve().parent)
                        layout[start:stop] = h5py.VirtualSource(rel, name, shape=(stop - start,) + dset.shape[1:])
                    out.create_virtual_dataset(name, layout)
                else:
                    out.create_dataset(name, data=dset[()])
            for key, value in first.attrs.items():
                out.attrs[key] = value
            out.attrs["item_start"] = 0
            out.attrs["item_stop"] = n_items
            out.attrs[PARAMS_ATTR] = canonical_params({**common, shard_key: None})
            out.attrs["shards"] = [str(s[2].name) for s in shards]
            out.attrs[PER_ITEM_ATTR] = sorted(per_item)
        # with the shard files closed: the digest reads through the virtual datasets
        with h5py.File(tmp, "r+") as out:
            out.attrs[CONTENT_ATTR] = content_digest(out)
        os.replace(tmp, out_path)
    return n_items
