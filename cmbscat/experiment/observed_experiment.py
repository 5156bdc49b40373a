"""Every method on the same observed maps, in several observation settings (``make observed``).

A config with an ``observations`` object (``pipelines/observed.json``) names settings,
each a ``simulate.observation`` (beam, noise, hit map, mask, apodization; ``{}`` is the
noiseless full sky), e.g.::

    "observations": {
        "full sky, noiseless": {},
        "beam + noise": {"beam_fwhm_arcmin": 5, "noise_uk_arcmin": 45},
        "beam + noise + mask": {"beam_fwhm_arcmin": 5, "noise_uk_arcmin": 45,
                                "mask": "galactic:20,sources:200", "apodize_deg": 2}}

Each setting runs the whole experiment in ``<out>/<setting>/`` (the same seeds, so the
same skies under each observation). Then the first setting's trained models are applied,
unchanged, to every other setting's test maps (``evaluate --force``): a classifier trained
on the noiseless full sky and shown masked, noisy maps, so that users see why training
on the observation matters, above all how many Gaussian maps it calls non-Gaussian.
The table: each method's accuracy per setting, its loss against the first setting, and
those transfers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np

from cmbscat.errors import CmbscatError
from cmbscat.store import atomic_write_text


def setting_folder(out: Path, name: str) -> Path:
    """The sub-folder of setting ``name``: lower case, runs of other characters as '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise CmbscatError(f"observation setting {name!r} needs a name with letters or digits")
    return out / slug


def _sub_config(cfg: dict, name: str, config_path) -> tuple[dict, Path]:
    folder = setting_folder(Path(cfg["out"]), name)
    sub = {**cfg, "out": str(folder), "table": str(folder / "table.md"),
           "simulate": {**cfg["simulate"], "observation": cfg["observations"][name]},
           "title": f"{cfg.get('title', 'Observed skies')}: {name}", "config_name": str(config_path)}
    sub.pop("observations")
    sub.pop("docs_page", None)  # the page reports the comparison table, not each setting's
    return sub, folder / "config.json"


def transfer_stage(run_dir: Path, data: Path, out_dir: Path, name: str, device: str, progress: bool):
    """The stage that evaluates the run ``run_dir`` on ``data`` (another observation's test
    maps) into ``out_dir`` with ``force`` (the observation differs on purpose)."""
    from cmbscat.experiment.evaluate import evaluate
    from cmbscat.experiment.pipeline import evaluation_stage

    return evaluation_stage(name, run_dir, data, out_dir,
                            lambda: evaluate(run_dir, data, out_dir, device=device, progress=progress,
                                             force=True))


def run_observed(config_path: str | Path, device: str = "auto", progress: bool = True,
                 only: list[str] | None = None, rerun_changed: bool = False, executor=None) -> Path:
    """Run the experiment of ``config_path`` in each of its ``observations`` settings, then
    the first setting's models on every other setting's test maps; write the comparison
    table ``<out>/observed_table.md`` (or the config's ``table``) and return its path."""
    from cmbscat.experiment.docs_page import check_config_page
    from cmbscat.experiment.pipeline import (Experiment, Runner, _fill_docs_page, current_results,
                                             load_config, model_seeds, run_pipeline, select_models)

    cfg = load_config(config_path)
    cfg.setdefault("config_name", str(config_path))
    settings = cfg.get("observations")
    if not isinstance(settings, dict) or len(settings) < 1:
        raise CmbscatError(f"{config_path} needs an 'observations' object of named settings")
    if cfg.get("target", "label") != "label":
        raise CmbscatError("an observations config compares classifiers (target label)")
    table = Path(cfg.get("table", Path(cfg["out"]) / "observed_table.md"))
    check_config_page(cfg, table)  # before anything runs
    models = select_models(cfg, only)
    results, subs = {}, {}
    for name in settings:
        sub, sub_path = _sub_config(cfg, name, config_path)
        sub_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sub_path, json.dumps(sub, indent=2))
        click.echo(f"== {name}", err=True)
        run_pipeline(sub_path, device, progress, only=models, rerun_changed=rerun_changed, executor=executor)
        subs[name] = {**sub, "config_name": str(sub_path)}
        results[name] = current_results(subs[name])

    reference = next(iter(settings))
    ref_exp = Experiment(subs[reference], device, progress)
    runner = Runner(Path(cfg["out"]), rerun_changed)
    transfers: dict[str, dict[str, dict]] = {}
    for name in list(settings)[1:]:
        exp = Experiment(subs[name], device, progress)
        transfers[name] = {}
        for model in models:
            if model not in results[reference] or model not in results[name]:
                continue
            per_seed = []
            for seed in model_seeds(cfg["models"][model]):
                run_dir = ref_exp.run_dir(model, seed)
                out_dir = run_dir / f"on_{setting_folder(Path('.'), name).name}"
                stage = transfer_stage(run_dir, exp.data_path(model, "test"), out_dir,
                                       f"apply {model} seed {seed} of {reference} to {name}", device, progress)
                runner.settle(stage)
                per_seed.append(json.loads((out_dir / "metrics.json").read_text()))
            transfers[name][model] = transfer_summary(per_seed)
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table, observed_table(cfg, results, transfers))
    click.echo(table.read_text(), err=True)
    _fill_docs_page(cfg, table)
    return table


def transfer_summary(per_seed: list[dict]) -> dict:
    """Seed-mean accuracy and fraction of Gaussian maps called non-Gaussian, from metrics dicts."""
    accuracy = float(np.mean([m["accuracy"] for m in per_seed]))
    false_positive = float(np.mean([m["confusion"][0][1] / max(1, sum(m["confusion"][0])) for m in per_seed]))
    return {"accuracy": accuracy, "gaussian_called_non_gaussian": false_positive,
            "n": per_seed[0]["n"], "seeds": len(per_seed)}


def observed_table(cfg: dict, results: dict, transfers: dict) -> str:
    """Markdown: per method, accuracy per setting (68 % Wilson), loss against the first
    setting, and the first setting's model on the others' maps."""
    from cmbscat.experiment.metrics import wilson_interval
    from cmbscat.experiment.pipeline import METHOD_NAMES

    names = list(results)
    reference = names[0]
    sim = cfg["simulate"]
    models = [m for m in cfg["models"] if any(m in results[n] for n in names)]
    header = (["method", *names] + [f"loss, {n}" for n in names[1:]]
              + [f"trained on {reference}, applied to {n}: accuracy / Gaussian maps called non-Gaussian"
                 for n in names[1:]])
    lines = [f"# {cfg.get('title', 'Observed skies')}", "",
             f"lmax {sim['lmax']}, nside {sim['nside']}, f_NL {sim.get('fnl', 0):g}; {sim['n_train']} training and "
             f"{sim['n_test']} test maps per setting, the same skies (seeds {sim['seed_train']}/{sim['seed_test']}) "
             f"under each observation. Generated by `cmbscat pipeline {cfg.get('config_name', '...')}`.", "",
             "Settings: " + "; ".join(f"**{n}**: " + (", ".join(f"{k} {v}" for k, v in cfg['observations'][n].items())
                                                       or "none") for n in names) + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells, accuracy = [], {}
        for name in names:
            res = results[name].get(model)
            if res is None:
                cells.append("—")
                continue
            acc, n = float(res.accuracies.mean()), int(res.labels.size)
            low, high = wilson_interval(acc * n, n)
            accuracy[name] = acc
            cells.append(f"{100 * acc:.1f} % [{100 * low:.1f}, {100 * high:.1f}]")
        losses = [f"{100 * (accuracy[reference] - accuracy[n]):+.1f}" if reference in accuracy and n in accuracy
                  else "—" for n in names[1:]]
        moved = []
        for name in names[1:]:
            t = transfers.get(name, {}).get(model)
            moved.append(f"{100 * t['accuracy']:.1f} % / {100 * t['gaussian_called_non_gaussian']:.1f} %"
                         if t else "—")
        lines.append(f"| {METHOD_NAMES.get(model, model)} | " + " | ".join(cells + losses + moved) + " |")
    lines += ["", "Brackets: 68 % Wilson intervals of the test-map sampling (of the seed-mean accuracy for "
              "networks). Loss: accuracy points lost against the first setting. A method at chance should "
              "call half the Gaussian maps non-Gaussian; a method biased by the observation calls more.", ""]
    return "\n".join(lines)
