"""The DISCO tensors, built once per geometry: in memory (LRU) and optionally on disk,
and as torch CSR components, pixel-major, with their transposes."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import healpy as hp
import numpy as np
import scipy.sparse
import torch

from cmbscat.nn.disco.quadrature import DiscoGeometry, build_disco_matrix


def _disk_cache_dir(cache_dir) -> Path | None:
    if cache_dir is None:
        cache_dir = os.environ.get("CMBSCAT_DISCO_CACHE") or None
    return None if cache_dir is None else Path(cache_dir)


@functools.lru_cache(maxsize=32)
def _cached_matrix(geometry: DiscoGeometry, cache_dir: Path | None) -> scipy.sparse.csr_matrix:
    if cache_dir is not None:
        path = cache_dir / geometry.file_name()
        if path.exists():
            with np.load(path) as f:
                return scipy.sparse.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
    matrix = build_disco_matrix(geometry)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr, shape=np.array(matrix.shape))
        os.replace(tmp, path)
    return matrix


def disco_matrix(geometry: DiscoGeometry, cache_dir=None) -> scipy.sparse.csr_matrix:
    """The DISCO matrix of ``geometry`` (see :func:`build_disco_matrix`), cached.

    In memory across layers (LRU of 32 geometries) and, if ``cache_dir`` or the
    environment variable ``CMBSCAT_DISCO_CACHE`` names a directory, on disk as
    ``.npz`` (written to a temporary name, then renamed). Treat as read-only.
    """
    return _cached_matrix(geometry, _disk_cache_dir(cache_dir))


def _csr_components(matrix: scipy.sparse.csr_matrix, dtype: torch.dtype):
    # int32 indices while they fit: half the index memory, and the fast path of the CPU kernels.
    index_dtype = np.int32 if matrix.nnz < 2**31 - 1 and max(matrix.shape) < 2**31 - 1 else np.int64
    return (torch.from_numpy(matrix.indptr.astype(index_dtype)),
            torch.from_numpy(matrix.indices.astype(index_dtype)),
            torch.from_numpy(matrix.data).to(dtype))


def pixel_major(matrix: scipy.sparse.csr_matrix, n_basis: int) -> scipy.sparse.csr_matrix:
    """Reorder the rows of a DISCO matrix from ``k * npix_out + p`` to ``p * n_basis + k``."""
    npix_out = matrix.shape[0] // n_basis
    order = (np.arange(n_basis)[None, :] * npix_out + np.arange(npix_out)[:, None]).ravel()
    return matrix[order]


@functools.lru_cache(maxsize=32)
def _torch_components(geometry: DiscoGeometry, cache_dir: Path | None, dtype: torch.dtype):
    """CSR components ``(crow, col, val)`` of pixel-major ``Psi`` and of its transpose.

    Shared by all layers of the same geometry. Rows are ``p * n_basis + k``, so the
    rows of a block of output pixels are contiguous (see :class:`_BlockPlan`).
    """
    matrix = _cached_matrix(geometry, cache_dir)
    matrix = pixel_major(matrix, matrix.shape[0] // hp.nside2npix(geometry.nside_out))
    transposed = matrix.T.tocsr()
    transposed.sort_indices()
    return _csr_components(matrix, dtype), _csr_components(transposed, dtype)
