"""The products with the sparse DISCO tensor: torch.sparse on devices, and on the CPU
blocked scipy kernels that fuse the product with the channel mix, as three bilinear
autograd functions that differentiate into one another."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from cmbscat.errors import CmbscatError


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
