"""The DISCO layers on HEALPix: :class:`DiscoConvS2` and :class:`DiscoConvTransposeS2`."""

from __future__ import annotations

import math

import healpy as hp
import torch
from torch import nn

from cmbscat.errors import CmbscatError
from cmbscat.nn.disco.basis import HatFilterBasis
from cmbscat.nn.disco.cache import _disk_cache_dir, _torch_components
from cmbscat.nn.disco.kernels import _BlockedAdjoint, _BlockedApply, _BlockPlan, _SparseMatmul
from cmbscat.nn.disco.quadrature import DiscoGeometry, default_theta_cutoff
from cmbscat.nn.sphere_geometry import check_nside


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
