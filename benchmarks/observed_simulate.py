"""Seconds per simulated map: noiseless against observed skies (beam, noise, mask), side by side.

    python benchmarks/observed_simulate.py [--n 40] [--nside 512] [--lmax 1023] [--fnl 30]
                                           [--store both]

Three settings, as ``cmbscat simulate`` makes them:

* noiseless: the skies as they are;
* Planck-like: ``--beam-fwhm 5 --noise 45 --mask galactic:20,sources:200 --apodize 2``
  (homogeneous white noise, drawn in harmonic space);
* Planck-like + ``--hits scan`` (inhomogeneous noise, drawn per pixel and analysed once).

Each map index is made in all three settings back to back (half the maps Gaussian, half
non-Gaussian, as in a file), so machine load affects them alike; the per-map time is the
stage's loop body (``SkySimulator.sky``, rows as written), not the file writing. Also
timed: the one-off work per run or shard (hit map, mask and its C1 apodization, built
before the first map). Target (set with the observed skies at e67b5b3): observed <= 1.5x noiseless per map.
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as each shard task runs

import numpy as np  # noqa: E402

from cmbscat.sky.simulate import SimulationConfig, SkySimulator, map_parameters, prepare_observation  # noqa: E402

PLANCK_LIKE = dict(beam_fwhm_arcmin=5.0, noise_uk_arcmin=45.0, mask="galactic:20,sources:200",
                   apodize_deg=2.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="maps per setting")
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--lmax", type=int, default=1023)
    parser.add_argument("--fnl", type=float, default=30.0)
    parser.add_argument("--store", choices=["alm", "maps", "both"], default="both")
    args = parser.parse_args()

    base = dict(n_maps=args.n + args.n % 2, nside=args.nside, lmax=args.lmax, fnl=args.fnl, seed=0,
                store=args.store)
    configs = {
        "noiseless": SimulationConfig(**base),
        "Planck-like": SimulationConfig(**base, **PLANCK_LIKE),
        "Planck-like + hits scan": SimulationConfig(**base, **PLANCK_LIKE, hits="scan"),
    }
    setup, observed = {}, {}
    for name, config in configs.items():
        config.validate()
        t0 = time.perf_counter()
        observed[name] = ({} if config.observation.is_trivial
                          else {"observation": prepare_observation(config)[0]})
        setup[name] = time.perf_counter() - t0

    simulator = SkySimulator(args.nside, args.lmax, args.fnl)
    seeds, labels, _ = map_parameters(configs["noiseless"])
    for name in configs:  # warm-up: thread pools, caches, the transfer function
        simulator.sky(seeds[1], 1, args.store, **observed[name])
    times = {name: [] for name in configs}
    for i in range(args.n):
        for name in configs:
            t0 = time.perf_counter()
            simulator.sky(seeds[i], labels[i], args.store, **observed[name])
            times[name].append(time.perf_counter() - t0)

    ref = np.mean(times["noiseless"])
    print(f"nside {args.nside}, lmax {args.lmax}, f_NL {args.fnl:g}, store {args.store}, {args.n} maps "
          f"per setting (half Gaussian), interleaved, one thread")
    print(f"{'setting':26s} {'s/map':>7s} {'median':>7s} {'x noiseless':>12s} {'one-off s':>10s}")
    for name, t in times.items():
        print(f"{name:26s} {np.mean(t):7.3f} {np.median(t):7.3f} {np.mean(t) / ref:12.2f} {setup[name]:10.2f}")
    print("one-off: hit map + mask (galactic cut, 200 holes, C1 apodization over 2 deg) + beam, per run or shard")


if __name__ == "__main__":
    main()
