"""DISCO (discrete-continuous) convolutions on HEALPix, forward and transposed.

Definition (Ocampo, Price & McEwen 2023; ``shared/DESIGN.md``)::

    (f * psi)(p) = sum_i psi(theta_pi, beta_pi) f[i] q,     q = 4 pi / npix_in

for each output pixel centre ``p``: the filter ``psi`` is continuous, supported
on a cap of radius ``theta_cutoff`` (radians) and evaluated at the geodesic
distance ``theta_pi`` and bearing ``beta_pi`` (0 = local north, pi/2 = local
east; see :mod:`cmbscat.nn.sphere_geometry`) of each input pixel centre ``i``.
The filter is a learned combination ``psi = sum_k w_k psi_k`` of a fixed basis
(:class:`HatFilterBasis`). The basis values at every (output, input) pair,
times the quadrature weight, form a sparse matrix ``Psi`` of shape
``(n_basis * npix_out, npix_in)``, row ``k * npix_out + p``; it is built once per
geometry (vectorised, cached in memory and optionally on disk). A layer keeps it
pixel-major (row ``p * n_basis + k``) with its transpose as CSR components in
plain buffers, and computes ``y = channel_mix(Psi @ x)``: time and memory linear
in npix. On the CPU the product and the channel mix run together over blocks of
output pixels, so intermediates stay cache-sized and the time per pixel does not
grow with nside. The quadrature
weights are moment-corrected per output pixel by default (``normalization``,
see :func:`build_disco_matrix`).

Tensors are ``(batch, channels, npix)`` in HEALPix RING ordering.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import healpy as hp
import numpy as np
import scipy.sparse
import torch
from torch import nn

from cmbscat.errors import CmbscatError
from cmbscat.nn.sphere_geometry import check_nside, neighbours_within, pixel_size

#: Default cap radius, in units of the pixel size of the coarser of the two grids.
DEFAULT_CUTOFF_PIXELS = 2.5
NORMALIZATIONS = ("nodal", "none", "moment1", "moment2")
#: Moment-corrected rows whose weights sum in absolute value to more than this fall back to "nodal".
MAX_L1 = 1.2
_CACHE_FORMAT_VERSION = 2


# --------------------------------------------------------------------------- basis


class HatFilterBasis:
    """Piecewise-linear ("hat") filter basis on a cap of radius ``theta_cutoff``.

    ``kernel_shape = n`` (int): isotropic, ``n`` hats in geodesic distance with
    nodes ``r_j = j * h``, ``h = theta_cutoff / n``, ``j = 0 .. n-1``, each of
    half-width ``h`` (the last one vanishes at ``theta_cutoff``). Together they
    span every continuous piecewise-linear radial profile with knots at the
    nodes that vanishes at the cap's edge.

    ``kernel_shape = (n_r, n_phi)``: directional. The centre hat (``j = 0``) is
    isotropic (a bearing is undefined at distance 0); each other radial hat is
    multiplied by ``n_phi`` periodic hats in the bearing with nodes
    ``2 pi m / n_phi`` (``m = 0`` points north). ``n_basis = 1 + (n_r - 1) n_phi``,
    index ``k = 1 + (j - 1) n_phi + m``.

    Every basis function is divided by its analytic integral over the sphere,
    so ``integral psi_k dOmega = 1``: each basis response is a local weighted
    mean of the input, which keeps activations of order one.
    """

    def __init__(self, kernel_shape, theta_cutoff: float):
        if isinstance(kernel_shape, (int, np.integer)):
            n_r, n_phi = int(kernel_shape), 1
            self.isotropic = True
        else:
            shape = tuple(int(s) for s in kernel_shape)
            if len(shape) == 1:
                shape = (shape[0], 1)
            if len(shape) != 2:
                raise CmbscatError(f"kernel_shape must be an int or a pair (n_r, n_phi), got {kernel_shape!r}")
            n_r, n_phi = shape
            self.isotropic = n_phi == 1
        if n_r < 1 or n_phi < 1:
            raise CmbscatError(f"kernel_shape entries must be >= 1, got {kernel_shape!r}")
        if not self.isotropic and n_phi < 2:
            raise CmbscatError("a directional kernel needs n_phi >= 2")
        if not 0.0 < theta_cutoff < math.pi:
            raise CmbscatError(f"theta_cutoff must be in (0, pi) radians, got {theta_cutoff}")
        self.n_r, self.n_phi = n_r, n_phi
        self.theta_cutoff = float(theta_cutoff)
        self.h = self.theta_cutoff / n_r
        self.kernel_shape = n_r if self.isotropic else (n_r, n_phi)
        self._radial_integral = self._radial_integrals()

    @property
    def n_basis(self) -> int:
        return self.n_r if self.isotropic else 1 + (self.n_r - 1) * self.n_phi

    def _radial_integrals(self) -> np.ndarray:
        """``int_0^pi hat_j(theta) sin(theta) dtheta`` for each radial hat j (Gauss-Legendre, exact to rounding)."""
        x, w = np.polynomial.legendre.leggauss(32)
        out = np.zeros(self.n_r)
        for j in range(self.n_r):
            for lo, hi in ((max(0.0, (j - 1) * self.h), j * self.h), (j * self.h, (j + 1) * self.h)):
                if hi <= lo:
                    continue
                t = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
                out[j] += 0.5 * (hi - lo) * np.sum(w * self._hat(t, j) * np.sin(t))
        return out

    def _hat(self, theta: np.ndarray, j: int) -> np.ndarray:
        return np.clip(1.0 - np.abs(theta / self.h - j), 0.0, None) * (theta < self.theta_cutoff)

    def integrals_unnormalised(self) -> np.ndarray:
        """Analytic ``int psi_k dOmega`` (steradians) of the raw hats, ``(n_basis,)``."""
        if self.isotropic:
            return 2.0 * np.pi * self._radial_integral
        out = [2.0 * np.pi * self._radial_integral[0]]
        for j in range(1, self.n_r):
            out += [self._radial_integral[j] * 2.0 * np.pi / self.n_phi] * self.n_phi
        return np.asarray(out)

    def analytic_moments(self, degree: int, n_theta: int = 64, n_bearing: int = 1440) -> np.ndarray:
        """``int psi_k m_j dOmega`` for the monomials ``m_j`` of :func:`_monomials`, ``(n_basis, J)``.

        Tensor quadrature: Gauss-Legendre on each linear piece in theta, a uniform
        (spectrally accurate for the periodic, piecewise-linear bearing hats up to
        ~1e-7) rule in bearing.
        """
        x, w = np.polynomial.legendre.leggauss(n_theta)
        thetas, weights = [], []
        for j in range(self.n_r):
            lo, hi = j * self.h, (j + 1) * self.h
            thetas.append(0.5 * (hi - lo) * x + 0.5 * (hi + lo))
            weights.append(0.5 * (hi - lo) * w)
        theta = np.concatenate(thetas)
        w_theta = np.concatenate(weights) * np.sin(theta)
        bearing = (np.arange(n_bearing) + 0.5) * 2 * np.pi / n_bearing - np.pi
        tt, bb = np.meshgrid(theta, bearing, indexing="ij")
        w2 = np.repeat(w_theta * (2 * np.pi / n_bearing), n_bearing)
        values = self.dense_values(tt.ravel(), bb.ravel())  # (n_basis, n)
        mono = _monomials(tt.ravel(), bb.ravel(), degree)  # (n, J)
        return values @ (mono * w2[:, None])

    def sparse_values(self, theta: np.ndarray, bearing: np.ndarray):
        """Non-zero basis values at points ``(theta, bearing)`` (radians, 1-D arrays).

        Returns ``(k, point, value)``: basis index, index into the input arrays,
        and ``psi_k`` (normalised to unit integral) at that point. Each point
        with ``theta < theta_cutoff`` gives at most 2 (isotropic) or 4
        (directional) entries.
        """
        theta = np.asarray(theta, dtype=np.float64)
        bearing = np.asarray(bearing, dtype=np.float64)
        point = np.arange(theta.size)
        inside = theta < self.theta_cutoff
        u = theta / self.h
        j0 = np.floor(u).astype(np.int64)
        frac = u - j0
        radial = [(j0, 1.0 - frac), (j0 + 1, frac)]  # (radial hat index, value)
        ks, ps, vs = [], [], []
        for j, v in radial:
            ok = inside & (j < self.n_r) & (v > 0.0)
            if self.isotropic:
                ks.append(j[ok]); ps.append(point[ok]); vs.append(v[ok])
                continue
            centre = ok & (j == 0)
            ks.append(np.zeros(np.count_nonzero(centre), np.int64)); ps.append(point[centre]); vs.append(v[centre])
            ring = ok & (j > 0)
            b = np.mod(bearing[ring], 2.0 * np.pi) / (2.0 * np.pi / self.n_phi)
            m0 = np.floor(b).astype(np.int64)
            fb = b - m0
            for m, wb in ((m0 % self.n_phi, 1.0 - fb), ((m0 + 1) % self.n_phi, fb)):
                good = wb > 0.0
                ks.append((1 + (j[ring] - 1) * self.n_phi + m)[good])
                ps.append(point[ring][good])
                vs.append((v[ring] * wb)[good])
        k = np.concatenate(ks)
        p = np.concatenate(ps)
        val = np.concatenate(vs) / self.integrals_unnormalised()[k]
        return k, p, val

    def dense_values(self, theta: np.ndarray, bearing: np.ndarray | None = None) -> np.ndarray:
        """Normalised basis values ``(n_basis, n)`` at points (for checks and plots)."""
        theta = np.asarray(theta, dtype=np.float64).ravel()
        bearing = np.zeros_like(theta) if bearing is None else np.asarray(bearing, dtype=np.float64).ravel()
        k, p, v = self.sparse_values(theta, bearing)
        out = np.zeros((self.n_basis, theta.size))
        np.add.at(out, (k, p), v)
        return out

    def __repr__(self) -> str:
        return f"HatFilterBasis(kernel_shape={self.kernel_shape}, theta_cutoff={self.theta_cutoff:.6g})"


# ------------------------------------------------------------- sparse tensor build


@dataclass(frozen=True)
class DiscoGeometry:
    """Key of a precomputed DISCO tensor (hashable, used for caching)."""

    nside_in: int
    nside_out: int
    kernel_shape: int | tuple[int, int]
    theta_cutoff: float
    normalization: str = "moment2"

    def file_name(self) -> str:
        tag = repr((self.nside_in, self.nside_out, self.kernel_shape, float(self.theta_cutoff).hex(),
                    self.normalization, _CACHE_FORMAT_VERSION))
        digest = hashlib.sha1(tag.encode()).hexdigest()[:16]
        return f"disco_{self.nside_in}_{self.nside_out}_{digest}.npz"


def default_theta_cutoff(nside_in: int, nside_out: int, pixels: float = DEFAULT_CUTOFF_PIXELS) -> float:
    """Default cap radius (radians): ``pixels`` times the pixel size of the coarser grid."""
    return pixels * pixel_size(min(nside_in, nside_out))


def build_disco_matrix(geometry: DiscoGeometry) -> scipy.sparse.csr_matrix:
    """Sparse DISCO matrix ``Psi``, float64 CSR ``(n_basis * npix_out, npix_in)``.

    Row ``k * npix_out + p`` (RING pixel ``p`` at ``nside_out``, basis ``k``)
    holds the quadrature weights of ``psi_k`` over the input pixels ``i`` within
    ``theta_cutoff`` of ``p``. With ``normalization``:

    - ``"none"``: ``psi_k(theta_pi, beta_pi) * q``, ``q = 4 pi / npix_in``, ``psi_k`` of unit
      analytic integral: the plain equal-area quadrature of the definition.
    - ``"nodal"``: the same, each row rescaled so that it sums to exactly 1, the
      analytic integral of ``psi_k``: the quadrature over the irregular HEALPix
      neighbourhood is made exact for constant inputs, pixel by pixel.
    - ``"moment1"`` / ``"moment2"`` (moment-corrected quadrature, as in reproducing-
      kernel particle methods): ``psi_k q (a . m(x_i, y_i))`` with ``m`` the monomials of
      degree <= 1 (resp. 2) in the azimuthal-equidistant coordinates
      ``(x, y) = theta (cos beta, sin beta)`` around ``p``, and ``a`` solved per row so
      that the row integrates every such monomial exactly (its analytic moment
      of ``psi_k``). The discrete filter then reproduces the continuous one on
      locally linear (quadratic) inputs, whatever the local pixel layout.
      Rows with too few pixels for the moments, or whose corrected weights would
      sum in absolute value to more than ``MAX_L1`` (strong negative weights
      amplify pixel-scale noise), fall back to ``"nodal"``.

    Rows whose basis function covers no input pixel stay zero. Vectorised over
    pixels in chunks; time and memory linear in ``npix_out``.
    """
    g = geometry
    if g.normalization not in NORMALIZATIONS:
        raise CmbscatError(f"normalization must be one of {NORMALIZATIONS}, got {g.normalization!r}")
    basis = HatFilterBasis(g.kernel_shape, g.theta_cutoff)
    degree = {"none": -1, "nodal": 0, "moment1": 1, "moment2": 2}[g.normalization]
    moments = basis.analytic_moments(degree) if degree > 0 else None
    npix_in, npix_out = hp.nside2npix(g.nside_in), hp.nside2npix(g.nside_out)
    q = 4.0 * math.pi / npix_in
    rows, cols, vals = [], [], []
    for out_pix, in_pix, theta, bearing in neighbours_within(g.nside_in, g.nside_out, g.theta_cutoff):
        k, pair, v = basis.sparse_values(theta, bearing)
        start = out_pix[0]
        n_local = out_pix[-1] - start + 1
        local_row = k * n_local + (out_pix[pair] - start)
        v = v * q
        if degree == 0:
            v = _nodal(local_row, v, basis.n_basis * n_local)
        elif degree > 0:
            v = _moment_corrected(local_row, v, k, theta[pair], bearing[pair], moments, degree,
                                  basis.n_basis * n_local)
        rows.append(k * npix_out + out_pix[pair])
        cols.append(in_pix[pair])
        vals.append(v)
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    shape = (basis.n_basis * npix_out, npix_in)
    matrix = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=shape)
    matrix.sort_indices()
    return matrix


def _nodal(row: np.ndarray, val: np.ndarray, n_rows: int) -> np.ndarray:
    """Rescale ``val`` so that each row sums to 1 (rows summing to 0 unchanged)."""
    row_sum = np.bincount(row, weights=val, minlength=n_rows)
    scale = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum > 0)
    return val * scale[row]


def _monomial_exponents(degree: int) -> list[tuple[int, int]]:
    """Exponents ``(p, q)`` of the monomials ``x^p y^q`` of degree <= ``degree`` (1 or 2).

    The order is the columns of :func:`_monomials`: 1, x, y, x^2, xy, y^2.
    """
    return [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)][: {1: 3, 2: 6}[degree]]


def _monomials(theta: np.ndarray, bearing: np.ndarray, degree: int) -> np.ndarray:
    """Monomials of degree <= ``degree`` in ``(x, y) = theta (cos beta, sin beta)``, ``(n, J)``."""
    x, y = theta * np.cos(bearing), theta * np.sin(bearing)
    return np.stack([x**p * y**q for p, q in _monomial_exponents(degree)], axis=1)


def _cholesky(gram: dict, n: int) -> dict:
    """Cholesky factors of many small symmetric positive-definite matrices at once.

    ``gram[(i, j)]`` (``i <= j < n``) are 1-D arrays over the matrices; returns
    ``low[(i, j)]`` (``i >= j``) with ``G = L L^T``. Written element by element and
    vectorised over the matrices: for millions of 6x6 systems this is several times
    faster than a batched LAPACK call, which pays a per-matrix overhead. Matrices
    that are not numerically positive definite get NaN factors.
    """
    low = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(n):
            pivot = gram[(j, j)] - sum(low[j, k] ** 2 for k in range(j))
            low[j, j] = np.sqrt(np.where(pivot > 0, pivot, np.nan))
            for i in range(j + 1, n):
                low[i, j] = (gram[(j, i)] - sum(low[i, k] * low[j, k] for k in range(j))) / low[j, j]
    return low


def _cholesky_solve(low: dict, rhs: list, n: int) -> list:
    """Solve ``L L^T a = b`` by forward and back substitution, vectorised like :func:`_cholesky`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = []
        for i in range(n):
            z.append((rhs[i] - sum(low[i, k] * z[k] for k in range(i))) / low[i, i])
        a = [None] * n
        for i in reversed(range(n)):
            a[i] = (z[i] - sum(low[k, i] * a[k] for k in range(i + 1, n))) / low[i, i]
    return a


def _moment_corrected(row, val, k, theta, bearing, moments, degree, n_rows, rcond=1e-8, max_l1=MAX_L1):
    """Moment-corrected weights ``val * (a_row . m_i)`` (see :func:`build_disco_matrix`).

    Row ``r``'s coefficients ``a_r`` solve ``G_r a_r = mu_r``: ``G_r`` the Gram matrix of
    the monomials under the row's weights, ``mu_r`` the analytic moments of its basis
    function. Arrays are kept one per matrix entry (1-D over rows) so that every step
    streams contiguous memory.
    """
    exps = _monomial_exponents(degree)
    n_mono = len(exps)
    x, y = theta * np.cos(bearing), theta * np.sin(bearing)
    # G_ab = sum_i val_i x_i^(p_a + p_b) y_i^(q_a + q_b): only the distinct moments up to
    # degree 2 * degree are accumulated (15 for degree 2, not 21 entries).
    x_pow, y_pow = [np.ones_like(x), x], [np.ones_like(y), y]
    for _ in range(2, 2 * degree + 1):
        x_pow.append(x_pow[-1] * x)
        y_pow.append(y_pow[-1] * y)
    sums = {}
    for a in range(n_mono):
        for b in range(a, n_mono):
            e = (exps[a][0] + exps[b][0], exps[a][1] + exps[b][1])
            if e not in sums:
                sums[e] = np.bincount(row, weights=val * x_pow[e[0]] * y_pow[e[1]], minlength=n_rows)
    del x_pow[degree + 1:], y_pow[degree + 1:]  # the powers the monomials need are kept below
    row_basis = np.zeros(n_rows, dtype=np.int64)
    row_basis[row] = k
    # Scale to unit diagonal and add a tiny ridge; near-singular rows give huge or NaN
    # coefficients and are caught by the residual check and the guard below.
    diag = [np.sqrt(sums[(2 * p, 2 * q)]) for p, q in exps]
    good = np.all([d > 0 for d in diag], axis=0)  # else a monomial vanishes on the row
    safe = [np.where(good, d, 1.0) for d in diag]
    exact = {(a, b): sums[(exps[a][0] + exps[b][0], exps[a][1] + exps[b][1])] / (safe[a] * safe[b])
             for a in range(n_mono) for b in range(a, n_mono)}
    regularised = {key: value + rcond if key[0] == key[1] else value for key, value in exact.items()}
    rhs = [moments[row_basis, a] / safe[a] for a in range(n_mono)]

    def times_exact(v):
        return [sum(exact[min(a, b), max(a, b)] * v[b] for b in range(n_mono)) for a in range(n_mono)]

    low = _cholesky(regularised, n_mono)  # one factorisation serves the solve and its refinement
    scaled = _cholesky_solve(low, rhs, n_mono)
    for _ in range(2):  # iterative refinement removes the ridge's bias on well-conditioned rows
        step = _cholesky_solve(low, [r - g for r, g in zip(rhs, times_exact(scaled))], n_mono)
        scaled = [s + d for s, d in zip(scaled, step)]
    # Rows where the (near-singular) system could not meet the moments fall back below.
    with np.errstate(invalid="ignore"):
        residual = np.max([np.abs(g - r) for g, r in zip(times_exact(scaled), rhs)], axis=0)
        good &= residual <= 1e-10 * np.max(np.abs(rhs), axis=0)
    coef = [np.where(good, s / d, 0.0) for s, d in zip(scaled, safe)]
    corrected = coef[0][row] * val
    for (p, q), c in zip(exps[1:], coef[1:]):
        corrected += c[row] * val * x_pow[p] * y_pow[q]
    # Guard: a correction that needs large negative weights (total variation > max_l1
    # times the integral) amplifies pixel noise more than it removes quadrature bias.
    l1 = np.bincount(row, weights=np.abs(corrected), minlength=n_rows)
    good &= l1 <= max_l1
    fallback = ~good[row]
    corrected[fallback] = _nodal(row, val, n_rows)[fallback]
    return corrected


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


# ------------------------------------------------------------------ sparse matmul


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ dense`` with ``matrix`` a constant CSR tensor and ``matrix_t`` its transpose.

    The backward pass is ``matrix_t @ grad`` through the same function, so it is
    itself differentiable (double backward) and costs one CSR product. On CPU
    the product runs in scipy's CSR kernel on zero-copy views (2-4x faster than
    ``torch.sparse.mm`` on CPU, measured); on other devices in ``torch.sparse.mm``.
    """

    @staticmethod
    def forward(ctx, dense, matrix, matrix_t):
        ctx.matrix, ctx.matrix_t = matrix, matrix_t
        return _csr_matmul(matrix, dense)

    @staticmethod
    def backward(ctx, grad):
        grad_dense = None
        if ctx.needs_input_grad[0]:
            grad_dense = _SparseMatmul.apply(grad, ctx.matrix_t, ctx.matrix)
        return grad_dense, None, None


def _csr_matmul(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    if matrix.dtype != dense.dtype:
        raise CmbscatError(f"DISCO layer holds {matrix.dtype} but got a {dense.dtype} input; "
                           "convert the module (e.g. .double()) or the input")
    dense = dense.contiguous()
    if matrix.device.type != "cpu":
        return torch.sparse.mm(matrix, dense)
    csr = scipy.sparse.csr_matrix(
        (matrix.values().numpy(), matrix.col_indices().numpy(), matrix.crow_indices().numpy()),
        shape=tuple(matrix.shape), copy=False)
    return torch.from_numpy(np.ascontiguousarray(csr @ dense.detach().numpy()))



# ----------------------------------------------------------- CPU blocked kernels

#: Output pixels per block of the CPU kernels: intermediates of a block,
#: ``PIXELS_PER_BLOCK * n_basis * batch * channels`` values, stay in the CPU caches.
PIXELS_PER_BLOCK = 1024


class _BlockPlan:
    """Row blocks of a pixel-major DISCO matrix for the CPU kernels (scipy, zero-copy views).

    Block ``b`` holds the rows of output pixels ``[p0, p1)`` and, for the adjoint, the
    transpose of that block restricted to the input pixels ``[i_lo, i_hi)`` it touches
    (a narrow range in RING order), so that ``Psi^T`` products never sweep the whole
    input per block.
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n_basis: int,
                 npix_out: int, npix_in: int, pixels_per_block: int | None = None):
        pixels_per_block = pixels_per_block or PIXELS_PER_BLOCK
        indptr, indices, data = crow.numpy(), col.numpy(), val.numpy()
        self.n_basis, self.npix_out, self.npix_in = n_basis, npix_out, npix_in
        self.dtype = data.dtype
        self.blocks = []
        for p0 in range(0, npix_out, pixels_per_block):
            p1 = min(npix_out, p0 + pixels_per_block)
            r0, r1 = p0 * n_basis, p1 * n_basis
            a, b = int(indptr[r0]), int(indptr[r1])
            local_ptr = indptr[r0:r1 + 1] - a
            rows = scipy.sparse.csr_matrix((data[a:b], indices[a:b], local_ptr), shape=(r1 - r0, npix_in),
                                           copy=False)
            i_lo, i_hi = (int(indices[a:b].min()), int(indices[a:b].max()) + 1) if b > a else (0, 0)
            local = scipy.sparse.csr_matrix((data[a:b], indices[a:b] - i_lo, local_ptr),
                                            shape=(r1 - r0, i_hi - i_lo))
            self.blocks.append((p0, p1, rows, i_lo, i_hi, local.T.tocsr()))

    def _basis_response(self, rows, x: np.ndarray, p0: int, p1: int) -> np.ndarray:
        """``(Psi x)`` of one block as ``(pixels * batch, n_basis * channels)``; x is (npix_in, B, C)."""
        _, batch, channels = x.shape
        s = rows @ x.reshape(self.npix_in, batch * channels)
        return s.reshape(p1 - p0, self.n_basis, batch, channels).transpose(0, 2, 1, 3).reshape(
            (p1 - p0) * batch, self.n_basis * channels)

    def apply(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """``y[p, b, o] = sum_{k,c} weight[o, c, k] (Psi_k x)[p, b, c]``; x (npix_in, B, C) -> (npix_out, B, O)."""
        out_channels, batch = weight.shape[0], x.shape[1]
        mix = np.ascontiguousarray(weight.transpose(2, 1, 0).reshape(-1, out_channels))  # (K C, O)
        y = np.empty((self.npix_out, batch, out_channels), dtype=self.dtype)
        for p0, p1, rows, *_ in self.blocks:
            np.matmul(self._basis_response(rows, x, p0, p1), mix,
                      out=y[p0:p1].reshape((p1 - p0) * batch, out_channels))
        return y

    def adjoint(self, g: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`apply` in x: ``z[i, b, c] = sum Psi[(p,k), i] weight[o, c, k] g[p, b, o]``."""
        out_channels, channels = weight.shape[:2]
        batch = g.shape[1]
        mix_t = np.ascontiguousarray(weight.transpose(2, 1, 0).reshape(-1, out_channels).T)  # (O, K C)
        z = np.zeros((self.npix_in, batch * channels), dtype=self.dtype)
        for p0, p1, _, i_lo, i_hi, local_t in self.blocks:
            t = g[p0:p1].reshape((p1 - p0) * batch, out_channels) @ mix_t
            t = t.reshape(p1 - p0, batch, self.n_basis, channels).transpose(0, 2, 1, 3).reshape(
                (p1 - p0) * self.n_basis, batch * channels)
            z[i_lo:i_hi] += local_t @ t
        return z.reshape(self.npix_in, batch, channels)

    def weight_product(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``w[o, c, k] = sum_{p, b} g[p, b, o] (Psi_k x)[p, b, c]`` (the weight gradient), (O, C, K)."""
        batch, channels, out_channels = x.shape[1], x.shape[2], g.shape[2]
        acc = np.zeros((self.n_basis * channels, out_channels), dtype=self.dtype)
        for p0, p1, rows, *_ in self.blocks:
            acc += self._basis_response(rows, x, p0, p1).T @ g[p0:p1].reshape((p1 - p0) * batch, out_channels)
        return np.ascontiguousarray(acc.reshape(self.n_basis, channels, out_channels).transpose(2, 1, 0))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


# Three bilinear maps that differentiate into one another, so every order of
# derivative is exact (gradgradcheck): apply(x, w), adjoint(g, w), weight_product(x, g).
class _BlockedApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, plan):
        ctx.save_for_backward(x, weight)
        ctx.plan = plan
        return torch.from_numpy(plan.apply(_np(x), _np(weight)))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = _BlockedAdjoint.apply(grad, weight, ctx.plan) if ctx.needs_input_grad[0] else None
        gw = _BlockedWeightProduct.apply(x, grad, ctx.plan) if ctx.needs_input_grad[1] else None
        return gx, gw, None


class _BlockedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, weight, plan):
        ctx.save_for_backward(g, weight)
        ctx.plan = plan
        return torch.from_numpy(plan.adjoint(_np(g), _np(weight)))

    @staticmethod
    def backward(ctx, grad):
        g, weight = ctx.saved_tensors
        gg = _BlockedApply.apply(grad, weight, ctx.plan) if ctx.needs_input_grad[0] else None
        gw = _BlockedWeightProduct.apply(grad, g, ctx.plan) if ctx.needs_input_grad[1] else None
        return gg, gw, None


class _BlockedWeightProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, plan):
        ctx.save_for_backward(x, g)
        ctx.plan = plan
        return torch.from_numpy(plan.weight_product(_np(x), _np(g)))

    @staticmethod
    def backward(ctx, grad):
        x, g = ctx.saved_tensors
        gx = _BlockedAdjoint.apply(g, grad, ctx.plan) if ctx.needs_input_grad[0] else None
        gg = _BlockedApply.apply(x, grad, ctx.plan) if ctx.needs_input_grad[1] else None
        return gx, gg, None


# ------------------------------------------------------------------------- layers


class _DiscoBase(nn.Module):
    def __init__(self, in_channels, out_channels, nside_fine, nside_coarse, kernel_shape, theta_cutoff,
                 bias, normalization, cache_dir, transposed):
        super().__init__()
        check_nside(nside_fine, "nside (finer grid)")
        check_nside(nside_coarse, "nside (coarser grid)")
        if nside_coarse > nside_fine:
            raise CmbscatError("DiscoConvS2 maps to the same or a coarser nside, DiscoConvTransposeS2 "
                               f"to the same or a finer one; got fine {nside_fine}, coarse {nside_coarse}")
        if in_channels < 1 or out_channels < 1:
            raise CmbscatError(f"channels must be >= 1, got {in_channels} -> {out_channels}")
        if theta_cutoff is None:
            theta_cutoff = default_theta_cutoff(nside_fine, nside_coarse)
        self.basis = HatFilterBasis(kernel_shape, float(theta_cutoff))
        self.geometry = DiscoGeometry(int(nside_fine), int(nside_coarse), self.basis.kernel_shape,
                                      float(theta_cutoff), normalization)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_shape = self.basis.kernel_shape
        self.theta_cutoff = float(theta_cutoff)
        self.n_basis = self.basis.n_basis
        self.npix_fine = hp.nside2npix(nside_fine)
        self.npix_coarse = hp.nside2npix(nside_coarse)
        psi, psi_t = _torch_components(self.geometry, _disk_cache_dir(cache_dir), torch.get_default_dtype())
        # Psi (n_basis * npix_coarse, npix_fine) and Psi^T as CSR components in plain buffers, so that
        # .to(), .double(), deepcopy work as for any tensor; the CSR views are made in forward (no copy).
        # Not persistent: rebuilt (or read from the cache) from the geometry, never stored in checkpoints.
        for name, (crow, col, val) in (("psi", psi), ("psi_t", psi_t)):
            self.register_buffer(f"{name}_crow", crow, persistent=False)
            self.register_buffer(f"{name}_col", col, persistent=False)
            self.register_buffer(f"{name}_val", val, persistent=False)
        self._shape = (self.n_basis * self.npix_coarse, self.npix_fine)
        # Same weight layout for both layers, as torch's Conv/ConvTranspose: the
        # transposed layer with this very weight is the adjoint of the forward one.
        w_shape = (in_channels, out_channels, self.n_basis) if transposed else (out_channels, in_channels, self.n_basis)
        fan_in = (out_channels if transposed else in_channels) * self.n_basis
        self.weight = nn.Parameter(torch.randn(w_shape) * math.sqrt(1.0 / fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _check_input(self, x: torch.Tensor, npix: int) -> None:
        if x.dim() != 3 or x.shape[1] != self.in_channels or x.shape[2] != npix:
            raise CmbscatError(f"{type(self).__name__} expects (batch, {self.in_channels}, {npix}), "
                               f"got {tuple(x.shape)}")

    def sparse_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Psi, Psi^T)`` as torch sparse CSR tensors on the module's device and dtype (views, no copy).

        ``Psi`` is pixel-major: shape ``(npix_out * n_basis, npix_in)``, row ``p * n_basis + k``.
        """
        psi = torch.sparse_csr_tensor(self.psi_crow, self.psi_col, self.psi_val, size=self._shape,
                                      check_invariants=False)
        psi_t = torch.sparse_csr_tensor(self.psi_t_crow, self.psi_t_col, self.psi_t_val, size=self._shape[::-1],
                                        check_invariants=False)
        return psi, psi_t

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias[None, :, None]

    def _block_plan(self) -> _BlockPlan:
        """CPU kernel plan of the current buffers (rebuilt if they were moved or converted)."""
        key = (self.psi_val.data_ptr(), self.psi_val.dtype)
        if getattr(self, "_plan_key", None) != key:
            self._plan = _BlockPlan(self.psi_crow, self.psi_col, self.psi_val, self.n_basis,
                                    self.npix_coarse, self.npix_fine)
            self._plan_key = key
        return self._plan

    def _check_dtype(self, x: torch.Tensor) -> None:
        if x.dtype != self.psi_val.dtype:
            raise CmbscatError(f"DISCO layer holds {self.psi_val.dtype} but got a {x.dtype} input; "
                               "convert the module (e.g. .double()) or the input")

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{self.in_channels}, {self.out_channels}, nside_in={self.nside_in}, nside_out={self.nside_out}, "
                f"kernel_shape={self.kernel_shape}, theta_cutoff={self.theta_cutoff:.4g} rad, "
                f"n_basis={self.n_basis}, normalization={g.normalization!r}, bias={self.bias is not None}")


class DiscoConvS2(_DiscoBase):
    """DISCO convolution on HEALPix: ``(B, in_channels, npix(nside_in)) -> (B, out_channels, npix(nside_out))``.

    ``y[b, o, p] = sum_{c, k} weight[o, c, k] sum_i Psi[k * npix_out + p, i] x[b, c, i] + bias[o]``

    Parameters
    ----------
    nside_in, nside_out : powers of two, ``nside_out <= nside_in`` (down-sampling when smaller).
    kernel_shape : int (isotropic, n radial hats) or ``(n_r, n_phi)`` (directional); see
        :class:`HatFilterBasis`.
    theta_cutoff : cap radius in radians; default ``DEFAULT_CUTOFF_PIXELS`` times the pixel
        size ``sqrt(4 pi / npix)`` of ``nside_out`` (the coarser grid).
    normalization : ``"moment2"`` (default), ``"moment1"``, ``"nodal"`` or ``"none"``: the
        quadrature of the basis over each pixel's neighbourhood; see :func:`build_disco_matrix`.
    cache_dir : optional directory for the on-disk cache of the sparse tensor
        (default: ``$CMBSCAT_DISCO_CACHE`` if set).

    The sparse tensor (CSR components in buffers, in the default dtype at
    construction) moves with ``.to()``, ``.double()``, ``.cuda()``; inputs must have
    the module's dtype. The output is a ``(B, out, npix_out)`` view of a
    pixel-major buffer (what the next DISCO layer reads without a copy).
    """

    def __init__(self, in_channels: int, out_channels: int, nside_in: int, nside_out: int, kernel_shape,
                 theta_cutoff: float | None = None, bias: bool = True, normalization: str = "moment2",
                 cache_dir=None):
        super().__init__(in_channels, out_channels, nside_in, nside_out, kernel_shape, theta_cutoff, bias,
                         normalization, cache_dir, transposed=False)
        self.nside_in, self.nside_out = nside_in, nside_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, self.npix_fine)
        self._check_dtype(x)
        pixels_first = x.permute(2, 0, 1)  # (npix_in, B, C): a view of the previous layer's buffer
        if x.device.type == "cpu":
            y = _BlockedApply.apply(pixels_first, self.weight, self._block_plan())
        else:
            y = self._sparse_forward(pixels_first)
        return self._add_bias(y.permute(1, 2, 0))  # (B, O, npix_out), a view of a pixel-major buffer

    def _sparse_forward(self, pixels_first: torch.Tensor) -> torch.Tensor:
        """The device path (torch.sparse.mm, CUDA): (npix_in, B, C) -> (npix_out, B, O), no bias."""
        batch = pixels_first.shape[1]
        psi, psi_t = self.sparse_tensors()
        columns = pixels_first.reshape(self.npix_fine, batch * self.in_channels)
        per_basis = _SparseMatmul.apply(columns, psi, psi_t).view(
            self.npix_coarse, self.n_basis, batch, self.in_channels)
        return torch.einsum("pkbc,ock->pbo", per_basis, self.weight)


class DiscoConvTransposeS2(_DiscoBase):
    """Transposed DISCO convolution (up-sampling): ``(B, in_channels, npix(nside_in)) -> (B, out_channels, npix(nside_out))``.

    ``nside_out >= nside_in``. It applies the transpose of the sparse tensor of
    ``DiscoConvS2(out_channels, in_channels, nside_out, nside_in, ...)``, scaled by
    ``npix_out / npix_in``, i.e. the quadrature weight of its own input grid,
    ``4 pi / npix_in``, in place of ``4 pi / npix_out``:

    ``y[b, o, q] = (npix_out / npix_in) sum_{c, k} weight[c, o, k] sum_p Psi[k * npix_in + p, q] x[b, c, p] + bias[o]``

    With ``weight`` shaped ``(in_channels, out_channels, n_basis)`` like the weight of
    that forward layer, this layer is exactly its adjoint for the sphere's inner
    product ``<f, g> = (4 pi / npix) sum f g`` on each grid (and for the plain
    Euclidean one when ``nside_in == nside_out``).
    """

    def __init__(self, in_channels: int, out_channels: int, nside_in: int, nside_out: int, kernel_shape,
                 theta_cutoff: float | None = None, bias: bool = True, normalization: str = "moment2",
                 cache_dir=None):
        super().__init__(in_channels, out_channels, nside_out, nside_in, kernel_shape, theta_cutoff, bias,
                         normalization, cache_dir, transposed=True)
        self.nside_in, self.nside_out = nside_in, nside_out
        self.quadrature_ratio = self.npix_fine / self.npix_coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, self.npix_coarse)
        self._check_dtype(x)
        pixels_first = x.permute(2, 0, 1)  # (npix_coarse, B, C_in)
        # the weight (in, out, K) plays the forward layer's (out, in, K): this is its adjoint
        if x.device.type == "cpu":
            y = _BlockedAdjoint.apply(pixels_first, self.weight, self._block_plan())
        else:
            y = self._sparse_forward(pixels_first)
        return self._add_bias((y * self.quadrature_ratio).permute(1, 2, 0))

    def _sparse_forward(self, pixels_first: torch.Tensor) -> torch.Tensor:
        """The device path (torch.sparse.mm, CUDA): (npix_in, B, C) -> (npix_out, B, O), unscaled, no bias."""
        batch = pixels_first.shape[1]
        mixed = torch.einsum("pbc,cok->pkbo", pixels_first, self.weight).reshape(
            self.n_basis * self.npix_coarse, batch * self.out_channels)
        psi, psi_t = self.sparse_tensors()
        return _SparseMatmul.apply(mixed, psi_t, psi).view(self.npix_fine, batch, self.out_channels)
