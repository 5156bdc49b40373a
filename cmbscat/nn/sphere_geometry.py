"""HEALPix geometry for DISCO convolutions: pixel centres, local frames, neighbours.

Conventions
-----------
- Pixels in RING ordering (healpy's default); unit vectors are float64 ``(npix, 3)``.
- Angles are in radians. The geodesic distance between two points is the
  great-circle angle ``theta`` in ``[0, pi]``.
- The *bearing* of a point ``v`` seen from a centre ``u`` is the compass
  direction of the great circle from ``u`` to ``v``: 0 towards local north (the
  direction of decreasing colatitude), ``pi / 2`` towards local east (increasing
  longitude), in ``(-pi, pi]``. It is measured in the tangent plane at ``u`` with
  the basis ``(north, east)``. HEALPix pixel centres never lie on a pole (the
  nearest ring is at ``z = 1 - 1 / (3 nside^2)``), so the local frame is defined
  at every pixel centre; near the poles it turns quickly with longitude, which
  is the intrinsic limit of any filter oriented by the local meridian.
"""

from __future__ import annotations

import math

import healpy as hp
import numpy as np
from scipy.spatial import cKDTree

from cmbscat.errors import CmbscatError
from cmbscat.healpix import is_power_of_two


def check_nside(nside: int, what: str = "nside") -> None:
    """Refuse an nside that is not a power of two."""
    if not isinstance(nside, (int, np.integer)) or not is_power_of_two(int(nside)):
        raise CmbscatError(f"{what} must be a power of two (1, 2, 4, ...), got {nside!r}")


def pixel_size(nside: int) -> float:
    """Characteristic HEALPix pixel size in radians: ``sqrt(4 pi / npix)``."""
    return math.sqrt(4.0 * math.pi / hp.nside2npix(nside))


def pixel_unit_vectors(nside: int) -> np.ndarray:
    """Unit vectors of the pixel centres, float64 ``(npix, 3)``, RING order."""
    x, y, z = hp.pix2vec(nside, np.arange(hp.nside2npix(nside)), nest=False)
    return np.stack([x, y, z], axis=1)


def local_north_east(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangent vectors ``(north, east)`` at each centre, each ``(n, 3)``.

    ``north = -e_theta`` points towards the north pole along the meridian and
    ``east = e_phi`` along the parallel. Undefined exactly on the poles (never a
    HEALPix pixel centre).
    """
    x, y, z = centres[:, 0], centres[:, 1], centres[:, 2]
    s = np.sqrt(x * x + y * y)
    if np.any(s == 0.0):
        raise CmbscatError("local north is undefined at a pole")
    north = np.stack([-z * x / s, -z * y / s, s], axis=1)
    east = np.stack([-y / s, x / s, np.zeros_like(s)], axis=1)
    return north, east


def distance_and_bearing(centres: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic distance and bearing (radians) of ``points[j]`` seen from ``centres[j]``.

    Both arrays ``(n, 3)`` of unit vectors, paired row by row. The distance is
    ``atan2(|u x v|, u . v)``, accurate at small angles; the bearing is
    ``atan2(t . east, t . north)`` with ``t`` the tangent component of ``v`` at
    ``u`` (0 when ``v == u``).
    """
    dot = np.einsum("ij,ij->i", centres, points)
    cross = np.linalg.norm(np.cross(centres, points), axis=1)
    theta = np.arctan2(cross, dot)
    north, east = local_north_east(centres)
    tangent = points - dot[:, None] * centres
    bearing = np.arctan2(np.einsum("ij,ij->i", tangent, east), np.einsum("ij,ij->i", tangent, north))
    return theta, bearing


def neighbours_within(
    nside_in: int,
    nside_out: int,
    theta_cutoff: float,
    chunk_size: int = 65536,
):
    """All (output pixel, input pixel) pairs closer than ``theta_cutoff`` radians.

    Vectorised: a k-d tree on the input pixel unit vectors is queried with the
    chord radius ``2 sin(theta_cutoff / 2)`` for chunks of output pixels.

    Yields, chunk by chunk, tuples ``(out_pix, in_pix, theta, bearing)`` of 1-D
    arrays: RING indices at ``nside_out`` and ``nside_in`` (int64), geodesic
    distance (strictly below ``theta_cutoff``) and bearing of the input pixel
    centre seen from the output pixel centre (radians, see module docstring).
    Work and memory per chunk are proportional to the chunk size times the
    number of neighbours, so the whole search is linear in npix.
    """
    if not 0.0 < theta_cutoff < math.pi:
        raise CmbscatError(f"theta_cutoff must be in (0, pi) radians, got {theta_cutoff}")
    vec_in = pixel_unit_vectors(nside_in)
    vec_out = pixel_unit_vectors(nside_out)
    tree = cKDTree(vec_in)
    chord = 2.0 * math.sin(theta_cutoff / 2.0)
    cap_area = 2.0 * math.pi * (1.0 - math.cos(theta_cutoff))
    expected = cap_area / (4.0 * math.pi / len(vec_in))
    k = int(min(len(vec_in), math.ceil(1.5 * expected + 16)))
    for start in range(0, len(vec_out), chunk_size):
        centres = vec_out[start:start + chunk_size]
        while True:
            dist, idx = tree.query(centres, k=k, distance_upper_bound=chord * (1 + 1e-12), workers=-1)
            if k >= len(vec_in) or not np.any(np.isfinite(dist[:, -1])):
                break
            k = min(len(vec_in), 2 * k)  # a row was full: some neighbours may be missing
        found = np.isfinite(dist)
        rows, cols = np.nonzero(found)
        in_pix = idx[rows, cols].astype(np.int64)
        out_local = rows.astype(np.int64)
        theta, bearing = distance_and_bearing(centres[out_local], vec_in[in_pix])
        keep = theta < theta_cutoff
        yield out_local[keep] + start, in_pix[keep], theta[keep], bearing[keep]
