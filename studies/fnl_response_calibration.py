"""The sixth f_NL run: the fifth run's hybrid ensemble with its response calibrated on new maps.

    python studies/fnl_response_calibration.py [--calibration studies/data/fnl_sixth_run_calibration]
        [--run results/fnl_regression_fifth]

Reads the ensemble's estimates on the calibration maps (``truth.npy``: true f_NL and seed
per map; ``predictions.npy``: the ensemble's (mean, sigma); ``per_seed.npy``: each seed's,
as the commands in ``studies/map_set.py``'s docstring write them) and the fifth run's test
evaluations (each hybrid seed's ``predictions.npy``, the anchor's), fits the response
(:class:`cmbscat.experiment.fnl_calibration.ResponseCalibration`) by the rule of
docs/fnl_regression.md (scale 60, r increasing on [-90, 90]) and prints, uncorrected and
corrected: sigma(f_NL) at 0, its ratio to the anchor's, the 68 / 95 % coverage, and the
odd part of the paired bias against the anchor at each |f_NL| (the fifth run's reading).
Also the same with ``cmbscat evaluate --calibrate``'s defaults (the calibration maps' own
range as the domain) and with each seed calibrated alone (on that domain).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmbscat.experiment.fnl_calibration import ResponseCalibration
from cmbscat.experiment.fnl_report import (FnlResult, ensemble_result, largest_bias_in_sigma,
                                           load_fnl_result, pooled_paired_bias, read_through)


def row(label: str, result: FnlResult, anchor: FnlResult, anchor_sigma: float) -> str:
    m = result.metrics[0]
    pooled = pooled_paired_bias(result, anchor)
    worst = largest_bias_in_sigma(pooled)
    cells = " | ".join(f"{p['bias']:+.2f} ± {p['bias_error']:.2f} ({p['bias'] / p['sigma_fnl']:+.3f})"
                       for p in pooled)
    sigma0 = m["at_zero"]["sigma_fnl"]
    return (f"| {label} | {sigma0:.2f} | {sigma0 / anchor_sigma:.2f} | {100 * m['coverage68']:.1f} / "
            f"{100 * m['coverage95']:.1f} | {cells} | {worst:.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=Path, default=Path("studies/data/fnl_sixth_run_calibration"))
    parser.add_argument("--run", type=Path, default=Path("results/fnl_regression_fifth"),
                        help="the fifth run's folder (its scat_test.h5 and runs/*/seed*/ evaluations)")
    args = parser.parse_args(argv)
    true = np.load(args.calibration / "truth.npy")[:, 0]
    ensemble_calib = np.load(args.calibration / "predictions.npy")
    per_seed_calib = np.load(args.calibration / "per_seed.npy")
    test = args.run / "scat_test.h5"
    seeds = list(range(per_seed_calib.shape[0]))
    hybrid = load_fnl_result("hybrid", seeds, [args.run / f"runs/hybrid/seed{s}" for s in seeds], test)
    ensemble = ensemble_result(hybrid)
    anchor = load_fnl_result("cubic_fisher", [0], [args.run / "runs/cubic_fisher/seed0"], test)
    anchor_sigma = anchor.metrics[0]["at_zero"]["sigma_fnl"]

    rule = ResponseCalibration.fit(true, ensemble_calib[:, 0], degree=5, scale=60.0, domain=(-90.0, 90.0))
    default = ResponseCalibration.fit(true, ensemble_calib[:, 0])
    print(f"calibration maps: {true.size}, f_NL in [{true.min():.2f}, {true.max():.2f}]")
    print("response r(f) - f = c0 + c1 x + c3 x^3 + c5 x^5, x = f / 60: "
          + ", ".join(f"{c:+.3f} ± {e:.3f}" for c, e in zip(rule.coefficients, rule.errors)))
    print("r(f) - f at f = 20, 40, 60: " + ", ".join(f"{b:+.2f}" for b in rule.bias(np.array([20.0, 40, 60]))))
    values = [p["fnl"] for p in pooled_paired_bias(ensemble, anchor)]
    print()
    print("| estimator | sigma at f_NL = 0 | ratio to the anchor's | coverage 68 / 95 % | "
          + " | ".join(f"odd-part bias vs anchor at |f_NL| {v:g} (/ sigma)" for v in values)
          + " | largest abs / sigma |")
    print("|---" * (5 + len(values)) + "|")
    print(row(f"hybrid, ensemble of {len(seeds)}, uncorrected (fifth run)", ensemble, anchor, anchor_sigma))
    print(row("**calibrated (sixth run's rule)**", read_through(ensemble, rule), anchor, anchor_sigma))
    print(row("calibrated, `evaluate --calibrate` defaults", read_through(ensemble, default), anchor, anchor_sigma))
    for s in seeds:
        try:  # the calibration maps' range as the domain: some seeds' fits turn beyond it
            alone = ResponseCalibration.fit(true, per_seed_calib[s, :, 0])
        except ValueError as err:
            print(f"| seed {s} alone | {err} |")
            continue
        single = FnlResult("hybrid", [s], [hybrid.metrics[s]], hybrid.predictions[s:s + 1], hybrid.true)
        print(row(f"seed {s} alone, calibrated on its own estimates", read_through(single, alone), anchor,
                  anchor_sigma))


if __name__ == "__main__":
    main()
