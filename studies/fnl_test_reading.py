"""An f_NL run's hybrid ensemble, uncorrected and calibrated, read against the anchor on a test set.

    python studies/fnl_test_reading.py --run results/fnl_regression [--test results/fnl_eighth]

``--run``: the f_NL pipeline's folder (its hybrid seeds' estimates of the calibration maps,
``runs/hybrid/seed*/calib``, and ``scat_calib.h5``). ``--test``: a folder holding a test set
and the evaluations on it (``scat_test.h5``, ``runs/hybrid/seed*`` and
``runs/cubic_fisher/seed0``, as ``studies/map_set.py --name test`` and the evaluations in
its docstring write them); default the run's own. Prints, as the pipeline's table computes them (the seeds' ensemble; the
response fitted on the calibration maps, :func:`cmbscat.experiment.fnl_report.calibrated_result`):
sigma(f_NL) at 0 and its ratio to the anchor's, the 68 / 95 % coverage with its count, and
the paired bias against the anchor per true f_NL and its odd part (/ sigma).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmbscat.experiment.fnl_report import (FnlResult, calibrated_result, ensemble_result,
                                           largest_bias_in_sigma, load_fnl_result, paired_bias,
                                           pooled_paired_bias)


def row(label: str, result, anchor, anchor_sigma: float) -> str:
    m, (mean, sigma) = result.metrics[0], result.predictions[0].T
    inside = int(np.sum(np.abs(mean - result.true) <= sigma))
    per_bin, odd = paired_bias(result, anchor), pooled_paired_bias(result, anchor)
    sigma0 = m["at_zero"]["sigma_fnl"]
    return (f"| {label} | {sigma0:.2f} | {sigma0 / anchor_sigma:.2f} | {100 * m['coverage68']:.2f} "
            f"({inside}/{mean.size}) / {100 * m['coverage95']:.2f} | "
            + " ".join(f"{r['bias'] / r['sigma_fnl']:+.3f}" for r in per_bin)
            + f" | {largest_bias_in_sigma(per_bin):.3f} | "
            + " ".join(f"{r['bias'] / r['sigma_fnl']:+.3f}" for r in odd) + f" | {largest_bias_in_sigma(odd):.3f} |")


def require_paths(*paths: Path) -> None:
    """Stop with one line (no traceback) when a folder or file the reading needs is missing."""
    missing = [str(p) for p in dict.fromkeys(map(Path, paths)) if not p.exists()]
    if missing:
        raise SystemExit(f"no such file or folder: {', '.join(missing)} (make it first: see the docstring)")


def hybrid_seeds(folder: Path) -> list[int]:
    """The seeds of the hybrid runs or evaluations in ``folder/runs/hybrid/seed*/`` (folders only:
    a training's ``seedK.lock`` sits beside them)."""
    return sorted(int(p.name[4:]) for p in (folder / "runs/hybrid").glob("seed[0-9]*") if p.is_dir())


def load_test_set(test_dir: Path) -> tuple[list[int], FnlResult, FnlResult]:
    """(seeds, each hybrid seed's estimates, the anchor's) on the test set in ``test_dir``
    (``scat_test.h5``, ``stats_test.h5``, ``runs/hybrid/seed*/``, ``runs/cubic_fisher/seed0/``)."""
    seeds = hybrid_seeds(test_dir)
    hybrid = load_fnl_result("hybrid", seeds, [test_dir / f"runs/hybrid/seed{s}" for s in seeds],
                             test_dir / "scat_test.h5")
    anchor = load_fnl_result("cubic_fisher", [0], [test_dir / "runs/cubic_fisher/seed0"],
                             test_dir / "stats_test.h5")
    return seeds, hybrid, anchor


def load_calibration(run: Path, seeds: list[int]) -> FnlResult:
    """Each hybrid seed's estimates of the f_NL run's calibration maps (``runs/hybrid/seed*/calib``)."""
    return load_fnl_result("hybrid", seeds, [run / f"runs/hybrid/seed{s}/calib" for s in seeds],
                           run / "scat_calib.h5")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("results/fnl_regression"))
    parser.add_argument("--test", type=Path, default=None)
    args = parser.parse_args(argv)
    test_dir = args.test or args.run
    require_paths(args.run / "runs/hybrid", test_dir / "runs/hybrid", test_dir / "scat_test.h5")
    seeds, hybrid, anchor = load_test_set(test_dir)
    calib = load_calibration(args.run, seeds)
    anchor_sigma = anchor.metrics[0]["at_zero"]["sigma_fnl"]
    values = np.unique(hybrid.true)
    print(f"test maps: {hybrid.true.size} ({test_dir / 'scat_test.h5'}), f_NL values {values.tolist()}; "
          f"calibration maps: {calib.true.size}")
    print(f"anchor: sigma at 0 {anchor_sigma:.3f}, 68 / 95 % coverage "
          f"{100 * anchor.metrics[0]['coverage68']:.2f} / {100 * anchor.metrics[0]['coverage95']:.2f}\n")
    print("| estimator | sigma at 0 | ratio | coverage 68 (count) / 95 % | paired bias vs anchor / sigma at "
          + " ".join(f"{v:g}" for v in values) + " | largest | odd part at abs(f) "
          + " ".join(f"{v:g}" for v in values[values > 0]) + " | largest |")
    print("|---" * 8 + "|")
    print(row(f"hybrid, ensemble of {len(seeds)}", ensemble_result(hybrid), anchor, anchor_sigma))
    print(row(f"hybrid, ensemble of {len(seeds)}, response calibrated", calibrated_result(hybrid, calib),
              anchor, anchor_sigma))


if __name__ == "__main__":
    main()
