"""Where the one-point information lives: skewness + kurtosis accuracy against band limit.

    python studies/onepoint_by_band.py results/paper/sims_train.h5 results/paper/sims_test.h5

Reads the training and test sims files of an experiment (``make reproduce`` writes
them), cuts every map's a_lm at each band limit ``lmax_cut`` (a sharp cut, as the
low-resolution baseline's input), synthesises it at the smallest nside >= lmax_cut / 2
(nside 64 for lmax 127, as that baseline), and fits the same classifier as
``cmbscat train --model onepoint`` (standardised skewness and excess kurtosis,
logistic regression) on the training file; prints its test accuracy per band limit.

If one-point statistics of the map cut at lmax 127 already sit at chance, a network
that sees only that map has little to work with: this bounds what the low-resolution
baseline can reach from its input, independently of how it is trained.
"""

from __future__ import annotations

import argparse
import time

import healpy as hp
import numpy as np

from cmbscat.experiment.datasets import iter_alm, read_labels
from cmbscat.stats.onepoint import one_point_statistics
from cmbscat.experiment.metrics import classification_metrics
from cmbscat.scattering.transform import nside_for_band
from cmbscat.experiment.train import classical_classifier


def features(path: str, lmax_cut: int, nside: int) -> np.ndarray:
    """(N, 2) skewness and excess kurtosis of each map of ``path`` cut at ``lmax_cut``."""
    return np.array([one_point_statistics(hp.alm2map(alm, nside, lmax=lmax_cut))
                     for alm in iter_alm(path, lmax_cut)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--lmax", type=int, nargs="+", default=[127, 255, 511, 1023],
                        help="band limits to cut at (each <= the files' lmax)")
    args = parser.parse_args()
    y_train, y_test = read_labels(args.train), read_labels(args.test)
    print(f"# One-point statistics against band limit ({y_train.size} training, {y_test.size} test maps)\n")
    print("| lmax cut | nside | test accuracy [68 % Wilson interval] | AUC | seconds |")
    print("|---|---|---|---|---|")
    for lmax_cut in args.lmax:
        nside = max(8, nside_for_band(lmax_cut))
        t0 = time.perf_counter()
        x_train, x_test = features(args.train, lmax_cut, nside), features(args.test, lmax_cut, nside)
        classifier = classical_classifier()
        classifier.fit(x_train, y_train)
        m = classification_metrics(y_test, classifier.decision_function(x_test))
        low, high = m["accuracy_interval68"]
        print(f"| {lmax_cut} | {nside} | {100 * m['accuracy']:.1f} % [{100 * low:.1f}, {100 * high:.1f}] "
              f"| {m['auc']:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
