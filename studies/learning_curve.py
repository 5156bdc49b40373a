"""Learning curves: test accuracy against the number of training maps, per method.

    python studies/learning_curve.py --out results/learning_curve
    python studies/learning_curve.py --out results/learning_curve --fnl 30 --sizes 160 1280

For each f_NL (default 30 and 10) this builds, with the pipeline's own stages
(resumable, reused when current, refused when they record other settings), a
training sims file and a test sims file at nside 512, lmax 1023 and their
scattering files with odd channels; then it trains, on the first n maps of the
training file (n in --sizes; 80 % of them fit, 20 % pick the best epoch, as every
run of ``cmbscat train``):

* ``hybrid, S[p] only``: the hybrid on the even channels (the model before odd
  channels existed), no augmentation;
* ``hybrid, + odd``: all channels, no augmentation;
* ``hybrid, + odd + rotations``: all channels, exact random rotations (the new default);
* ``cubic S``: the locally optimal cubic statistic with the classical models'
  logistic regression (the limit), fitted on the same 80 % of the same maps.

and evaluates each on the whole test file (accuracy, 68 % Wilson interval). The
trainings run side by side (``--workers`` one-thread processes), the most informative
first (the new default and the S[p]-only model on the most maps, then the default's
curve), so an interrupted run has answered the main question; re-running resumes.
Sets: 1280 training and 400 test maps per f_NL (f_NL 30: the paper's seeds 1 and 2;
f_NL 10: seeds 31 and 32). Output: ``OUT/learning_curve.md`` (also printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cmbscat.experiment.evaluate import evaluate, evaluation_record
from cmbscat.experiment.metrics import wilson_interval
from cmbscat.experiment.pipeline import Experiment, Runner, Stage
from cmbscat.experiment.pipeline import training_stage as pipeline_training_stage
from cmbscat.experiment.train import TrainConfig, classical_classifier, split_indices

VARIANTS = {  # name: (channels, augment)
    "hybrid, + odd + rotations": ("all", True),
    "hybrid, S[p] only": ("even", False),
    "hybrid, + odd": ("all", False),
}
SIMS = {30: {"n_train": 1280, "seed_train": 1, "n_test": 400, "seed_test": 2},
        10: {"n_train": 1280, "seed_train": 31, "n_test": 400, "seed_test": 32}}


def experiment(out: Path, fnl: float, workers: int, odd_power: int) -> Experiment:
    sims = SIMS.get(int(fnl), {"n_train": 1280, "seed_train": 41 + int(fnl), "n_test": 800,
                               "seed_test": 42 + int(fnl)})
    cfg = {"out": str(out / f"fnl_{fnl:g}"), "workers": workers,
           "simulate": {"nside": 512, "lmax": 1023, "fnl": fnl, "store": "alm", **sims},
           "scatter": {"depth": 2, "J0": 5, "odd": True, "odd_power": odd_power},
           "models": {"hybrid": {"epochs": 30, "batch_size": 16}}}
    return Experiment(cfg, device="cpu", progress=True)


def training_stage(exp: Experiment, variant: str, n_maps: int, epochs: int) -> tuple[Stage, Path]:
    channels, augment = VARIANTS[variant]
    run_dir = exp.out / "runs" / variant.replace(", ", "_").replace(" + ", "+").replace(" ", "_") / f"n{n_maps}"
    config = TrainConfig(data=str(exp.scat_path("train")), model="hybrid", epochs=epochs,
                         batch_size=16, augment=augment, channels=channels,
                         max_maps=n_maps).resolved()
    name = f"train {variant} n={n_maps} f_NL {exp.sim['fnl']:g}"
    return pipeline_training_stage(name, run_dir, config, "cpu", progress=False), run_dir


def accuracy_of(run_dir: Path, test: Path) -> dict:
    """metrics.json of ``run_dir`` on ``test``, recomputed only when stale."""
    path = run_dir / "metrics.json"
    if path.exists():
        metrics = json.loads(path.read_text())
        if {k: metrics.get(k) for k in ("model_sha256", "test_sha256")} == evaluation_record(run_dir, test):
            return metrics
    return evaluate(run_dir, test, device="cpu", progress=False)


def cubic_accuracy(exp: Experiment, n_maps: int) -> dict:
    """The cubic statistic's logistic regression, fitted on the same 80 % of the first n maps
    as the networks' training split, scored on the test file. S is computed once per map
    and cached (``OUT/cubic_<split>.npy``)."""
    from cmbscat.experiment.datasets import classical_features, read_labels

    def features(split):
        cache = exp.out / f"cubic_{split}.npy"
        if not cache.exists():
            np.save(cache, classical_features(exp.sims_path(split), "cubic"))
        return np.load(cache)

    x, labels = features("train")[:n_maps], read_labels(exp.sims_path("train"))[:n_maps]
    train_idx, _ = split_indices(labels, 0.2, 0)
    classifier = classical_classifier().fit(x[train_idx], labels[train_idx])
    test_labels = read_labels(exp.sims_path("test"))
    n_correct = int((classifier.predict(features("test")) == test_labels).sum())
    return {"n_correct": n_correct, "n": int(test_labels.size), "accuracy": n_correct / test_labels.size}


def cell(metrics: dict) -> str:
    lo, hi = wilson_interval(metrics["n_correct"], metrics["n"])
    return f"{100 * metrics['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/learning_curve")
    ap.add_argument("--fnl", type=float, nargs="+", default=[30.0, 10.0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1280, 640, 320, 160])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--odd-power", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    exps = {fnl: experiment(out, fnl, args.workers, args.odd_power) for fnl in args.fnl}
    stages, runs = [], {}
    for fnl, exp in exps.items():
        exp.out.mkdir(parents=True, exist_ok=True)
        runner = Runner(exp.out)
        for split in ("train", "test"):
            for stage in (exp.simulate_stage(split), exp.scatter_stage(split)):
                runner.settle(stage)
    # every training, most informative first: the new default and the even-only model at
    # the largest size, then the new default's curve, then the rest
    top, default, even = max(args.sizes), args.variants[0], "hybrid, S[p] only"
    order = sorted(((variant, n) for variant in args.variants for n in args.sizes),
                   key=lambda vn: (vn[1] != top or vn[0] not in (default, even),
                                   vn[0] != default, -vn[1], args.variants.index(vn[0])))
    for variant, n_maps in order:
        for fnl, exp in exps.items():
            stage, run_dir = training_stage(exp, variant, n_maps, args.epochs)
            stages.append(stage)
            runs[fnl, variant, n_maps] = run_dir
    Runner(out).settle_parallel(stages, args.workers)

    lines = [f"### Learning curves: test accuracy (%) [68 % Wilson] against training maps "
             f"(80 % fit, 20 % validation; seed 0, {args.epochs} epochs)\n"]
    for fnl, exp in exps.items():
        test = exp.scat_path("test")
        sizes = sorted(args.sizes)
        lines += [f"f_NL {fnl:g}, test set: {exp.sim['n_test']} maps (seed {exp.sim['seed_test']})\n",
                  "| method | " + " | ".join(f"{n} maps" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for variant in args.variants:
            lines.append(f"| {variant} | " + " | ".join(
                cell(accuracy_of(runs[fnl, variant, n], test)) for n in sizes) + " |")
        lines.append("| cubic S (the limit) | " + " | ".join(
            cell(cubic_accuracy(exp, n)) for n in sizes) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "learning_curve.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
