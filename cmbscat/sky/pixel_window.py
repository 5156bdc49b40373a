"""The HEALPix pixel window w_l, computed here and shipped in ``data/`` (healpy cannot fetch it here).

A map whose pixel values are the averages of a field over each pixel has a_lm = w_l a_lm
of the field, in the mean over pixels (Gorski et al. 2005, sec. 4.3; HEALPix's
``pixel_window_n????.fits``, which healpy 1.20 downloads on first use and these machines
cannot). The window is the pixel average of each pixel's own harmonic window,

    w_l^2 = (1 / Npix) sum_p  (1 / Omega_p^2) int_p int_p P_l(cos gamma(x, y)) dx dy,

(addition theorem: (4 pi / (2l + 1)) sum_m |Omega_p^-1 int_p Y_lm|^2 is the mean of
P_l over pairs of points of pixel p), and w_l its square root.

How it is computed (:func:`compute_pixel_window`):

* Pixel pairs by sub-pixels: the 4^k NESTED children of a pixel at nside 2^k nside are
  equal-area, so the mean of P_l over pairs of child centres is an equal-weight
  quadrature of the double integral, with error O(4^-k). Two levels k and k + 1 are
  combined by Richardson extrapolation, (4 W_(k+1) - W_k) / 3.
* Symmetry: HEALPix is invariant under phi -> phi + pi/2 and z -> -z, and the pixels of
  an equatorial ring are congruent (translates in phi); so the average over all pixels
  is the weighted average over the first-quadrant pixels of the north polar-cap rings
  (weight 8 each) and one pixel of each equatorial ring from nside + 1 to 2 nside
  (weight 4 nside, 2 x that for rings off the equator's own). The weights sum to Npix.
* Pair distances are binned finely (gamma steps far below 1 / lmax, cloud-in-cell
  weights to the two nearest nodes), and P_l is summed over the nodes by the Legendre
  recurrence.

Checked against HEALPix 3.83's own tables (``benchmarks/pixel_window.py --reference``;
docs/pixel_window.md): the difference in w_l is below 1e-4 for l <= 2 nside at every
shipped nside. The shipped table (``data/healpix_pixel_window.npz``) holds w_l for l = 0..4 nside at
nside = 1, 2, 4, ..., 2048 (``python -m cmbscat.sky.pixel_window`` rewrites it).
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from importlib import resources
from pathlib import Path

import healpy as hp
import numpy as np

from cmbscat.errors import CmbscatError

TABLE_NAME = "healpix_pixel_window.npz"   # in the package data (data/, cmbscat.data)
SHIPPED_NSIDES = tuple(2**k for k in range(12))    # 1 .. 2048
PAIRS_PER_CHUNK = 4_000_000                         # pair distances held at once


def default_levels(nside: int) -> tuple[int, int]:
    """Sub-pixel levels (k, k + 1) of :func:`compute_pixel_window`: (3, 4) up to nside 256,
    (2, 3) above (cost: about nside^2 / 2 x 16^(k+1) pair distances)."""
    return (3, 4) if nside <= 256 else (2, 3)


def symmetric_pixels(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (NESTED indices, int64) whose weighted mean is the mean over all pixels, and
    their weights (float64, summing to 12 nside^2); see the module doc."""
    pixels, weights = [], []
    for ring in range(1, 2 * nside + 1):
        start, count, *_ = hp.ringinfo(nside, np.array([ring]))
        start, count = int(start[0]), int(count[0])
        if ring <= nside:   # polar cap: first quadrant, each also stands for 3 rotations and its mirror
            pixels.append(start + np.arange(count // 4))
            weights.append(np.full(count // 4, 8.0))
        else:               # equatorial belt: one pixel stands for its ring (and its mirror ring)
            pixels.append(np.array([start]))
            weights.append(np.array([float(count) * (1 if ring == 2 * nside else 2)]))
    ring_pixels = np.concatenate(pixels)
    return hp.ring2nest(nside, ring_pixels).astype(np.int64), np.concatenate(weights)


def pair_distance_histogram(nside: int, level: int, pixels: np.ndarray, weights: np.ndarray,
                            step: float, n_nodes: int) -> np.ndarray:
    """Weighted cloud-in-cell histogram (float64 (n_nodes,)) of the angular distances (rad)
    between all ordered pairs of child centres (level ``level``) within each pixel, on
    nodes 0, step, 2 step, ...; each pixel's pairs carry its weight / 16^level."""
    n_child = 4**level
    hist = np.zeros(n_nodes + 1)
    per_chunk = max(1, PAIRS_PER_CHUNK // n_child**2)
    for lo in range(0, len(pixels), per_chunk):
        chunk, w = pixels[lo:lo + per_chunk], weights[lo:lo + per_chunk]
        children = (chunk[:, None] * n_child + np.arange(n_child)).ravel()
        vec = np.asarray(hp.pix2vec(nside * 2**level, children, nest=True)).reshape(3, len(chunk), n_child)
        chord2 = np.zeros((len(chunk), n_child, n_child))
        for axis in vec:
            diff = axis[:, :, None] - axis[:, None, :]
            chord2 += diff * diff
        gamma = 2.0 * np.arcsin(np.sqrt(chord2) / 2.0).reshape(len(chunk), -1)
        position = gamma / step
        below = np.floor(position).astype(np.int64)
        if below.max() >= n_nodes:
            raise ValueError("a pixel is wider than the histogram's range")
        frac = position - below
        pair_weight = np.repeat(w / n_child**2, n_child**2)
        hist += np.bincount(below.ravel(), pair_weight * (1 - frac.ravel()), minlength=n_nodes + 1)
        hist += np.bincount(below.ravel() + 1, pair_weight * frac.ravel(), minlength=n_nodes + 1)
    return hist[:n_nodes]


def legendre_sums(cos_gamma: np.ndarray, weights: np.ndarray, lmax: int) -> np.ndarray:
    """sum_i weights_i P_l(cos_gamma_i) for l = 0..lmax, float64 (lmax+1,) (three-term recurrence)."""
    out = np.empty(lmax + 1)
    p_prev, p = np.ones_like(cos_gamma), cos_gamma.copy()
    out[0] = weights.sum()
    if lmax >= 1:
        out[1] = weights @ p
    for ell in range(1, lmax):
        p_prev, p = p, ((2 * ell + 1) * cos_gamma * p - ell * p_prev) / (ell + 1)
        out[ell + 1] = weights @ p
    return out


def window_squared(nside: int, lmax: int, level: int, pixels: np.ndarray | None = None,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """w_l^2, float64 (lmax+1,), by the child-centre quadrature at one ``level`` (no
    extrapolation), averaged over ``pixels`` (NESTED) with ``weights`` (default: all of
    them through :func:`symmetric_pixels`)."""
    if pixels is None:
        pixels, weights = symmetric_pixels(nside)
    weights = np.ones(len(pixels)) if weights is None else np.asarray(weights, dtype=np.float64)
    widest = 6.0 / nside                      # rad; HEALPix pixels are < 3 / nside across
    n_nodes = max(4096, 8 * (lmax + 1))       # node step << 1 / lmax: CIC error ~ (l step)^2 / 8
    step = widest / n_nodes
    hist = pair_distance_histogram(nside, level, np.asarray(pixels, np.int64), weights, step, n_nodes)
    used = np.flatnonzero(hist)
    return legendre_sums(np.cos(used * step), hist[used], lmax) / hist.sum()


def compute_pixel_window(nside: int, lmax: int | None = None,
                         levels: tuple[int, int] | None = None) -> np.ndarray:
    """The HEALPix temperature pixel window w_l of ``nside`` for l = 0..lmax (default
    4 nside), float64, w_0 = 1; Richardson extrapolation of :func:`window_squared` over
    ``levels`` (default :func:`default_levels`). Seconds at nside 64, about a minute at
    512 (one core)."""
    lmax = 4 * nside if lmax is None else int(lmax)
    coarse, fine = default_levels(nside) if levels is None else levels
    pixels, weights = symmetric_pixels(nside)
    w2_coarse = window_squared(nside, lmax, coarse, pixels, weights)
    w2_fine = window_squared(nside, lmax, fine, pixels, weights)
    ratio = 4.0 ** (fine - coarse)
    w2 = (ratio * w2_fine - w2_coarse) / (ratio - 1.0)
    return np.sqrt(np.clip(w2, 0.0, None))


def table_path() -> Path:
    """Path of the shipped table (``data/healpix_pixel_window.npz``, package ``cmbscat.data``)."""
    return Path(str(resources.files("cmbscat.data").joinpath(TABLE_NAME)))


@lru_cache(maxsize=None)
def _shipped(nside: int) -> np.ndarray:
    with np.load(table_path()) as table:
        key = f"nside_{nside:05d}"
        if key not in table:
            raise CmbscatError(f"no HEALPix pixel window for nside {nside} in data/{TABLE_NAME} (nsides "
                               f"{', '.join(map(str, SHIPPED_NSIDES))}); add it with "
                               f"python -m cmbscat.sky.pixel_window --nside {nside}")
        window = np.array(table[key], dtype=np.float64)
    window.flags.writeable = False
    return window


def pixel_window(nside: int, lmax: int | None = None) -> np.ndarray:
    """The HEALPix temperature pixel window w_l of ``nside``, float64 (lmax+1,), l = 0..lmax
    (default 3 nside - 1; at most 4 nside), from the shipped table (module doc).
    Unknown nside or lmax beyond the table: :class:`CmbscatError`, one line."""
    window = _shipped(int(nside))
    lmax = 3 * nside - 1 if lmax is None else int(lmax)
    if not 0 <= lmax < len(window):
        raise CmbscatError(f"the HEALPix pixel window of nside {nside} is tabulated up to l = "
                           f"{len(window) - 1}, not {lmax}")
    return window[:lmax + 1].copy()


def write_table(path: Path, nsides: tuple[int, ...]) -> None:
    """Compute w_l (l = 0..4 nside) for ``nsides`` and write them, with the ones already in
    ``path`` for other nsides, to ``path`` (npz, keys ``nside_NNNNN``), atomically."""
    from tqdm import tqdm

    arrays = dict(np.load(path)) if path.exists() else {}
    for nside in tqdm(nsides, desc="pixel windows", unit="nside"):
        arrays[f"nside_{nside:05d}"] = compute_pixel_window(nside)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **dict(sorted(arrays.items())))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compute the HEALPix pixel windows and write the shipped table.")
    parser.add_argument("--nside", type=int, nargs="+", default=list(SHIPPED_NSIDES),
                        help="nsides to (re)compute; the others in the table are kept")
    parser.add_argument("--out", type=Path, default=None, help="table to update (npz) [default: the shipped one]")
    args = parser.parse_args(argv)
    bad = [n for n in args.nside if n < 1 or n & (n - 1)]
    if bad:
        parser.error(f"nside must be a power of 2, got {bad}")
    write_table(args.out or table_path(), tuple(args.nside))


if __name__ == "__main__":
    main()
