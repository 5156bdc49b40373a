"""Experiment driver: every stage of an experiment from one JSON config, with a results table.

``cmbscat pipeline pipelines/paper.json`` (what ``make reproduce`` runs) simulates
separate training and test sets, scatters them once, trains every model (the
networks once per training seed), evaluates them all on the test set and writes a
Markdown table.

A stage is reused only when its output records exactly what the config asks for
now: the same parameters and the same content hashes of its inputs (a sims file's
parameters; a scattering file's parameters and its sims file's content hash; a run
folder's training configuration and its data's content hash; a ``metrics.json``'s
model-file and test-file hashes). Anything else is refused with one line naming the
differing key, or, with ``rerun_changed``, recomputed, and so is every stage that
reads it (their recorded input hashes no longer match). An interrupted run resumes:
a stage whose unfinished state records the same parameters continues where it
stopped. Per-stage wall times are printed and kept in ``timings.json`` (the time of
the run that did the work).

Order: the per-map stages (simulate, scatter, stats; each split into ``workers``
shard tasks run on Dask workers, :mod:`cmbscat.experiment.executor`), then every training, ``train_workers`` (default ``workers``) side
by side in one-thread processes on the CPU, then the evaluations.

The sealed test set (config ``simulate.n_sealed`` / ``seed_sealed``) is touched only
with ``sealed=True``, for the final table of a release; each evaluation on it is
logged in ``sealed_log.json``.

A config with ``"target": "fnl"`` estimates f_NL instead of classifying
(``pipelines/fnl_regression.json``): each split's maps get their f_NL from
``simulate.fnl_dist_<split>`` (``cmbscat simulate --fnl-dist``), every model is
trained with ``--target fnl``, and the table reads every sigma against the cubic
statistic's (:mod:`cmbscat.experiment.fnl_report`). With ``"calibrate": [MODEL, ...]``
and a calibration split (``simulate.n_calib``, ``seed_calib``, ``fnl_dist_calib``: maps
that play no other part), those models are also evaluated on the calibration maps, and
the table adds each one's estimate (its seeds' ensemble) read through the response
fitted there (:class:`cmbscat.experiment.fnl_calibration.ResponseCalibration`). With
``"calibrate_against": MODEL`` (an unbiased estimator of the config, e.g. ``cubic_fisher``)
that model is evaluated on the calibration maps too and the responses are fitted against
its estimates of them rather than their true f_NL (the paired fit).
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np

from cmbscat.errors import CmbscatError
from cmbscat.experiment.docs_page import check_config_page, fill_config_page
from cmbscat.lock import OutputLock
from cmbscat.store import atomic_write_text, describe_difference, differing_keys

# Published figures the table is compared with (McEwen et al. 2022, CMB experiment at L = 1024).
PAPER_RESULTS = {"hybrid": "95.3 %", "baseline": "53.1 %"}

METHOD_NAMES = {
    "hybrid": "scattering + DISCO CNN (hybrid)",
    "baseline": "DISCO CNN on low-resolution map",
    "powspec": "logistic regression, binned C_l",
    "onepoint": "logistic regression, skewness + kurtosis",
    "cubic": "cubic statistic S (optimal for local f_NL)",
    "minkowski": "logistic regression, Minkowski functionals",
}
NETWORKS = ("hybrid", "baseline")
#: A config's ``simulate.observation`` settings and the ``cmbscat simulate`` options they become.
OBSERVATION_OPTIONS = {"beam_fwhm_arcmin": "beam_fwhm", "noise_uk_arcmin": "noise", "hits": "hits",
                       "mask": "mask", "apodize_deg": "apodize"}


def load_config(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CmbscatError(f"no such pipeline config: {path}") from None
    except json.JSONDecodeError as exc:
        raise CmbscatError(f"{path} is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One step of an experiment and how to tell whether its output is current.

    expected : the record the output must carry to be reused; called only once the
        stage's inputs exist (it may hash them).
    found : the record the finished output carries, or that an unfinished run left
        (second item True), or None when there is neither.
    run : compute the output (resuming unfinished work that records the same parameters).
    discard : delete the output and any unfinished state (for ``rerun_changed``).
    defaults : values of keys added to the record since older outputs were made.
    """

    name: str
    output: Path
    expected: Callable[[], dict]
    found: Callable[[], tuple[dict, bool] | None]
    run: Callable[[], object]
    discard: Callable[[], None]
    defaults: dict = field(default_factory=dict)
    #: ``cmbscat`` arguments that compute the output in a process of its own (so that
    #: independent stages can run side by side); None: the stage runs in-process only
    command: list[str] | None = None


class Runner:
    """Runs stages in order, reusing current outputs; keeps each stage's wall time."""

    def __init__(self, out: Path, rerun_changed: bool = False):
        self.path = out / "timings.json"
        self.timings = json.loads(self.path.read_text()) if self.path.exists() else {}
        # each stage's (start, end), UTC seconds: side-by-side stages overlap, so the wall
        # clock of a run is the span of these, not the sum of the timings
        self.spans_path = out / "stage_spans.json"
        self.spans = json.loads(self.spans_path.read_text()) if self.spans_path.exists() else {}
        self.rerun_changed = rerun_changed

    def status(self, stage: Stage) -> str:
        """``"current"``, ``"missing"``, ``"resume"`` or ``"changed: <difference>"``."""
        found = stage.found()
        if found is None:
            return "missing"
        record, unfinished = found
        expected = stage.expected()
        if differing_keys(record, expected, stage.defaults):
            return "changed: " + describe_difference(record, expected, stage.defaults)
        return "resume" if unfinished else "current"

    def refuse_changed(self, stages: list[Stage]) -> None:
        """Before anything runs: refuse (one line) the first stage whose existing output
        records other settings or inputs, unless ``rerun_changed``. A stage whose record
        cannot be judged yet (its inputs are still to be made) is judged when it is reached."""
        if self.rerun_changed:
            return
        for stage in stages:
            try:
                status = self.status(stage)
            except (CmbscatError, OSError):
                continue
            if status.startswith("changed"):
                self._refuse(stage, status.split(": ", 1)[1])

    @staticmethod
    def _refuse(stage: Stage, difference: str):
        raise CmbscatError(
            f"[{stage.name}] {stage.output} was made from other settings or inputs "
            f"({difference}); re-run with --rerun-changed to recompute it and every "
            "stage that reads it")

    def _needs_run(self, stage: Stage) -> bool:
        """False if ``stage``'s output is current; else prepare it to run (refuse or discard)."""
        status = self.status(stage)
        if status == "current":
            when = self.timings.get(stage.name)
            click.echo(f"[{stage.name}] current" + (f" ({when:.0f} s when run)" if when else ""),
                       err=True)
            return False
        if status.startswith("changed"):
            difference = status.split(": ", 1)[1]
            if not self.rerun_changed:
                self._refuse(stage, difference)
            click.echo(f"[{stage.name}] changed ({difference}): recomputing", err=True)
            stage.discard()
        return True

    def _record(self, stage: Stage, seconds: float) -> None:
        self.timings[stage.name] = seconds
        atomic_write_text(self.path, json.dumps(self.timings, indent=2))
        end = time.time()
        self.spans[stage.name] = [end - seconds, end]
        atomic_write_text(self.spans_path, json.dumps(self.spans, indent=2))
        click.echo(f"[{stage.name}] {seconds:.0f} s", err=True)

    def settle(self, stage: Stage) -> None:
        """Reuse, resume, run, refuse or (``rerun_changed``) recompute ``stage``."""
        if not self._needs_run(stage):
            return
        click.echo(f"[{stage.name}] ...", err=True)
        t0 = time.time()
        stage.run()
        self._record(stage, time.time() - t0)

    def settle_parallel(self, stages: list[Stage], workers: int) -> None:
        """Settle independent ``stages``, up to ``workers`` at once, each in a process of its
        own with one thread (``Stage.command``); in-process when ``workers`` is 1.

        Measured (README): two one-thread trainings side by side each run as fast as one
        training with two threads, so on two cores this halves the training wall time.
        Each stage's time is its own, from its start to its end.
        """
        todo = [stage for stage in stages if self._needs_run(stage)]
        if workers <= 1 or len(todo) <= 1 or any(stage.command is None for stage in todo):
            for stage in todo:
                click.echo(f"[{stage.name}] ...", err=True)
                t0 = time.time()
                stage.run()
                self._record(stage, time.time() - t0)
            return
        from cmbscat.experiment.executor import last_error_line, one_thread_env

        env = one_thread_env()
        running: list[tuple[Stage, subprocess.Popen, float]] = []
        pending = list(todo)
        try:
            while pending or running:
                while pending and len(running) < workers:
                    stage = pending.pop(0)
                    click.echo(f"[{stage.name}] ... (side by side, one thread)", err=True)
                    proc = subprocess.Popen([sys.executable, "-m", "cmbscat", *stage.command,
                                             "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)
                    running.append((stage, proc, time.time()))
                time.sleep(0.5)
                for item in [r for r in running if r[1].poll() is not None]:
                    stage, proc, t0 = item
                    running.remove(item)
                    err = proc.stderr.read()
                    if proc.returncode != 0:
                        raise CmbscatError(f"[{stage.name}] failed: "
                                           f"{last_error_line(err, proc.returncode)}")
                    self._record(stage, time.time() - t0)
        finally:
            for _, proc, _ in running:  # an error or Ctrl-C: stop the others (they resume)
                proc.terminate()
            for _, proc, _ in running:
                proc.wait()


def _item_file_record(path: Path) -> tuple[dict, bool] | None:
    """Parameters of a finished item-writer output, or of its unfinished run's manifest."""
    from cmbscat.store import read_params

    if path.exists():
        try:
            params = read_params(path)
        except OSError:
            return {"unreadable file": str(path)}, False
        return (params if params is not None else {"no cmbscat record": str(path)}), False
    manifest = path.with_name(path.name + ".partial") / "params.json"
    if manifest.exists():
        return json.loads(manifest.read_text()), True
    return None


def _sharded_record(path: Path, shard_paths: list[Path]) -> tuple[dict, bool] | None:
    """Record of a combined output; else the common record of the shards that have any
    state (shard key cleared), marked unfinished; shards that disagree give a record
    that matches no config, so that they are refused or (``rerun_changed``) discarded."""
    found = _item_file_record(path)
    if found is not None or not shard_paths:
        return found
    records = [{**rec, "shard": None} for rec, _ in filter(None, map(_item_file_record, shard_paths))]
    if not records:
        return None
    if any(differing_keys(records[0], rec) for rec in records[1:]):
        return {"shards": f"the shard files in {shard_paths[0].parent} disagree"}, True
    return records[0], True


def _discard_item_output(path: Path, shard_paths: list[Path]) -> None:
    from cmbscat.store import remove_output

    for p in [path, *shard_paths]:
        remove_output(p)


def _discard_run_dir(run_dir: Path) -> None:
    """Delete a run folder, holding its lock meanwhile (refused while a run trains in it)."""
    if run_dir.exists():
        with OutputLock(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)


def _cli_flags(options: dict) -> list[str]:
    """``{"n_maps": 4, "J0": 5, "odd": True}`` -> ``["--n-maps", "4", "--J0", "5", "--odd"]``
    (None values dropped; booleans become ``--name`` / ``--no-name`` switches)."""
    flags = []
    for key, value in options.items():
        name = key.replace('_', '-')
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def shard_paths_for(out_path: Path, workers: int) -> list[Path]:
    """Where :func:`run_sharded` keeps the ``workers`` shard files of ``out_path``."""
    if workers <= 1:
        return []
    return [out_path.parent / "shards" / f"{out_path.stem}.{k}of{workers}.h5" for k in range(workers)]


def run_sharded(stage: str, args: list[str], out_path: Path, n_items: int, workers: int,
                progress: bool = True, executor=None) -> None:
    """Run ``cmbscat STAGE ARGS`` as ``workers`` shard tasks, then combine them.

    Each task (``cmbscat STAGE ARGS SHARD --shard K/N``) writes one resumable shard file
    and runs on ``executor`` (:class:`cmbscat.experiment.executor.ShardExecutor`; default
    a Dask ``LocalCluster`` for this call); the shards are joined into ``out_path`` with
    HDF5 virtual datasets (:func:`cmbscat.store.combine_shards`). Holds ``out_path``'s lock
    throughout (:class:`cmbscat.lock.OutputLock`); each task locks its own shard file.
    """
    from cmbscat.experiment.executor import ShardExecutor

    shard_paths = shard_paths_for(out_path, workers)
    with OutputLock(out_path):
        if executor is None:
            with ShardExecutor() as own:
                _run_shards(stage, args, out_path, shard_paths, n_items, workers, progress, own)
        else:
            _run_shards(stage, args, out_path, shard_paths, n_items, workers, progress, executor)


def _run_shards(stage, args, out_path, shard_paths, n_items, workers, progress, executor):
    """The body of :func:`run_sharded`, called with the lock of ``out_path`` held."""
    from tqdm import tqdm

    from cmbscat.store import combine_shards

    shard_paths[0].parent.mkdir(parents=True, exist_ok=True)
    # click accepts the output path after the options: "cmbscat scatter IN --depth 2 OUT"
    commands = [[stage, *args, str(path), "--shard", f"{k}/{workers}", "--no-progress"]
                for k, path in enumerate(shard_paths)]

    def n_done():
        done = 0
        for path in shard_paths:
            partial = path.with_name(path.name + ".partial")
            done += len(list(partial.glob("item*.npz"))) if partial.exists() else 0
        return done

    with tqdm(total=n_items, desc=stage, unit="map", disable=not progress) as bar:
        def poll():
            finished = sum(1 for path in shard_paths if path.exists())
            bar.n = max(bar.n, n_done() if finished < workers else n_items)
            bar.refresh()

        executor.run(commands, poll)
    combine_shards(out_path, shard_paths)


def select_models(cfg: dict, only: list[str] | None) -> list[str]:
    """The config's models, or the subset ``only`` of them (in the config's order)."""
    if not only:
        return list(cfg["models"])
    unknown = sorted(set(only) - set(cfg["models"]))
    if unknown:
        raise CmbscatError(f"--models {','.join(unknown)}: not in the config "
                           f"(it has {', '.join(cfg['models'])})")
    return [m for m in cfg["models"] if m in only]


def model_seeds(settings: dict) -> list[int]:
    """Training seeds of a model entry: ``"seeds": [0, 1, 2]``, else ``[seed]`` (default 0)."""
    seeds = settings.get("seeds", [settings.get("seed", 0)])
    if not seeds or len(set(seeds)) != len(seeds):
        raise CmbscatError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    return [int(s) for s in seeds]


def calibrated_models(cfg: dict, models: list[str]) -> list[str]:
    """The models of ``models`` whose response the config calibrates (``"calibrate"``),
    after checking that the config can: an f_NL config with a calibration split."""
    names = cfg.get("calibrate", [])
    if not names:
        return []
    if cfg.get("target") != "fnl":
        raise CmbscatError("\"calibrate\" is for f_NL configs (\"target\": \"fnl\")")
    unknown = sorted(set(names) - set(cfg["models"]))
    if unknown:
        raise CmbscatError(f"calibrate: {', '.join(unknown)} not among the config's models")
    missing = [k for k in ("n_calib", "seed_calib", "fnl_dist_calib") if k not in cfg["simulate"]]
    if missing:
        raise CmbscatError(f"calibrate needs a calibration split: simulate.{', simulate.'.join(missing)} "
                           "(maps at many f_NL values that play no other part, e.g. uniform:-80,80)")
    return [m for m in models if m in names]


def calibration_reference(cfg: dict, models: list[str], calibrated: list[str]) -> str | None:
    """The model whose estimates of the calibration maps the responses of ``calibrated``
    (:func:`calibrated_models`) are fitted against (``"calibrate_against"``; None: the truth,
    or nothing calibrated in this run), checked: a one-seed model of the config, run now, in a
    config that calibrates."""
    name = cfg.get("calibrate_against")
    if name is None:
        return None
    if not cfg.get("calibrate"):
        raise CmbscatError("\"calibrate_against\" needs \"calibrate\": [MODEL, ...] (the models it calibrates)")
    if name not in cfg["models"]:
        raise CmbscatError(f"calibrate_against: {name} not among the config's models")
    if len(model_seeds(cfg["models"][name])) != 1:
        raise CmbscatError(f"calibrate_against: {name} must have one seed (an estimator, not an ensemble)")
    if not calibrated:
        return None
    if name not in models:
        raise CmbscatError(f"calibrate_against: {name} must be among the models run (--models)")
    return name


def _split_sizes(sim: dict, split: str) -> tuple[int, int]:
    key = "sealed" if split == "sealed" else split
    return int(sim[f"n_{key}"]), int(sim[f"seed_{key}"])


def training_stage(name: str, run_dir: Path, config, device: str = "auto",
                   progress: bool = True) -> Stage:
    """The stage that trains ``config`` (a resolved :class:`TrainConfig`) into ``run_dir``,
    in-process or, for side-by-side runs, as ``cmbscat train`` with the same settings."""
    from cmbscat.experiment.train import read_run_record, record_defaults, run_record, train

    def found():
        record = read_run_record(run_dir)
        if record is None:
            return None
        return record, not (run_dir / "summary.json").exists()

    settings = {k: v for k, v in asdict(config).items() if k not in ("data", "model")}
    command = ["train", config.data, str(run_dir), "--model", config.model, "--device", device,
               *_cli_flags(settings)]
    return Stage(name, run_dir, lambda: run_record(config), found,
                 lambda: train(run_dir, config, device, progress),
                 lambda: _discard_run_dir(run_dir), record_defaults(config), command=command)


def evaluation_stage(name: str, run_dir: Path, data: Path, out_dir: Path, run: Callable[[], object]) -> Stage:
    """The stage whose output is ``out_dir/metrics.json``, the evaluation of ``run_dir`` on
    ``data`` that ``run`` writes; current while it records the hashes of the run's model
    file and of ``data`` (:func:`cmbscat.experiment.evaluate.evaluation_record`)."""
    from cmbscat.experiment.evaluate import evaluation_record

    metrics_path = out_dir / "metrics.json"

    def found():
        if not metrics_path.exists():
            return None
        m = json.loads(metrics_path.read_text())
        return {k: m.get(k) for k in ("model_sha256", "test_sha256")}, False

    return Stage(name, metrics_path, lambda: evaluation_record(run_dir, data), found, run,
                 lambda: metrics_path.unlink(missing_ok=True))


class Experiment:
    """The stages of one config (see the module docstring), built lazily in data-flow order."""

    def __init__(self, cfg: dict, device: str = "auto", progress: bool = True, executor=None):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.executor = executor  # where shard tasks run (ShardExecutor); None: a LocalCluster per stage
        self.out = Path(cfg["out"])
        self.sim = cfg["simulate"]
        self.workers = int(cfg.get("workers", 1))
        # trainings side by side (one thread each); CUDA: one at a time on the one device
        self.train_workers = int(cfg.get("train_workers", self.workers))
        if self.train_workers > 1 and device != "cpu":
            from cmbscat.experiment.train import resolve_device

            if resolve_device(device) != "cpu":
                self.train_workers = 1

    # -- per-map stages ------------------------------------------------------
    def sims_path(self, split: str) -> Path:
        return self.out / f"sims_{split}.h5"

    def scat_path(self, split: str) -> Path:
        return self.out / f"scat_{split}.h5"

    def stats_path(self, split: str) -> Path:
        return self.out / f"stats_{split}.h5"

    def simulate_stage(self, split: str) -> Stage:
        from cmbscat.sky.simulate import SimulationConfig, simulate, simulation_defaults, simulation_params

        n_maps, seed = _split_sizes(self.sim, split)
        ng_model = self.sim.get("ng_model", "local")
        fnl_dist = self.sim.get(f"fnl_dist_{split}", "")  # per-map f_NL (regression configs)
        observation = dict(self.sim.get("observation", {}))  # beam, noise, mask (observed configs)
        unknown = sorted(set(observation) - set(OBSERVATION_OPTIONS))
        if unknown:
            raise CmbscatError(f"simulate.observation has unknown settings: {', '.join(unknown)} "
                               f"(known: {', '.join(OBSERVATION_OPTIONS)})")
        config = SimulationConfig(n_maps=n_maps, nside=self.sim["nside"], lmax=self.sim["lmax"],
                                  fnl=self.sim.get("fnl", 0.0), seed=seed, ng_model=ng_model,
                                  store=self.sim.get("store", "alm"), gnl=self.sim.get("gnl", 0.0),
                                  fnl_dist=fnl_dist, **observation)
        config.validate()
        path, shards = self.sims_path(split), shard_paths_for(self.sims_path(split), self.workers)

        def run():
            if self.workers > 1:
                amplitudes = ({"fnl_dist": config.fnl_dist} if config.fnl_dist else
                              {"fnl": config.fnl, "gnl": config.gnl})
                observed = {OBSERVATION_OPTIONS[k]: getattr(config, k) for k in OBSERVATION_OPTIONS
                            if getattr(config, k)}  # the defaults mean "none": left out
                flags = _cli_flags({"n_maps": config.n_maps, "nside": config.nside, "lmax": config.lmax,
                                    "ng_model": config.ng_model, **amplitudes,
                                    "seed": config.seed, "store": config.store, **observed})
                run_sharded("simulate", flags, path, config.n_maps, self.workers, self.progress,
                            self.executor)
            else:
                simulate(path, config, progress=self.progress)

        return Stage(f"simulate {split}", path, lambda: simulation_params(config),
                     lambda: _sharded_record(path, shards), run,
                     lambda: _discard_item_output(path, shards), simulation_defaults())

    def scatter_stage(self, split: str) -> Stage:
        from cmbscat.scattering.stage import scatter, scatter_plan

        sims, path = self.sims_path(split), self.scat_path(split)
        shards = shard_paths_for(path, self.workers)
        options = dict(self.cfg["scatter"])

        def run():
            if self.workers > 1:
                run_sharded("scatter", [str(sims)] + _cli_flags(options), path,
                            _split_sizes(self.sim, split)[0], self.workers, self.progress,
                            self.executor)
            else:
                scatter(sims, path, progress=self.progress, **options)

        return Stage(f"scatter {split}", path,
                     lambda: scatter_plan(sims, **options).shard_params(None),
                     lambda: _sharded_record(path, shards), run,
                     lambda: _discard_item_output(path, shards))

    def stats_stage(self, split: str) -> Stage:
        from cmbscat.stats.stage import compute_stats, stats_plan

        sims, path = self.sims_path(split), self.stats_path(split)
        shards = shard_paths_for(path, self.workers)

        def run():
            if self.workers > 1:
                run_sharded("stats", [str(sims)], path, _split_sizes(self.sim, split)[0], self.workers,
                            self.progress, self.executor)
            else:
                compute_stats(sims, path, progress=self.progress)

        return Stage(f"stats {split}", path, lambda: stats_plan(sims).shard_params(None),
                     lambda: _sharded_record(path, shards), run,
                     lambda: _discard_item_output(path, shards))

    # -- models --------------------------------------------------------------
    def data_path(self, model: str, split: str) -> Path:
        """The file a model reads: scattering (hybrid), sims (baseline) or statistics (classical)."""
        if model == "hybrid":
            return self.scat_path(split)
        return self.sims_path(split) if model in NETWORKS else self.stats_path(split)

    def run_dir(self, model: str, seed: int) -> Path:
        return self.out / "runs" / model / f"seed{seed}"

    def train_config(self, model: str, seed: int):
        from cmbscat.experiment.train import TrainConfig

        settings = {k: v for k, v in self.cfg["models"][model].items() if k not in ("seeds", "seed")}
        if self.cfg.get("target", "label") != "label":
            settings.setdefault("target", self.cfg["target"])
        unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__) - {"data", "model"})
        if unknown:
            raise CmbscatError(f"models.{model} in the config has unknown settings: {', '.join(unknown)}")
        return TrainConfig(data=str(self.data_path(model, "train")), model=model, seed=seed,
                           **settings).resolved()

    def train_stage(self, model: str, seed: int) -> Stage:
        return training_stage(f"train {model} seed {seed}", self.run_dir(model, seed),
                              self.train_config(model, seed), self.device, self.progress)

    def eval_dir(self, model: str, seed: int, split: str) -> Path:
        run_dir = self.run_dir(model, seed)
        return run_dir if split == "test" else run_dir / split

    def evaluate_stage(self, model: str, seed: int, split: str) -> Stage:
        from cmbscat.experiment.evaluate import evaluate

        run_dir, data = self.run_dir(model, seed), self.data_path(model, split)
        out = self.eval_dir(model, seed, split)

        def run():
            evaluate(run_dir, data, out, device=self.device, progress=self.progress)
            if split == "sealed":
                _log_sealed(self.out, model, seed)

        return evaluation_stage(f"evaluate {model} seed {seed}" + ("" if split == "test" else f" on {split}"),
                                run_dir, data, out, run)

    def chain(self, model: str, splits: tuple[str, ...]) -> list[Stage]:
        """Every stage that ``model`` needs, upstream first (per-map stages included)."""
        stages = []
        for split in ("train", *splits):
            stages.append(self.simulate_stage(split))
            if model == "hybrid":
                stages.append(self.scatter_stage(split))
            elif model not in NETWORKS:
                stages.append(self.stats_stage(split))
        for seed in model_seeds(self.cfg["models"][model]):
            stages.append(self.train_stage(model, seed))
            stages += [self.evaluate_stage(model, seed, split) for split in splits]
        return stages


def _log_sealed(out: Path, model: str, seed: int) -> None:
    """Append one line per evaluation on the sealed test set to ``sealed_log.json``."""
    path = out / "sealed_log.json"
    log = json.loads(path.read_text()) if path.exists() else []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    log.append({"model": model, "seed": seed, "commit": commit,
                "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    atomic_write_text(path, json.dumps(log, indent=2))


# --------------------------------------------------------------------------- results


@dataclass
class ModelResult:
    """A model's current evaluations on one test set: one metrics dict and logit array per seed."""

    model: str
    seeds: list[int]
    metrics: list[dict]
    logits: np.ndarray       # (n_seeds, n_test) float64
    labels: np.ndarray       # (n_test,)

    @property
    def correct(self) -> np.ndarray:
        from cmbscat.experiment.metrics import correct_predictions

        return correct_predictions(self.labels, self.logits)

    @property
    def accuracies(self) -> np.ndarray:
        return self.correct.mean(axis=1)


def _load_result(exp: Experiment, model: str, split: str) -> ModelResult:
    from cmbscat.experiment.datasets import read_labels

    seeds = model_seeds(exp.cfg["models"][model])
    metrics, logits = [], []
    for seed in seeds:
        folder = exp.eval_dir(model, seed, split)
        metrics.append(json.loads((folder / "metrics.json").read_text()))
        logits.append(np.load(folder / "scores.npy"))
    return ModelResult(model, seeds, metrics, np.asarray(logits),
                       read_labels(exp.data_path(model, split)))


def _load_fnl_result(exp: Experiment, model: str, split: str):
    from cmbscat.experiment.fnl_report import load_fnl_result

    seeds = model_seeds(exp.cfg["models"][model])
    return load_fnl_result(model, seeds, [exp.eval_dir(model, seed, split) for seed in seeds],
                           exp.data_path(model, split))


def run_pipeline(config_path: str | Path, device: str = "auto", progress: bool = True,
                 only: list[str] | None = None, rerun_changed: bool = False,
                 sealed: bool = False, executor=None) -> Path:
    """Run every stage of the experiment in ``config_path``; return the table's path.

    ``only`` restricts the models trained (a subset of the config's); the scatter
    stage runs only when a model that needs it (the hybrid) is among them.
    ``rerun_changed`` recomputes stages whose outputs record other settings or inputs
    (otherwise they are refused). ``sealed`` also evaluates every model on the sealed
    test set (config ``simulate.n_sealed``, ``seed_sealed``): for a release's final table.
    ``executor`` runs the per-map stages' shard tasks
    (:class:`cmbscat.experiment.executor.ShardExecutor`; default a Dask ``LocalCluster``).
    """
    cfg = load_config(config_path)
    cfg.setdefault("config_name", str(config_path))
    table = Path(cfg.get("table", Path(cfg["out"]) / "table.md"))
    check_config_page(cfg, table)  # before anything runs
    results = run_experiment(cfg, device, progress, only, rerun_changed, sealed, executor)
    table.parent.mkdir(parents=True, exist_ok=True)
    runner = Runner(Path(cfg["out"]))
    timings = runner.timings
    if cfg.get("target") == "fnl":
        from cmbscat.experiment.fnl_report import (fnl_table, plot_fnl_methods, with_calibrations,
                                                   with_ensembles)

        reference = results.get("calib_reference", {}).get(cfg.get("calibrate_against"))
        by_model = with_calibrations(with_ensembles(results["test"]), results.get("calib", {}), reference)
        atomic_write_text(table, fnl_table(cfg, by_model, timings))
        plot_fnl_methods(table.with_suffix(".png"), by_model)
    else:
        atomic_write_text(table, results_table(cfg, results, timings, wall_clock(runner.spans)))
    click.echo(table.read_text(), err=True)
    _fill_docs_page(cfg, table)
    return table


def _fill_docs_page(cfg: dict, table: Path) -> None:
    """Write ``table`` into the config's ``"docs_page"`` (if any), in the block marked with
    the table's path (:mod:`cmbscat.experiment.docs_page`)."""
    page = fill_config_page(cfg, table)
    if page:
        click.echo(f"wrote the table into {page}", err=True)


def run_experiment(cfg: dict, device: str = "auto", progress: bool = True,
                   only: list[str] | None = None, rerun_changed: bool = False,
                   sealed: bool = False, executor=None) -> dict[str, dict[str, ModelResult]]:
    """Settle every stage of ``cfg``'s models; return their results per test set and model.

    Only results whose whole chain is current are returned (they were just checked
    or computed); the keys are ``"test"`` and, with ``sealed``, ``"sealed"``.
    """
    models = select_models(cfg, only)
    if sealed and not {"n_sealed", "seed_sealed"} <= set(cfg["simulate"]):
        raise CmbscatError("--sealed: the config has no sealed test set "
                           "(simulate.n_sealed and simulate.seed_sealed)")
    if executor is None:  # one LocalCluster for every sharded stage of this run, started on first use
        from cmbscat.experiment.executor import ShardExecutor

        with ShardExecutor() as own:
            return run_experiment(cfg, device, progress, only, rerun_changed, sealed, own)
    exp = Experiment(cfg, device, progress, executor)
    exp.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(exp.out, rerun_changed)
    splits = ("test", "sealed") if sealed else ("test",)
    calibrated = calibrated_models(cfg, models)
    reference = calibration_reference(cfg, models, calibrated)
    stages: dict[str, Stage] = {}
    for model in models:
        on_calib = model in calibrated or model == reference
        for stage in exp.chain(model, splits + (("calib",) if on_calib else ())):
            stages.setdefault(stage.name, stage)  # per-map stages are shared between models
    runner.refuse_changed(list(stages.values()))
    # per-map stages first, then every training side by side, then the evaluations
    trainings = [s for s in stages.values() if s.name.startswith("train ")]
    evaluations = [s for s in stages.values() if s.name.startswith("evaluate ")]
    for stage in stages.values():
        if stage not in trainings and stage not in evaluations:
            runner.settle(stage)
    runner.settle_parallel(trainings, exp.train_workers)
    for stage in evaluations:
        runner.settle(stage)
    load = _load_fnl_result if cfg.get("target") == "fnl" else _load_result
    results = {split: {m: load(exp, m, split) for m in models} for split in splits}
    if calibrated:
        results["calib"] = {m: load(exp, m, "calib") for m in calibrated}
    if reference:
        results["calib_reference"] = {reference: load(exp, reference, "calib")}
    return results


def current_results(cfg: dict, split: str = "test") -> dict[str, ModelResult]:
    """Results of the config's models whose whole chain is current now; nothing is run.

    A model trained by an earlier ``--models`` run counts only if every stage it
    depends on still records the config's settings and its inputs' hashes.
    """
    exp = Experiment(cfg, progress=False)
    runner = Runner(exp.out)
    out = {}
    for model in cfg["models"]:
        try:
            if all(runner.status(stage) == "current" for stage in exp.chain(model, (split,))):
                out[model] = _load_result(exp, model, split)
        except (CmbscatError, FileNotFoundError, OSError):
            continue  # an input of the chain is missing or unreadable: not current
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _percent(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_cells(result: ModelResult) -> tuple[str, str, str]:
    """(accuracy, 68 % Wilson interval of the test sampling, training-seed spread) cells."""
    from cmbscat.experiment.metrics import wilson_interval

    acc = result.accuracies
    n = result.labels.size
    low, high = wilson_interval(acc.mean() * n, n)
    if acc.size > 1:
        accuracy = f"{_percent(acc.mean())} % (mean of {acc.size} seeds)"
        spread = (f"s.d. {_percent(acc.std(ddof=1))} ({_percent(acc.min())}–{_percent(acc.max())})")
    else:
        accuracy, spread = f"{_percent(acc[0])} %", "1 seed"
    return accuracy, f"{_percent(low)}–{_percent(high)} %", spread


def _input_description(cfg: dict, model: str) -> str:
    sim, scat = cfg["simulate"], cfg.get("scatter", {})
    settings = cfg["models"][model]
    if model == "hybrid":
        odd = f" + odd channels (q {scat.get('odd_power', 2)})" if scat.get("odd") else ""
        return f"scattering depth {scat.get('depth', 2)}, J0 {scat.get('J0')}{odd}, from lmax {sim['lmax']}"
    if model == "baseline":
        return f"map at lmax {settings.get('baseline_lmax', 127)}, nside {settings.get('baseline_nside', 64)}"
    return f"map at lmax {sim['lmax']}, nside {sim['nside']}"


def results_table(cfg: dict, results: dict[str, dict[str, ModelResult]], timings: dict,
                  wall_seconds: float | None = None) -> str:
    """Markdown: per test set, a table of methods (accuracy, Wilson interval, seed spread,
    AUC, wall time, paper's figure) and a table of paired differences with the reference
    methods (config ``compare_to``, default the hybrid). ``wall_seconds``: the run's wall clock in
    seconds (:func:`wall_clock`), printed beside the sum of the stage times when given."""
    sim = cfg["simulate"]
    amplitude = (f"g_NL {sim['gnl']:g}" if sim.get("ng_model") == "gnl" else f"f_NL {sim['fnl']:g}")
    lines = [f"# {cfg.get('title', 'Results')}", "",
             f"lmax {sim['lmax']}, nside {sim['nside']}, {amplitude}; trained on "
             f"{sim['n_train']} maps (a stratified fraction held out for validation). Generated by "
             f"`cmbscat pipeline {cfg.get('config_name', '...')}`.", ""]
    for split, by_model in results.items():
        if not by_model:
            continue
        n = next(iter(by_model.values())).labels.size
        title = ("Test set" if split == "test" else
                 "Sealed test set (evaluated only for a release's final table)")
        seed = sim[f"seed_{'sealed' if split == 'sealed' else 'test'}"]
        lines += [f"## {title}: {n} maps (half non-Gaussian), seed {seed}", "",
                  "| method | input | test accuracy | 68 % interval (test maps, Wilson) | "
                  "training seeds | AUC | train + evaluate wall time | paper |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, result in by_model.items():
            accuracy, interval, spread = accuracy_cells(result)
            aucs = [m["auc"] for m in result.metrics if m.get("auc") is not None]
            auc = f"{np.mean(aucs):.3f}" if aucs else "—"
            wall = sum(t for name, t in timings.items()
                       if name.startswith((f"train {model} seed", f"evaluate {model} seed"))
                       and (split == "sealed") == name.endswith("on sealed"))
            lines.append(f"| {METHOD_NAMES.get(model, model)} | {_input_description(cfg, model)} | "
                         f"{accuracy} | {interval} | {spread} | {auc} | {_duration(wall)} | "
                         f"{PAPER_RESULTS.get(model, '—')} |")
        lines += [""] + paired_table(cfg, by_model) + [""]
    lines += ["Accuracy intervals: Wilson score, 68.27 %, for the test-map sampling (of the "
              "seed-mean accuracy for networks); training seeds: standard deviation and range "
              "of the accuracy over seeds (initialisation, validation split and shuffling).", ""]
    total = sum(timings.values())
    stage_times = ", ".join(f"{k} {_duration(v)}" for k, v in timings.items())
    lines += [f"Stage wall times: {stage_times}; sum {_duration(total)}."]
    if wall_seconds:
        lines += [f"Wall clock from the first stage's start to the last one's end: {_duration(wall_seconds)} "
                  "(stages side by side overlap, so this is less than the sum)."]
    return "\n".join(lines + [""])


def wall_clock(spans: dict[str, list[float]]) -> float | None:
    """Seconds from the earliest start to the latest end of the stages' ``(start, end)``
    spans (UTC seconds, ``stage_spans.json``); None when no stage has one."""
    if not spans:
        return None
    return max(end for _, end in spans.values()) - min(start for start, _ in spans.values())


def paired_table(cfg: dict, by_model: dict[str, ModelResult]) -> list[str]:
    """Markdown rows: each reference method minus every other, paired on the same test maps."""
    from cmbscat.experiment.metrics import paired_difference

    references = [m for m in cfg.get("compare_to", ["hybrid"]) if m in by_model]
    rows, shown = [], set()
    for ref in references:
        for other in by_model:
            if other == ref or frozenset((ref, other)) in shown:
                continue
            shown.add(frozenset((ref, other)))
            a, b = by_model[ref], by_model[other]
            if not np.array_equal(a.labels, b.labels) or a.labels.size != b.labels.size:
                continue
            d = paired_difference(a.correct, b.correct)
            rows.append(f"| {METHOD_NAMES.get(ref, ref)} − {METHOD_NAMES.get(other, other)} | "
                        f"{100 * d['difference']:+.1f} | {100 * d['interval68'][0]:+.1f} to "
                        f"{100 * d['interval68'][1]:+.1f} | {d['p']:.2g} |")
    if not rows:
        return []
    return ["Paired differences on the same test maps (accuracy points; 68 % interval from a "
            "bootstrap over test maps; p: one exact paired sign-flip test of the seed-mean "
            "difference, combined over seeds, McNemar's exact test for one seed each):",
            "", "| comparison | difference | 68 % interval | p |", "|---|---|---|---|", *rows]


def choose_fnl(results: dict[float, dict], method: str, accuracy: float) -> float | None:
    """The smallest scanned f_NL at which ``method`` reaches ``accuracy`` on the test set.

    This is the rule that picks the paper pipeline's f_NL: it looks at a classical
    baseline only, never at the networks, so the choice cannot be tuned to their result.
    ``results`` maps f_NL to {model: {"accuracy": ...}}. None when no scanned value reaches it.
    """
    reached = [fnl for fnl, res in sorted(results.items())
               if method in res and res[method]["accuracy"] >= accuracy]
    return reached[0] if reached else None


#: Scannable amplitudes: config key of the list -> (simulate setting, its name in tables).
SCAN_PARAMETERS = {"fnl_values": ("fnl", "f_NL"), "gnl_values": ("gnl", "g_NL")}


def scan_parameter(cfg: dict, config_path) -> tuple[str, str, str]:
    """(config key of the list, simulate setting, display name) of a scan config."""
    keys = [key for key in SCAN_PARAMETERS if key in cfg]
    if len(keys) != 1:
        raise CmbscatError(f"{config_path} must have exactly one of "
                           f"{', '.join(SCAN_PARAMETERS)} (the amplitudes to scan)")
    return (keys[0], *SCAN_PARAMETERS[keys[0]])


def run_scan(config_path: str | Path, device: str = "auto", progress: bool = True,
             only: list[str] | None = None, rerun_changed: bool = False, executor=None) -> Path:
    """Run the experiment of ``config_path`` once per value of its ``fnl_values`` (or ``gnl_values``).

    Each value gets its own sub-folder ``<out>/fnl_<value>`` (resumable like the
    pipeline); accuracies of the models whose whole chain is current are collected into
    ``<out>/<fnl|gnl>_scan.md`` and ``.png``, with each method's amplitude at 95 %
    accuracy (:mod:`cmbscat.experiment.sensitivity`, also in ``sensitivity.json``) and
    the f_NL that the config's ``choose_fnl`` rule picks (:func:`choose_fnl`).
    """
    cfg = load_config(config_path)
    list_key, setting, label = scan_parameter(cfg, config_path)
    models = select_models(cfg, only)
    out = Path(cfg["out"])
    check_config_page(cfg, out / f"{setting}_scan.md")  # before anything runs
    results: dict[float, dict[str, dict]] = {}
    for value in cfg[list_key]:
        folder = out / f"{setting}_{value:g}"
        sub = {**cfg, "out": str(folder), "table": str(folder / "table.md"),
               "simulate": {**cfg["simulate"], setting: value}, "config_name": str(config_path)}
        sub.pop(list_key)
        sub.pop("choose_fnl", None)
        sub.pop("docs_page", None)  # the page reports the scan's table, not each amplitude's
        sub_path = folder / "config.json"
        sub_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sub_path, json.dumps(sub, indent=2))
        click.echo(f"== {label} {value:g}", err=True)
        run_pipeline(sub_path, device, progress, only=models, rerun_changed=rerun_changed,
                     executor=executor)
        results[value] = amplitude_results(sub_path)
    shown = [m for m in cfg["models"] if any(m in res for res in results.values())]
    sensitivity = scan_sensitivity(results, shown)
    atomic_write_text(out / "sensitivity.json", json.dumps(sensitivity, indent=2))
    sim = cfg["simulate"]
    lines = [f"# Accuracy against {label} at lmax {sim['lmax']}", "",
             f"{sim['n_train']} training and {sim['n_test']} test maps per {label} (half non-Gaussian, "
             f"model {sim.get('ng_model', 'local')}); generated by `cmbscat pipeline {config_path} "
             "--scan`. Brackets: 68 % Wilson intervals of the test-map sampling.", "",
             f"| {label} | " + " | ".join(METHOD_NAMES.get(m, m) for m in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for value, res in results.items():
        cells = [f"{_percent(res[m]['accuracy'])} % [{_percent(res[m]['interval68'][0])}, "
                 f"{_percent(res[m]['interval68'][1])}]" if m in res else "—" for m in shown]
        lines.append(f"| {value:g} | " + " | ".join(cells) + " |")
    lines += ["", sensitivity_table(sensitivity, label)]
    rule = cfg.get("choose_fnl")
    if rule:
        chosen = choose_fnl(results, rule["method"], rule["accuracy"])
        lines += ["", f"Rule for the paper pipeline's f_NL (fixed before the scan was run): the "
                      f"smallest scanned f_NL at which the {METHOD_NAMES[rule['method']]} baseline "
                      f"reaches {100 * rule['accuracy']:g} % test accuracy: "
                      + (f"**f_NL = {chosen:g}**." if chosen is not None else "no scanned value does.")]
    table = out / f"{setting}_scan.md"
    atomic_write_text(table, "\n".join(lines) + "\n")
    _plot_scan(out / f"{setting}_scan.png", results, shown, label)
    click.echo(table.read_text(), err=True)
    _fill_docs_page(cfg, table)
    return table


def amplitude_results(sub_path: str | Path) -> dict[str, dict]:
    """Test accuracy of every model current at one amplitude of a scan (its sub-config
    ``sub_path``, as :func:`run_scan` writes it), also those of an earlier ``--models`` run:
    per model ``accuracy`` (seed mean), ``interval68`` (Wilson), ``n`` test maps, ``seeds``."""
    from cmbscat.experiment.metrics import wilson_interval

    out = {}
    for model, res in current_results({**load_config(sub_path), "config_name": str(sub_path)}).items():
        acc, n = float(res.accuracies.mean()), int(res.labels.size)
        out[model] = {"accuracy": acc, "interval68": list(wilson_interval(acc * n, n)),
                      "n": n, "seeds": len(res.seeds)}
    return out


def scan_sensitivity(results: dict[float, dict[str, dict]], models: list[str],
                     target: float = 0.95) -> dict[str, dict]:
    """Each model's amplitude at ``target`` accuracy, fitted on the scan's counts.

    A network's count at an amplitude is its seed-mean accuracy times the number of
    test maps, rounded (the spread between seeds is not part of this interval).
    """
    from cmbscat.experiment.sensitivity import amplitude_at_accuracy

    out = {}
    for model in models:
        have = sorted(v for v in results if model in results[v])
        if len(have) < 2:
            continue
        n = np.array([results[v][model]["n"] for v in have])
        k = np.round(np.array([results[v][model]["accuracy"] for v in have]) * n)
        out[model] = amplitude_at_accuracy(have, k, n, target)
    return out


def sensitivity_table(sensitivity: dict[str, dict], label: str) -> str:
    """Markdown: amplitude at 95 % accuracy per method, and its ratio to the cubic statistic's."""
    from cmbscat.experiment.sensitivity import describe, ratio

    if not sensitivity:
        return ""
    reference = sensitivity.get("cubic")
    lines = [f"{label} at which each method reaches 95 % accuracy (fit of Phi(1.645 (A/A95)^p) to "
             "the counts above; 68 % profile-likelihood interval; interpolated, never extrapolated):",
             "", f"| method | {label} at 95 % | fitted power p | ratio to the cubic statistic's |",
             "|---|---|---|---|"]
    for model, fit in sensitivity.items():
        r = ratio(fit, reference) if reference is not None and model != "cubic" else None
        r_text = f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]" if r else "—"
        lines.append(f"| {METHOD_NAMES.get(model, model)} | {describe(fit)} | {fit['p']:.2f} | {r_text} |")
    return "\n".join(lines)


def _plot_scan(path: Path, results: dict, models: list[str], label: str = "f_NL") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fnls = sorted(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        have = [f for f in fnls if m in results[f]]
        acc = np.array([100 * results[f][m]["accuracy"] for f in have])
        low = np.array([100 * results[f][m]["interval68"][0] for f in have])
        high = np.array([100 * results[f][m]["interval68"][1] for f in have])
        ax.errorbar(have, acc, yerr=np.clip([acc - low, high - acc], 0, None), marker="o", capsize=3,
                    label=METHOD_NAMES.get(m, m))
    ax.axhline(50, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    # the scanned amplitudes as plain tick labels (a log axis would print 3x10^1)
    ax.set_xticks(fnls, [f"{f:g}" for f in fnls])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(f"{label} (Sachs-Wolfe toy model)")
    ax.set_ylabel("test accuracy [%] (68 % Wilson intervals)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
