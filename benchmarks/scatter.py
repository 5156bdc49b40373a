"""Benchmark of the scattering transform and the `scatter` stage at the papers' resolution.

    python benchmarks/scatter.py                      # lmax 1023, nside 512, depth 2, J0 5 and 6
    python benchmarks/scatter.py --J0 5 --repeats 5 --stage-maps 2

Measured in this run (nothing hard-coded):

* seconds per map of ``Scattering.forward`` from a_lm (what the stage does with a
  sims file's /alm), and the ratio to one healpy alm2map + map2alm(iter=0) pair at
  full resolution (nside 512, lmax 1023), timed interleaved with it (median of
  per-repeat ratios: both see the same machine load);
* the extra cost when the input is a map (map2alm iter=3 first);
* the same with the odd channels C[j1, j2] (``--odd-power``: q = 1 and 2; 0 = none);
* peak memory: peak resident set (VmHWM of /proc/self/status; ru_maxrss where that
  is missing -- on Linux ru_maxrss would include the parent's pre-exec image) of a
  fresh child process that imports cmbscat, draws one sky and scatters it, so it
  includes Python, numpy and healpy themselves; next to the same child without the
  scatter;
* cached size per map: /coeffs float32 (C, npix_out) against the float32 map and
  the complex64 a_lm; with --stage-maps N > 0 also the real HDF5 file written by
  `cmbscat scatter` from a `cmbscat simulate` file of N maps (bytes / map, s / map).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np

from cmbscat.scattering.transform import Scattering
from cmbscat.sky.spectra import gaussian_alm, planck2018_cl


def child_memory(lmax: int, nside: int, depth: int, J0: int, do_scatter: bool) -> None:
    alm = gaussian_alm(planck2018_cl(lmax), np.random.default_rng(0))
    sc = Scattering(lmax, nside=nside, depth=depth, J0=J0)
    if do_scatter:
        sc(alm)
    print(json.dumps({"maxrss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    VmHWM from /proc/self/status (Linux): unlike getrusage's ru_maxrss it is not
    inherited from the parent's pre-exec image when started by fork + exec.
    Falls back to resource.getrusage(RUSAGE_SELF).ru_maxrss elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args, do_scatter: bool) -> float:
    cmd = [sys.executable, __file__, "--child", "1" if do_scatter else "0", "--lmax", str(args.lmax),
           "--nside", str(args.nside), "--depth", str(args.depth), "--J0", str(args.J0[0])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_mib"]


def timing(args, J0: int, alm: np.ndarray, m: np.ndarray, odd_power: int = 0) -> dict:
    sc = Scattering(args.lmax, nside=args.nside, depth=args.depth, J0=J0, odd=odd_power > 0,
                    odd_power=max(odd_power, 1))
    sc(alm)  # warm-up (first call pays for healpy's ring tables)
    t_pair, t_sc, t_map = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        mm = hp.alm2map(alm, args.nside, lmax=args.lmax)
        hp.map2alm(mm, lmax=args.lmax, iter=0)
        t_pair.append(time.perf_counter() - t)
        t = time.perf_counter()
        sc(alm)
        t_sc.append(time.perf_counter() - t)
        t = time.perf_counter()
        sc(m)
        t_map.append(time.perf_counter() - t)
    t_pair, t_sc, t_map = map(np.array, (t_pair, t_sc, t_map))
    return {"sc": sc, "pair": np.median(t_pair), "s_per_map": np.median(t_sc),
            "ratio": np.median(t_sc / t_pair), "ratio_min": np.min(t_sc / t_pair),
            "ratio_max": np.max(t_sc / t_pair), "s_map_input": np.median(t_map),
            "ratio_map_input": np.median(t_map / t_pair)}


def stage(args, J0: int, workdir: Path) -> dict:
    exe = Path(sys.executable).with_name("cmbscat")
    sims, out = workdir / "sims.h5", workdir / f"scat_J0{J0}.h5"
    if not sims.exists():
        subprocess.run([str(exe), "simulate", str(sims), "--n-maps", str(args.stage_maps), "--nside",
                        str(args.nside), "--lmax", str(args.lmax), "--no-progress", "--store", "alm"],
                       check=True)
    t = time.perf_counter()
    subprocess.run([str(exe), "scatter", str(sims), str(out), "--depth", str(args.depth), "--J0", str(J0),
                    "--no-progress"], check=True)
    dt = time.perf_counter() - t
    return {"bytes_per_map": out.stat().st_size / args.stage_maps, "s_per_map": dt / args.stage_maps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmax", type=int, default=1023)
    ap.add_argument("--nside", type=int, default=512)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--J0", type=int, nargs="+", default=[5, 6])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stage-maps", type=int, default=2)
    ap.add_argument("--odd-power", type=int, nargs="+", default=[0, 1, 2],
                    help="rows without odd channels (0) and with them, envelope power q (1, 2)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child_memory(args.lmax, args.nside, args.depth, args.J0[0], args.child == "1")

    print(f"## scatter benchmark: lmax {args.lmax}, nside {args.nside}, depth {args.depth}, "
          f"{os.cpu_count()} CPUs visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    alm = gaussian_alm(planck2018_cl(args.lmax), np.random.default_rng(1))
    m = hp.alm2map(alm, args.nside, lmax=args.lmax)
    npix = hp.nside2npix(args.nside)
    map_bytes, alm_bytes = npix * 4, hp.Alm.getsize(args.lmax) * 8
    print("| J0 | odd channels (q) | nside_out | channels | s/map (from alm) | pair s | pairs/map (median, min-max) "
          "| s/map from a map (+map2alm iter 3) | pairs/map from a map | coeff bytes/map | "
          "vs float32 map | vs complex64 alm |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for J0, q in itertools.product(args.J0, args.odd_power):
        r = timing(args, J0, alm, m, q)
        sc = r["sc"]
        cbytes = sc.n_channels * sc.npix_out * 4
        print(f"| {J0} | {'no' if q == 0 else f'yes ({q})'} | {sc.nside_out} | {sc.n_channels} | "
              f"{r['s_per_map']:.2f} | {r['pair']:.2f} | "
              f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['s_map_input']:.2f} | "
              f"{r['ratio_map_input']:.2f} | {cbytes / 1024:.0f} KiB | {cbytes / map_bytes:.3f}x | "
              f"{cbytes / alm_bytes:.3f}x |", flush=True)
    print()
    base = run_child(args, False)
    peak = run_child(args, True)
    print(f"Peak memory (peak RSS, VmHWM, of a fresh process, J0 {args.J0[0]}): {peak:.0f} MiB with one scatter; "
          f"{base:.0f} MiB for the same process without it (imports + one a_lm).\n")
    if args.stage_maps > 0:
        print(f"`cmbscat scatter` end to end on a sims file of {args.stage_maps} maps "
              f"(lmax {args.lmax}, /alm input, includes hashing the input, HDF5 I/O, process start):\n")
        print("| J0 | file bytes / map | s / map |")
        print("|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as d:
            for J0 in args.J0:
                s = stage(args, J0, Path(d))
                print(f"| {J0} | {s['bytes_per_map'] / 1024:.0f} KiB | {s['s_per_map']:.2f} |", flush=True)
        print()


if __name__ == "__main__":
    main()
