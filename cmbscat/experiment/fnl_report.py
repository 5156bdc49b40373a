"""The f_NL regression experiment's results: per method, its evaluations' metrics and
predictions, a Markdown table read against the optimal estimator, and one plot.

Used by :mod:`cmbscat.experiment.pipeline` for a config with ``"target": "fnl"``
(``pipelines/fnl_regression.json``, ``make fnl-regression``). The reference sigma is
that of ``cubic_fisher`` (the cubic statistic over its Fisher information, the
Cramer-Rao bound at f_NL = 0) measured on the same test maps at f_NL = 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmbscat.errors import CmbscatError

#: The anchor every sigma is divided by.
REFERENCE = "cubic_fisher"

METHOD_NAMES = {
    "cubic_fisher": "cubic statistic S / F (the optimal estimator; nothing fitted)",
    "cubic": "cubic statistic S, MLP regression",
    "hybrid": "scattering + DISCO CNN (hybrid)",
    "baseline": "DISCO CNN on low-resolution map",
    "onepoint": "skewness + kurtosis, MLP regression",
    "minkowski": "Minkowski functionals, MLP regression",
    "powspec": "binned C_l, MLP regression",
}


# a reference estimator's name inside another method's name (the paired calibration's row)
SHORT_NAMES = {"cubic_fisher": "cubic S / F"}


@dataclass
class FnlResult:
    """A method's current f_NL evaluations on one test set: one metrics dict and one
    (n_test, 2) array of (mean, sigma) predictions per training seed."""

    model: str
    seeds: list[int]
    metrics: list[dict]
    predictions: np.ndarray  # (n_seeds, n_test, 2) float64
    true: np.ndarray          # (n_test,) float64
    ensemble_of: int = 0      # > 0: one estimate combining this many seeds (:func:`ensemble_result`)
    calibrated_on: int = 0    # > 0: read through the response fitted on this many maps (:func:`calibrated_result`)
    calibrated_against: str = ""  # the reference model the response was fitted against ("": the truth)

    @property
    def name(self) -> str:
        """The method's name in tables."""
        name = METHOD_NAMES.get(self.model, self.model)
        name = f"{name}, ensemble of {self.ensemble_of} seeds" if self.ensemble_of else name
        if not self.calibrated_on:
            return name
        against = f" against the {self.calibrated_against} estimates" if self.calibrated_against else ""
        return f"{name}, response calibrated on {self.calibrated_on} maps{against}"

    def seed_values(self, key: str) -> np.ndarray:
        """``metrics[key]`` per seed, with ``at_zero.`` keys read from the f_NL = 0 bin."""
        if key.startswith("at_zero."):
            return np.array([m["at_zero"][key.split(".", 1)[1]] if m["at_zero"] else np.nan
                             for m in self.metrics], dtype=np.float64)
        return np.array([m[key] if m[key] is not None else np.nan for m in self.metrics], dtype=np.float64)


def load_fnl_result(model: str, seeds: list[int], folders: list[Path], test_file: Path) -> FnlResult:
    """Read each seed's ``metrics.json`` and ``predictions.npy`` from ``folders``."""
    from cmbscat.experiment.datasets import read_fnl

    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in folders]
    predictions = np.asarray([np.load(folder / "predictions.npy") for folder in folders])
    return FnlResult(model, seeds, metrics, predictions, read_fnl(test_file))


def ensemble_result(result: FnlResult) -> FnlResult:
    """The seeds of ``result`` combined into one estimator
    (:func:`cmbscat.experiment.fnl_estimators.ensemble_estimate`), with its metrics."""
    from cmbscat.experiment.fnl_estimators import ensemble_estimate
    from cmbscat.experiment.fnl_metrics import regression_metrics

    mean, sigma = ensemble_estimate(result.predictions[:, :, 0], result.predictions[:, :, 1])
    return FnlResult(result.model, list(result.seeds), [regression_metrics(result.true, mean, sigma)],
                     np.stack([mean, sigma], axis=1)[None], result.true, ensemble_of=len(result.seeds))


def with_ensembles(by_model: dict[str, FnlResult]) -> dict[str, FnlResult]:
    """``by_model`` with, after each method trained with several seeds, their ensemble
    (key ``"<model> ensemble"``)."""
    out = {}
    for key, result in by_model.items():
        out[key] = result
        if len(result.seeds) > 1 and not result.ensemble_of:
            out[f"{key} ensemble"] = ensemble_result(result)
    return out


def calibrated_result(test: FnlResult, calibration: FnlResult, reference: FnlResult | None = None) -> FnlResult:
    """``test``'s estimator (its seeds' ensemble when it has several) read through the response
    fitted on its estimates of the calibration maps ``calibration`` (the same seeds;
    :class:`cmbscat.experiment.fnl_calibration.ResponseCalibration`); the fit is in the
    metrics under ``response_calibration``. ``reference``: an unbiased estimator's estimates
    of the same calibration maps (one seed, e.g. the cubic statistic's S / F), fitted against
    instead of the truth (the paired fit). A response without an inverse is refused in one line."""
    from cmbscat.experiment.fnl_calibration import ResponseCalibration

    if list(calibration.seeds) != list(test.seeds):
        raise CmbscatError(f"{test.model}: calibration estimates of seeds {calibration.seeds}, "
                           f"test estimates of {test.seeds}")
    if reference is not None and not np.array_equal(reference.true, calibration.true):
        raise CmbscatError(f"calibrating {test.model} against {reference.model}: its estimates are "
                           "of other maps than the calibration maps")
    if len(test.seeds) > 1:
        test, calibration = ensemble_result(test), ensemble_result(calibration)
    try:
        response = ResponseCalibration.fit(
            calibration.true, calibration.predictions[0][:, 0],
            reference=None if reference is None else reference.predictions[0][:, 0])
    except ValueError as err:
        raise CmbscatError(f"calibrating {test.model}: {err}") from None
    against = "" if reference is None else SHORT_NAMES.get(reference.model, reference.model)
    return read_through(test, response, against)


def read_through(result: FnlResult, response, against: str = "") -> FnlResult:
    """``result``'s first (or only) estimator read through ``response`` (a
    :class:`~cmbscat.experiment.fnl_calibration.ResponseCalibration`), with its metrics
    and the fit under ``response_calibration``. ``against``: the name of the reference
    estimator the response was fitted against (``""``: fitted against the truth)."""
    from cmbscat.experiment.fnl_metrics import regression_metrics

    mean, sigma = response.apply(result.predictions[0][:, 0], result.predictions[0][:, 1])
    metrics = {**regression_metrics(result.true, mean, sigma), "response_calibration": response.to_dict()}
    return FnlResult(result.model, list(result.seeds), [metrics], np.stack([mean, sigma], axis=1)[None],
                     result.true, ensemble_of=result.ensemble_of, calibrated_on=response.n_maps,
                     calibrated_against=against)


def with_calibrations(by_model: dict[str, FnlResult], calibrations: dict[str, FnlResult],
                      reference: FnlResult | None = None) -> dict[str, FnlResult]:
    """``by_model`` with, after each method in ``calibrations`` (and its ensemble), its
    :func:`calibrated_result` (key ``"<model> calibrated"``), fitted against ``reference``'s
    estimates of the calibration maps when given."""
    out = {}
    for key, result in by_model.items():
        out[key] = result
        model = key.removesuffix(" ensemble")
        if model in calibrations and (key.endswith(" ensemble") or len(result.seeds) == 1):
            out[f"{model} calibrated"] = calibrated_result(by_model[model], calibrations[model], reference)
    return out


def _cell(values: np.ndarray, fmt: str, scale: float = 1.0) -> str:
    """One figure, or the mean of several seeds with their s.d."""
    values = np.asarray(values, dtype=np.float64) * scale
    if values.size == 1:
        return format(values[0], fmt)
    return f"{format(values.mean(), fmt)} (s.d. {format(values.std(ddof=1), fmt)}, {values.size} seeds)"


def fnl_table(cfg: dict, by_model: dict[str, FnlResult], timings: dict) -> str:
    """Markdown: method | sigma(f_NL) at f_NL = 0 | ratio to the optimal | bias | coverage."""
    sim = cfg["simulate"]
    lines = [f"# {cfg.get('title', 'f_NL estimation')}", "",
             f"lmax {sim['lmax']}, nside {sim['nside']}; trained on {sim['n_train']} maps with f_NL "
             f"drawn from `{sim['fnl_dist_train']}` (a fraction held out to choose the weights and "
             f"calibrate sigma), tested on {sim['n_test']} maps at `{sim['fnl_dist_test']}`. "
             f"Generated by `cmbscat pipeline {cfg.get('config_name', '...')}`.", ""]
    reference = by_model.get(REFERENCE)
    ref_sigma = float(np.nanmean(reference.seed_values("at_zero.sigma_fnl"))) if reference else None
    if reference is not None:
        from cmbscat.experiment.fnl_estimators import CubicFisherEstimator

        bound = CubicFisherEstimator(sim["lmax"]).sigma
        zero = reference.metrics[0]["at_zero"]
        lines += [f"Optimal sigma at f_NL = 0: measured {ref_sigma:.3f} ± {zero['sigma_fnl_error']:.3f} "
                  f"on {zero['n']} maps; Fisher prediction 1/sqrt(F) = {bound:.3f} "
                  f"(measured / predicted = {ref_sigma / bound:.3f}).", ""]
    lines += ["| method | sigma(f_NL) at f_NL = 0 | ratio to the optimal sigma | bias at f_NL = 0 | "
              "largest abs(bias) / sigma over f_NL bins | bias zero? chi^2 / bins (p) | 68 % coverage | "
              "95 % coverage | rms error | train + evaluate wall time |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for result in by_model.values():
        sigma0 = result.seed_values("at_zero.sigma_fnl")
        ratio = _cell(sigma0 / ref_sigma, ".2f") if ref_sigma else "—"
        wall = sum(t for name, t in timings.items()
                   if name.startswith((f"train {result.model} seed", f"evaluate {result.model} seed")))
        lines.append(
            f"| {result.name} | {_cell(sigma0, '.2f')} | {ratio} | "
            f"{_cell(result.seed_values('at_zero.bias'), '+.2f')} "
            f"± {np.nanmean(result.seed_values('at_zero.bias_error')):.2f} | "
            f"{_cell(result.seed_values('max_abs_bias_over_sigma'), '.2f')} | "
            f"{chi2_cell(result.metrics[0])} | "
            f"{_cell(result.seed_values('coverage68'), '.1f', 100)} % | "
            f"{_cell(result.seed_values('coverage95'), '.1f', 100)} % | "
            f"{_cell(result.seed_values('rmse'), '.2f')} | {wall:.0f} s |")
    lines += ["", "sigma(f_NL): standard deviation of the estimates over the test maps at that true "
              "f_NL (not the predicted error); bias: mean estimate minus true, ± its standard error; "
              "chi^2: of the bins' biases in units of their standard errors (first seed), with its "
              "p-value, so a bias the test set can see is told from its noise; coverage: fraction of "
              "test maps whose true f_NL lies inside the predicted 68.27 % (± 1 sigma) or 95 % "
              "(± 1.96 sigma) interval, over all test maps. An ensemble: one estimate per map "
              "from the seeds' estimates, their mean with sigma^2 = mean sigma_i^2 - (1 - 1/S) "
              "(variance of the seeds' estimates), the seeds' own noise averaged down "
              "(cmbscat.experiment.fnl_estimators.ensemble_estimate).", ""]
    if by_model:
        lines += ["Bias and sigma(f_NL) per true f_NL (first seed):", "",
                  "| method | " + " | ".join(f"{b['fnl_mean']:g}" for b in
                                            next(iter(by_model.values())).metrics[0]["bins"]) + " |",
                  "|---|" + "---|" * len(next(iter(by_model.values())).metrics[0]["bins"])]
        for result in by_model.values():
            cells = [f"{b['bias']:+.2f} ± {b['bias_error']:.2f} / {b['sigma_fnl']:.2f}"
                     for b in result.metrics[0]["bins"]]
            lines.append(f"| {result.name} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: bias ± its standard error / sigma(f_NL) of the estimates at that true f_NL.", ""]
    if reference is not None and len(by_model) > 1:
        lines += paired_bias_table(by_model)
    total = sum(timings.values())
    lines += [f"Stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; total {total / 60:.1f} min.", ""]
    return "\n".join(lines)


def paired_bias(result: FnlResult, reference: FnlResult) -> list[dict]:
    """Per true f_NL value: the mean of (estimate - anchor's estimate) over the test maps of
    that value (first seeds), its standard error, and the method's sigma(f_NL) there.

    Both read the same maps, so the part of each map's estimate that comes from the map's
    own realisation (the anchor and the networks correlate at ~0.8) cancels: with the
    anchor unbiased (``studies/fnl_anchor_bias.py``: |bias| < 0.065 sigma over |f_NL| <= 60),
    this is the method's bias with a standard error ~2x smaller than the unpaired one.
    """
    true = reference.true
    difference = result.predictions[0][:, 0] - reference.predictions[0][:, 0]
    out = []
    for value in np.unique(true):
        rows = true == value
        n = int(rows.sum())
        out.append({"fnl": float(value), "n": n, "bias": float(difference[rows].mean()),
                    "bias_error": float(difference[rows].std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                    "sigma_fnl": float(result.predictions[0][rows, 0].std(ddof=1)) if n > 1 else float("nan")})
    return out


def pooled_paired_bias(result: FnlResult, reference: FnlResult) -> list[dict]:
    """Per |f_NL| > 0 present with both signs: the odd part of :func:`paired_bias`,
    (b(f) - b(-f)) / 2, estimated from every map at +f and -f together (first seeds).

    The values pooled are (estimate - anchor's) at +f and minus it at -f; their mean and
    standard error (twice as many maps as one bin); ``sigma_fnl`` the scatter of the
    estimates pooled the same way ((estimate - f) at +f, -(estimate + f) at -f). For an
    estimator odd in the map (the anchor; ``--sign-flip`` networks; their ensembles) the
    bias is odd in f_NL exactly, so this is all of it, with an error sqrt(2) smaller.
    """
    true = reference.true
    estimate = result.predictions[0][:, 0]
    difference = estimate - reference.predictions[0][:, 0]
    out = []
    for value in np.unique(true[true > 0]):
        plus, minus = true == value, true == -value
        if not minus.any():
            continue
        pooled = np.concatenate([difference[plus], -difference[minus]])
        error = np.concatenate([estimate[plus] - value, -(estimate[minus] + value)])
        n = pooled.size
        out.append({"fnl": float(value), "n": n, "bias": float(pooled.mean()),
                    "bias_error": float(pooled.std(ddof=1) / np.sqrt(n)),
                    "sigma_fnl": float(error.std(ddof=1))})
    return out


def largest_bias_in_sigma(rows: list[dict]) -> float:
    """max |bias| / sigma_fnl over the rows of :func:`paired_bias` or :func:`pooled_paired_bias`."""
    return max(abs(r["bias"]) / r["sigma_fnl"] for r in rows)


def paired_bias_table(by_model: dict[str, FnlResult]) -> list[str]:
    """Markdown lines: each method's :func:`paired_bias` per true f_NL, and the largest |bias| / sigma."""
    reference = by_model[REFERENCE]
    values = np.unique(reference.true)
    lines = ["Bias against the anchor on the same maps (first seeds): mean of (estimate − the "
             "anchor's estimate) ± its standard error, / the method's sigma(f_NL) there:", "",
             "| method | " + " | ".join(f"{v:g}" for v in values) + " | largest abs(bias) / sigma |",
             "|---|" + "---|" * (len(values) + 1)]
    for model, result in by_model.items():
        if model == REFERENCE:
            continue
        rows = paired_bias(result, reference)
        worst = largest_bias_in_sigma(rows)
        lines.append(f"| {result.name} | " + " | ".join(
            f"{r['bias']:+.2f} ± {r['bias_error']:.2f}" for r in rows) + f" | {worst:.2f} |")
    lines.append("")
    pooled = {name: pooled_paired_bias(result, reference) for name, result in by_model.items()
              if name != REFERENCE}
    magnitudes = next(iter(pooled.values()), [])
    if not magnitudes:
        return lines
    lines += ["Its odd part, pooling +f and -f (all of the bias for an estimator odd in the map: "
              "the sign-flip networks, their ensembles): mean ± its standard error, and / sigma:", "",
              "| method | " + " | ".join(f"abs(f_NL) = {r['fnl']:g}" for r in magnitudes)
              + " | largest abs(bias) / sigma |",
              "|---|" + "---|" * (len(magnitudes) + 1)]
    for name, rows in pooled.items():
        worst = largest_bias_in_sigma(rows)
        lines.append(f"| {by_model[name].name} | " + " | ".join(
            f"{r['bias']:+.2f} ± {r['bias_error']:.2f} ({r['bias'] / r['sigma_fnl']:+.3f})" for r in rows)
            + f" | {worst:.3f} |")
    return lines + [""]


def chi2_cell(metrics: dict) -> str:
    """"chi^2 / bins (p)" of a metrics dict's bias test, or a dash."""
    if metrics.get("bias_chi2") is None:
        return "—"
    return f"{metrics['bias_chi2']:.1f} / {metrics['bias_chi2_dof']} ({metrics['bias_chi2_p']:.2g})"


def plot_fnl_methods(path: Path, by_model: dict[str, FnlResult], max_points: int = 300) -> None:
    """One panel per method: estimated (first seed) against true f_NL, +-sigma bars, identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(by_model)
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, model in zip(axes.ravel(), models):
        result = by_model[model]
        true, (mean, sigma) = result.true, result.predictions[0].T
        # a random subset: evenly spaced indices would alias with a grid's period
        keep = np.sort(np.random.default_rng(0).choice(true.size, min(max_points, true.size), replace=False))
        jitter = (np.arange(keep.size) % 7 - 3) * 0.25  # side by side at a grid value
        ax.errorbar(true[keep] + jitter, mean[keep], yerr=sigma[keep], fmt=".", ms=2, lw=0.5, alpha=0.5)
        lo, hi = float(true.min()), float(true.max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=1)
        title = METHOD_NAMES.get(result.model, result.model).split(" (")[0].split(",")[0]
        title = f"{title}, ensemble" if result.ensemble_of else title
        ax.set_title(f"{title}, calibrated" if result.calibrated_on else title, fontsize=8)
        ax.set_xlabel("true f_NL", fontsize=8)
        ax.set_ylabel("estimate ± predicted sigma", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(models):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
