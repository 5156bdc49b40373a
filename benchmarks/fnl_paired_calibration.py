"""Post hoc (test maps already seen): the hybrid ensemble's response fitted against the anchor.

    python benchmarks/fnl_paired_calibration.py --run results/fnl_regression \\
        --anchor-calib results/fnl_paired/anchor_calib --test results/fnl_regression results/fnl_eighth

The pipeline's calibration (:func:`cmbscat.experiment.fnl_report.calibrated_result`) fits
E[mu | f] - f on the calibration maps against the truth f, so each bin carries the maps'
own cosmic variance. Here the same response is fitted to mu - f_anchor, the ensemble's
estimate minus the anchor's (cubic S / F, unbiased to < 0.065 sigma) on the same maps:
E[mu - f_anchor | f] = E[mu | f] - f, with the realisation's part cancelled as in the paired
bias. ``--anchor-calib``: the anchor's evaluation on the calibration maps' statistics
(``cmbscat stats sims_calib.h5``, then ``cmbscat evaluate runs/cubic_fisher/seed0 ... --out``).
Prints both fits and, for each ``--test`` folder (as ``benchmarks/fnl_test_reading.py``
reads it), the ensemble read through each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fnl_test_reading import hybrid_seeds, load_calibration, load_test_set, row  # benchmarks/: this script's folder

from cmbscat.experiment.fnl_calibration import ResponseCalibration
from cmbscat.experiment.fnl_report import ensemble_result, read_through


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("results/fnl_regression"))
    parser.add_argument("--anchor-calib", type=Path, default=Path("results/fnl_paired/anchor_calib"))
    parser.add_argument("--test", type=Path, nargs="+", default=[Path("results/fnl_regression")])
    args = parser.parse_args(argv)
    calib = ensemble_result(load_calibration(args.run, hybrid_seeds(args.run)))
    anchor_estimates = np.load(args.anchor_calib / "predictions.npy")[:, 0]
    true, mean = calib.true, calib.predictions[0][:, 0]
    fits = {"against the truth (the pipeline's)": ResponseCalibration.fit(true, mean),
            "against the anchor (paired)": ResponseCalibration.fit(true, true + mean - anchor_estimates)}
    grid = np.array([20.0, 40.0, 60.0])
    for name, fit in fits.items():
        print(f"{name}: r(f) - f at 20, 40, 60 = " + ", ".join(f"{b:+.2f}" for b in fit.bias(grid))
              + "; coefficients " + ", ".join(f"{c:+.3f} ± {e:.3f}" for c, e in zip(fit.coefficients, fit.errors)))
    for test_dir in args.test:
        _, hybrid, anchor = load_test_set(test_dir)
        hybrid = ensemble_result(hybrid)
        sigma = anchor.metrics[0]["at_zero"]["sigma_fnl"]
        print(f"\n{test_dir} ({hybrid.true.size} maps)\n")
        print("| estimator | sigma at 0 | ratio | coverage 68 (count) / 95 % | paired bias / sigma per bin "
              "| largest | odd part / sigma | largest |")
        print("|---" * 8 + "|")
        print(row("ensemble, uncorrected", hybrid, anchor, sigma))
        for name, fit in fits.items():
            print(row(f"calibrated {name}", read_through(hybrid, fit), anchor, sigma))


if __name__ == "__main__":
    main()
