"""The ``evaluate`` stage: score a trained run on a test file; metrics.json and a ROC plot.

``metrics.json`` records what it was computed from: ``model_sha256`` (the bytes of
the run's model file) and ``test_sha256`` (the test file's content hash,
:func:`cmbscat.store.content_hash`), so a stale result can be recognised.
``scores.npy`` holds the logits (float64), which the AUC ranks.

A run trained with ``--target fnl`` is scored against the test file's ``/fnl``
instead (:mod:`cmbscat.experiment.fnl_metrics`): bias and sigma(f_NL) in bins of true
f_NL, the coverage of the predicted 68 % and 95 % intervals; ``predictions.npy``
(float64 (N, 2): mean and sigma of f_NL) and ``fnl.png`` (predicted against true).

An f_NL estimator's response can be calibrated on simulations (``calibration``: a labelled
file of maps at many f_NL values that plays no other part): the response E[mean | f] is
fitted there and every estimate read through its inverse
(:class:`cmbscat.experiment.fnl_calibration.ResponseCalibration`); metrics.json or
scores.json records the fit under ``response_calibration``. With an unbiased reference
estimator's estimates of the same maps (:class:`CalibrationMaps`: the cubic statistic's
S / F on the calibration maps' statistics) the response is fitted against them instead of
the truth (the paired fit: the maps' own scatter cancels).

An unlabelled file (labels -1: the scattering or statistics of a user's FITS map,
:mod:`cmbscat.sky.fits_map`) is scored map by map instead (:func:`score_maps`): the
logit, its probability and its false-alarm probability among the Gaussian maps of a
labelled reference test set (:func:`false_alarm_probability`), or an f_NL estimator's
estimate and sigma; ``scores.json``. A FITS map itself is made into the model's input
first (:func:`fits_input`, with the settings the run folder's ``input.json`` records), or,
from Python, refused with the command that makes it (:func:`fits_hint`).

A network's checkpoint and a classical model's ``model.pkl`` record how the training data
were observed (beam, noise, mask: :func:`cmbscat.experiment.datasets.observation_identity`
of the scattering, statistics or sims file); a test file observed otherwise
(a masked-trained model on an unmasked file, another mask, another beam) is refused in
one line unless ``force`` is given, and then ``metrics.json`` records what differed
(``observation_differs``). Models saved before this record are not checked. A test
file with a pooling weight (a masked file) gives it to the network.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmbscat.experiment.datasets import read_labels
from cmbscat.errors import CmbscatError
from cmbscat.experiment.metrics import classification_metrics, roc_points
from cmbscat.lock import OutputLock
from cmbscat.store import (atomic_write_text, content_hash, describe_difference, differing_keys,
                           file_sha256, require_kind)
from cmbscat.experiment.train import (CLASSICAL_MODELS, MODEL_INPUTS, locate_recorded_file, model_inputs,
                                      model_weight, read_input_record, resolve_device)

# maps per forward pass when scoring; only memory depends on it (the networks are in eval
# mode, so batch norm uses its stored statistics and each map's output is its own)
BATCH_SIZE = 32


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


def network_logits(model, x: np.ndarray, device: str, batch_size: int = BATCH_SIZE,
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
    from cmbscat.sky.source import comparable_observations, observation_record

    trained = saved.get("observation")
    if trained is None:  # a model saved before the record existed: nothing to check against
        return ""
    # entries added to the record since the model was saved take their defaults
    trained = observation_record(trained)
    # a mask is known by its content, not by how each file named it (a SPEC or a FITS path)
    trained, test = comparable_observations(trained, observation_identity(data))
    if not differing_keys(trained, test):
        return ""
    what = describe_difference(trained, test)
    if not force:
        masked = "a masked" if saved.get("masked", bool(trained.get("mask"))) else "an unmasked"
        raise CmbscatError(f"{run_dir} was trained on {masked} sky observed otherwise than {data} "
                           f"(training vs test: {what}); pass --force to evaluate anyway")
    return what


def load_saved(config: dict, model_path: Path) -> dict:
    """What ``cmbscat train`` saved for a run (``load_run``'s ``config`` and ``model_path``):
    the network checkpoint (``model.pt``, on the CPU) or the classical ``model.pkl``."""
    if config["model"] in CLASSICAL_MODELS:
        with open(model_path, "rb") as f:
            return pickle.load(f)
    import torch

    return torch.load(model_path, map_location="cpu", weights_only=False)


def _network_outputs(config: dict, saved: dict, data, device: str, batch_size: int, progress: bool) -> np.ndarray:
    """Outputs of a run's network (checkpoint ``saved``) on ``data``: the inputs
    standardised as in training, with the file's pooling weight when it has one."""
    from cmbscat.nn.models import build_model

    device = resolve_device(device)
    x, _ = model_inputs(config["model"], str(data), saved["meta"], progress)
    x = (x - saved["mean"]) / saved["std"]
    weight = model_weight(config["model"], str(data), {**saved["meta"], "nside": saved["nside"]})
    model = build_model(saved["kind"], saved["in_channels"], saved["nside"], saved.get("n_outputs", 1))
    model.load_state_dict(saved["model"])
    model.to(device).eval()
    out = network_logits(model, x, device, batch_size, weight)
    if saved.get("sign_flip_odd") is not None:  # trained with --sign-flip: the odd estimator
        from cmbscat.experiment.fnl_estimators import SignFlip

        flip = SignFlip(np.asarray(saved["sign_flip_odd"]), saved["mean"], saved["std"],
                        saved["target_mean"], saved["target_std"])
        out = flip.odd_output(out, network_logits(model, flip.inputs(x), device, batch_size, weight))
    return out


def _classical_features(config: dict, saved: dict, data, progress: bool) -> np.ndarray:
    """The features (N, n_features) a classical run's ``saved`` model reads from ``data``."""
    x, _ = model_inputs(config["model"], str(data), saved.get("meta"), progress=progress)
    return x


def _fnl_estimates(config: dict, saved: dict, data, device: str, batch_size: int,
                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sigma) of f_NL of every map of ``data`` from an f_NL run's ``saved`` model."""
    if config["model"] in CLASSICAL_MODELS:
        return saved["estimator"].predict(_classical_features(config, saved, data, progress))
    from cmbscat.experiment.fnl_estimators import TargetScaling

    output = _network_outputs(config, saved, data, device, batch_size, progress)
    mean, sigma = TargetScaling(saved["target_mean"], saved["target_std"]).to_fnl(output)
    return mean, sigma * saved["calibration"]


def _logits(config: dict, saved: dict, data, device: str, batch_size: int, progress: bool) -> np.ndarray:
    """Logits of every map of ``data`` from a classifier run's ``saved`` model."""
    if config["model"] in CLASSICAL_MODELS:
        return np.asarray(saved["classifier"].decision_function(_classical_features(config, saved, data, progress)),
                          dtype=np.float64)
    return _network_outputs(config, saved, data, device, batch_size, progress)


def predict_fnl(run_dir: str | Path, data: str | Path, device: str = "auto", batch_size: int = BATCH_SIZE,
                progress: bool = True, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sigma) of f_NL (float64 (N,) each) of every map of ``data`` from a run
    trained with ``--target fnl``; sigma includes the run's validation calibration.
    A file of the wrong kind for the run's model, and a run trained on data observed
    otherwise than ``data`` (unless ``force``, :func:`observation_mismatch`), are refused
    in one line."""
    config, model_path = load_run(run_dir)
    if config.get("target", "label") != "fnl":
        raise CmbscatError(f"{run_dir} is a classifier (trained with --target label), not an f_NL estimator")
    saved = load_saved(config, model_path)
    return _checked_fnl_estimates(run_dir, config, saved, data, device, progress, force, batch_size)


def predict(run_dir: str | Path, data: str | Path, device: str = "auto", batch_size: int = BATCH_SIZE,
            progress: bool = True, force: bool = False) -> np.ndarray:
    """Logit (log-odds of the non-Gaussian class) of each map of ``data``, float64 (N,).
    A run trained on data observed otherwise than ``data`` is refused in one line unless
    ``force`` (:func:`observation_mismatch`)."""
    config, model_path = load_run(run_dir)
    if config.get("target", "label") != "label":
        raise CmbscatError(f"{run_dir} estimates f_NL (--target {config['target']}); it gives no logits")
    saved = load_saved(config, model_path)
    observation_mismatch(run_dir, saved, data, force)  # before the inputs are read
    return _logits(config, saved, data, device, batch_size, progress)


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


def test_file_record(data: str | Path, out_dir: str | Path) -> dict:
    """How a metrics.json in ``out_dir`` names its test file ``data``: ``test_file``, its
    absolute path when evaluated (so that the default ``--reference`` is found from any
    working directory), and ``test_file_from_out``, the same relative to ``out_dir`` (found
    again when the whole tree is moved)."""
    absolute = Path(data).resolve()
    return {"test_file": str(absolute),
            "test_file_from_out": os.path.relpath(absolute, Path(out_dir).resolve())}


def refuse_fits_map(run_dirs, data: str | Path) -> None:
    """A FITS map given where a stage file is read: refused in one line that names the
    command making this model's input from it, with the run's settings (:func:`fits_hint`)."""
    from cmbscat.sky.source import _is_fits

    if Path(data).is_file() and not _hdf5(data) and _is_fits(Path(data)):
        raise CmbscatError(fits_hint(run_dirs, data))


def _hdf5(path) -> bool:
    import h5py

    return h5py.is_hdf5(path)


def fits_hint(run_dirs, data: str | Path) -> str:
    """One line: ``data`` is a FITS map, and the command that makes the model's input from it
    (:func:`fits_input_command`), or why none can be named."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    try:
        record = _common_input_record(run_dirs, data)
    except CmbscatError as err:
        return str(err.message)
    return (f"{data} is a FITS map: make this model's input first: "
            f"{fits_input_command(record, data, _made_input_name(record, data))}, then evaluate that file "
            "(or give the FITS map to the cmbscat evaluate command, which makes it)")


def _made_input_name(record: dict, data: str | Path) -> str:
    stem = Path(data).name
    for suffix in (".gz", ".fits", ".fit", ".fts"):
        stem = stem[:-len(suffix)] if stem.lower().endswith(suffix) else stem
    return f"{stem}_{'scat' if record['stage'] == 'scatter' else 'stats'}.h5"


def _common_input_record(run_dirs, data) -> dict:
    """The input record (:func:`~cmbscat.experiment.train.read_input_record`) all ``run_dirs``
    share; one-line error when one has none, is the baseline, or they differ."""
    records = []
    for run_dir in run_dirs:
        load_run(run_dir)
        record = read_input_record(run_dir)
        if record is None:
            raise CmbscatError(f"{data} is a FITS map: make this model's input first with cmbscat scatter "
                               f"or stats at its training data's settings ({run_dir} has no input.json, "
                               "and its training file is not found to read them from)")
        if record.get("stage") is None:
            raise CmbscatError(f"{data} is a FITS map; {run_dir} is the low-resolution baseline, which reads "
                               "sims files (cmbscat simulate) only")
        records.append(record)
    first = records[0]
    for run_dir, record in zip(run_dirs[1:], records[1:]):
        if (record["stage"], record["settings"]) != (first["stage"], first["settings"]):
            raise CmbscatError(f"{data} is a FITS map, and the runs read inputs made otherwise ({run_dirs[0]}: "
                               f"{' '.join(first['options'])}; {run_dir}: {' '.join(record['options'])})")
    return first


def fits_input_command(record: dict, data: str | Path, out: str | Path, declared: list[str] | None = None) -> str:
    """``cmbscat scatter|stats DATA OUT OPTIONS``: the command that makes a model's input
    (its input ``record``) from the FITS map ``data``; ``declared``: the options describing
    the map (its observation, unit), else the model's observation options."""
    import shlex

    options = record["options"] + (record.get("observation_options", []) if declared is None else declared)
    return " ".join(["cmbscat", record["stage"], shlex.quote(str(data)), shlex.quote(str(out)),
                     *map(shlex.quote, options)])


def fits_input(run_dirs, data: str | Path, folder: str | Path, observation=None, unit: str | None = None,
               remove_dipole: bool = True, declared: list[str] | None = None,
               progress: bool = True, note=None, force: bool = False) -> tuple[Path, str]:
    """Make the input of the runs' model from the FITS map ``data`` into ``folder``: its
    scattering or statistics with the settings the runs record (:func:`_common_input_record`),
    the map read with ``unit`` and ``remove_dipole`` (:func:`cmbscat.sky.fits_map.fits_reading`)
    and observed as ``observation`` (an :class:`~cmbscat.sky.observe.ObservationConfig`,
    None: the full sky). Returns (the file, the equivalent command line; ``declared``: the
    FITS options as given, for that line); ``note`` receives that line once the input is
    made (a refusal of the map stays one line). A map declared observed (a mask, beam,
    noise) for a model trained on the full sky, or the other way round, is refused at once
    unless ``force`` (the full comparison, :func:`observation_mismatch`, follows on the
    made input)."""
    from cmbscat.sky.fits_map import fits_reading

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    record = _common_input_record(run_dirs, data)
    settings = record["settings"]
    trained = bool(record.get("observation_options"))
    declared_observed = observation is not None and not observation.is_trivial
    if trained != declared_observed and not force:
        model = (f"maps observed with {' '.join(record['observation_options'])}" if trained
                 else "the full sky, unobserved (no mask, beam or noise)")
        given = (f"declared observed with {' '.join(o for o in (declared or []) if o.startswith('--'))}"
                 if declared_observed else "declared with none of --mask, --beam-fwhm, --noise")
        raise CmbscatError(f"{run_dirs[0]} was trained on {model}; {data} is {given}: its verdict would be "
                           "wrong; use a model trained as the map was observed, or pass --force to "
                           "evaluate anyway")
    out = Path(folder) / _made_input_name(record, data)
    command = fits_input_command(record, data, out.name, declared or [])
    with fits_reading(unit, remove_dipole):
        if record["stage"] == "scatter":
            from cmbscat.scattering.stage import scatter

            scatter(data, out, depth=settings["depth"], J0=settings["J0"], lam=settings["lam"],
                    lmax=settings["lmax"], oversample=settings["oversample"], iter=settings["map2alm_iter"],
                    min_nside=settings["min_nside"], odd=settings["odd"],
                    **({"odd_power": settings["odd_power"]} if settings["odd"] else {}),
                    progress=progress, observation=observation, nside=settings["nside"])
        else:
            from cmbscat.stats.stage import compute_stats

            compute_stats(data, out, lmax=settings["lmax"], progress=progress, observation=observation,
                          nside=settings["nside"],
                          **({"mean_field_maps": settings["mean_field_maps"]}
                             if "mean_field_maps" in settings else {}))
    if note is not None:
        note(command)
    return out, command


def evaluate(run_dir: str | Path, data: str | Path, out_dir: str | Path | None = None,
             device: str = "auto", progress: bool = True, force: bool = False,
             calibration: str | Path | None = None) -> dict:
    """Write ``metrics.json``, ``scores.npy`` (logits) and ``roc.png`` for ``run_dir`` on ``data``.

    Output goes to ``out_dir`` (default: the run folder). Returns the metrics, which
    record the model file's and the test file's hashes (:func:`evaluation_record`).
    A network trained on data observed otherwise than ``data`` (beam, noise, mask) is
    refused in one line unless ``force`` (:func:`observation_mismatch`); the metrics then
    say what differed (``observation_differs``). One evaluation writes into a folder at a
    time: a second one is refused at start (:class:`cmbscat.lock.OutputLock` on
    ``metrics.json``). ``calibration`` (f_NL estimators only): see :func:`response_calibration`.
    """
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    run = load_run(run_dir)  # a one-line error for a folder that is not a finished run, before any lock
    refuse_fits_map(run_dir, data)
    with OutputLock(Path(out_dir or run_dir) / "metrics.json"):
        return _evaluate(run_dir, run, data, out_dir, device, progress, force, t0, calibration)


def _evaluate(run_dir, run: tuple[dict, Path], data, out_dir, device: str, progress: bool, force: bool,
              t0: float, calibration=None) -> dict:
    """The body of :func:`evaluate` (``run``: :func:`load_run`'s answer), called with the
    lock on its ``metrics.json`` held."""
    config, model_path = run
    require_kind(data, MODEL_INPUTS[config["model"]], f"evaluating --model {config['model']}")
    saved = load_saved(config, model_path)
    mismatch = observation_mismatch(run_dir, saved, data, force)
    forced = {"observation_differs": mismatch} if mismatch else {}
    if config.get("target", "label") == "fnl":
        return evaluate_fnl(run_dir, data, config, out_dir, device, progress, t0, forced, saved,
                            calibration, force)
    _refuse_calibration(run_dir, calibration)
    labels = read_labels(data)
    if np.any(labels < 0):
        raise CmbscatError(f"{data} has maps without labels (-1) among labelled ones; evaluation needs "
                           "labelled test maps (a file of unlabelled maps only, e.g. a FITS map's, is "
                           "scored map by map: cmbscat evaluate RUN FILE, score_maps)")
    record = evaluation_record(run_dir, data)
    logits = _logits(config, saved, data, device, BATCH_SIZE, progress)
    metrics = classification_metrics(labels, logits)
    out = Path(out_dir) if out_dir else Path(run_dir)
    metrics.update({"model": config["model"], "seed": config.get("seed"), **test_file_record(data, out),
                    **record, **forced, "wall_seconds": time.time() - t0})
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


def evaluate_fnl(run_dir, data, config: dict, out_dir, device: str, progress: bool, t0: float,
                 forced: dict, saved: dict, calibration=None, force: bool = False) -> dict:
    """The f_NL estimator's metrics (:func:`regression_metrics`) on ``data``: ``metrics.json``,
    ``predictions.npy`` (float64 (N, 2): mean, sigma) and ``fnl.png``. ``saved``: the run's
    model as :func:`load_saved` reads it; ``forced``: what :func:`evaluate` found different in
    the observation and was told to accept (added to the metrics); ``calibration``: see
    :func:`response_calibration`. The caller holds the output's lock (:func:`evaluate` does)."""
    true = _true_fnl(data)
    record = evaluation_record(run_dir, data)
    response, calibrated = response_calibration(
        data, calibration,
        lambda path: _checked_fnl_estimates(run_dir, config, saved, path, device, progress, force))
    mean, sigma = _corrected(response, *_fnl_estimates(config, saved, data, device, BATCH_SIZE, progress))
    out = Path(out_dir) if out_dir else Path(run_dir)
    return _write_fnl_evaluation(out, true, mean, sigma,
                                 {"target": "fnl", "model": config["model"], "seed": config.get("seed"),
                                  **test_file_record(data, out), **record, **forced, **calibrated},
                                 config["model"], t0)


def _refuse_calibration(run_dir, calibration) -> None:
    """A classifier has no f_NL response to calibrate: refuse ``calibration`` in one line."""
    if calibration is not None:
        raise CmbscatError(f"--calibrate is for f_NL estimators (--target fnl); {run_dir} is a classifier")


def _checked_fnl_estimates(run_dir, config: dict, saved: dict, data, device: str, progress: bool,
                           force: bool, batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One run's f_NL estimates on ``data`` (a user's file, a calibration file) after the
    checks, before any input is read: the file's kind, its observation against the
    training data's."""
    require_kind(data, MODEL_INPUTS[config["model"]], f"estimating with --model {config['model']}")
    observation_mismatch(run_dir, saved, data, force)
    return _fnl_estimates(config, saved, data, device, batch_size, progress)


def _true_fnl(data) -> np.ndarray:
    """The test file's /fnl, refused in one line when some map has none (a FITS map)."""
    from cmbscat.experiment.datasets import read_fnl

    true = read_fnl(data)
    if not np.all(np.isfinite(true)):
        raise CmbscatError(f"{data} has maps without a known f_NL (e.g. a FITS map); "
                           "evaluating an f_NL estimator needs test maps with /fnl")
    return true


# fewest distinct true f_NL values a calibration file must have: the response has four
# coefficients, and a grid of a few values would fit them through its own noise
MIN_CALIBRATION_VALUES = 10


@dataclass(frozen=True)
class CalibrationMaps:
    """The maps an f_NL estimator's response is fitted on (``cmbscat evaluate --calibrate``).

    Attributes
    ----------
    path : path
        Labelled file of the estimator's kind (scattering or statistics), maps at many f_NL
        values (e.g. ``cmbscat simulate --fnl-dist uniform:-80,80``) that play no other part,
        observed as the training data.
    reference_run, reference_file : path, optional
        An unbiased f_NL estimator (E[estimate | f] = f: the cubic statistic's S / F, a run
        trained with ``--model cubic_fisher``) and its input file of the same maps (``cmbscat
        stats`` of the calibration sims; same ``/seeds`` and ``/fnl``): the response is then
        fitted to the estimator's mean minus the reference's estimate, map by map (the paired
        fit, :meth:`~cmbscat.experiment.fnl_calibration.ResponseCalibration.fit`). None: fitted
        against the true f_NL.
    """

    path: str | Path
    reference_run: str | Path | None = None
    reference_file: str | Path | None = None


def _reference_estimates(calibration: CalibrationMaps, true: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """The reference estimator's means on the calibration maps (None without a reference) and
    what the record says of it; a reference file of other maps is refused in one line."""
    if calibration.reference_run is None:
        return None, {}
    from cmbscat.experiment.datasets import read_seeds

    ref_file = Path(calibration.reference_file)
    if not ref_file.exists():
        raise CmbscatError(f"no such file: {ref_file} (--calibrate-against)")
    seeds, ref_seeds = read_seeds(calibration.path), read_seeds(ref_file)
    if ref_seeds.shape != seeds.shape or np.any(ref_seeds != seeds) or np.any(_true_fnl(ref_file) != true):
        raise CmbscatError(f"--calibrate-against {ref_file} does not hold the maps of --calibrate "
                           f"{calibration.path} (their /seeds or /fnl differ)")
    mean, _ = predict_fnl(calibration.reference_run, ref_file, device="cpu", progress=False)
    return mean, {"reference": {"run": str(calibration.reference_run), "file": str(ref_file),
                                "sha256": content_hash(ref_file)}}


def response_calibration(data, calibration, estimate) -> tuple:
    """The estimator's response fitted on ``calibration``, checked and fitted before the
    maps of ``data`` are estimated (so a bad calibration file is refused at once).

    Parameters
    ----------
    data : path
        The file whose estimates will be corrected (refused as its own calibration).
    calibration : :class:`CalibrationMaps`, path or None
        The calibration maps (a path: a file whose response is fitted against the true
        f_NL); None: no calibration.
    estimate : callable
        ``estimate(path) -> (mean, sigma)``: the estimator on a file.

    Returns
    -------
    (response, record) : the :class:`~cmbscat.experiment.fnl_calibration.ResponseCalibration`
    (``response.apply(mean, sigma)`` corrects estimates) and ``{"response_calibration": {...}}``
    for metrics.json / scores.json; ``(None, {})`` when ``calibration`` is None.
    """
    from cmbscat.experiment.fnl_calibration import ResponseCalibration

    if calibration is None:
        return None, {}
    maps = calibration if isinstance(calibration, CalibrationMaps) else CalibrationMaps(calibration)
    path = maps.path
    if not Path(path).exists():
        raise CmbscatError(f"no such file: {path} (--calibrate)")
    calibration_hash = content_hash(path)
    if calibration_hash == content_hash(data):
        raise CmbscatError(f"--calibrate {path} holds the maps being estimated; a calibration "
                           "fitted on them would fit their own noise (use maps that play no other part)")
    true = _true_fnl(path)
    if np.unique(true).size < MIN_CALIBRATION_VALUES:
        raise CmbscatError(f"--calibrate {path} has maps at {np.unique(true).size} f_NL values; "
                           f"fitting the response needs at least {MIN_CALIBRATION_VALUES} (e.g. "
                           "cmbscat simulate --fnl-dist uniform:-80,80)")
    reference, reference_record = _reference_estimates(maps, true)
    calibration_mean, _ = estimate(path)
    try:
        response = ResponseCalibration.fit(true, calibration_mean, reference=reference)
    except ValueError as err:
        raise CmbscatError(f"--calibrate {path}: {err}") from None
    return response, {"response_calibration": {**response.to_dict(), "file": str(path),
                                               "sha256": calibration_hash, **reference_record}}


def _corrected(response, mean: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, sigma)`` read through ``response`` (unchanged when it is None)."""
    return (mean, sigma) if response is None else response.apply(mean, sigma)


def _write_fnl_evaluation(out: Path, true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, record: dict,
                          label: str, t0: float) -> dict:
    """Write ``metrics.json`` (:func:`regression_metrics` plus ``record``), ``predictions.npy``
    (float64 (N, 2): mean, sigma) and ``fnl.png`` into ``out``; return the metrics."""
    from cmbscat.experiment.fnl_metrics import plot_predicted_vs_true, regression_metrics

    metrics = regression_metrics(true, mean, sigma)
    metrics.update({**record, "wall_seconds": time.time() - t0})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # never beside another evaluation's predictions
    with open(out / "predictions.npy.tmp", "wb") as f:
        np.save(f, np.stack([mean, sigma], axis=1))
    os.replace(out / "predictions.npy.tmp", out / "predictions.npy")
    zero = metrics["at_zero"]
    title = f"{label}: " + (f"sigma(f_NL = 0) {zero['sigma_fnl']:.2f}, " if zero else "") + \
        f"68 % coverage {100 * metrics['coverage68']:.1f} %"
    plot_predicted_vs_true(out / "fnl.png", true, mean, sigma, title)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def ensemble_fnl_estimates(run_dirs, data, device: str = "auto", progress: bool = True,
                           force: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One f_NL estimate per map of ``data`` from several runs of one method (seeds), combined
    by :func:`cmbscat.experiment.fnl_estimators.ensemble_estimate` (the average, with an error
    that lets each seed's own noise average down): (mean, sigma) float64 (N,) each, and per
    run ``{"run", "model", "seed", "model_sha256"}`` (plus ``observation_differs`` when
    ``force`` let a difference through).

    Every run must be a finished f_NL estimator (``--target fnl``) of the same ``--model``,
    trained on data observed as ``data`` (else refused in one line unless ``force``); at
    least two runs, since one run needs no ensemble.
    """
    return _ensemble_on(_ensemble_members(run_dirs), data, device, progress, force)


def _ensemble_members(run_dirs) -> list[tuple[Path, dict, Path, dict]]:
    """The runs of an ensemble, checked (see :func:`ensemble_fnl_estimates`) and loaded once:
    per run (folder, config, model path, saved model)."""
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise CmbscatError("an ensemble needs at least two runs (one run is evaluated on its own)")
    if len(set(map(os.path.realpath, run_dirs))) < len(run_dirs):
        raise CmbscatError("a run is named twice; an ensemble combines different runs (seeds)")
    runs = [load_run(r) for r in run_dirs]
    models = sorted({config["model"] for config, _ in runs})
    if len(models) > 1:
        raise CmbscatError(f"an ensemble combines runs of one method (seeds); these are {', '.join(models)}")
    for run_dir, (config, _) in zip(run_dirs, runs):
        if config.get("target", "label") != "fnl":
            raise CmbscatError(f"{run_dir} is a classifier (trained with --target label); ensembles "
                               "combine f_NL estimators (--target fnl)")
    return [(run_dir, config, model_path, load_saved(config, model_path))
            for run_dir, (config, model_path) in zip(run_dirs, runs)]


def _ensemble_on(members: list, data, device: str, progress: bool,
                 force: bool) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """:func:`ensemble_fnl_estimates` with the runs already loaded (:func:`_ensemble_members`)."""
    from cmbscat.experiment.fnl_estimators import ensemble_estimate

    model = members[0][1]["model"]
    require_kind(data, MODEL_INPUTS[model], f"evaluating --model {model}")
    # every run's observation is checked before any input is read
    mismatches = [observation_mismatch(run_dir, saved, data, force) for run_dir, _, _, saved in members]
    means, sigmas, records = [], [], []
    for (run_dir, config, model_path, saved), mismatch in zip(members, mismatches):
        mean, sigma = _fnl_estimates(config, saved, data, device, BATCH_SIZE, progress)
        means.append(mean)
        sigmas.append(sigma)
        records.append({"run": str(run_dir), "model": config["model"], "seed": config.get("seed"),
                        "model_sha256": file_sha256(model_path),
                        **({"observation_differs": mismatch} if mismatch else {})})
    mean, sigma = ensemble_estimate(np.stack(means), np.stack(sigmas))
    return mean, sigma, records


def _ensemble_record(runs: list[dict]) -> dict:
    """What an ensemble's metrics.json or scores.json says it was made from: the method,
    each run (:func:`ensemble_fnl_estimates`'s records) and their seeds."""
    return {"model": runs[0]["model"], "ensemble_of": runs, "seed": [r["seed"] for r in runs]}


def evaluate_ensemble(run_dirs, data: str | Path, out_dir: str | Path, device: str = "auto",
                      progress: bool = True, force: bool = False, calibration=None) -> dict:
    """Evaluate the ensemble of the f_NL runs ``run_dirs`` (:func:`ensemble_fnl_estimates`) on
    the labelled test file ``data``: ``metrics.json`` (as :func:`evaluate` writes for one
    run, with ``ensemble_of``: each run, its seed and model hash, and ``test_sha256``),
    ``predictions.npy`` and ``fnl.png`` in ``out_dir``, which must be given (an ensemble
    belongs to no one run's folder); ``calibration``: see :func:`response_calibration`.
    Returns the metrics."""
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    with OutputLock(Path(out_dir) / "metrics.json"):
        true = _true_fnl(data)
        members = _ensemble_members(run_dirs)  # loaded once for the calibration and the test file
        response, calibrated = response_calibration(
            data, calibration, lambda path: _ensemble_on(members, path, device, progress, force)[:2])
        mean, sigma, runs = _ensemble_on(members, data, device, progress, force)
        mean, sigma = _corrected(response, mean, sigma)
        record = {"target": "fnl", **_ensemble_record(runs), **test_file_record(data, out_dir),
                  "test_sha256": content_hash(data), **calibrated}
        return _write_fnl_evaluation(Path(out_dir), true, mean, sigma, record,
                                     f"{runs[0]['model']} ensemble of {len(runs)}", t0)


def false_alarm_probability(scores: np.ndarray, gaussian_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided empirical p-values of ``scores`` (float (N,)) among ``gaussian_scores``
    (float (n,), the scores of n Gaussian reference maps): (p float64 (N,), k int64 (N,)).

    k = #{Gaussian reference scores >= score} and p = (1 + k) / (1 + n): the probability
    that a Gaussian map scores at least as high, counting the map itself among them
    (Davison & Hinkley 1997), so p is never 0; its floor is 1 / (1 + n).
    """
    reference = np.sort(np.asarray(gaussian_scores, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    k = reference.size - np.searchsorted(reference, scores, side="left")
    return (1.0 + k) / (1.0 + reference.size), k.astype(np.int64)


def default_reference(run_dir: str | Path) -> Path:
    """The labelled test file that the run was evaluated on: ``test_file`` of the run
    folder's ``metrics.json`` (what ``cmbscat evaluate`` and the pipeline write there),
    found from any working directory: an absolute path as it is, else ``test_file_from_out``
    against the run folder, and a relative ``test_file`` (written by an evaluation run
    elsewhere) against the working directory, the run folder and each folder above it,
    the one with the recorded ``test_sha256`` first
    (:func:`~cmbscat.experiment.train.locate_recorded_file`). One-line error, asking for
    ``--reference``, when there is none or it is gone."""
    metrics_path = Path(run_dir) / "metrics.json"
    ask = ("give --reference TEST.h5, a labelled test file of the same kind, observed as the "
           "training data, whose Gaussian maps set the false-alarm probability")
    if not metrics_path.exists():
        raise CmbscatError(f"{run_dir} has no metrics.json naming its test file; {ask}")
    try:
        metrics = json.loads(metrics_path.read_text())
        test_file, sha = metrics.get("test_file"), metrics.get("test_sha256")
        from_out = metrics.get("test_file_from_out")
    except (json.JSONDecodeError, AttributeError):
        raise CmbscatError(f"{metrics_path} is not a readable metrics file; {ask}") from None
    found = None
    if test_file:
        found = locate_recorded_file(test_file, run_dir, sha)
    if from_out and (found is None or (sha and _content_hash_or_none(found) != sha)):
        moved = Path(run_dir) / from_out
        if moved.is_file() and (found is None or _content_hash_or_none(moved) == sha):
            found = moved
    if found is None:
        raise CmbscatError(f"{metrics_path} names test file {test_file!r}, which is not there; {ask}")
    return found


def _content_hash_or_none(path) -> str | None:
    try:
        return content_hash(path)
    except (CmbscatError, OSError):
        return None


def _unlabelled(data: str | Path) -> np.ndarray:
    """Labels of ``data``, refused (one line) unless every map is unlabelled (-1)."""
    labels = read_labels(data)
    if labels.size == 0 or not np.all(labels < 0):
        raise CmbscatError(f"{data} has labelled maps; score_maps is for unlabelled ones "
                           "(cmbscat evaluate gives labelled test maps their metrics)")
    return labels


def is_unlabelled(data: str | Path) -> bool:
    """True when every map of the stage file ``data`` has label -1 (a user's map)."""
    labels = read_labels(data)
    return labels.size > 0 and bool(np.all(labels < 0))


def score_maps(run_dir: str | Path, data: str | Path, reference: str | Path | None = None,
               out_dir: str | Path | None = None, device: str = "auto", progress: bool = True,
               force: bool = False, calibration: str | Path | None = None,
               made_from: dict | None = None) -> dict:
    """Score every map of the unlabelled file ``data`` (e.g. ``cmbscat scatter MAP.fits``'s
    output) with the run in ``run_dir``; write ``scores.json`` in ``out_dir`` (default: the run
    folder) and return what it holds.

    A classifier gives each map its score s (the logit, log-odds of non-Gaussian), its
    probability sigmoid(s) (at the training set's class balance, half non-Gaussian), and
    its false-alarm probability p = (1 + k) / (1 + n), k of the n Gaussian maps of
    ``reference`` scoring >= s (:func:`false_alarm_probability`; floor 1 / (1 + n)).
    ``reference``: a labelled file of the same kind as ``data`` with Gaussian maps, observed
    as the training data; default :func:`default_reference`. An f_NL estimator (``--target
    fnl``) gives each map its f_NL estimate and sigma, and needs no reference; with
    ``calibration`` they are read through its response (:func:`response_calibration`).

    A network trained on data observed otherwise (beam, noise, mask) than ``data`` or the
    reference is refused in one line unless ``force`` (:func:`observation_mismatch`; what
    differed is then recorded). A second scoring into the same folder is refused at start
    (:class:`cmbscat.lock.OutputLock` on ``scores.json``). A FITS map as ``data`` is refused
    with the command that makes the model's input from it (:func:`fits_hint`; the CLI makes
    it itself, :func:`fits_input`, and passes ``made_from``: what scores.json then records
    of the FITS map and of how its input was made).
    """
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    run = load_run(run_dir)  # a one-line error for a folder that is not a finished run, before any lock
    refuse_fits_map(run_dir, data)
    with OutputLock(Path(out_dir or run_dir) / "scores.json"):
        return _score_maps(run_dir, run, data, reference, out_dir, device, progress, force, t0,
                           calibration, made_from)


def _score_maps(run_dir, run: tuple[dict, Path], data, reference, out_dir, device: str, progress: bool,
                force: bool, t0: float, calibration=None, made_from: dict | None = None) -> dict:
    """The body of :func:`score_maps` (``run``: :func:`load_run`'s answer), called with the
    lock on its ``scores.json`` held."""
    from scipy.special import expit

    config, model_path = run
    kinds = MODEL_INPUTS[config["model"]]
    require_kind(data, kinds, f"scoring with --model {config['model']}")
    _unlabelled(data)
    saved = load_saved(config, model_path)
    mismatch = observation_mismatch(run_dir, saved, data, force)
    record = {"run": str(run_dir), "model": config["model"], "seed": config.get("seed"),
              "data": str(data), "data_sha256": content_hash(data), "model_sha256": file_sha256(model_path),
              **(made_from or {}), **({"observation_differs": mismatch} if mismatch else {})}
    if config.get("target", "label") == "fnl":
        if reference is not None:
            raise CmbscatError("--reference is for classifiers; an f_NL estimator's maps need none")
        response, calibrated = response_calibration(
            data, calibration,
            lambda path: _checked_fnl_estimates(run_dir, config, saved, path, device, progress, force))
        mean, sigma = _corrected(response, *_fnl_estimates(config, saved, data, device, BATCH_SIZE, progress))
        out = {**record, **_fnl_scores(mean, sigma), **calibrated}
    else:
        _refuse_calibration(run_dir, calibration)
        reference = default_reference(run_dir) if reference is None else Path(reference)
        if not reference.exists():
            raise CmbscatError(f"no such file: {reference} (--reference)")
        require_kind(reference, kinds, f"a --reference for --model {config['model']}")
        ref_labels = read_labels(reference)
        n_gauss = int(np.sum(ref_labels == 0))
        if np.any(ref_labels < 0) or n_gauss == 0:
            raise CmbscatError(f"--reference {reference} needs labelled maps with Gaussian ones (label 0); "
                               f"it has {n_gauss} Gaussian of {ref_labels.size}")
        ref_mismatch = observation_mismatch(run_dir, saved, reference, force)
        logits = _logits(config, saved, data, device, BATCH_SIZE, progress)
        ref_logits = _logits(config, saved, reference, device, BATCH_SIZE, progress)
        p_value, above = false_alarm_probability(logits, ref_logits[ref_labels == 0])
        out = {**record, "target": "label", "reference": str(Path(reference).resolve()),
               "reference_sha256": content_hash(reference), "n_reference_gaussian": n_gauss,
               "p_value_floor": 1.0 / (1 + n_gauss),
               **({"reference_observation_differs": ref_mismatch} if ref_mismatch else {}),
               "maps": [{"index": i, "score": float(s), "probability": float(expit(s)),
                         "p_value": float(p), "n_gaussian_at_or_above": int(k)}
                        for i, (s, p, k) in enumerate(zip(logits, p_value, above))],
               "meaning": "score: the logit (log-odds of non-Gaussian); probability: sigmoid(score), at "
                          "the training set's class balance, a score, not a calibrated probability; "
                          "p_value: one-sided empirical false-alarm probability (1 + "
                          "n_gaussian_at_or_above) / (1 + n_reference_gaussian), the fraction of "
                          "Gaussian reference maps scoring at least as high (the map counted among "
                          "them), floor 1 / (1 + n_reference_gaussian); a map scoring below every "
                          "reference map has p = 1"}
    out["wall_seconds"] = time.time() - t0
    folder = Path(out_dir) if out_dir else Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "scores.json", json.dumps(out, indent=2))
    return out


def _fnl_scores(mean: np.ndarray, sigma: np.ndarray) -> dict:
    """scores.json's per-map entries of an f_NL estimate (mean, sigma float (N,))."""
    return {"target": "fnl",
            "maps": [{"index": i, "fnl": float(m), "sigma_fnl": float(e)}
                     for i, (m, e) in enumerate(zip(mean, sigma))],
            "meaning": "fnl: the estimate of local f_NL; sigma_fnl: its 1-sigma error as the run "
                       "predicts it (calibrated on its validation split; cubic_fisher: the Fisher bound; "
                       "an ensemble: cmbscat.experiment.fnl_estimators.ensemble_estimate)"}


def score_maps_ensemble(run_dirs, data: str | Path, out_dir: str | Path, device: str = "auto",
                        progress: bool = True, force: bool = False, calibration=None,
                        made_from: dict | None = None) -> dict:
    """Estimate f_NL +/- sigma of every map of the unlabelled file ``data`` with the ensemble
    of the f_NL runs ``run_dirs`` (:func:`ensemble_fnl_estimates`); write ``scores.json`` in
    ``out_dir`` (required: an ensemble belongs to no one run's folder) and return what it
    holds (as :func:`score_maps` for one f_NL run, with ``ensemble_of``)."""
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    refuse_fits_map(run_dirs, data)
    with OutputLock(Path(out_dir) / "scores.json"):
        _unlabelled(data)
        response, calibrated = response_calibration(
            data, calibration, lambda path: ensemble_fnl_estimates(run_dirs, path, device, progress, force)[:2])
        mean, sigma, runs = ensemble_fnl_estimates(run_dirs, data, device, progress, force)
        mean, sigma = _corrected(response, mean, sigma)
        out = {**_ensemble_record(runs), "data": str(data), "data_sha256": content_hash(data),
               **(made_from or {}), **_fnl_scores(mean, sigma), **calibrated,
               "wall_seconds": time.time() - t0}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / "scores.json", json.dumps(out, indent=2))
        return out
