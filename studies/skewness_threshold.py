"""Roughly which f_NL makes the non-Gaussian class detectable by the skewness of ONE map.

    python studies/skewness_threshold.py [--nside 512] [--lmax 1023] [--n 24]

Measures the scatter of the one-map skewness over Gaussian maps (sigma_G) and the
mean skewness of non-Gaussian maps at a reference f_NL; the skewness is linear in
f_NL to first order, so the f_NL at which |<skew>| = k sigma_G is printed for k = 1, 2, 3.
The same Gaussian seeds are reused for the non-Gaussian maps, so the slope is
measured with little noise.
"""

import argparse

import healpy as hp
import numpy as np

from cmbscat.sky.simulate import SkySimulator, map_seeds


def skewness(m):
    d = m - m.mean()
    return float(np.mean(d**3) / np.mean(d**2) ** 1.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--lmax", type=int, default=1023)
    parser.add_argument("--n", type=int, default=24, help="maps per class")
    parser.add_argument("--fnl", type=float, default=100.0, help="reference f_NL for the slope")
    args = parser.parse_args()

    sim = SkySimulator(args.nside, args.lmax, args.fnl)
    skew_g, slope = [], []
    for seed in map_seeds(1, args.n):
        g_alm, _ = sim.alm(seed, 0)
        t_alm, _ = sim.alm(seed, 1)
        sg = skewness(hp.alm2map(g_alm, args.nside, lmax=args.lmax))
        st = skewness(hp.alm2map(t_alm, args.nside, lmax=args.lmax))
        skew_g.append(sg)
        slope.append((st - sg) / args.fnl)
    sigma_g, s = np.std(skew_g, ddof=1), np.mean(slope)
    print(f"nside {args.nside}, lmax {args.lmax}, {args.n} maps per class")
    print(f"Gaussian one-map skewness: mean {np.mean(skew_g):+.4f}, sd {sigma_g:.4f}")
    print(f"non-Gaussian skewness per unit f_NL: {s:+.3e} (sd over maps {np.std(slope):.1e})")
    for k in (1, 2, 3):
        print(f"|<skew>| = {k} sigma_G at f_NL ~ {k * sigma_g / abs(s):.0f}")


if __name__ == "__main__":
    main()
