"""The ``train`` stage: fit a classifier on a sims, scattering or statistics file into a run folder.

Run folder contents:

* ``config.json``       the training configuration and ``data_sha256``, the content hash
                        of the training file (:func:`run_record`); a re-run with another
                        configuration or other data is refused;
* ``model.pt``          the best checkpoint (lowest validation loss) with everything
                        ``evaluate`` needs: model kind and shape, input standardisation
                        (from the training split only), input geometry, whether it was
                        trained with a mask (``masked``) and how its data were observed
                        (``observation``, :func:`cmbscat.experiment.datasets.observation_identity`);
* ``last.pt``           the latest epoch's full state (model, optimiser, scheduler,
                        history), from which an interrupted run resumes;
* ``history.csv``, ``curves.png``   learning curves;
* ``model.pkl``         instead of the ``.pt`` files, for the classical baselines;
* ``input.json``        how a user's map must be made into this model's input
                        (:func:`input_record`: the ``cmbscat scatter`` or ``stats`` settings
                        of the training data, its observation), read by ``cmbscat evaluate
                        RUN MAP.fits``; not part of the run's record.

While a run trains, ``RUN_DIR.lock`` sits beside (not in) the folder: one writer at a time.

Model kinds: ``hybrid`` (scattering file), ``baseline`` (sims file, map cut to a low
band limit), and the classical ones, a logistic regression on one statistic
(:mod:`cmbscat.stats.summary`) read from a statistics file (``cmbscat stats``) or
computed from a sims file: ``powspec`` (binned power spectrum), ``onepoint``
(skewness and kurtosis), ``cubic`` (the locally optimal cubic statistic, the limit
for local f_NL) and ``minkowski`` (the three Minkowski functionals at 13 thresholds).

Masked data: a scattering file with ``/weight`` (``cmbscat scatter`` of a masked sims
file), or a masked sims file for the baseline, gives the networks a pooling weight
(:func:`model_weight`), passed to every forward pass: the invariant pooling is then a
weighted mean and standard deviation, and the masked region does not count.

Targets: ``label`` (default), a classifier of Gaussian against non-Gaussian maps;
``fnl``, an estimator of each map's f_NL (``/fnl`` of the file, ``cmbscat simulate
--fnl-dist``) with a predicted error (:mod:`cmbscat.experiment.fnl_estimators`): the
networks output a mean and a log sigma trained with the Gaussian likelihood, the
classical statistics get a small MLP with the same likelihood, and ``cubic_fisher``
(regression only) is the anchor S / F, fitted to nothing. Every fitted estimator's
sigma is calibrated on the validation split.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmbscat.errors import CmbscatError
from cmbscat.lock import OutputLock
from cmbscat.store import atomic_write_text, content_hash, describe_difference, differing_keys

NN_MODELS = ("hybrid", "baseline")
CLASSICAL_MODELS = ("powspec", "onepoint", "cubic", "minkowski", "cubic_fisher")
#: Models that estimate f_NL only (``--target fnl``): the cubic statistic over its Fisher information.
FNL_ONLY_MODELS = ("cubic_fisher",)
#: The statistic each classical model reads (its own name, but for the anchor).
STATISTIC_OF = {"cubic_fisher": "cubic"}
TARGETS = ("label", "fnl")
MODELS = NN_MODELS + CLASSICAL_MODELS
#: Random-rotation augmentation by default: on for the hybrid (its inputs are band-limited
#: coefficient maps at low nside, rotated exactly and cheaply in harmonic space).
AUGMENT_DEFAULT = {"hybrid": True}
#: Batch-norm statistics recomputed on the training split with each epoch's weights before
#: validation ("precise BN", :func:`cmbscat.nn.models.recompute_batch_norm`), by default for
#: the baseline: its pooled features barely differ from map to map (logits spread ~0.1),
#: so the running averages (momentum 0.1: the last ~10 batches, with weights that moved
#: since) shifted every validation logit the same way, by more than that spread, and all
#: maps were predicted one class in 11 of 20 epochs. The hybrid keeps the running averages.
PRECISE_BN_DEFAULT = {"baseline": True}
#: The stage files each model can read (DESIGN.md layouts; :func:`cmbscat.store.file_kind`).
MODEL_INPUTS = {"hybrid": ("scattering",), "baseline": ("sims",),
                **{m: ("stats", "sims") for m in CLASSICAL_MODELS}}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``config.json``)."""

    data: str
    model: str = "hybrid"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    baseline_nside: int = 64
    baseline_lmax: int = 127
    patience: int = 0
    #: exact random rotations of the training inputs (:mod:`cmbscat.experiment.augment`);
    #: None: the model's default (:data:`AUGMENT_DEFAULT`)
    augment: bool | None = None
    #: recompute batch-norm statistics on the training split before each validation;
    #: None: the model's default (:data:`PRECISE_BN_DEFAULT`)
    precise_bn: bool | None = None
    #: train on the first ``max_maps`` maps of the file only (0: all), e.g. for learning curves
    max_maps: int = 0
    #: "all" the file's channels, or "even": the hybrid on the S[p] channels only of a
    #: scattering file with odd channels (an ablation without recomputing the transform)
    channels: str = "all"
    #: "label": classify Gaussian vs non-Gaussian; "fnl": estimate each map's f_NL with an error
    target: str = "label"
    #: f_NL networks: train on maps negated with their f_NL (probability 1/2 per example) and
    #: estimate with the odd combination [m(x) - m(-x)] / 2 (:class:`fnl_estimators.SignFlip`)
    sign_flip: bool = False

    def resolved(self) -> "TrainConfig":
        """This configuration with model-dependent defaults filled in."""
        filled = {}
        if self.augment is None:
            filled["augment"] = AUGMENT_DEFAULT.get(self.model, False)
        if self.precise_bn is None:
            filled["precise_bn"] = PRECISE_BN_DEFAULT.get(self.model, False)
        return replace(self, **filled) if filled else self

    def validate(self) -> None:
        for name in ("lr", "weight_decay", "val_fraction"):
            if not math.isfinite(getattr(self, name)):
                raise CmbscatError(f"--{name.replace('_', '-')} must be a finite number, "
                                   f"got {getattr(self, name)}")
        if self.model not in MODELS:
            raise CmbscatError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.target not in TARGETS:
            raise CmbscatError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.model in FNL_ONLY_MODELS and self.target != "fnl":
            raise CmbscatError(f"--model {self.model} estimates f_NL: use it with --target fnl")
        if self.epochs < 1:
            raise CmbscatError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise CmbscatError(f"--batch-size must be >= 2 (batch normalisation), got {self.batch_size}")
        if not self.lr > 0:
            raise CmbscatError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise CmbscatError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.patience < 0:
            raise CmbscatError(f"--patience must be >= 0 (0: never stop early), got {self.patience}")
        if not 0 < self.val_fraction < 1:
            raise CmbscatError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_maps < 0:
            raise CmbscatError(f"--max-maps must be >= 0 (0: all), got {self.max_maps}")
        if self.channels not in ("all", "even"):
            raise CmbscatError(f"--channels must be all or even, got {self.channels!r}")
        if self.channels != "all" and self.model != "hybrid":
            raise CmbscatError(f"--channels {self.channels} applies to the hybrid only")
        if self.precise_bn and self.model not in NN_MODELS:
            raise CmbscatError(f"--precise-bn applies to the networks only, not to --model {self.model}")
        if self.sign_flip and (self.target != "fnl" or self.model not in NN_MODELS):
            raise CmbscatError("--sign-flip applies to the networks' f_NL estimators only "
                               "(--model hybrid or baseline with --target fnl)")
        if self.augment and self.model != "hybrid":
            raise CmbscatError(f"--augment applies to the hybrid's scattering coefficients only, "
                               f"not to --model {self.model}")


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split into (train, validation) indices, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, int(round(val_fraction * idx.size)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train, val = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if train.size < 2:
        raise CmbscatError("too few maps to train: need at least 2 in the training split")
    return train, val


def model_inputs(kind: str, path: str, meta: dict | None = None, progress: bool = True,
                 channels: str = "all") -> tuple[np.ndarray, dict]:
    """Inputs of model ``kind`` from the file ``path`` and their geometry.

    Returns (x, meta): x is (N, C, npix) float32 for the networks or (N, F) for the
    classical models. ``meta`` (from training) fixes the geometry when evaluating,
    the hybrid's channel selection included; ``channels="even"`` keeps only a
    scattering file's S[p] channels (not its odd channels).
    """
    from cmbscat.experiment import datasets

    if kind == "hybrid":
        x, found = datasets.scattering_inputs(path)
        channels = (meta or {}).get("channel_selection", channels)
        if channels == "even":
            n_even = len(found["paths"])
            x = x[:, :n_even]
            found = {**found, "channels": n_even, "odd_pairs": [], "channel_selection": "even"}
        if meta is not None:
            for key in ("nside", "channels", "paths", "odd_pairs"):
                if meta.get(key, []) != found.get(key, []):  # models from before odd_pairs: []
                    raise CmbscatError(f"{path} does not match the trained model: its {key} is "
                                       f"{found.get(key)}, the model's {meta.get(key)}")
        return x, found
    if kind == "baseline":
        nside, lmax = (meta["nside"], meta["lmax"]) if meta else (None, None)
        return datasets.lowres_maps(path, nside, lmax, progress), {"nside": nside, "lmax": lmax}
    x = datasets.classical_features(path, STATISTIC_OF.get(kind, kind), progress)
    found = {"lmax": datasets.band_limit(path), "n_features": int(x.shape[1])}
    if meta:  # models saved before this record existed have an empty meta
        for key in ("lmax", "n_features"):
            if meta.get(key) != found[key]:
                raise CmbscatError(f"{path} does not match the trained model: its {kind} statistics "
                                   f"have {key} {found[key]}, the model's {meta.get(key)}")
    return x, found


def model_weight(kind: str, path: str, meta: dict) -> np.ndarray | None:
    """The networks' pooling weight from the file ``path``: float32 (npix,), RING at the
    input nside ``meta["nside"]``, in [0, 1], one map for every map of the file; None for a
    file without a mask (and for the classical models).

    hybrid: the scattering file's ``/weight`` (the mask low-passed like the coefficients);
    baseline: the sims file's mask averaged to the baseline's nside
    (:func:`cmbscat.experiment.datasets.lowres_weight`).
    """
    from cmbscat.experiment import datasets

    if kind == "hybrid":
        return datasets.scattering_weight(path)
    if kind == "baseline":
        return datasets.lowres_weight(path, meta["nside"])
    return None


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run_dir / "history.csv")


def plot_curves(run_dir: Path, history: list[dict]) -> None:
    """Loss and accuracy against epoch, training and validation, to ``curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    regression = "val_rmse" in history[0]
    score = "rmse" if regression else "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        axes[0].plot(epochs, [h[f"{split}_loss"] for h in history], label=split)
        axes[1].plot(epochs, [h[f"{split}_{score}"] for h in history], label=split)
    axes[0].set_ylabel("Gaussian negative log-likelihood" if regression else "binary cross-entropy")
    axes[1].set_ylabel("f_NL rms error" if regression else "accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=120)
    plt.close(fig)


def run_record(config: TrainConfig) -> dict:
    """What a run folder's ``config.json`` holds: the configuration and the content hash
    (:func:`cmbscat.store.content_hash`) of the training data it was trained on."""
    return {**asdict(config), "data_sha256": content_hash(config.data)}


#: What input.json says (:func:`input_record`).
INPUT_MEANING = ("a user's map is this model's input when made with `cmbscat STAGE MAP.fits OUT.h5 "
                 "OPTIONS` (stage, options), its observation declared as the training data's were "
                 "made (observation, observation_options: the mask, beam and noise the map must have "
                 "been observed with); cmbscat evaluate RUN MAP.fits makes it so")


def input_record(data: str | Path, model: str) -> dict:
    """How a map becomes the input of a ``model`` trained on the stage file ``data``
    (what a run folder's ``input.json`` holds, :func:`write_input_record`).

    ``stage``: "scatter" or "stats" (None for the low-resolution baseline, which reads sims
    files only); ``settings``: the training data's settings of that stage (scatter: the map
    nside, lmax, J0, depth, lam, odd channels and their power, oversample, min_nside,
    map2alm_iter; stats: nside, lmax, and the mean-field maps of an observed file), nside
    being the analysis nside of a FITS map (``--nside``); ``options``: them as command-line
    options (those at their defaults left out, but nside, lmax, J0 and depth);
    ``observation`` (:func:`~cmbscat.experiment.datasets.observation_identity`) and
    ``observation_options``: how the training maps were observed (--mask, --apodize,
    --beam-fwhm, --noise, --hits), as a FITS map must be declared.
    """
    import h5py

    from cmbscat.experiment.datasets import observation_identity
    from cmbscat.store import file_kind

    kind = file_kind(data)
    observation = observation_identity(data)
    with h5py.File(data, "r") as f:
        attrs = dict(f.attrs)
    params = json.loads(attrs.get("cmbscat_params", "{}") or "{}")
    if model == "baseline":
        stage, settings, options = None, {"nside": int(attrs["nside"]), "lmax": int(attrs["lmax"])}, []
    elif kind == "scattering":
        from cmbscat.scattering.transform import (DEFAULT_ITER, DEFAULT_MIN_NSIDE, DEFAULT_ODD_POWER,
                                                  DEFAULT_OVERSAMPLE, nside_for_band)

        lmax = int(attrs["lmax"])
        odd = bool(attrs.get("odd", False))
        settings = {"nside": int(attrs["source_nside"]), "lmax": lmax, "J0": int(attrs["J0"]),
                    "depth": int(attrs["depth"]), "lam": float(attrs.get("lam", 2.0)), "odd": odd,
                    "odd_power": int(attrs["odd_power"]) if odd else None,
                    "oversample": float(attrs.get("oversample", DEFAULT_OVERSAMPLE)),
                    "min_nside": int(attrs["min_nside"]), "map2alm_iter": int(attrs.get("map2alm_iter", DEFAULT_ITER))}
        stage = "scatter"
        options = ["--nside", settings["nside"], "--lmax", lmax, "--J0", settings["J0"], "--depth", settings["depth"]]
        if settings["lam"] != 2.0:
            options += ["--lam", f"{settings['lam']:g}"]
        if odd:
            options += ["--odd"] + (["--odd-power", settings["odd_power"]]
                                    if settings["odd_power"] != DEFAULT_ODD_POWER else [])
        if settings["oversample"] != DEFAULT_OVERSAMPLE:
            options += ["--oversample", f"{settings['oversample']:g}"]
        if settings["min_nside"] != min(DEFAULT_MIN_NSIDE, nside_for_band(lmax)):
            options += ["--min-nside", settings["min_nside"]]
        if settings["map2alm_iter"] != DEFAULT_ITER:
            options += ["--iter", settings["map2alm_iter"]]
    else:  # a statistics file, or a sims file the classical model computed them from
        from cmbscat.stats.observed import DEFAULT_MEAN_FIELD_MAPS

        stage = "stats"
        settings = {"nside": int(attrs["nside"]), "lmax": int(attrs["lmax"])}
        options = ["--nside", settings["nside"], "--lmax", settings["lmax"]]
        if "mean_field_maps" in params:
            settings["mean_field_maps"] = int(params["mean_field_maps"])
            if settings["mean_field_maps"] != DEFAULT_MEAN_FIELD_MAPS:
                options += ["--mean-field-maps", settings["mean_field_maps"]]
    declared = []
    for key, option in (("mask", "--mask"), ("apodize_deg", "--apodize"), ("beam_fwhm_arcmin", "--beam-fwhm"),
                        ("noise_uk_arcmin", "--noise"), ("hits", "--hits")):
        value = observation.get(key)
        if value:
            declared += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return {"stage": stage, "settings": settings, "options": [str(o) for o in options],
            "observation": observation, "observation_options": declared,
            "data": str(data), "meaning": INPUT_MEANING}


def write_input_record(run_dir: Path, config: TrainConfig) -> None:
    """Write ``run_dir/input.json`` (:func:`input_record` of the training data). Best effort:
    a training file whose attributes do not tell (another program's) leaves none, and
    ``cmbscat evaluate RUN MAP.fits`` then asks for the input to be made by hand."""
    try:
        record = input_record(config.data, config.model)
    except (CmbscatError, KeyError, OSError, TypeError, ValueError):
        return
    atomic_write_text(run_dir / "input.json", json.dumps(record, indent=2))


def locate_recorded_file(recorded: str | Path, folder: str | Path, sha256: str | None = None) -> Path | None:
    """The file a record in ``folder`` (a run or evaluation folder) names as ``recorded``,
    from any working directory: the path itself if absolute; a relative one (as written
    by a command run elsewhere) against the working directory, ``folder`` and each folder
    above ``folder``. With ``sha256`` (the recorded content hash,
    :func:`cmbscat.store.content_hash`) the first candidate with that content; without
    it, or when none has it, the first that exists. None when none exists."""
    recorded = Path(recorded)
    folder = Path(folder).resolve()
    if recorded.is_absolute():
        candidates = [recorded]
    else:
        candidates = [Path.cwd() / recorded, folder / recorded] + [up / recorded for up in folder.parents]
    existing = [c for c in dict.fromkeys(candidates) if c.is_file()]
    if sha256:
        for candidate in existing:
            try:
                if content_hash(candidate) == sha256:
                    return candidate
            except (CmbscatError, OSError):
                continue
    return existing[0] if existing else None


def read_input_record(run_dir: str | Path) -> dict | None:
    """The run's ``input.json`` (:func:`input_record`); for a run made before it existed,
    the same record derived from its training data (``config.json``'s ``data``, found by
    :func:`locate_recorded_file` with its content hash); None when neither tells."""
    run_dir = Path(run_dir)
    path = run_dir / "input.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    try:
        config = read_run_record(run_dir)
    except json.JSONDecodeError:
        return None
    if not config or "data" not in config:
        return None
    data = locate_recorded_file(config["data"], run_dir, config.get("data_sha256"))
    if data is None:
        return None
    try:
        return input_record(data, config.get("model", ""))
    except (CmbscatError, KeyError, OSError, TypeError, ValueError):
        return None


def read_run_record(run_dir: str | Path) -> dict | None:
    """The record in ``run_dir/config.json``, or None when there is none."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def record_defaults(config: TrainConfig) -> dict:
    """Values that settings added since a run was made take when its record lacks them:
    the behaviour before the setting existed (no augmentation, running batch-norm
    averages), not today's default."""
    return asdict(TrainConfig(data=config.data, augment=False, precise_bn=False))


def _existing_run(run_dir: Path, config: TrainConfig, record: dict) -> bool:
    """True if ``run_dir`` holds this run (finished or not); one-line error if another. Writes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CmbscatError(f"{run_dir} exists and is not a folder")
    old = read_run_record(run_dir)
    if old is None:
        return False
    defaults = record_defaults(config)
    differing = differing_keys(old, record, defaults)
    if differing:
        what = (f"was trained on other data (the content of {config.data} differs)"
                if differing == ["data_sha256"] else "holds a run with other settings")
        raise CmbscatError(f"{run_dir} {what} ({describe_difference(old, record, defaults)}); "
                           "use another run folder")
    return True


def _create_run_dir(run_dir: Path, record: dict, config: TrainConfig | None = None) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))
        if config is not None:
            write_input_record(run_dir, config)
    except OSError as exc:
        raise CmbscatError(f"cannot write run folder {run_dir}: {exc.strerror or exc}") from None


def train(run_dir: str | Path, config: TrainConfig, device: str = "auto",
          progress: bool = True) -> dict:
    """Train (or resume, or find finished) the run in ``run_dir``; return its summary.

    Every check, reading the inputs included (non-finite values are refused), comes
    before anything is written, so a refused run leaves no folder behind. A finished run
    is read without a lock; otherwise the run holds ``RUN_DIR.lock``, beside the folder
    and so never part of its record, while it trains: a second ``train`` on the same
    folder is refused at start, and the lock of a killed run is taken over
    (:class:`cmbscat.lock.OutputLock`).
    """
    config = config.resolved()
    config.validate()
    run_dir = Path(run_dir)
    if not Path(config.data).exists():
        raise CmbscatError(f"no such file: {config.data}")
    from cmbscat.store import require_kind

    require_kind(config.data, MODEL_INPUTS[config.model], f"--model {config.model}")
    record = run_record(config)
    existing = _existing_run(run_dir, config, record)
    summary_path = run_dir / "summary.json"
    if existing and summary_path.exists():
        if not (run_dir / "input.json").exists():  # a run made before input.json existed
            write_input_record(run_dir, config)
        return json.loads(summary_path.read_text())
    t0 = time.time()
    from cmbscat.nn.distributed import DistributedContext

    dist = DistributedContext.from_env()
    if dist.active and config.model not in NN_MODELS:
        raise CmbscatError(f"--model {config.model} is a logistic regression: train it with one "
                           "process, not under torchrun")
    if config.model in NN_MODELS:
        device = dist.device(resolve_device(device))
    if dist.active:
        return _train_distributed(run_dir, config, record, device, progress, dist, t0)
    with OutputLock(run_dir):  # RUN_DIR.lock beside the folder: a second run is refused here
        existing = _existing_run(run_dir, config, record)  # again: another run may have ended
        if existing and summary_path.exists():
            return json.loads(summary_path.read_text())
        inputs = _load_inputs(config, progress)
        if not existing:
            _create_run_dir(run_dir, record, config)
        if config.model in CLASSICAL_MODELS:
            summary = _train_classical(run_dir, config, inputs)
        else:
            summary = _train_network(run_dir, config, inputs, device, progress)
        summary["wall_seconds"] = time.time() - t0  # this invocation: input loading and training
        atomic_write_text(summary_path, json.dumps(summary, indent=2))
        return summary


def _train_distributed(run_dir: Path, config: TrainConfig, record: dict, device: str, progress: bool,
                       dist, t0: float) -> dict:
    """The body of :func:`train` on one rank of a ``torchrun`` launch.

    Rank 0 holds the run folder's lock, creates the folder and writes everything in it;
    the other ranks train their slices and write nothing. Every rank loads the whole
    training file (standardisation from the whole training split, as one process).
    """
    import contextlib

    summary_path = run_dir / "summary.json"
    dist.init(device)
    try:
        with (OutputLock(run_dir) if dist.is_main else contextlib.nullcontext()):
            existing = _existing_run(run_dir, config, record) if dist.is_main else None
            if dist.agree(bool(existing) and summary_path.exists(), _collective_device(device)):
                dist.barrier()
                return json.loads(summary_path.read_text())
            inputs = _load_inputs(config, progress and dist.is_main)
            if dist.is_main and not existing:
                _create_run_dir(run_dir, record, config)
            dist.barrier()  # the folder (and a resumable last.pt) exists before any rank reads it
            summary = _train_network(run_dir, config, inputs, device, progress, dist)
            summary["wall_seconds"] = time.time() - t0
            summary["world_size"] = dist.world_size
            if dist.is_main:
                atomic_write_text(summary_path, json.dumps(summary, indent=2))
            dist.barrier()
            return summary
    finally:
        dist.shutdown()


def _collective_device(device: str) -> str:
    """Where small collective tensors live: the GPU under NCCL, else the CPU (gloo)."""
    return device if device.startswith("cuda") else "cpu"


def _load_inputs(config: TrainConfig, progress: bool):
    """(inputs, their geometry, labels, f_NL, pooling weight) of the training file, as
    :func:`model_inputs` and :func:`model_weight` read them; f_NL (float64 (N,), ``/fnl``)
    only for ``--target fnl``, else None; the weight (float32 (npix,)) None without a mask."""
    from cmbscat.experiment.datasets import read_fnl, read_labels

    # the targets first: a file without /fnl is refused before its inputs are read
    fnl = read_fnl(config.data) if config.target == "fnl" else None
    meta = ({"nside": config.baseline_nside, "lmax": config.baseline_lmax}
            if config.model == "baseline" else None)
    x, meta = model_inputs(config.model, config.data, meta, progress, channels=config.channels)
    labels = read_labels(config.data)
    if config.max_maps:
        if config.max_maps > len(labels):
            raise CmbscatError(f"--max-maps {config.max_maps} is above the {len(labels)} maps "
                               f"of {config.data}")
        x, labels = x[:config.max_maps], labels[:config.max_maps]
        fnl = fnl[:config.max_maps] if fnl is not None else None
    if fnl is not None and not np.all(np.isfinite(fnl)):
        raise CmbscatError(f"{config.data}: /fnl is not finite for every map")
    weight = model_weight(config.model, config.data, meta) if config.model in NN_MODELS else None
    return x, meta, labels, fnl, weight


def classical_classifier():
    """The classical baselines' classifier: standardised features, logistic regression (unfitted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def _train_classical(run_dir: Path, config: TrainConfig, inputs) -> dict:
    from cmbscat.experiment.datasets import observation_identity

    x, meta, labels, fnl, _ = inputs
    train_idx, val_idx = split_indices(labels, config.val_fraction, config.seed)
    observation = observation_identity(config.data)   # evaluate holds test files against it
    if config.target == "fnl":
        return _fit_fnl_estimator(run_dir, config, x, meta, fnl, train_idx, val_idx, observation)
    classifier = classical_classifier()
    classifier.fit(x[train_idx], labels[train_idx])
    with open(run_dir / "model.pkl.tmp", "wb") as f:
        pickle.dump({"kind": config.model, "classifier": classifier, "meta": meta,
                     "observation": observation}, f)
    os.replace(run_dir / "model.pkl.tmp", run_dir / "model.pkl")
    return {"model": config.model, "n_train": int(train_idx.size), "n_val": int(val_idx.size),
            "train_accuracy": float(classifier.score(x[train_idx], labels[train_idx])),
            "val_accuracy": float(classifier.score(x[val_idx], labels[val_idx]))}


def _fit_fnl_estimator(run_dir: Path, config: TrainConfig, x, meta, fnl, train_idx, val_idx,
                       observation: dict) -> dict:
    """A classical statistic's f_NL estimator into ``model.pkl``: the anchor S / F for
    ``cubic_fisher``, else a :class:`FeatureRegressor` (fitted on the training split,
    weights chosen and sigma calibrated on the validation split)."""
    from cmbscat.experiment.fnl_estimators import CubicFisherEstimator, FeatureRegressor

    if config.model == "cubic_fisher":
        estimator = CubicFisherEstimator(meta["lmax"])
        fitted = {"fisher_information": estimator.fisher, "sigma_fnl": estimator.sigma}
    else:
        estimator = FeatureRegressor(seed=config.seed).fit(x[train_idx], fnl[train_idx],
                                                            x[val_idx], fnl[val_idx])
        fitted = {"calibration": estimator.calibration, "best_step": estimator.best_step}
    with open(run_dir / "model.pkl.tmp", "wb") as f:
        pickle.dump({"kind": config.model, "target": "fnl", "estimator": estimator, "meta": meta,
                     "observation": observation}, f)
    os.replace(run_dir / "model.pkl.tmp", run_dir / "model.pkl")
    summary = {"model": config.model, "target": "fnl", "n_train": int(train_idx.size),
               "n_val": int(val_idx.size), **fitted}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        mean, _ = estimator.predict(x[idx])
        summary[f"{split}_rmse"] = float(np.sqrt(np.mean((mean - fnl[idx]) ** 2)))
    return summary


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CmbscatError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return device


def standardisation(kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (shape (1, C, 1)) of training inputs ``x`` (N, C, npix).

    Per channel for scattering coefficients (channels differ by orders of magnitude);
    one scalar for a raw map.
    """
    axes = (0, 2) if kind == "hybrid" else (0, 1, 2)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    shape = (1, x.shape[1], 1)
    return (np.broadcast_to(mean, shape).astype(np.float32),
            np.broadcast_to(np.where(std > 0, std, 1.0), shape).astype(np.float32))


def _stop_early(history: list[dict], patience: int) -> bool:
    """True when the validation loss has not improved for ``patience`` epochs (0: never)."""
    if patience == 0 or not history:
        return False
    best_epoch = min(history, key=lambda h: h["val_loss"])["epoch"]
    return history[-1]["epoch"] - best_epoch >= patience


def _train_network(run_dir: Path, config: TrainConfig, inputs, device: str, progress: bool,
                   dist=None) -> dict:
    """Train a network; under ``torchrun`` (``dist`` active) this rank's share of it.

    Data parallel as one process with the same global batch: every rank draws the same
    shuffling, rotations and dropout masks for each global batch and takes its rows
    (:meth:`DistributedContext.local_slice`); gradients are averaged by
    ``DistributedDataParallel`` with each rank's loss scaled to make the average the
    global batch's mean; batch norm uses the global batch's statistics
    (:class:`GlobalBatchNorm1d`); epoch losses and counts are summed over ranks. A global
    batch smaller than the number of ranks (and, as with one process, one of a single map)
    is skipped.

    With a pooling weight (a masked file, :func:`model_weight`) every forward pass gets
    it: one map for all examples, or with augmentation each example's weight rotated
    with its maps; its rows follow the batch's rows on every rank.
    """
    import torch
    import torch.nn.functional as F

    from cmbscat.experiment.augment import random_rotation_angles
    from cmbscat.nn.distributed import (DistributedContext, convert_batch_norm, set_global_batch,
                                        unsynced)
    from cmbscat.nn.models import build_model, recompute_batch_norm

    from cmbscat.experiment.fnl_estimators import LOG_SIGMA_BOUNDS, TargetScaling, gaussian_nll

    dist = dist or DistributedContext()
    collective = _collective_device(device)

    from cmbscat.experiment.datasets import observation_identity

    x, meta, labels, fnl, weight = inputs
    regression = config.target == "fnl"
    train_idx, val_idx = split_indices(labels, config.val_fraction, config.seed)
    mean, std = standardisation(config.model, x[train_idx])
    x = (x - mean) / std
    in_channels, nside = x.shape[1], meta["nside"]
    flip = None  # the (x, f) -> (-x, -f) symmetry, with --sign-flip
    if regression:  # targets: f_NL standardised by the training split
        scaling = TargetScaling.fit(fnl[train_idx])
        targets = scaling.standardise(fnl).astype(np.float32)
        target_record = {"target": "fnl", "n_outputs": 2, **scaling.state()}
        if config.sign_flip:
            from cmbscat.experiment.fnl_estimators import SignFlip, odd_channels

            odd = odd_channels(config.model, meta, in_channels)
            flip = SignFlip(odd, mean, std, scaling.mean, scaling.std)
            target_record["sign_flip_odd"] = odd.tolist()

        def batch_loss(out, yb, reduction):
            return gaussian_nll(out, yb, reduction)

        def batch_scores(out, yb):  # squared error and squared pull, standardised units
            out = out.detach().double()
            err = yb.double() - out[:, 0]
            pull = err * (-out[:, 1].clamp(*LOG_SIGMA_BOUNDS)).exp()
            return float((err**2).sum()), float((pull**2).sum())
    else:
        targets = labels.astype(np.float32)
        target_record = {"target": "label", "n_outputs": 1}

        def batch_loss(out, yb, reduction):
            return F.binary_cross_entropy_with_logits(out, yb, reduction=reduction)

        def batch_scores(out, yb):  # correct predictions
            return int(((out >= 0).float() == yb).sum()), 0.0

    # what evaluate checks a test file against (a checkpoint without it is not checked)
    observation = {"masked": weight is not None, "observation": observation_identity(config.data)}
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels, nside, target_record["n_outputs"]).to(device)
    net = model  # what the training steps call: the model, or its DistributedDataParallel wrapper
    if dist.active:
        convert_batch_norm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            broadcast_buffers=False)  # batch-norm statistics are global already, the same on every rank
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    history, best_loss, start_epoch = [], float("inf"), 0
    last_path, best_path = run_dir / "last.pt", run_dir / "model.pt"
    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_loss, start_epoch = state["history"], state["best_loss"], state["epoch"]
        torch.set_rng_state(state["torch_rng"])  # dropout masks continue as if uninterrupted

    x_t = torch.from_numpy(x)
    y_t = torch.from_numpy(targets)
    # the pooling weight (one map for the file), or None: the unweighted pooling of before
    weight_t = None if weight is None else torch.from_numpy(np.asarray(weight, np.float32)).to(device)
    augmenter, train_coef, coef_row = None, None, None
    if config.augment:
        from cmbscat.experiment.augment import RotationAugmenter

        # harmonic coefficients of the training maps, once, on the training device
        augmenter = RotationAugmenter(nside, device=device)
        maps = x[train_idx]
        if weight is not None:
            # the weight rides along as a last channel, after standardisation (it is not
            # standardised), so that each example's weight turns with its maps: rotating
            # the mask with the sky is valid augmentation, the sky being statistically
            # isotropic (a rotated masked sky is a masked sky of the same class)
            maps = np.concatenate([maps, np.broadcast_to(weight, (len(maps), 1, weight.size))], axis=1)
        train_coef = torch.from_numpy(augmenter.to_coefficients(maps).astype(np.float32)).to(device)
        coef_row = {int(i): k for k, i in enumerate(train_idx)}

    def run_epoch(indices, train: bool, generator=None, rotations=None, signs=None):
        model.train(train)
        order = indices[torch.randperm(len(indices), generator=generator).numpy()] if train else indices
        if not train:  # validation: each rank scores its share of the maps
            order = order[dist.local_slice(order)]
        total_loss, score, pull2, used = 0.0, 0.0, 0.0, 0
        for lo in range(0, len(order), config.batch_size):
            batch = order[lo:lo + config.batch_size]
            if train and len(batch) < max(2, dist.world_size):
                continue  # batch norm needs two samples: this map is not used, nor counted
            rows = dist.local_slice(batch) if train else slice(None)
            local = batch[rows]
            wb = weight_t  # (npix,) for every example, or None
            if rotations is not None:  # each example under its own random rotation
                angles = random_rotation_angles(rotations, len(batch))  # for the whole global batch
                coef = train_coef[torch.as_tensor([coef_row[i] for i in local.tolist()], device=device)]
                xb = augmenter.rotate_tensor(coef, torch.from_numpy(angles[rows]))
                if weight_t is not None:  # split the rotated weight off: (local batch, npix)
                    # the weight is clipped to [0, 1] at its source, hence not exactly
                    # band-limited: its rotation rings a little outside [0, 1]
                    xb, wb = xb[:, :-1], xb[:, -1].clamp(0.0, 1.0)
            else:
                xb = x_t[local].to(device)
            yb = y_t[local].to(device)
            if signs is not None:  # each example negated with its f_NL with probability 1/2
                negate = torch.from_numpy(signs.random(len(batch)) < 0.5)[rows].to(device)
                xb = torch.where(negate[:, None, None], flip.inputs(xb), xb)
                yb = torch.where(negate, flip.targets(yb), yb)
            if train:
                set_global_batch(model, len(batch), rows)
            with torch.set_grad_enabled(train):
                if train:
                    out = net(xb, wb)
                elif flip is not None:  # the odd estimator, as evaluate uses it
                    out = flip.odd_output(model(xb, wb), model(flip.inputs(xb), wb))
                else:
                    out = model(xb, wb)
                if dist.active:  # DDP averages over ranks: scale so that this is the global mean
                    loss_sum = batch_loss(out, yb, "sum")
                    loss = loss_sum * (dist.world_size / len(batch))
                else:
                    loss = batch_loss(out, yb, "mean")
            if train:
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            total_loss += loss_sum.item() if dist.active else loss.item() * len(batch)
            batch_score, batch_pull2 = batch_scores(out, yb)
            score, pull2 = score + batch_score, pull2 + batch_pull2
            used += len(local)
        total_loss, score, pull2, used = dist.sum([total_loss, score, pull2, used], collective)
        if regression:  # rms error in f_NL; the sigma factor that calibrates these maps
            return total_loss / used, scaling.std * math.sqrt(score / used), math.sqrt(pull2 / used)
        return total_loss / used, score / used, None

    bar = tqdm(range(start_epoch, config.epochs), desc=f"train {config.model}", unit="epoch",
               disable=not (progress and dist.is_main), initial=start_epoch, total=config.epochs)
    for epoch in bar:
        if _stop_early(history, config.patience):
            break  # also on resume: the decision depends on the saved history alone
        t0 = time.time()
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        # the rotations of epoch e depend on (seed, e) only: a resumed run draws the same
        rotations = np.random.default_rng([config.seed, epoch, 7]) if augmenter else None
        signs = np.random.default_rng([config.seed, epoch, 11]) if flip is not None else None
        train_loss, train_score, _ = run_epoch(train_idx, True, generator, rotations, signs)
        if config.precise_bn:  # the batch-norm statistics that validation and model.pt use
            with unsynced(model):  # every rank passes the whole split: the same statistics
                recompute_batch_norm(model, (x_t[train_idx[lo:lo + config.batch_size]].to(device)
                                             for lo in range(0, len(train_idx), config.batch_size)
                                             if len(train_idx[lo:lo + config.batch_size]) >= 2))
        val_loss, val_score, val_calibration = run_epoch(val_idx, False)
        scheduler.step()
        score_name = "rmse" if regression else "accuracy"
        history.append({"epoch": epoch + 1, "train_loss": train_loss, f"train_{score_name}": train_score,
                        "val_loss": val_loss, f"val_{score_name}": val_score,
                        **({"val_calibration": val_calibration} if regression else {}),
                        "lr": optimiser.param_groups[0]["lr"], "seconds": time.time() - t0})
        bar.set_postfix(val_loss=f"{val_loss:.3f}", **{f"val_{score_name}": f"{val_score:.3f}"})
        improved = val_loss < best_loss
        best_loss = min(best_loss, val_loss)
        if not dist.is_main:
            continue  # rank 0 writes the checkpoints and the history
        if improved:
            # regression: the best epoch's validation maps calibrate the predicted sigma
            calibration = {"calibration": val_calibration} if regression else {}
            _atomic_torch_save({"kind": config.model, "in_channels": in_channels, "nside": nside,
                                "meta": meta, "mean": mean, "std": std, "epoch": epoch + 1,
                                **target_record, **calibration, **observation,
                                "model": {k: v.cpu() for k, v in model.state_dict().items()}},
                               best_path)
        _atomic_torch_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                            "scheduler": scheduler.state_dict(), "history": history,
                            "best_loss": best_loss, "epoch": epoch + 1,
                            "torch_rng": torch.get_rng_state()}, last_path)
        _write_history(run_dir, history)
    bar.close()
    if dist.is_main:
        plot_curves(run_dir, history)
    best = min(history, key=lambda h: h["val_loss"])
    scores = ({"target": "fnl", "val_rmse": best["val_rmse"], "calibration": best["val_calibration"]}
              if regression else {"val_accuracy": best["val_accuracy"]})
    return {"stopped_early": len(history) < config.epochs, "epochs_run": len(history),
            "model": config.model, "device": device, "n_train": int(train_idx.size),
            "n_val": int(val_idx.size), "best_epoch": best["epoch"],
            **scores, "val_loss": best["val_loss"],
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "epoch_seconds": float(sum(h["seconds"] for h in history))}
