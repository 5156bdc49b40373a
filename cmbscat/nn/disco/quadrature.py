"""The sparse DISCO tensor: basis values at every (output, input) pixel pair times the
quadrature weight, moment-corrected per output pixel (:func:`build_disco_matrix`)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import healpy as hp
import numpy as np
import scipy.sparse

from cmbscat.errors import CmbscatError
from cmbscat.nn.disco.basis import HatFilterBasis, _monomial_exponents
from cmbscat.nn.sphere_geometry import neighbours_within, pixel_size

#: Default cap radius, in units of the pixel size of the coarser of the two grids.
DEFAULT_CUTOFF_PIXELS = 2.5
NORMALIZATIONS = ("nodal", "none", "moment1", "moment2")
#: Moment-corrected rows whose weights sum in absolute value to more than this fall back to "nodal".
MAX_L1 = 1.2
_CACHE_FORMAT_VERSION = 2



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
