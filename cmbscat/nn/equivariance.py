"""Rotational equivariance of HEALPix layers, measured with exact harmonic-space rotations.

What is measured (:func:`equivariance_error`)
---------------------------------------------
1. Draw random a_lm with a flat spectrum (C_l = 1 for 1 <= l <= ``lmax``, the
   monopole set to 0), band-limited at ``lmax <= nside_in``; ``f = alm2map``.
2. Draw a rotation R uniformly on SO(3) (ZYZ Euler angles) and rotate the
   a_lm exactly (``healpy.rotate_alm``); ``Rf = alm2map(R a_lm)``.
3. Apply the layer to both maps (float64).
4. Take both outputs to harmonic space, band-limited at ``lmax_out`` (default
   ``min(lmax, nside_out)``) with ``map2alm(iter=3)``; rotate the first exactly.
5. Error = ``|| a(layer(Rf)) - R a(layer(f)) || / || a(layer(f)) ||`` in the
   harmonic L2 norm (= the L2 norm on the sphere of the band-limited maps),
   summed over output channels and batch, averaged over the rotations.

For an isotropic filter the exact convolution of a map band-limited at
``lmax`` is band-limited at ``lmax`` too, so whatever the layer puts above the
band is discretisation error; comparing the band ``l <= lmax_out`` isolates the
error of the layer (the SHT with ``iter=3`` at ``l <= nside`` is accurate to
about 1e-7, far below the errors measured).
"""

from __future__ import annotations

import healpy as hp
import numpy as np
import torch

from cmbscat.healpix import rotate_alm


def random_alm(lmax: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian a_lm with C_l = 1 for 1 <= l <= lmax (monopole 0), healpy order, complex128."""
    n = hp.Alm.getsize(lmax)
    ell, m = hp.Alm.getlm(lmax)
    alm = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) / np.sqrt(2.0)
    alm[m == 0] = rng.standard_normal(np.count_nonzero(m == 0))
    alm[ell == 0] = 0.0
    return alm


def random_rotation(rng: np.random.Generator) -> tuple[float, float, float]:
    """ZYZ Euler angles ``(psi, theta, phi)`` (radians) of a rotation uniform on SO(3)."""
    return float(rng.uniform(0, 2 * np.pi)), float(np.arccos(rng.uniform(-1, 1))), float(rng.uniform(0, 2 * np.pi))


def alm_norm2(alm: np.ndarray, lmax: int) -> float:
    """Squared L2 norm on the sphere of a real field from its m >= 0 a_lm."""
    _, m = hp.Alm.getlm(lmax)
    w = np.where(m == 0, 1.0, 2.0)
    return float(np.sum(w * np.abs(alm) ** 2))


def _maps_to_alm(maps: np.ndarray, lmax: int) -> list[np.ndarray]:
    return [hp.map2alm(np.ascontiguousarray(m), lmax=lmax, iter=3) for m in maps]


@torch.no_grad()
def equivariance_error(layer: torch.nn.Module, nside_in: int, nside_out: int, lmax: int | None = None,
                       lmax_out: int | None = None, n_rotations: int = 5, in_channels: int = 1,
                       seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over ``n_rotations`` of the relative equivariance error.

    ``layer`` maps ``(1, in_channels, npix(nside_in))`` to ``(1, C, npix(nside_out))``
    and is run in float64 (a double copy is made). See the module docstring for
    the exact definition.
    """
    rng = np.random.default_rng(seed)
    lmax = nside_in if lmax is None else lmax
    lmax_out = min(lmax, nside_out) if lmax_out is None else lmax_out
    layer = _as_double(layer)
    alms = [random_alm(lmax, rng) for _ in range(in_channels)]
    f = np.stack([hp.alm2map(a, nside_in, lmax=lmax) for a in alms])
    out = layer(torch.from_numpy(f)[None]).numpy()[0]
    ref_alm = _maps_to_alm(out, lmax_out)
    errors = []
    for _ in range(n_rotations):
        angles = random_rotation(rng)
        rf = np.stack([hp.alm2map(rotate_alm(a, lmax, *angles), nside_in, lmax=lmax) for a in alms])
        out_r = layer(torch.from_numpy(rf)[None]).numpy()[0]
        got = _maps_to_alm(out_r, lmax_out)
        num = sum(alm_norm2(g - rotate_alm(r, lmax_out, *angles), lmax_out) for g, r in zip(got, ref_alm))
        den = sum(alm_norm2(r, lmax_out) for r in ref_alm)
        errors.append(np.sqrt(num / den))
    return float(np.mean(errors)), float(np.std(errors))


def _as_double(layer: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(layer).double().cpu()
