"""Roughly which g_NL makes the non-Gaussian class detectable by the kurtosis of ONE map.

    python studies/kurtosis_threshold.py [--nside 512] [--lmax 1023] [--n 24] [--gnl 1e5]

Measures the scatter of the one-map excess kurtosis over Gaussian maps (sigma_G) and
the mean excess kurtosis of ``--ng-model gnl`` maps at a reference g_NL; the kurtosis is
linear in g_NL to first order, so the g_NL at which <kurt> = k sigma_G is printed for
k = 1, 2, 3. The same Gaussian seeds are reused for the non-Gaussian maps, so the
slope is measured with little noise. Both are checked against first-order theory:

* slope: LocalGNL.excess_kurtosis / g_NL = 4 b <(P h)^2> / (sigma^4 g_NL), i.e.
  24 b sigma^2 / g_NL times the fraction of h = g^3 - 3 sigma^2 g below lmax;
* sigma_G: the one-map kurtosis is, to first order, the sky average of the Hermite
  polynomial He_4(g / sigma), whose variance by Wick's theorem is
  12 * integral_{-1}^{1} rho(x)^4 dx, rho = xi / sigma^2 the correlation coefficient
  (sky average as a continuous integral: pixelisation and mean subtraction ignored).
"""

import argparse

import healpy as hp
import numpy as np
from numpy.polynomial import legendre
from scipy.special import roots_legendre

from cmbscat.sky.simulate import SkySimulator, map_seeds


def excess_kurtosis(m):
    d = m - m.mean()
    return float(np.mean(d**4) / np.mean(d**2) ** 2 - 3)


def skewness(m):
    d = m - m.mean()
    return float(np.mean(d**3) / np.mean(d**2) ** 1.5)


def gaussian_kurtosis_sd(cl):
    """First-order sd of one full-sky map's excess kurtosis for a Gaussian field of spectrum cl."""
    lmax = len(cl) - 1
    x, w = roots_legendre(2 * lmax + 1)          # exact for rho^4 (degree 4 lmax)
    ell = np.arange(lmax + 1)
    coeffs = (2 * ell + 1) / (4 * np.pi) * np.asarray(cl, dtype=np.float64)
    rho = legendre.legval(x, coeffs) / coeffs.sum()  # xi(x) / xi(1), xi(1) = sigma^2
    return float(np.sqrt(12 * np.sum(w * rho**4)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--lmax", type=int, default=1023)
    parser.add_argument("--n", type=int, default=24, help="maps per class")
    parser.add_argument("--gnl", type=float, default=1e5, help="reference g_NL for the slope")
    args = parser.parse_args()

    sim = SkySimulator(args.nside, args.lmax, ng_model="gnl", gnl=args.gnl)
    kurt_g, slope, skew_t = [], [], []
    for seed in map_seeds(1, args.n):
        t_alm, g_map = sim.alm(seed, 1)            # g_map: the Gaussian map of the same seed
        t_map = hp.alm2map(t_alm, args.nside, lmax=args.lmax)
        kg, kt = excess_kurtosis(g_map), excess_kurtosis(t_map)
        kurt_g.append(kg)
        slope.append((kt - kg) / args.gnl)
        skew_t.append(skewness(t_map))
    sigma_g, s = np.std(kurt_g, ddof=1), np.mean(slope)
    ng = sim.non_gaussian
    print(f"nside {args.nside}, lmax {args.lmax}, {args.n} maps per class, reference g_NL {args.gnl:.0e}")
    print(f"Gaussian one-map excess kurtosis: mean {np.mean(kurt_g):+.4f}, sd {sigma_g:.4f} "
          f"(first-order theory {gaussian_kurtosis_sd(sim.cl):.4f})")
    print(f"non-Gaussian excess kurtosis per unit g_NL: {s:+.3e} (sd over maps {np.std(slope):.1e}; "
          f"theory {ng.excess_kurtosis / args.gnl:+.3e}, "
          f"24 b sigma^2 / g_NL {24 * ng.b * ng.sigma2 / args.gnl:+.3e})")
    print(f"non-Gaussian skewness: mean {np.mean(skew_t):+.4f} "
          f"+- {np.std(skew_t) / np.sqrt(args.n):.4f} (expected 0)")
    for k in (1, 2, 3):
        print(f"<kurt> = {k} sigma_G at g_NL ~ {k * sigma_g / abs(s):.2e}")


if __name__ == "__main__":
    main()
