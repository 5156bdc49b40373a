"""Experiment driver: every stage of an experiment from one JSON config, with a results table.

``cmbscat pipeline pipelines/paper.json`` (what ``make reproduce`` runs) simulates
separate training and test sets, scatters them once, trains every model, evaluates
them all on the test set and writes a Markdown table. Each stage is resumable and
skips work already done, so a re-run after an interruption continues where it
stopped; per-stage wall times are printed and kept in ``timings.json`` (the time of
the run that did the work, not of a re-run that skipped it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import click

from cmbscat.errors import CmbscatError

# Published figures the table is compared with (McEwen et al. 2022, CMB experiment at L = 1024).
PAPER_RESULTS = {"hybrid": "95.3 %", "baseline": "53.1 %"}

METHOD_NAMES = {
    "hybrid": "scattering + DISCO CNN (hybrid)",
    "baseline": "DISCO CNN on low-resolution map",
    "powspec": "logistic regression, binned C_l",
    "onepoint": "logistic regression, skewness + kurtosis",
}


def load_config(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CmbscatError(f"no such pipeline config: {path}") from None
    except json.JSONDecodeError as exc:
        raise CmbscatError(f"{path} is not valid JSON: {exc}") from None


class _Timings:
    """Wall time of each stage, persisted so that a re-run reports the original times."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, func, done: bool):
        if done and name in self.data:
            click.echo(f"[{name}] already done ({self.data[name]:.0f} s when run)", err=True)
            return None
        click.echo(f"[{name}] ...", err=True)
        t0 = time.time()
        result = func()
        self.data[name] = time.time() - t0
        self.path.write_text(json.dumps(self.data, indent=2))
        click.echo(f"[{name}] {self.data[name]:.0f} s", err=True)
        return result


def _cli_flags(options: dict) -> list[str]:
    """``{"n_maps": 4, "J0": 5}`` -> ``["--n-maps", "4", "--J0", "5"]`` (None values dropped)."""
    flags = []
    for key, value in options.items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def run_sharded(stage: str, args: list[str], out_path: Path, n_items: int, workers: int,
                progress: bool = True) -> None:
    """Run ``cmbscat STAGE ARGS`` as ``workers`` parallel shard processes, then combine them.

    Each shard process uses one OpenMP thread (healpy's transforms scale better across
    processes than across threads on few cores) and is itself resumable; the shards are
    joined into ``out_path`` with HDF5 virtual datasets (:func:`cmbscat.store.combine_shards`).
    """
    from tqdm import tqdm

    from cmbscat.store import combine_shards

    shard_dir = out_path.parent / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_paths = [shard_dir / f"{out_path.stem}.{k}of{workers}.h5" for k in range(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # click accepts the output path after the options: "cmbscat scatter IN --depth 2 OUT"
    procs = [subprocess.Popen([sys.executable, "-m", "cmbscat", stage, *args, str(path),
                               "--shard", f"{k}/{workers}", "--no-progress"],
                              env=env, stderr=subprocess.PIPE, text=True)
             for k, path in enumerate(shard_paths)]

    def n_done():
        done = 0
        for path in shard_paths:
            partial = path.with_name(path.name + ".partial")
            done += len(list(partial.glob("item*.npz"))) if partial.exists() else 0
        return done

    with tqdm(total=n_items, desc=stage, unit="map", disable=not progress) as bar:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            finished = sum(1 for path in shard_paths if path.exists())
            bar.n = max(bar.n, n_done() if finished < workers else n_items)
            bar.refresh()
    for proc in procs:
        err = proc.stderr.read()
        if proc.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
            raise CmbscatError(f"a {stage} shard failed: {last}")
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


def run_pipeline(config_path: str | Path, device: str = "auto", progress: bool = True,
                 only: list[str] | None = None) -> Path:
    """Run every stage of the experiment in ``config_path``; return the table's path.

    ``only`` restricts the models trained (a subset of the config's); the scatter
    stage runs only when a model that needs it (the hybrid) is among them.
    """
    from cmbscat.evaluate import evaluate
    from cmbscat.scatter_stage import scatter
    from cmbscat.simulate import SimulationConfig, simulate
    from cmbscat.train import TrainConfig, train

    cfg = load_config(config_path)
    cfg.setdefault("config_name", str(config_path))
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    timings = _Timings(out / "timings.json")
    sim = cfg["simulate"]
    workers = int(cfg.get("workers", 1))
    models = select_models(cfg, only)
    need_scattering = "hybrid" in models

    files = {}
    for split in ("train", "test"):
        sims_path = out / f"sims_{split}.h5"
        config = SimulationConfig(n_maps=sim[f"n_{split}"], nside=sim["nside"], lmax=sim["lmax"],
                                  fnl=sim["fnl"], seed=sim[f"seed_{split}"],
                                  store=sim.get("store", "alm"))
        scat_path = out / f"scat_{split}.h5"
        if workers > 1:
            sim_flags = _cli_flags({"n_maps": config.n_maps, "nside": config.nside, "lmax": config.lmax,
                                    "fnl": config.fnl, "seed": config.seed, "store": config.store})
            run_simulate = partial(run_sharded, "simulate", sim_flags, sims_path, config.n_maps, workers,
                                   progress)
            run_scatter = partial(run_sharded, "scatter", [str(sims_path)] + _cli_flags(cfg["scatter"]),
                                  scat_path, config.n_maps, workers, progress)
        else:
            run_simulate = partial(simulate, sims_path, config, progress=progress)
            run_scatter = partial(scatter, sims_path, scat_path, progress=progress, **cfg["scatter"])
        timings.run(f"simulate {split}", run_simulate, sims_path.exists())
        if need_scattering:
            timings.run(f"scatter {split}", run_scatter, scat_path.exists())
        files[split] = {"sims": sims_path, "scattering": scat_path}

    rows = []
    for model in models:
        settings = cfg["models"][model]
        data_kind = "scattering" if model == "hybrid" else "sims"
        run_dir = out / "runs" / model
        train_config = TrainConfig(data=str(files["train"][data_kind]), model=model, **settings)
        timings.run(f"train {model}", lambda: train(run_dir, train_config, device, progress),
                    (run_dir / "summary.json").exists())
        timings.run(f"evaluate {model}",
                    lambda: evaluate(run_dir, files["test"][data_kind], device=device, progress=progress),
                    (run_dir / "metrics.json").exists())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append((model, metrics))

    table = Path(cfg.get("table", out / "table.md"))
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(results_table(cfg, rows, timings.data))
    click.echo(table.read_text(), err=True)
    return table


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def results_table(cfg: dict, rows: list[tuple[str, dict]], timings: dict) -> str:
    """Markdown table: method, input, accuracy +- standard error, AUC, wall time, paper's figure."""
    sim, scat = cfg["simulate"], cfg["scatter"]
    lines = [
        f"# {cfg.get('title', 'Results')}",
        "",
        f"Test set: {sim['n_test']} maps (half non-Gaussian), lmax {sim['lmax']}, nside {sim['nside']}, "
        f"f_NL {sim['fnl']:g}; trained on {sim['n_train']} maps. Generated by "
        f"`cmbscat pipeline {cfg.get('config_name', '...')}`.",
        "",
        "| method | input | accuracy | AUC | train + evaluate wall time | paper |",
        "|---|---|---|---|---|---|",
    ]
    for model, m in rows:
        settings = cfg["models"][model]
        if model == "hybrid":
            resolution = f"scattering depth {scat.get('depth', 2)}, J0 {scat.get('J0')}, from lmax {sim['lmax']}"
        elif model == "baseline":
            resolution = (f"map at lmax {settings.get('baseline_lmax', 127)}, "
                          f"nside {settings.get('baseline_nside', 64)}")
        else:
            resolution = f"map at lmax {sim['lmax']}, nside {sim['nside']}"
        wall = timings.get(f"train {model}", 0) + timings.get(f"evaluate {model}", 0)
        lines.append(f"| {METHOD_NAMES[model]} | {resolution} | {100 * m['accuracy']:.1f} ± "
                     f"{100 * m['accuracy_se']:.1f} % | {m['auc']:.3f} | {_duration(wall)} | "
                     f"{PAPER_RESULTS.get(model, '—')} |")
    total = sum(timings.values())
    stage_times = ", ".join(f"{k} {_duration(v)}" for k, v in timings.items())
    lines += ["", f"Stage wall times: {stage_times}; total {_duration(total)}.", ""]
    return "\n".join(lines)


def choose_fnl(results: dict[float, dict], method: str, accuracy: float) -> float | None:
    """The smallest scanned f_NL at which ``method`` reaches ``accuracy`` on the test set.

    This is the rule that picks the paper pipeline's f_NL: it looks at a classical
    baseline only, never at the networks, so the choice cannot be tuned to their result.
    None when no scanned value reaches it.
    """
    reached = [fnl for fnl, res in sorted(results.items())
               if method in res and res[method]["accuracy"] >= accuracy]
    return reached[0] if reached else None


def run_scan(config_path: str | Path, device: str = "auto", progress: bool = True,
             only: list[str] | None = None) -> Path:
    """Run the experiment of ``config_path`` once per value of its ``fnl_values``.

    Each value gets its own sub-folder ``<out>/fnl_<value>`` (resumable like the
    pipeline); accuracies are collected into ``<out>/fnl_scan.md`` and ``fnl_scan.png``,
    with the f_NL that the config's ``choose_fnl`` rule picks (:func:`choose_fnl`).
    """
    cfg = load_config(config_path)
    if "fnl_values" not in cfg:
        raise CmbscatError(f"{config_path} has no fnl_values list to scan")
    models = select_models(cfg, only)
    out = Path(cfg["out"])
    results = {}
    for fnl in cfg["fnl_values"]:
        sub = {**cfg, "out": str(out / f"fnl_{fnl:g}"), "table": str(out / f"fnl_{fnl:g}" / "table.md"),
               "simulate": {**cfg["simulate"], "fnl": fnl}, "config_name": str(config_path)}
        sub.pop("fnl_values")
        sub.pop("choose_fnl", None)
        sub_path = out / f"fnl_{fnl:g}" / "config.json"
        sub_path.parent.mkdir(parents=True, exist_ok=True)
        sub_path.write_text(json.dumps(sub, indent=2))
        click.echo(f"== f_NL {fnl:g}", err=True)
        run_pipeline(sub_path, device, progress, only=models)
        # every model finished so far at this f_NL, also those of an earlier --models run
        results[fnl] = {m: json.loads(path.read_text()) for m in cfg["models"]
                        if (path := Path(sub["out"]) / "runs" / m / "metrics.json").exists()}
    table = out / "fnl_scan.md"
    shown = [m for m in cfg["models"] if any(m in res for res in results.values())]
    sim = cfg["simulate"]
    lines = [f"# Accuracy against f_NL at lmax {sim['lmax']}", "",
             f"{sim['n_train']} training and {sim['n_test']} test maps per f_NL (half non-Gaussian); "
             f"generated by `cmbscat pipeline {config_path} --scan`.", "",
             "| f_NL | " + " | ".join(METHOD_NAMES[m] for m in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for fnl, res in results.items():
        cells = [f"{100 * res[m]['accuracy']:.1f} ± {100 * res[m]['accuracy_se']:.1f} %"
                 if m in res else "—" for m in shown]
        lines.append(f"| {fnl:g} | " + " | ".join(cells) + " |")
    rule = cfg.get("choose_fnl")
    if rule:
        chosen = choose_fnl(results, rule["method"], rule["accuracy"])
        lines += ["", f"Rule for the paper pipeline's f_NL (fixed before the scan was run): the "
                      f"smallest scanned f_NL at which the {METHOD_NAMES[rule['method']]} baseline "
                      f"reaches {100 * rule['accuracy']:g} % test accuracy: "
                      + (f"**f_NL = {chosen:g}**." if chosen is not None else "no scanned value does.")]
    table.write_text("\n".join(lines) + "\n")
    _plot_scan(out / "fnl_scan.png", results, shown)
    click.echo(table.read_text(), err=True)
    return table


def _plot_scan(path: Path, results: dict, models: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fnls = sorted(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        have = [f for f in fnls if m in results[f]]
        acc = [100 * results[f][m]["accuracy"] for f in have]
        err = [100 * results[f][m]["accuracy_se"] for f in have]
        ax.errorbar(have, acc, yerr=err, marker="o", capsize=3, label=METHOD_NAMES[m])
    ax.axhline(50, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("f_NL (Sachs-Wolfe toy model)")
    ax.set_ylabel("test accuracy [%]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
