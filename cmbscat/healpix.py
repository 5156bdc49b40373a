"""Small HEALPix helpers: parameter checks and harmonic index bookkeeping.

Conventions (healpy's): maps in RING ordering; a_lm of a real field stored for
m >= 0 only, in healpy's m-major order of length (lmax + 1)(lmax + 2) / 2.
"""

from __future__ import annotations

import functools

import healpy as hp
import numpy as np

from cmbscat.errors import CmbscatError


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def check_nside_lmax(nside: int, lmax: int, what: str = "--nside") -> None:
    """Refuse an nside that is not a power of two, or lmax outside 0 <= lmax <= 3 nside - 1."""
    if not is_power_of_two(nside):
        raise CmbscatError(f"{what} must be a power of two (1, 2, 4, ...), got {nside}")
    if lmax < 0:
        raise CmbscatError(f"--lmax must be >= 0, got {lmax}")
    if lmax > 3 * nside - 1:
        raise CmbscatError(f"--lmax {lmax} is above 3*nside-1 = {3 * nside - 1} for nside {nside}; "
                           "HEALPix cannot hold that band limit")


def alm_size(lmax: int) -> int:
    """Number of a_lm (m >= 0) of a real field band-limited at ``lmax``."""
    return (lmax + 1) * (lmax + 2) // 2


@functools.lru_cache(maxsize=16)
def alm_ell_m(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``(ell, m)`` of each a_lm index in healpy order (cached, read-only)."""
    ell, m = hp.Alm.getlm(lmax)
    ell.setflags(write=False)
    m.setflags(write=False)
    return ell, m


def rotate_alm(alm: np.ndarray, lmax: int, psi: float, theta: float, phi: float) -> np.ndarray:
    """Rotate a_lm exactly in harmonic space by ZYZ Euler angles (radians); returns a copy."""
    out = np.array(alm, dtype=np.complex128, copy=True)
    hp.rotate_alm(out, psi, theta, phi, lmax=lmax)
    return out
