"""`cmbscat pipeline`: the smoke chain, seeds, the sealed test set, and reuse only of current stages."""

import json
from pathlib import Path

import h5py
import pytest

from conftest import assert_one_line_error, run_cli

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.json"


def _write_config(tmp_path, name="exp.json", **changes):
    cfg = json.loads(SMOKE.read_text())
    cfg["out"], cfg["table"] = str(tmp_path / "out"), str(tmp_path / "table.md")
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path, cfg


def _table_rows(table: str) -> list[str]:
    """The rows of the first (methods) table of a results file."""
    block = table.split("| method |", 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]


def test_smoke_pipeline_runs_every_stage_seeds_and_resumes(tmp_path):
    page = tmp_path / "page.md"
    marked = f"<!-- table:begin {tmp_path / 'table.md'} -->\nold\n<!-- table:end -->"
    page.write_text(f"# Report\n\n{marked}\n\nReading.\n")
    config, cfg = _write_config(tmp_path, docs_page=str(page))
    first = run_cli("pipeline", config, "--no-progress", "--device", "cpu", check=True)
    table = (tmp_path / "table.md").read_text()
    assert len(_table_rows(table)) == 6, table
    # the report writer put the very table into its page, between the markers
    assert table.split("\n", 1)[1].strip() in page.read_text() and "\nold\n" not in page.read_text()
    assert page.read_text().endswith("<!-- table:end -->\n\nReading.\n")
    assert "Wall clock from the first stage's start to the last one's end" in table
    # the run's span: at least the sum of the stages that ran one after the other
    wall = float(table.split("to the last one's end: ", 1)[1].split(" s ", 1)[0])
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    serial = sum(t for name, t in timings.items() if name.startswith(("simulate", "scatter", "stats")))
    assert wall >= round(serial) - 1, (wall, serial)
    out = tmp_path / "out"
    for model in ("hybrid", "baseline"):
        seeds = [json.loads((out / "runs" / model / f"seed{k}" / "metrics.json").read_text())
                 for k in range(3)]
        assert all(m["n"] == cfg["simulate"]["n_test"] for m in seeds)
        assert len({m["model_sha256"] for m in seeds}) == 3  # three different trainings
    assert "(mean of 3 seeds)" in table and "Paired differences" in table
    hybrid = json.loads((out / "runs" / "hybrid" / "seed0" / "metrics.json").read_text())
    # f_NL 2000 at lmax 63 is easy: the hybrid must have learned something
    assert hybrid["accuracy"] >= 0.75, hybrid
    # the parallel shards were joined into single files; the sealed set was not touched
    assert (out / "scat_train.h5").exists() and not (out / "sims_sealed.h5").exists()
    # (simulate, scatter, stats) x (train, test), one file per worker
    assert len(list((out / "shards").glob("*.h5"))) == 6 * cfg["workers"]
    assert "Sealed" not in table

    again = run_cli("pipeline", config, "--no-progress", check=True)
    n_stages = 6 + 2 * (3 + 3 + 1 + 1 + 1 + 1)
    assert again.stderr.count("] current") == n_stages, again.stderr
    assert "[train hybrid seed 0] ..." not in again.stderr
    assert "[train hybrid seed 0] ..." in first.stderr

    sealed = run_cli("pipeline", config, "--no-progress", "--sealed", check=True)
    table = (tmp_path / "table.md").read_text()
    assert "## Sealed test set" in table and "seed 3" in table
    log = json.loads((out / "sealed_log.json").read_text())
    assert len(log) == 3 + 3 + 4 and {e["model"] for e in log} == set(cfg["models"])
    assert "[evaluate hybrid seed 2 on sealed] ..." in sealed.stderr


def _sims_attrs(path):
    with h5py.File(path, "r") as f:
        return dict(f.attrs)


def test_changed_config_is_refused_then_recomputed_with_rerun_changed(tmp_path):
    """The review's case: f_NL 3000 with 20 test maps, then f_NL 0, 30 test maps, seed_train 7."""
    small = {"nside": 16, "lmax": 31, "n_train": 24}
    config, _ = _write_config(tmp_path, simulate={**small, "fnl": 3000, "n_test": 20},
                              models={"onepoint": {}}, workers=1)
    run_cli("pipeline", config, "--no-progress", check=True)
    out = tmp_path / "out"
    before = json.loads((out / "runs" / "onepoint" / "seed0" / "metrics.json").read_text())
    assert before["n"] == 20

    config, _ = _write_config(tmp_path, simulate={**small, "fnl": 0, "n_test": 30, "seed_train": 7},
                              models={"onepoint": {}}, workers=1)
    refused = run_cli("pipeline", config, "--no-progress")
    assert_one_line_error(refused, "simulate train", "fnl 3000", "--rerun-changed")
    assert _sims_attrs(out / "sims_test.h5")["fnl"] == 3000  # nothing was touched

    run_cli("pipeline", config, "--no-progress", "--rerun-changed", check=True)
    table = (tmp_path / "table.md").read_text()
    assert "f_NL 0" in table and "30 maps" in table
    after = json.loads((out / "runs" / "onepoint" / "seed0" / "metrics.json").read_text())
    assert after["n"] == 30 and after["test_sha256"] != before["test_sha256"]
    attrs = _sims_attrs(out / "sims_test.h5")
    assert attrs["fnl"] == 0 and attrs["n_maps"] == 30
    assert _sims_attrs(out / "sims_train.h5")["seed"] == 7
    # f_NL 0: both classes Gaussian, so nothing can be above chance by much
    assert after["accuracy"] < 0.85


def test_changed_training_settings_retrain_and_re_evaluate(tmp_path):
    models = {"hybrid": {"epochs": 1, "batch_size": 8}}
    sim = {"nside": 16, "lmax": 31, "n_train": 16, "n_test": 8}
    config, _ = _write_config(tmp_path, simulate=sim, models=models, workers=1)
    run_cli("pipeline", config, "--no-progress", check=True)
    run_dir = tmp_path / "out" / "runs" / "hybrid" / "seed0"
    old = json.loads((run_dir / "metrics.json").read_text())

    config, _ = _write_config(tmp_path, simulate=sim, models={"hybrid": {"epochs": 2, "batch_size": 8}},
                              workers=1)
    assert_one_line_error(run_cli("pipeline", config, "--no-progress"), "train hybrid seed 0",
                          "epochs 1 != 2")
    # the stage itself refuses too, as before
    assert_one_line_error(run_cli("train", tmp_path / "out" / "scat_train.h5", run_dir,
                                  "--epochs", "2", "--batch-size", "8"), "other settings")

    rerun = run_cli("pipeline", config, "--no-progress", "--rerun-changed", check=True)
    assert "[simulate train] current" in rerun.stderr and "[scatter test] current" in rerun.stderr
    assert "[train hybrid seed 0] changed (epochs 1 != 2)" in rerun.stderr
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 2
    new = json.loads((run_dir / "metrics.json").read_text())
    assert new["model_sha256"] != old["model_sha256"]


def test_evaluation_of_another_model_file_is_not_reused(tmp_path):
    """metrics.json records the model's hash: a replaced model is refused, then re-evaluated."""
    config, _ = _write_config(tmp_path, simulate={"nside": 16, "lmax": 31, "n_train": 16, "n_test": 8},
                              models={"powspec": {}}, workers=1)
    run_cli("pipeline", config, "--no-progress", check=True)
    model = tmp_path / "out" / "runs" / "powspec" / "seed0" / "model.pkl"
    model.write_bytes(model.read_bytes() + b"\0")  # as if retrained behind the pipeline's back
    assert_one_line_error(run_cli("pipeline", config, "--no-progress"), "evaluate powspec seed 0",
                          "model_sha256")
    run_cli("pipeline", config, "--no-progress", "--rerun-changed", check=True)


def test_scan_reads_only_current_results(tmp_path):
    """An earlier --models run's metrics count in the scan only while their chain is current."""
    _, cfg = _write_config(tmp_path)
    cfg.update(out=str(tmp_path / "scan"), fnl_values=[3000], workers=1,
               choose_fnl={"method": "onepoint", "accuracy": 0.75})
    cfg["simulate"].update(nside=16, lmax=31, n_train=24, n_test=20)
    cfg["simulate"].pop("fnl")
    config = tmp_path / "scan.json"
    config.write_text(json.dumps(cfg))
    run_cli("pipeline", config, "--scan", "--models", "onepoint", "--no-progress", check=True)
    assert "**f_NL = 3000**" in (tmp_path / "scan" / "fnl_scan.md").read_text()

    cfg["simulate"]["n_test"] = 30  # onepoint's test metrics are now stale
    config.write_text(json.dumps(cfg))
    run_cli("pipeline", config, "--scan", "--models", "powspec", "--rerun-changed", "--no-progress",
            check=True)
    table = (tmp_path / "scan" / "fnl_scan.md").read_text()
    header = [line for line in table.splitlines() if line.startswith("| f_NL")][0]
    assert "skewness" not in header and "no scanned value does" in table, table


def test_scan_of_classical_models_skips_scattering_and_applies_the_fnl_rule(tmp_path):
    """`--scan --models onepoint,powspec`: no scatter stage, a table, a plot and the rule's f_NL."""
    _, cfg = _write_config(tmp_path)
    cfg.update(out=str(tmp_path / "scan"), fnl_values=[1, 3000],
               choose_fnl={"method": "onepoint", "accuracy": 0.75})
    cfg["simulate"].update(n_train=32, n_test=32)
    cfg["simulate"].pop("fnl")
    config = tmp_path / "scan.json"
    config.write_text(json.dumps(cfg))

    run_cli("pipeline", config, "--scan", "--models", "onepoint,powspec", "--no-progress", check=True)
    table = (tmp_path / "scan" / "fnl_scan.md").read_text()
    assert (tmp_path / "scan" / "fnl_scan.png").exists()
    assert list((tmp_path / "scan").rglob("scat_*.h5")) == []
    assert not (tmp_path / "scan" / "fnl_1" / "runs" / "hybrid").exists()
    # f_NL 1 is invisible to skewness at lmax 63, f_NL 3000 is not
    assert "**f_NL = 3000**" in table, table
    assert "hybrid" not in table


def test_gnl_scan_fits_the_amplitude_at_95_percent(tmp_path):
    """A g_NL scan: the g_NL model reaches the maps, the kurtosis sees it, the cubic statistic
    does not, and each method gets its amplitude at 95 % accuracy (or 'not reached')."""
    _, cfg = _write_config(tmp_path)
    cfg.update(out=str(tmp_path / "scan"), gnl_values=[3e6, 3e7], workers=1,
               models={"onepoint": {}, "cubic": {}})
    cfg["simulate"].update(nside=16, lmax=31, n_train=60, n_test=60, ng_model="gnl")
    cfg["simulate"].pop("fnl")
    config = tmp_path / "scan.json"
    config.write_text(json.dumps(cfg))
    run_cli("pipeline", config, "--scan", "--no-progress", check=True)
    table = (tmp_path / "scan" / "gnl_scan.md").read_text()
    with h5py.File(tmp_path / "scan" / "gnl_3e+07" / "sims_test.h5", "r") as f:
        assert f.attrs["ng_model"] == "gnl" and f.attrs["ng_amplitude"] == 3e7
    sensitivity = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    assert sensitivity["cubic"]["status"] == "above scan" and "not reached" in table
    assert "| g_NL |" in table and (tmp_path / "scan" / "gnl_scan.png").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--models", "onepoint,resnet"], "resnet"),
    (["--scan", "--sealed"], "--sealed"),
])
def test_bad_pipeline_options_are_refused(args, fragment):
    assert_one_line_error(run_cli("pipeline", SMOKE, *args), fragment)


def test_unknown_model_setting_is_refused(tmp_path):
    config, _ = _write_config(tmp_path, models={"onepoint": {"epoch": 3}})
    assert_one_line_error(run_cli("pipeline", config, "--no-progress"), "unknown settings", "epoch")


def test_fnl_rule_picks_the_smallest_value_reaching_the_accuracy():
    from cmbscat.experiment.pipeline import choose_fnl

    results = {40: {"onepoint": {"accuracy": 0.9}}, 10: {"onepoint": {"accuracy": 0.55}},
               20: {"onepoint": {"accuracy": 0.76}, "hybrid": {"accuracy": 0.99}}, 30: {}}
    assert choose_fnl(results, "onepoint", 0.75) == 20
    assert choose_fnl(results, "onepoint", 0.95) is None
    assert choose_fnl(results, "hybrid", 0.5) == 20


def test_parallel_trainings_run_side_by_side_and_a_failure_stops_them(tmp_path):
    """Runner.settle_parallel: stages in one-thread processes, up to `workers` at once; one
    that fails is reported in one line with its own error, and the others are stopped."""
    import time

    from cmbscat.errors import CmbscatError
    from cmbscat.experiment.pipeline import Runner, Stage

    done = []

    def stage(name, command):
        marker = tmp_path / f"{name}.done"
        return Stage(name, marker, lambda: {"x": 1},
                     lambda: ({"x": 1}, False) if marker.exists() else None,
                     lambda: done.append(name), lambda: None, command=command)

    runner = Runner(tmp_path)
    ok = stage("ok", ["simulate", str(tmp_path / "a.h5"), "--n-maps", "2", "--nside", "4",
                      "--lmax", "7"])
    bad = stage("bad", ["simulate", str(tmp_path / "b.h5"), "--n-maps", "-1"])
    slow = stage("slow", ["simulate", str(tmp_path / "c.h5"), "--n-maps", "4000", "--nside", "64"])
    t0 = time.time()
    with pytest.raises(CmbscatError, match=r"\[bad\] failed: .*--n-maps"):
        runner.settle_parallel([slow, bad, ok], workers=2)
    assert time.time() - t0 < 60 and not (tmp_path / "c.h5").exists()  # slow was stopped
    assert done == []  # nothing ran in-process
    runner.settle_parallel([ok], workers=2)  # one stage: in-process
    assert done == ["ok"] and json.loads((tmp_path / "timings.json").read_text()).keys() >= {"ok"}
