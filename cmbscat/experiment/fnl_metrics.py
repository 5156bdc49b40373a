"""How good an f_NL estimate with an error bar is: bias, scatter and interval coverage.

For test maps with true f_NL ``true`` and predictions ``mean`` +- ``sigma`` (float64
(N,) each, f_NL units):

* bias and sigma(f_NL) in bins of true f_NL: the mean and the standard deviation
  (ddof 1) of ``mean - true`` over a bin's maps; sigma(f_NL) is the scatter of the
  estimates, not the predicted error. A test set drawn on a grid of f_NL values
  (``cmbscat simulate --fnl-dist grid:...``) gets one bin per value, so the scatter is
  at fixed true f_NL exactly; otherwise equal-width bins;
* coverage: the fraction of maps whose true f_NL lies inside mean +- z sigma, with
  z = 1 (68.27 %) and 1.9600 (95 %), with a 68 % Wilson interval.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2 as chi2_distribution

from cmbscat.experiment.metrics import wilson_interval

#: Half-widths, in sigma, of the central 68.27 % and 95 % intervals of a Gaussian.
Z_INTERVAL = {"68": 1.0, "95": 1.959963984540054}
#: At most this many distinct true values are binned one per value.
MAX_GRID_BINS = 25
N_EQUAL_BINS = 8


def coverage(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, level: str) -> float:
    """Fraction of maps with |true - mean| <= z sigma for the central interval ``level``
    ("68" or "95", :data:`Z_INTERVAL`)."""
    inside = np.abs(np.asarray(true) - np.asarray(mean)) <= Z_INTERVAL[level] * np.asarray(sigma)
    return float(np.mean(inside))


def fnl_bins(true: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the bins of true f_NL: one per distinct value when there are at
    most :data:`MAX_GRID_BINS` of them, else :data:`N_EQUAL_BINS` equal-width bins over
    [min, max] (empty ones dropped), in increasing f_NL."""
    true = np.asarray(true, dtype=np.float64)
    values = np.unique(true)
    if values.size <= MAX_GRID_BINS:
        return [np.flatnonzero(true == v) for v in values]
    edges = np.linspace(true.min(), true.max(), N_EQUAL_BINS + 1)
    which = np.clip(np.searchsorted(edges, true, side="right") - 1, 0, N_EQUAL_BINS - 1)
    return [idx for idx in (np.flatnonzero(which == b) for b in range(N_EQUAL_BINS)) if idx.size]


def _summary(true, mean, sigma) -> dict:
    """Bias, scatter (with its standard error) and coverage of one group of maps."""
    residual = mean - true
    n = residual.size
    scatter = float(residual.std(ddof=1)) if n > 1 else float("nan")
    out = {"n": int(n), "fnl_low": float(true.min()), "fnl_high": float(true.max()),
           "fnl_mean": float(true.mean()), "bias": float(residual.mean()),
           "bias_error": scatter / np.sqrt(n) if n > 1 else float("nan"),
           "sigma_fnl": scatter,
           "sigma_fnl_error": scatter / np.sqrt(2.0 * (n - 1)) if n > 1 else float("nan"),
           "mean_predicted_sigma": float(np.mean(sigma))}
    for level in Z_INTERVAL:
        frac = coverage(true, mean, sigma, level)
        out[f"coverage{level}"] = frac
        out[f"coverage{level}_interval68"] = list(wilson_interval(frac * n, n))
    return out


def regression_metrics(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> dict:
    """Metrics of f_NL estimates ``mean`` +- ``sigma`` against the truth ``true`` (all (N,)).

    Returns a JSON-ready dict: overall ``bias``, ``rmse``, coverages (``coverage68``,
    ``coverage95`` with Wilson intervals), ``bins`` (one :func:`_summary` per bin of
    :func:`fnl_bins`, each with ``bias_over_sigma``), ``max_abs_bias_over_sigma`` over
    the bins, ``bias_chi2`` (sum over bins of (bias / its standard error)^2, with
    ``bias_chi2_dof`` bins and its p-value ``bias_chi2_p``: is the bias zero within the
    test set's errors?), and ``at_zero``: the summary of the bin holding f_NL = 0 (None if none
    does), whose ``sigma_fnl`` is the figure compared with the optimal estimator's.
    """
    true, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (true, mean, sigma))
    if not (true.shape == mean.shape == sigma.shape) or true.ndim != 1 or true.size < 2:
        raise ValueError("true, mean and sigma must be 1-D of one length >= 2")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sigma)) and np.all(sigma > 0)):
        raise ValueError("predicted means must be finite and sigmas finite and > 0")
    overall = _summary(true, mean, sigma)
    bins = []
    for idx in fnl_bins(true):
        entry = _summary(true[idx], mean[idx], sigma[idx])
        entry["bias_over_sigma"] = (entry["bias"] / entry["sigma_fnl"]
                                    if entry["n"] > 1 and entry["sigma_fnl"] > 0 else None)
        bins.append(entry)
    at_zero = next((b for b in bins if b["fnl_low"] <= 0.0 <= b["fnl_high"]), None)
    ratios = [abs(b["bias_over_sigma"]) for b in bins if b["bias_over_sigma"] is not None]
    # is the bias zero within the test set's own errors? chi^2 of the bins' mean residuals
    pulls = [b["bias"] / b["bias_error"] for b in bins if b["n"] > 1 and b["bias_error"] > 0]
    chi2 = float(np.sum(np.square(pulls))) if pulls else None
    return {"n": overall["n"], "bias": overall["bias"],
            "rmse": float(np.sqrt(np.mean((mean - true) ** 2))),
            "coverage68": overall["coverage68"], "coverage68_interval68": overall["coverage68_interval68"],
            "coverage95": overall["coverage95"], "coverage95_interval68": overall["coverage95_interval68"],
            "mean_predicted_sigma": overall["mean_predicted_sigma"],
            "bins": bins, "at_zero": at_zero,
            "max_abs_bias_over_sigma": max(ratios) if ratios else None,
            "bias_chi2": chi2, "bias_chi2_dof": len(pulls),
            "bias_chi2_p": float(chi2_distribution.sf(chi2, len(pulls))) if pulls else None,
            "interval": "coverage: fraction of true f_NL inside mean +- z sigma; brackets 68 % Wilson"}


def plot_predicted_vs_true(path, true: np.ndarray, mean: np.ndarray, sigma: np.ndarray,
                           title: str, max_points: int = 400) -> None:
    """Predicted against true f_NL with +-sigma bars (at most ``max_points`` maps, a fixed
    random subset) and the identity line, to the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (true, mean, sigma))
    # a random subset: evenly spaced indices would alias with a grid test set's period
    keep = np.sort(np.random.default_rng(0).choice(true.size, min(max_points, true.size), replace=False))
    lo, hi = float(min(true.min(), mean.min())), float(max(true.max(), mean.max()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.errorbar(true[keep], mean[keep], yerr=sigma[keep], fmt=".", ms=3, lw=0.6, alpha=0.6,
                label="estimate +- predicted sigma")
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="identity")
    ax.set_xlabel("true f_NL")
    ax.set_ylabel("estimated f_NL")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
