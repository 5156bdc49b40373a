"""Read a scan folder as it stands: each amplitude's current results, A95 and its ratio to S's.

    python studies/scan_reading.py results/fnl_scan_800 --amplitudes 5 10 20

`cmbscat pipeline --scan` settles every amplitude before it writes its table, so a scan
whose last amplitude is still running has no table yet. This reads the finished
amplitudes' sub-configs (``<scan>/fnl_<A>/config.json``, as the scan writes them) with
:func:`cmbscat.experiment.pipeline.amplitude_results` (only models whose whole chain is
current, as the scan reads them), fits accuracy(A) = Phi(1.645 (A / A95)^p) on the amplitudes given and
prints each method's counts and the scan's own A95 table
(:func:`cmbscat.experiment.pipeline.scan_sensitivity`, ``sensitivity_table``: A95 with its
68 % interval, the fitted power p, the ratio to the cubic statistic's). It runs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmbscat.experiment.pipeline import (METHOD_NAMES, amplitude_results, scan_sensitivity,  # noqa: E402
                                         sensitivity_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", type=Path, help="the scan's out folder (holds fnl_<A>/)")
    parser.add_argument("--amplitudes", type=float, nargs="+", required=True,
                        help="the f_NL values to read (finished ones)")
    args = parser.parse_args()
    results = {}
    for amplitude in args.amplitudes:
        path = args.scan / f"fnl_{amplitude:g}" / "config.json"
        if not path.exists():
            sys.exit(f"error: {path} does not exist (has the scan reached f_NL {amplitude:g}?)")
        results[amplitude] = amplitude_results(path)
    models = list(dict.fromkeys(m for per in results.values() for m in per))
    print("| f_NL | " + " | ".join(METHOD_NAMES.get(m, m) for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for amplitude, per in results.items():
        cells = [f"{round(per[m]['accuracy'] * per[m]['n'])} / {per[m]['n']}" if m in per else "—"
                 for m in models]
        print(f"| {amplitude:g} | " + " | ".join(cells) + " |")
    print("\n" + sensitivity_table(scan_sensitivity(results, models), "f_NL"))


if __name__ == "__main__":
    main()
