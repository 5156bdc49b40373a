"""Data augmentation by exact random rotations of band-limited HEALPix maps.

The scattering front-end is rotation-equivariant (to ~3e-3 at lmax 1023,
docs/scattering.md), so the coefficient maps of a rotated sky are the rotated
coefficient maps: a rotation drawn uniformly on SO(3) and applied to every
channel of a training example yields another example of the same class, at no
scattering cost. The coefficient maps are band-limited (l <= lmax_out <= 2
nside_out - 1), so the rotation is exact in harmonic space.

How (the geometry is computed once per ``(nside, lmax)`` and cached; a rotation is
then a few batched tensor products, on the GPU when training runs there):

* analysis, once per map, all maps in one matrix product: the least-squares fit of
  the real coefficient vector ``[Re a_lm (all m), Im a_lm (m > 0)]`` (healpy's a_lm
  order, ``(lmax + 1)^2`` numbers) to the pixels, ``maps @ A`` with the precomputed
  ``A = S^T (S S^T)^-1`` of the synthesis matrix ``S`` below: exact for band-limited
  maps at l <= 2 nside - 1, and what healpy's ``map2alm`` Jacobi iterations converge
  to (10 of them agree with it to ~1e-11; the tests check it), ~400x faster than one
  ``map2alm`` per channel;
* rotation by ZYZ Euler angles ``(psi, theta, phi)`` as healpy's ``rotate_alm``
  defines them: ``R = Z(phi) P Z(theta) P^-1 Z(psi)``, where ``Z(chi)`` multiplies
  a_lm by ``exp(-i m chi)`` and ``P`` is healpy's rotation by ``(0, pi/2, pi/2)``,
  which turns a rotation about z into one about y (its per-l blocks are read from
  ``healpy.rotate_alm`` applied to each basis vector; the identity is checked against
  ``rotate_alm`` itself in the tests);
* synthesis: a precomputed ``((lmax + 1)^2, npix)`` matrix (``alm2map`` of each basis
  vector), so the maps of a batch are one matrix product.
"""

from __future__ import annotations

import functools

import healpy as hp
import numpy as np
import torch

#: healpy map2alm iterations whose result the batched analysis reproduces (the tests check it)
MAP2ALM_ITER = 10


def random_rotation_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) ZYZ Euler angles (psi, theta, phi) in radians, uniform (Haar) on SO(3)."""
    return np.stack([rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(-1, 1, n)),
                     rng.uniform(0, 2 * np.pi, n)], axis=1)


def alm_to_real(alm: np.ndarray, lmax: int) -> np.ndarray:
    """Real coefficient vectors ``[Re a_lm (all m), Im a_lm (m > 0)]`` of a_lm (..., n_alm),
    healpy order: shape (..., (lmax + 1)^2)."""
    m = hp.Alm.getlm(lmax)[1]
    return np.concatenate([alm.real, alm.imag[..., m > 0]], axis=-1)


def real_to_alm(coef: np.ndarray, lmax: int) -> np.ndarray:
    """Inverse of :func:`alm_to_real`: complex a_lm (..., n_alm), healpy order."""
    m = hp.Alm.getlm(lmax)[1]
    alm = coef[..., :m.size].astype(np.complex128)
    alm[..., m > 0] += 1j * coef[..., m.size:]
    return alm


@functools.lru_cache(maxsize=8)
def _geometry(nside: int, lmax: int):
    """(pad_index, unpad_index, P blocks, P^-1 blocks, synthesis matrix), float64 numpy.

    The padded layout holds the coefficients of degree l in row l, slot 0 for m = 0,
    slots 2m - 1 and 2m for Re and Im of m > 0 (zero where m > l): ``(lmax + 1, 2 lmax + 1)``.
    """
    ell, m = hp.Alm.getlm(lmax)
    n_alm, width = ell.size, 2 * lmax + 1
    n_coef = (lmax + 1) ** 2
    im_pos = np.full(n_alm, -1)
    im_pos[m > 0] = n_alm + np.arange(int((m > 0).sum()))
    pad_index = np.full((lmax + 1, width), n_coef)  # n_coef: a zero appended to the vector
    for i in range(n_alm):
        if m[i] == 0:
            pad_index[ell[i], 0] = i
        else:
            pad_index[ell[i], 2 * m[i] - 1] = i
            pad_index[ell[i], 2 * m[i]] = im_pos[i]
    valid = pad_index < n_coef
    unpad_index = np.empty(n_coef, dtype=np.int64)
    unpad_index[pad_index[valid]] = np.flatnonzero(valid.ravel())

    # P: healpy's rotation by (psi, theta, phi) = (0, pi/2, pi/2), column by column
    dense = np.empty((n_coef, n_coef))
    for k in range(n_coef):
        unit = np.zeros(n_coef)
        unit[k] = 1.0
        alm = real_to_alm(unit, lmax)
        hp.rotate_alm(alm, 0.0, np.pi / 2, np.pi / 2, lmax=lmax, mmax=lmax)
        dense[:, k] = alm_to_real(alm, lmax)
    p_blocks = np.zeros((lmax + 1, width, width))
    p_inv_blocks = np.zeros((lmax + 1, width, width))
    for degree in range(lmax + 1):
        slots = np.flatnonzero(valid[degree])
        block = dense[np.ix_(pad_index[degree, slots], pad_index[degree, slots])]
        p_blocks[degree][np.ix_(slots, slots)] = block
        p_inv_blocks[degree][np.ix_(slots, slots)] = np.linalg.inv(block)

    synthesis = np.empty((n_coef, hp.nside2npix(nside)))
    for k in range(n_coef):
        unit = np.zeros(n_coef)
        unit[k] = 1.0
        synthesis[k] = hp.alm2map(real_to_alm(unit, lmax), nside, lmax=lmax, mmax=lmax, pol=False)
    return pad_index, unpad_index, p_blocks, p_inv_blocks, synthesis


@functools.lru_cache(maxsize=8)
def _analysis(nside: int, lmax: int) -> np.ndarray:
    """Least-squares analysis matrix ``A = S^T (S S^T)^-1``, float64 (npix, (lmax + 1)^2), of
    the synthesis matrix ``S`` of :func:`_geometry`: ``maps @ A`` are the real coefficient
    vectors whose synthesis is closest to ``maps`` (exact for band-limited maps)."""
    synthesis = _geometry(nside, lmax)[4]
    return np.linalg.solve(synthesis @ synthesis.T, synthesis).T


class RotationAugmenter:
    """Random exact rotations of multi-channel RING maps at ``nside`` band-limited at ``lmax``.

    Parameters
    ----------
    nside : HEALPix resolution of the maps (RING ordering).
    lmax : band limit of the maps; default 2 nside - 1, the highest l that
        ``map2alm`` recovers exactly from a band-limited map.
    device, dtype : where and in which precision :meth:`rotate_tensor` works (the
        training device, float32); the NumPy face :meth:`rotate` works in float64 on
        the CPU.

    The torch face (:meth:`rotate_tensor`) takes real coefficient vectors
    ``(B, C, (lmax + 1)^2)`` from :meth:`to_coefficients` and returns maps
    ``(B, C, npix)``; the NumPy face (:meth:`rotate`, :meth:`__call__`) wraps it.
    """

    def __init__(self, nside: int, lmax: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.nside = int(nside)
        self.lmax = 2 * self.nside - 1 if lmax is None else int(lmax)
        self.device, self.dtype = torch.device(device), dtype
        self._tensors = {}
        self._tensors_for(self.device, self.dtype)

    def _tensors_for(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._tensors:
            pad, unpad, p, p_inv, synthesis = _geometry(self.nside, self.lmax)
            self._tensors[key] = (torch.as_tensor(pad, device=device), torch.as_tensor(unpad, device=device),
                                  torch.as_tensor(p, dtype=dtype, device=device),
                                  torch.as_tensor(p_inv, dtype=dtype, device=device),
                                  torch.as_tensor(synthesis, dtype=dtype, device=device),
                                  torch.arange(1, self.lmax + 1, dtype=dtype, device=device))
        return self._tensors[key]

    def to_coefficients(self, maps: np.ndarray) -> np.ndarray:
        """Real coefficient vectors (float64, (N, C, (lmax + 1)^2)) of maps (N, C, npix): the
        least-squares fit (:func:`_analysis`), all maps in one matrix product."""
        maps = np.asarray(maps, dtype=np.float64)
        return maps @ _analysis(self.nside, self.lmax)

    def rotate_tensor(self, coef: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Maps (B, C, npix): example b's coefficients (C, (lmax + 1)^2) rotated by ``angles[b]``
        (ZYZ ``psi, theta, phi`` in radians, as healpy's ``rotate_alm``), on ``coef``'s device."""
        pad, unpad, p, p_inv, synthesis, m = self._tensors_for(coef.device, coef.dtype)
        angles = angles.to(device=coef.device, dtype=coef.dtype)
        batch, channels, _ = coef.shape
        v = torch.nn.functional.pad(coef, (0, 1))[..., pad]  # (B, C, L + 1, 2L + 1)
        v = self._about_z(v, angles[:, 0], m)
        v = torch.einsum("lij,bclj->bcli", p_inv, v)
        v = self._about_z(v, angles[:, 1], m)
        v = torch.einsum("lij,bclj->bcli", p, v)
        v = self._about_z(v, angles[:, 2], m)
        return v.reshape(batch, channels, -1)[..., unpad] @ synthesis

    @staticmethod
    def _about_z(v: torch.Tensor, chi: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """a_lm -> a_lm exp(-i m chi_b) in the padded layout (Re in odd slots, Im in even ones)."""
        phase = m[None, :] * chi[:, None]  # (B, L)
        c, s = torch.cos(phase)[:, None, None, :], torch.sin(phase)[:, None, None, :]
        re, im = v[..., 1::2], v[..., 2::2]
        out = v.clone()
        out[..., 1::2] = c * re + s * im
        out[..., 2::2] = c * im - s * re
        return out

    def rotate(self, coef: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """NumPy face of :meth:`rotate_tensor`, float64 on the CPU: maps (float32, (B, C, npix))."""
        maps = self.rotate_tensor(torch.as_tensor(np.asarray(coef, dtype=np.float64)),
                                  torch.as_tensor(np.asarray(angles, dtype=np.float64)))
        return maps.numpy().astype(np.float32)

    def __call__(self, coef: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each example of ``coef`` (B, C, (lmax + 1)^2) rotated by its own uniformly random rotation."""
        return self.rotate(coef, random_rotation_angles(rng, len(coef)))
