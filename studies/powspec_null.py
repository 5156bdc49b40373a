"""Is the power-spectrum classifier at chance? A null test of the matched spectra.

    python studies/powspec_null.py results/paper/sims_train.h5 results/paper/sims_test.h5

1. Class means of the binned log power spectrum (the ``powspec`` features) over all
   maps of both files: per-bin difference non-Gaussian minus Gaussian in units of its
   standard error, and chi^2 over the bins with its p-value. Matched spectra give
   chi^2 / dof ~ 1.
2. The ``powspec`` classifier (standardised features, logistic regression) trained
   on the training file with ``--splits`` different validation splits (the
   pipeline's seed 0 first), each scored on the test file. These share most of
   their training maps and all test maps, so they agree with one another; they do
   not measure the draw-to-draw spread of one (training set, test set) pair.
3. The same classifier's 10-fold cross-validated accuracy over all maps of both
   files (every map scored once, by a model that never saw it): the chance level
   estimated from 3x more scored maps than the test file alone.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from cmbscat.experiment.datasets import classical_features, read_labels
from cmbscat.experiment.metrics import classification_metrics
from cmbscat.experiment.train import TrainConfig, classical_classifier, split_indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--splits", type=int, default=10, help="validation-split seeds to try")
    args = parser.parse_args()
    x_train = classical_features(args.train, "powspec", progress=False)
    x_test = classical_features(args.test, "powspec", progress=False)
    y_train, y_test = read_labels(args.train), read_labels(args.test)

    x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    se = np.sqrt(x[y == 1].var(0, ddof=1) / (y == 1).sum() + x[y == 0].var(0, ddof=1) / (y == 0).sum())
    z = diff / se
    chi2 = float(np.sum(z**2))
    print(f"# Power-spectrum null test ({y.size} maps, {x.shape[1]} bins)\n")
    print("class-mean difference of log10 C_l per bin, in standard errors (NG - G):")
    print("  " + " ".join(f"{v:+.1f}" for v in z))
    print(f"chi^2 = {chi2:.1f} for {z.size} bins, p = {stats.chi2.sf(chi2, z.size):.2f} "
          "(bins are nearly independent: logarithmic, wide at high l)\n")

    accuracies = []
    for seed in range(args.splits):
        train_idx, _ = split_indices(y_train, TrainConfig.val_fraction, seed)  # the pipeline's split
        classifier = classical_classifier()
        classifier.fit(x_train[train_idx], y_train[train_idx])
        m = classification_metrics(y_test, classifier.decision_function(x_test))
        accuracies.append(m["accuracy"])
    acc = 100 * np.array(accuracies)
    print(f"powspec test accuracy over {args.splits} validation-split seeds (seed 0 is the pipeline's): "
          + ", ".join(f"{a:.1f}" for a in acc))
    print(f"mean {acc.mean():.1f} %, standard deviation {acc.std(ddof=1):.1f} points; "
          f"half-width of one score's 68 % interval at 50 %: {100 * np.sqrt(0.25 / y_test.size):.1f} points")

    classifier = classical_classifier()
    folds = StratifiedKFold(10, shuffle=True, random_state=0)
    logits = cross_val_predict(classifier, x, y, cv=folds, method="decision_function")
    m = classification_metrics(y, logits)
    low, high = m["accuracy_interval68"]
    print(f"10-fold cross-validated accuracy over all {y.size} maps: {100 * m['accuracy']:.1f} % "
          f"(68 % Wilson interval {100 * low:.1f}-{100 * high:.1f}), AUC {m['auc']:.3f}")


if __name__ == "__main__":
    main()
