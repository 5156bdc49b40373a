"""Rotational equivariance of the scattering transform, and the oversampling trade-off.

    python benchmarks/scatter_equivariance.py                 # both parts, markdown to stdout
    python benchmarks/scatter_equivariance.py --part table --lmax 255 1023 --rotations 5
    python benchmarks/scatter_equivariance.py --part tradeoff --lmax 1023

The table has a row with the odd channels C[j1, j2] (``Scattering(odd=True)``, depth 2)
and their own error columns (their unit differs, so they are never pooled with S[p]).

Error of one rotation R (ZYZ Euler angles, uniform on SO(3)), applied exactly in
harmonic space with healpy.rotate_alm to the input a_lm and to the output a_lm:

    err(R) = ||S(R f) - R S(f)|| / ||S(f)||,

norms summed over all channels of the network, each channel's norm its L2 norm on
the sphere (from its a_lm, m < 0 included). f: a Gaussian CMB sky (Planck 2018 TT, uK)
band-limited at lmax. Every figure is measured by this run; nothing is hard-coded.
The trade-off part times each setting against one alm2map + map2alm pair at
nside = (lmax+1)/2 measured in the same run, interleaved (median of repeats).
"""

from __future__ import annotations

import argparse
import os
import time

import healpy as hp
import numpy as np

from cmbscat.healpix import rotate_alm
from cmbscat.scattering.transform import Scattering, alm_weights
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl


def random_rotations(n: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0, 2 * np.pi), float(np.arccos(rng.uniform(-1, 1))), rng.uniform(0, 2 * np.pi))
            for _ in range(n)]


def errors(sc: Scattering, alm: np.ndarray, rotated: list[np.ndarray], rotations) -> dict:
    """Relative equivariance errors over rotations: all S[p] channels, the top order only,
    the odd channels C[j1, j2] together and the worst odd channel alone (NaN without them).
    Odd channels have another unit (uK^(1+q)), so they are never pooled with the S[p]."""
    w = alm_weights(sc.lmax_out)
    top, odd = sc.order() == sc.depth, sc.order() == -1
    even = ~odd
    s = sc.forward_alm(alm)
    out = {"all": [], "top": [], "odd": [], "odd_worst": []}
    for alm_r, angles in zip(rotated, rotations):
        diff = sc.forward_alm(alm_r) - np.stack([rotate_alm(c, sc.lmax_out, *angles) for c in s])
        d2, n2 = np.sum(w * np.abs(diff) ** 2, axis=1), np.sum(w * np.abs(s) ** 2, axis=1)
        out["all"].append(np.sqrt(d2[even].sum() / n2[even].sum()))
        out["top"].append(np.sqrt(d2[top].sum() / n2[top].sum()))
        out["odd"].append(np.sqrt(d2[odd].sum() / n2[odd].sum()) if odd.any() else np.nan)
        out["odd_worst"].append(np.sqrt(d2[odd] / n2[odd]).max() if odd.any() else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def pair_seconds(alm, lmax, nside):
    m = hp.alm2map(alm, nside, lmax=lmax)
    t = time.perf_counter()
    m = hp.alm2map(alm, nside, lmax=lmax)
    hp.map2alm(m, lmax=lmax, iter=0)
    return time.perf_counter() - t


def table(lmaxes, n_rot, seed, J0):
    print("### Rotational equivariance, default settings\n")
    print("| lmax | depth | odd | channels | grids nside_j (j: nside) | mean err (S[p] ch.) "
          "| max err (S[p] ch.) | mean err (order-d ch.) | max err (order-d ch.) "
          "| mean err (odd ch.) | max err (odd ch.) | worst odd channel (max) | rotations |")
    print("|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lmax in lmaxes:
        alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(seed))
        rots = random_rotations(n_rot, seed + 1)
        rotated = [rotate_alm(alm, lmax, *r) for r in rots]
        for depth, odd in ((1, False), (2, False), (3, False), (2, True)):
            sc = Scattering(lmax, depth=depth, J0=J0, odd=odd)
            e = errors(sc, alm, rotated, rots)
            grids = " ".join(f"{j}:{g[0]}" for j, g in sc.grid.items())
            odd_err = (f"{e['odd'].mean():.2e} | {e['odd'].max():.2e} | {e['odd_worst'].max():.2e}"
                       if odd else "- | - | -")
            print(f"| {lmax} | {depth} | {'yes' if odd else 'no'} | {sc.n_channels} | {grids} | "
                  f"{e['all'].mean():.2e} | {e['all'].max():.2e} | {e['top'].mean():.2e} | "
                  f"{e['top'].max():.2e} | {odd_err} | {n_rot} |", flush=True)
    print()


def tradeoff(lmax, n_rot, seed, J0, depth, settings, repeats):
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(seed))
    rots = random_rotations(n_rot, seed + 1)
    rotated = [rotate_alm(alm, lmax, *r) for r in rots]
    nside = (lmax + 1) // 2
    print(f"### Oversampling: equivariance error vs time (lmax {lmax}, depth {depth}, "
          f"{n_rot} rotations)\n")
    print(f"Time unit: one alm2map + map2alm(iter=0) pair at nside {nside}, lmax {lmax}, "
          "measured interleaved in this run (median of repeats); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.\n")
    print("| oversample | min_nside | map2alm iter | s/map | pairs/map | mean err | max err |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for oversample, min_nside, it in settings:
        sc = Scattering(lmax, depth=depth, J0=J0, oversample=oversample, min_nside=min_nside, iter=it)
        t_sc, t_pair = [], []
        for _ in range(repeats):
            t_pair.append(pair_seconds(alm, lmax, nside))
            t = time.perf_counter()
            sc.forward_alm(alm)
            t_sc.append(time.perf_counter() - t)
        ratio = np.median(np.array(t_sc) / np.array(t_pair))
        e = errors(sc, alm, rotated, rots)["all"]
        print(f"| {oversample:g} | {sc.min_nside} | {it} | {np.median(t_sc):.2f} | {ratio:.2f} | "
              f"{e.mean():.2e} | {e.max():.2e} |", flush=True)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["table", "tradeoff", "both"], default="both")
    ap.add_argument("--lmax", type=int, nargs="+", default=[255, 1023])
    ap.add_argument("--rotations", type=int, default=5)
    ap.add_argument("--J0", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.part in ("table", "both"):
        table(args.lmax, args.rotations, args.seed, args.J0)
    if args.part in ("tradeoff", "both"):
        settings = [(1.0, 0, 0), (1.0, 128, 0), (1.0, None, 0), (1.0, None, 1), (1.25, None, 0),
                    (1.5, None, 0), (2.0, 0, 0), (2.0, None, 0)]
        tradeoff(max(args.lmax), args.rotations, args.seed, args.J0, 2, settings, args.repeats)


if __name__ == "__main__":
    main()
