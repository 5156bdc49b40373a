"""The hybrid ensemble's response fitted against the anchor (paired), read on test sets.

    python studies/fnl_paired_calibration.py --run results/fnl_regression \\
        --anchor-calib results/fnl_paired/anchor_calib --test results/fnl_regression results/fnl_eighth

    # the ninth reading (docs/fnl_regression.md): 1600 more calibration maps, a new test set
    python studies/fnl_paired_calibration.py --run results/fnl_regression --run-calib-first 800 \\
        --anchor-calib results/fnl_paired/anchor_calib --slices studies/data/fnl_ninth_reading_calibration/*.npz \\
        --test results/fnl_ninth

The pipeline's calibration (:func:`cmbscat.experiment.fnl_report.calibrated_result`) fits
E[mu | f] - f on the calibration maps against the truth f, so each bin carries the maps'
own cosmic variance. Here the same response is fitted to mu - f_anchor, the ensemble's
estimate minus the anchor's (cubic S / F, unbiased to < 0.065 sigma) on the same maps:
E[mu - f_anchor | f] = E[mu | f] - f, with the realisation's part cancelled as in the paired
bias. ``--anchor-calib``: the anchor's evaluation on the calibration maps' statistics
(``cmbscat stats sims_calib.h5``, then ``cmbscat evaluate runs/cubic_fisher/seed0 ... --out``).
``--slices``: more calibration maps, each file the hybrid seeds' and the anchor's estimates
of slices of a set (as ``studies/map_set.py``'s docstring makes them; the ninth reading's are
kept in studies/data/fnl_ninth_reading_calibration/), added to the run's. Prints both
fits and, for each ``--test`` folder (as ``studies/fnl_test_reading.py`` reads it), the
anchor and the ensemble, uncorrected and read through each fit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fnl_test_reading import (hybrid_seeds, load_calibration, load_test_set,  # studies/: this script's folder
                              require_paths, row)

from cmbscat.experiment.fnl_calibration import ResponseCalibration
from cmbscat.experiment.fnl_estimators import ensemble_estimate
from cmbscat.experiment.fnl_report import ensemble_result, plot_fnl_methods, pooled_paired_bias, read_through


def calibration_set(run: Path, anchor_calib: Path, slices: list[Path],
                    first: int | None = None) -> tuple[np.ndarray, ...]:
    """(true f_NL, the hybrid ensemble's mean, the anchor's estimate) of every calibration map:
    the run's own (its seeds' estimates in ``runs/hybrid/seed*/calib``, the anchor's in
    ``anchor_calib``; only the first ``first`` of them if given), then each of ``slices``
    (npz files: fnl, seeds, per_seed, anchor, runs; see ``studies/map_set.py``)."""
    seeds = hybrid_seeds(run)
    calib = ensemble_result(load_calibration(run, seeds))
    true, mean = [calib.true[:first]], [calib.predictions[0][:first, 0]]
    anchor = [np.load(anchor_calib / "predictions.npy")[:first, 0]]
    if anchor[0].shape != true[0].shape:
        raise SystemExit(f"{anchor_calib}: the anchor's estimates of {anchor[0].size} maps, the run's of "
                         f"{true[0].size} (--run-calib-first picks the run's first ones)")
    for path in slices:
        part = np.load(path)
        if [int(name[4:]) for name in part["runs"]] != seeds:
            raise SystemExit(f"{path}: estimates of the runs {list(part['runs'])}, not seeds {seeds}")
        true.append(part["fnl"])
        mean.append(ensemble_estimate(part["per_seed"][:, :, 0], part["per_seed"][:, :, 1])[0])
        anchor.append(part["anchor"][:, 0])
    return tuple(map(np.concatenate, (true, mean, anchor)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("results/fnl_regression"))
    parser.add_argument("--anchor-calib", type=Path, default=Path("results/fnl_paired/anchor_calib"))
    parser.add_argument("--run-calib-first", type=int, default=None, metavar="N",
                        help="use the first N of the run's calibration maps (the seventh run's 800 "
                             "are the first 800 of the current config's 2400, seed 38)")
    parser.add_argument("--slices", type=Path, nargs="*", default=[])
    parser.add_argument("--test", type=Path, nargs="+", default=[Path("results/fnl_regression")])
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG: the anchor, the ensemble and its paired calibration on the first --test set")
    args = parser.parse_args(argv)
    require_paths(args.run / "runs/hybrid", args.anchor_calib / "predictions.npy", *args.slices,
                  *(t / "scat_test.h5" for t in args.test))
    true, mean, anchor_estimates = calibration_set(args.run, args.anchor_calib, args.slices, args.run_calib_first)
    print(f"calibration maps: {true.size}, f_NL in [{true.min():.2f}, {true.max():.2f}]; anchor on them: "
          f"bias {np.mean(anchor_estimates - true):+.3f}, s.d. {np.std(anchor_estimates - true):.3f}")
    fits = {"against the truth (the pipeline's)": ResponseCalibration.fit(true, mean),
            "against the anchor (paired)": ResponseCalibration.fit(true, mean, reference=anchor_estimates)}
    grid = np.array([20.0, 40.0, 60.0])
    for name, fit in fits.items():
        print(f"{name}: r(f) - f at 20, 40, 60 = " + ", ".join(f"{b:+.2f}" for b in fit.bias(grid))
              + "; coefficients " + ", ".join(f"{c:+.3f} ± {e:.3f}" for c, e in zip(fit.coefficients, fit.errors)))
    for test_dir in args.test:
        _, hybrid, anchor = load_test_set(test_dir)
        hybrid = ensemble_result(hybrid)
        sigma = anchor.metrics[0]["at_zero"]["sigma_fnl"]
        print(f"\n{test_dir} ({hybrid.true.size} maps; the anchor: sigma at 0 {sigma:.3f}, coverage "
              f"{100 * anchor.metrics[0]['coverage68']:.2f} / {100 * anchor.metrics[0]['coverage95']:.2f} %)\n")
        print("| estimator | sigma at 0 | ratio | coverage 68 (count) / 95 % | paired bias / sigma per bin "
              "| largest | odd part / sigma | largest |")
        print("|---" * 8 + "|")
        readings = {"ensemble, uncorrected": hybrid,
                    **{f"calibrated {name}": read_through(hybrid, fit) for name, fit in fits.items()}}
        for name, result in readings.items():
            print(row(name, result, anchor, sigma))
        print("\nodd part of the paired bias in f_NL (± its standard error, / sigma) at abs(f) "
              + ", ".join(f"{v:g}" for v in np.unique(np.abs(hybrid.true)) if v > 0) + ":")
        for name, result in readings.items():
            print(f"  {name}: " + " | ".join(f"{r['bias']:+.2f} ± {r['bias_error']:.2f} ({r['bias'] / r['sigma_fnl']:+.3f})"
                                             for r in pooled_paired_bias(result, anchor)))
        if args.plot and test_dir == args.test[0]:
            plot_fnl_methods(args.plot, {"anchor": anchor, "ensemble": hybrid,
                                         "paired": readings["calibrated against the anchor (paired)"]})
            print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
