"""Seconds per simulated map, each class, against a bare ``healpy.synfast`` of the same spectrum.

    python benchmarks/simulate.py [--nside 512] [--lmax 1023] [--reps 7]

Each repetition times, back to back, synfast, one Gaussian and one non-Gaussian sky
(as ``cmbscat simulate --store maps`` makes them, i.e. a_lm draw, non-Gaussian term,
rescaling and the output map), so that machine load affects all of them alike; the
median over repetitions is reported. Targets (set with the stage at 3c2dfdc): Gaussian <= 1.3x, non-Gaussian
<= 3.5x synfast.
"""

import argparse
import time

import healpy as hp
import numpy as np

from cmbscat.sky.simulate import SkySimulator, map_seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--lmax", type=int, default=1023)
    parser.add_argument("--fnl", type=float, default=1000.0)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()

    sim = SkySimulator(args.nside, args.lmax, args.fnl)
    seeds = map_seeds(0, 2 * args.reps + 2)
    np.random.seed(0)
    jobs = {
        "healpy.synfast": lambda i: hp.synfast(sim.cl, args.nside, lmax=args.lmax),
        "Gaussian (maps)": lambda i: sim.sky(seeds[2 * i], 0, "maps"),
        "non-Gaussian (maps)": lambda i: sim.sky(seeds[2 * i + 1], 1, "maps"),
        "Gaussian (alm+maps)": lambda i: sim.sky(seeds[2 * i], 0, "both"),
        "non-Gaussian (alm+maps)": lambda i: sim.sky(seeds[2 * i + 1], 1, "both"),
    }
    for job in jobs.values():  # warm-up: thread pools, caches
        job(args.reps)
    times = {name: [] for name in jobs}
    for i in range(args.reps):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job(i)
            times[name].append(time.perf_counter() - t0)

    ref = np.median(times["healpy.synfast"])
    print(f"nside {args.nside}, lmax {args.lmax}, f_NL {args.fnl:g}, median of {args.reps} "
          f"interleaved repetitions")
    print(f"{'what':26s} {'s/map':>8s} {'x synfast':>10s}")
    for name, t in times.items():
        med = np.median(t)
        print(f"{name:26s} {med:8.3f} {med / ref:10.2f}")


if __name__ == "__main__":
    main()
