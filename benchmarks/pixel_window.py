"""The HEALPix pixel window computed here against HEALPix's own tables, and its cost.

    python benchmarks/pixel_window.py [--nside 16 64 256 512 1024] [--reference DIR]

For each nside: the shipped w_l (``data/healpix_pixel_window.npz``,
:mod:`cmbscat.sky.pixel_window`), a fresh computation with its wall time (one core), the
largest change when the sub-pixel levels are raised by one (the quadrature's own error
estimate; skipped above nside 64, where it costs many minutes), and, with ``--reference DIR``
holding HEALPix's ``pixel_window_nNNNN.fits`` (HEALPix/data, or healpy's cache where
healpy could download them), the largest |w_l - w_l(HEALPix)| over l <= 2 nside,
l <= 3 nside - 1 and l <= 4 nside. None of these machines can download the tables; the
figures in docs/pixel_window.md used HEALPix 3.83's data/ directory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import healpy as hp
import numpy as np

from cmbscat.sky.pixel_window import compute_pixel_window, default_levels, pixel_window


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, nargs="+", default=[16, 64, 256, 512, 1024])
    parser.add_argument("--reference", type=Path, default=None, metavar="DIR",
                        help="directory with HEALPix's pixel_window_nNNNN.fits")
    parser.add_argument("--no-compute", action="store_true",
                        help="only compare the shipped table with the reference (no fresh computation)")
    args = parser.parse_args()
    print("nside | levels | seconds | |fresh - shipped| | |levels + 1 - levels| <= 2N | "
          "|w - HEALPix| l <= 2N | l <= 3N-1 | l <= 4N")
    for nside in args.nside:
        levels = default_levels(nside)
        shipped = pixel_window(nside, 4 * nside)
        if args.no_compute:
            cells = [str(nside), f"{levels}", "-", "-", "-"]
        else:
            t0 = time.perf_counter()
            fresh = compute_pixel_window(nside)
            seconds = time.perf_counter() - t0
            cells = [str(nside), f"{levels}", f"{seconds:.1f}", f"{np.abs(fresh - shipped).max():.1e}"]
        if args.no_compute:
            pass
        elif nside <= 64:
            finer = compute_pixel_window(nside, levels=(levels[0] + 1, levels[1] + 1))
            cells.append(f"{np.abs(finer - fresh)[:2 * nside + 1].max():.1e}")
        else:
            cells.append("-")
        path = None if args.reference is None else args.reference / f"pixel_window_n{nside:04d}.fits"
        if path is not None and path.exists():
            reference = np.asarray(hp.read_cl(str(path)), dtype=np.float64)
            reference = reference[0] if reference.ndim == 2 else reference
            n = min(len(reference), len(shipped))
            diff = np.abs(shipped[:n] - reference[:n])
            cells += [f"{diff[:2 * nside + 1].max():.1e}", f"{diff[:3 * nside].max():.1e}", f"{diff.max():.1e}"]
        else:
            cells += ["-", "-", "-"]
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
