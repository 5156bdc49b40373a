"""DISCO (discrete-continuous) convolutions on HEALPix, forward and transposed.

Definition (Ocampo, Price & McEwen 2023)::

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

The package is split by concern, as torch-harmonics does: :mod:`.basis` (the filter
basis), :mod:`.quadrature` (the sparse tensor and its quadrature weights), :mod:`.cache`
(built once per geometry, in memory and on disk), :mod:`.kernels` (the sparse products
and the CPU blocked kernels), :mod:`.layers` (the modules).
"""

from cmbscat.nn.disco.basis import HatFilterBasis
from cmbscat.nn.disco.cache import disco_matrix, pixel_major
from cmbscat.nn.disco.kernels import PIXELS_PER_BLOCK
from cmbscat.nn.disco.layers import DiscoConvS2, DiscoConvTransposeS2
from cmbscat.nn.disco.quadrature import (DEFAULT_CUTOFF_PIXELS, MAX_L1, NORMALIZATIONS, DiscoGeometry,
                                         build_disco_matrix, default_theta_cutoff)

__all__ = ["DEFAULT_CUTOFF_PIXELS", "MAX_L1", "NORMALIZATIONS", "PIXELS_PER_BLOCK", "DiscoConvS2",
           "DiscoConvTransposeS2", "DiscoGeometry", "HatFilterBasis", "build_disco_matrix",
           "default_theta_cutoff", "disco_matrix", "pixel_major"]
