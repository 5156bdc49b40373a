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
  datasets, without copying data.
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

PARAMS_ATTR = "cmbscat_params"  # JSON of the parameters that define the file's content


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


def _describe_difference(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k} {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(diffs[:3]) + (", ..." if len(diffs) > 3 else "")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks (memory independent of size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ItemWriter:
    """Resumable writer of items ``start..stop-1`` of a run into the HDF5 file ``path``.

    Parameters
    ----------
    path : path of the final HDF5 file.
    params : JSON-serialisable mapping that fully defines the content; stored as
        the attribute ``cmbscat_params`` and compared on every re-run.
    start, stop : item range written by this run (a shard, or ``0, n_items``).

    Usage::

        writer = ItemWriter(path, params, 0, n)
        if not writer.complete:
            for i in writer.pending():
                writer.put(i, {"maps": ..., "alm": ...})
            writer.finalize(per_item={"labels": labels, "seeds": seeds}, attrs={...})
    """

    def __init__(self, path: str | os.PathLike, params: Mapping, start: int, stop: int):
        self.path = Path(path)
        self.params = dict(params)
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
        if canonical_params(old) != self._params_text:
            raise CmbscatError(f"{self.path} exists and was written with different parameters "
                               f"({_describe_difference(old, self.params)}); "
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
                if canonical_params(old) != self._params_text:
                    raise CmbscatError(
                        f"an unfinished run at {self.partial_dir} used different parameters "
                        f"({_describe_difference(old, self.params)}); re-run it with those, "
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
        with h5py.File(tmp, "w") as f:
            first = self._load(self.start) if n else {}
            dsets = {
                name: f.create_dataset(name, shape=(n,) + arr.shape, dtype=arr.dtype,
                                       chunks=(1,) + arr.shape)
                for name, arr in first.items()
            }
            for row, index in enumerate(range(self.start, self.stop)):
                item = first if row == 0 else self._load(index)
                for name, arr in item.items():
                    dsets[name][row] = arr
            for name, arr in {**(per_item or {}), **(whole or {})}.items():
                f.create_dataset(name, data=arr)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            f.attrs["item_start"] = self.start
            f.attrs["item_stop"] = self.stop
            f.attrs[PARAMS_ATTR] = self._params_text
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.complete = True


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def combine_shards(out_path: str | os.PathLike, shard_paths: Iterable[str | os.PathLike],
                   shard_key: str = "shard") -> int:
    """Join shard files into ``out_path`` with HDF5 virtual datasets (no data copied).

    Each shard file must carry the attributes ``item_start``/``item_stop`` and the same
    parameters apart from ``shard_key``; together they must tile ``0..n_items-1``
    without gap or overlap. Every dataset whose first axis has the shard's length is
    concatenated; other datasets and the attributes are taken from the first shard.
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
                shards.append((int(f.attrs["item_start"]), int(f.attrs["item_stop"]), p, params))
        except (OSError, KeyError):
            raise CmbscatError(f"{p} is not a finished cmbscat shard file") from None
    if not shards:
        raise CmbscatError("no shard files given")
    shards.sort(key=lambda s: s[0])
    common = {k: v for k, v in shards[0][3].items() if k != shard_key}
    expected_start = 0
    for start, stop, p, params in shards:
        if {k: v for k, v in params.items() if k != shard_key} != common:
            raise CmbscatError(f"{p} was written with different parameters from {shards[0][2]}")
        if start != expected_start:
            raise CmbscatError(f"shards do not tile the items: {p} starts at {start}, "
                               f"expected {expected_start}")
        expected_start = stop
    n_items = expected_start
    if "n_maps" in common and common["n_maps"] != n_items:
        raise CmbscatError(f"shards cover {n_items} of {common['n_maps']} items; some are missing")

    tmp = out_path.with_name(out_path.name + ".tmp")
    with h5py.File(shards[0][2], "r") as first, h5py.File(tmp, "w", libver="latest") as out:
        n0 = shards[0][1] - shards[0][0]
        for name, dset in first.items():
            if not isinstance(dset, h5py.Dataset):
                continue
            if dset.ndim >= 1 and dset.shape[0] == n0:
                layout = h5py.VirtualLayout(shape=(n_items,) + dset.shape[1:], dtype=dset.dtype)
                for start, stop, p, _ in shards:
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
    os.replace(tmp, out_path)
    return n_items
