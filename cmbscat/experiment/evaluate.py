"""The ``evaluate`` stage: score a trained run on a test file; metrics.json and a ROC plot.

``metrics.json`` records what it was computed from: ``model_sha256`` (the bytes of
the run's model file) and ``test_sha256`` (the test file's content hash,
:func:`cmbscat.store.content_hash`), so a stale result can be recognised.
``scores.npy`` holds the logits (float64), which the AUC ranks.

A run trained with ``--target fnl`` is scored against the test file's ``/fnl``
instead (:mod:`cmbscat.experiment.fnl_metrics`): bias and sigma(f_NL) in bins of true
f_NL, the coverage of the predicted 68 % and 95 % intervals; ``predictions.npy``
(float64 (N, 2): mean and sigma of f_NL) and ``fnl.png`` (predicted against true).

A network's checkpoint records how its training data were observed (beam, noise, mask:
:func:`cmbscat.experiment.datasets.observation_identity`); a test file observed otherwise
(a masked-trained model on an unmasked file, another mask, another beam) is refused in
one line unless ``force`` is given, and then ``metrics.json`` records what differed
(``observation_differs``). Checkpoints from before this record are not checked. A test
file with a pooling weight (a masked file) gives it to the network.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np

from cmbscat.experiment.datasets import read_labels
from cmbscat.errors import CmbscatError
from cmbscat.experiment.metrics import classification_metrics, roc_points
from cmbscat.store import (atomic_write_text, content_hash, describe_difference, differing_keys,
                           file_sha256, require_kind)
from cmbscat.experiment.train import (CLASSICAL_MODELS, MODEL_INPUTS, model_inputs, model_weight,
                                      resolve_device)


def load_run(run_dir: str | Path) -> tuple[dict, Path]:
    """The run's config and the path of its best model; one-line error if unfinished."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CmbscatError(f"{run_dir} is not a cmbscat run folder (no config.json); "
                           "train one with cmbscat train")
    config = json.loads(cfg_path.read_text())
    model_path = run_dir / ("model.pkl" if config["model"] in CLASSICAL_MODELS else "model.pt")
    if not model_path.exists():
        raise CmbscatError(f"{run_dir} has no trained model yet; finish it with cmbscat train")
    return config, model_path


def evaluation_record(run_dir: str | Path, data: str | Path) -> dict:
    """What a metrics.json of ``run_dir`` on ``data`` must record to be current."""
    _, model_path = load_run(run_dir)
    return {"model_sha256": file_sha256(model_path), "test_sha256": content_hash(data)}


def network_logits(model, x: np.ndarray, device: str, batch_size: int = 32,
                   weight: np.ndarray | None = None) -> np.ndarray:
    """Outputs (float64, (N,) logits, or (N, n_outputs)) of a torch ``model`` on inputs
    ``x`` (N, C, npix), in batches; ``weight`` (npix,), the pooling weight of every map
    (None: unweighted pooling, the model called with ``x`` alone)."""
    import torch

    extra = () if weight is None else (torch.from_numpy(np.asarray(weight, np.float32)).to(device),)
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[lo:lo + batch_size]).to(device), *extra).double().cpu())
    return torch.cat(out).numpy()


def observation_mismatch(run_dir: str | Path, saved: dict, data: str | Path, force: bool = False) -> str:
    """What differs between how the run's training data and the test file ``data`` were
    observed ("" if nothing, or if the checkpoint ``saved`` predates the record); refused
    in one line unless ``force``."""
    from cmbscat.experiment.datasets import observation_identity

    trained = saved.get("observation")
    if trained is None:  # a model saved before the record existed: nothing to check against
        return ""
    test = observation_identity(data)
    if not differing_keys(trained, test):
        return ""
    what = describe_difference(trained, test)
    if not force:
        masked = "a masked" if saved.get("masked") else "an unmasked"
        raise CmbscatError(f"{run_dir} was trained on {masked} sky observed otherwise than {data} "
                           f"(training vs test: {what}); pass --force to evaluate anyway")
    return what


def check_observation(run_dir: str | Path, data: str | Path, force: bool = False) -> str:
    """:func:`observation_mismatch` of the run's network on ``data`` ("" for the classical
    models, whose records do not hold the observation)."""
    config, model_path = load_run(run_dir)
    if config["model"] in CLASSICAL_MODELS:
        return ""
    import torch

    return observation_mismatch(run_dir, torch.load(model_path, map_location="cpu", weights_only=False),
                                data, force)


def _network(run_dir, config: dict, model_path: Path, data, device: str, batch_size: int,
             progress: bool, force: bool):
    """(outputs, checkpoint) of a run's network on ``data``, after :func:`observation_mismatch`:
    the inputs standardised as in training, with the file's pooling weight when it has one."""
    import torch

    from cmbscat.nn.models import build_model

    device = resolve_device(device)
    saved = torch.load(model_path, map_location="cpu", weights_only=False)
    observation_mismatch(run_dir, saved, data, force)  # before the inputs are read
    x, _ = model_inputs(config["model"], str(data), saved["meta"], progress)
    x = (x - saved["mean"]) / saved["std"]
    weight = model_weight(config["model"], str(data), {**saved["meta"], "nside": saved["nside"]})
    model = build_model(saved["kind"], saved["in_channels"], saved["nside"], saved.get("n_outputs", 1))
    model.load_state_dict(saved["model"])
    model.to(device).eval()
    return network_logits(model, x, device, batch_size, weight), saved


def predict_fnl(run_dir: str | Path, data: str | Path, device: str = "auto", batch_size: int = 32,
                progress: bool = True, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sigma) of f_NL (float64 (N,) each) of every map of ``data`` from a run
    trained with ``--target fnl``; sigma includes the run's validation calibration.
    ``force``: a network is used even on a file observed otherwise than its training data
    (:func:`observation_mismatch`)."""
    config, model_path = load_run(run_dir)
    if config.get("target", "label") != "fnl":
        raise CmbscatError(f"{run_dir} is a classifier (trained with --target label), not an f_NL estimator")
    if config["model"] in CLASSICAL_MODELS:
        with open(model_path, "rb") as f:
            saved = pickle.load(f)
        x, _ = model_inputs(config["model"], str(data), saved.get("meta"), progress=progress)
        return saved["estimator"].predict(x)

    from cmbscat.experiment.fnl_estimators import TargetScaling

    output, saved = _network(run_dir, config, model_path, data, device, batch_size, progress, force)
    mean, sigma = TargetScaling(saved["target_mean"], saved["target_std"]).to_fnl(output)
    return mean, sigma * saved["calibration"]


def predict(run_dir: str | Path, data: str | Path, device: str = "auto", batch_size: int = 32,
            progress: bool = True, force: bool = False) -> np.ndarray:
    """Logit (log-odds of the non-Gaussian class) of each map of ``data``, float64 (N,).
    ``force``: a network is used even on a file observed otherwise than its training data
    (:func:`observation_mismatch`)."""
    config, model_path = load_run(run_dir)
    if config.get("target", "label") != "label":
        raise CmbscatError(f"{run_dir} estimates f_NL (--target {config['target']}); it gives no logits")
    if config["model"] in CLASSICAL_MODELS:
        with open(model_path, "rb") as f:
            saved = pickle.load(f)
        x, _ = model_inputs(config["model"], str(data), saved.get("meta"), progress=progress)
        return np.asarray(saved["classifier"].decision_function(x), dtype=np.float64)
    return _network(run_dir, config, model_path, data, device, batch_size, progress, force)[0]


def plot_roc(path: Path, labels: np.ndarray, logits: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = roc_points(labels, logits)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=title)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(run_dir: str | Path, data: str | Path, out_dir: str | Path | None = None,
             device: str = "auto", progress: bool = True, force: bool = False) -> dict:
    """Write ``metrics.json``, ``scores.npy`` (logits) and ``roc.png`` for ``run_dir`` on ``data``.

    Output goes to ``out_dir`` (default: the run folder). Returns the metrics, which
    record the model file's and the test file's hashes (:func:`evaluation_record`).
    A network trained on data observed otherwise than ``data`` (beam, noise, mask) is
    refused in one line unless ``force`` (:func:`observation_mismatch`); the metrics then
    say what differed (``observation_differs``).
    """
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    config, _ = load_run(run_dir)
    require_kind(data, MODEL_INPUTS[config["model"]], f"evaluating --model {config['model']}")
    mismatch = check_observation(run_dir, data, force)
    forced = {"observation_differs": mismatch} if mismatch else {}
    if config.get("target", "label") == "fnl":
        return evaluate_fnl(run_dir, data, config, out_dir, device, progress, t0, forced)
    labels = read_labels(data)
    if np.any(labels < 0):
        raise CmbscatError(f"{data} has maps without labels (e.g. a single FITS map); "
                           "evaluation needs labelled test maps")
    record = evaluation_record(run_dir, data)
    logits = predict(run_dir, data, device, progress=progress, force=True)  # checked above
    metrics = classification_metrics(labels, logits)
    metrics.update({"model": config["model"], "seed": config.get("seed"), "test_file": str(data),
                    **record, **forced, "wall_seconds": time.time() - t0})
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    # metrics.json is written last: drop an old one first, so that it never sits beside
    # the scores of another evaluation if this one is interrupted
    (out / "metrics.json").unlink(missing_ok=True)
    with open(out / "scores.npy.tmp", "wb") as f:
        np.save(f, logits)
    os.replace(out / "scores.npy.tmp", out / "scores.npy")
    plot_roc(out / "roc.png", labels, logits,
             f"{config['model']}: AUC {metrics['auc']:.3f}" if metrics["auc"] is not None else config["model"])
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def evaluate_fnl(run_dir, data, config: dict, out_dir=None, device: str = "auto", progress: bool = True,
                 t0: float | None = None, forced: dict | None = None) -> dict:
    """The f_NL estimator's metrics (:func:`regression_metrics`) on ``data``: ``metrics.json``,
    ``predictions.npy`` (float64 (N, 2): mean, sigma) and ``fnl.png``. ``forced``: what
    :func:`evaluate` found different in the observation and was told to accept (added to the
    metrics); None: checked here, refused on any difference."""
    from cmbscat.experiment.datasets import read_fnl
    from cmbscat.experiment.fnl_metrics import plot_predicted_vs_true, regression_metrics

    t0 = time.time() if t0 is None else t0
    if forced is None:
        check_observation(run_dir, data)  # refuses any difference
        forced = {}
    true = read_fnl(data)
    if not np.all(np.isfinite(true)):
        raise CmbscatError(f"{data} has maps without a known f_NL (e.g. a FITS map); "
                           "evaluating an f_NL estimator needs test maps with /fnl")
    record = evaluation_record(run_dir, data)
    mean, sigma = predict_fnl(run_dir, data, device, progress=progress, force=True)  # checked by evaluate
    metrics = regression_metrics(true, mean, sigma)
    metrics.update({"target": "fnl", "model": config["model"], "seed": config.get("seed"),
                    "test_file": str(data), **record, **forced,
                    "wall_seconds": time.time() - t0})
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # never beside another evaluation's predictions
    with open(out / "predictions.npy.tmp", "wb") as f:
        np.save(f, np.stack([mean, sigma], axis=1))
    os.replace(out / "predictions.npy.tmp", out / "predictions.npy")
    zero = metrics["at_zero"]
    title = f"{config['model']}: " + (f"sigma(f_NL = 0) {zero['sigma_fnl']:.2f}, " if zero else "") + \
        f"68 % coverage {100 * metrics['coverage68']:.1f} %"
    plot_predicted_vs_true(out / "fnl.png", true, mean, sigma, title)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
