"""How well the cubic statistic S and the skewness separate the classes: d' and cost per map.

    python studies/cubic_dprime.py [--n 50] [--nside 512] [--lmax 1023] [--fnl 50] [--seed 0]
    python studies/cubic_dprime.py --stats results/fnl_scan/fnl_50/stats_*.h5   # no simulation

Draws --n maps per class as a sims file does (map i: seed ``map_seeds(seed, 2n)[i]``,
label i % 2; the classes share no seeds) and prints, for S
(:class:`cmbscat.stats.cubic.CubicStatistic`) and for the skewness of the map
(:func:`cmbscat.stats.onepoint.one_point_statistics`),

    d' = (mean_NG - mean_G) / sd_G,

with a bootstrap standard error (classes resampled independently). Positive f_NL
gives E[S] > 0 and negative skewness, so the skewness's d' is negative.

Predictions for S: the optimal d' = a sqrt(F), a = 3 f_NL / T_CMB, with F the
Fisher information (full sky, no noise; :func:`fisher_information_legendre`, equal
to the l-triple sum) and, from the Gaussian maps alone, a sd_G(S), since the score
identity gives mean_NG - mean_G = a Var_G(S) to first order in a. DESIGN.md quotes,
on 200 maps at L = 1024, f_NL 50: d' ~ 17 for S and ~ 2.8 for the skewness.

Times per map (one thread by default): the simulation, the map synthesis that S and
the skewness share, S's extra synthesis plus pixel sum, and the skewness.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from cmbscat.healpix import synthesis
from cmbscat.sky.simulate import SkySimulator, map_labels, map_seeds
from cmbscat.stats.cubic import CubicStatistic, fisher_information_legendre
from cmbscat.stats.onepoint import one_point_statistics


def dprime(values: np.ndarray, labels: np.ndarray) -> float:
    """(mean over label 1 - mean over label 0) / sd over label 0 (ddof 1)."""
    g, ng = values[labels == 0], values[labels == 1]
    return float((ng.mean() - g.mean()) / g.std(ddof=1))


def bootstrap_error(values: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int = 0) -> float:
    """Standard error of :func:`dprime` by resampling each class with replacement."""
    rng = np.random.default_rng(seed)
    g, ng = values[labels == 0], values[labels == 1]
    draws = []
    for _ in range(n_resamples):
        gb, ngb = rng.choice(g, g.size), rng.choice(ng, ng.size)
        if np.ptp(gb) > 0:   # with very few maps a resample can repeat one map only
            draws.append((ngb.mean() - gb.mean()) / gb.std(ddof=1))
    return float(np.std(draws, ddof=1))


def from_stats_files(paths: list[str], n_resamples: int) -> None:
    """d' of S and of the skewness read from ``cmbscat stats`` files (all maps pooled)."""
    import h5py

    scores, skewness, labels = [], [], []
    for path in paths:
        with h5py.File(path, "r") as f:
            scores.append(f["cubic"][:, 0])
            skewness.append(f["onepoint"][:, 0])
            labels.append(f["labels"][()])
            lmax, nside = int(f.attrs["lmax"]), int(f.attrs["nside"])
    scores, skewness, labels = map(np.concatenate, (scores, skewness, labels))
    print(f"{len(paths)} stats file(s), nside {nside}, lmax {lmax}: "
          f"{int(np.sum(labels == 0))} Gaussian and {int(np.sum(labels == 1))} non-Gaussian maps")
    for name, values in (("S", scores), ("skewness", skewness)):
        print(f"d'({name}) = {dprime(values, labels):+.2f} +- {bootstrap_error(values, labels, n_resamples):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", nargs="+", default=None, metavar="FILE",
                        help="read S and the skewness from these `cmbscat stats` files instead "
                             "of simulating")
    parser.add_argument("--n", type=int, default=50, help="maps per class")
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--lmax", type=int, default=1023)
    parser.add_argument("--fnl", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0, help="run seed (map_seeds)")
    parser.add_argument("--threads", type=int, default=1, help="threads of S's synthesis")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args()
    if args.stats:
        from_stats_files(args.stats, args.bootstrap)
        return

    sim = SkySimulator(args.nside, args.lmax, args.fnl)
    statistic = CubicStatistic(sim.cl, args.nside, args.lmax, nthreads=args.threads)
    a = sim.non_gaussian.a
    fisher = fisher_information_legendre(sim.cl)

    n_maps = 2 * args.n
    seeds, labels = map_seeds(args.seed, n_maps), map_labels(n_maps)
    scores, skewness = np.empty(n_maps), np.empty(n_maps)
    seconds = np.empty((n_maps, 4))   # simulate, map synthesis, S, skewness
    for i in tqdm(range(n_maps), desc="maps", unit="map"):
        t0 = time.perf_counter()
        alm, _ = sim.alm(seeds[i], labels[i])
        t1 = time.perf_counter()
        sky_map = synthesis(alm, args.nside, args.lmax, nthreads=args.threads)
        t2 = time.perf_counter()
        scores[i] = statistic(alm, sky_map)
        t3 = time.perf_counter()
        skewness[i] = one_point_statistics(sky_map)[0]
        t4 = time.perf_counter()
        seconds[i] = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    g_scores = scores[labels == 0]
    sd_g = g_scores.std(ddof=1)
    # relative sd of a sample sd: sqrt((kurtosis - 1) / n) / 2
    centred = g_scores - g_scores.mean()
    kurtosis = np.mean(centred**4) / np.mean(centred**2) ** 2
    sd_g_error = sd_g * np.sqrt(max(kurtosis - 1, 0) / g_scores.size) / 2

    print(f"nside {args.nside}, lmax {args.lmax}, f_NL {args.fnl:g} (a = {a:.4e} /uK), "
          f"{args.n} maps per class, run seed {args.seed}")
    print(f"Fisher information F = {fisher:.5e} uK^2 (full sky, no noise)")
    print(f"Gaussian maps: Var(S) / F = {sd_g**2 / fisher:.3f} +- {2 * sd_g_error * sd_g / fisher:.3f}; "
          f"sd_NG(S) / sd_G(S) = {scores[labels == 1].std(ddof=1) / sd_g:.3f}")
    ng_scores = scores[labels == 1]
    shift_error = np.sqrt(g_scores.var(ddof=1) / g_scores.size + ng_scores.var(ddof=1) / ng_scores.size)
    print(f"mean shift of S / (a F) = {(ng_scores.mean() - g_scores.mean()) / (a * fisher):.3f} "
          f"+- {shift_error / (a * fisher):.3f} (1 to first order in a)")
    print(f"predicted d'(S): a sqrt(F) = {a * np.sqrt(fisher):.2f};  a sd_G(S) = {a * sd_g:.2f} "
          f"+- {a * sd_g_error:.2f}")
    for name, values in (("S", scores), ("skewness", skewness)):
        d = dprime(values, labels)
        err = bootstrap_error(values, labels, args.bootstrap)
        print(f"d'({name}) = {d:+.2f} +- {err:.2f}")
    median = np.median(seconds, axis=0)
    print("seconds per map (median): simulate Gaussian "
          f"{np.median(seconds[labels == 0, 0]):.3f}, non-Gaussian {np.median(seconds[labels == 1, 0]):.3f}; "
          f"map synthesis {median[1]:.3f}; S (extra synthesis + sum) {median[2]:.3f}; "
          f"skewness {median[3]:.3f}")


if __name__ == "__main__":
    main()
