"""Read a scan folder as it stands: each amplitude's current results, A95 and its ratio to S's.

    python benchmarks/scan_reading.py results/fnl_scan_800 --amplitudes 5 10 20

`cmbscat pipeline --scan` settles every amplitude before it writes its table, so a scan
whose last amplitude is still running has no table yet. This reads the finished
amplitudes' sub-configs (``<scan>/fnl_<A>/config.json``, as the scan writes them) with
:func:`cmbscat.experiment.pipeline.current_results` (only models whose whole chain is
current), fits accuracy(A) = Phi(1.645 (A / A95)^p) on the amplitudes given
(:func:`cmbscat.experiment.sensitivity.amplitude_at_accuracy`, the scan's own fit) and
prints each method's counts, A95 with its 68 % interval, the fitted power p and the
ratio to the cubic statistic's A95 (:func:`cmbscat.experiment.sensitivity.ratio`).
It runs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmbscat.experiment.pipeline import METHOD_NAMES, current_results, load_config  # noqa: E402
from cmbscat.experiment.sensitivity import amplitude_at_accuracy, describe, ratio  # noqa: E402


def counts(scan: Path, amplitudes: list[float]) -> dict[float, dict[str, tuple[int, int]]]:
    """(correct, total) test maps per amplitude and model; a network's count is its
    seed-mean accuracy times the test maps, rounded (as the scan's table does)."""
    out = {}
    for amplitude in amplitudes:
        path = scan / f"fnl_{amplitude:g}" / "config.json"
        if not path.exists():
            sys.exit(f"error: {path} does not exist (has the scan reached f_NL {amplitude:g}?)")
        results = current_results({**load_config(path), "config_name": str(path)})
        out[amplitude] = {model: (int(round(r.accuracies.mean() * r.labels.size)), int(r.labels.size))
                          for model, r in results.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", type=Path, help="the scan's out folder (holds fnl_<A>/)")
    parser.add_argument("--amplitudes", type=float, nargs="+", required=True,
                        help="the f_NL values to read (finished ones)")
    parser.add_argument("--reference", default="cubic", help="the model ratios are taken to")
    args = parser.parse_args()
    table = counts(args.scan, args.amplitudes)
    models = list(dict.fromkeys(m for per in table.values() for m in per))
    print("| f_NL | " + " | ".join(METHOD_NAMES.get(m, m) for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for amplitude, per in table.items():
        cells = [f"{per[m][0]} / {per[m][1]}" if m in per else "—" for m in models]
        print(f"| {amplitude:g} | " + " | ".join(cells) + " |")
    fits = {}
    for model in models:
        have = [a for a in args.amplitudes if model in table[a]]
        if len(have) >= 2:
            fits[model] = amplitude_at_accuracy(have, [table[a][model][0] for a in have],
                                                [table[a][model][1] for a in have])
    reference = fits.get(args.reference)
    print("\n| method | f_NL at 95 % | power p | ratio to " + args.reference + " |\n|---|---|---|---|")
    for model, fit in fits.items():
        power = f"{fit['p']:.2f}" if fit.get("p") is not None else "—"
        r = ratio(fit, reference) if reference else None
        cell = "—" if r is None else f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"
        print(f"| {METHOD_NAMES.get(model, model)} | {describe(fit)} | {power} | {cell} |")


if __name__ == "__main__":
    main()
