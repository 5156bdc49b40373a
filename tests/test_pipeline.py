"""`make smoke`: the paper's whole chain at tiny size, with parallel shards, and its re-run."""

import json
from pathlib import Path

from conftest import run_cli

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.json"


def test_smoke_pipeline_runs_every_stage_and_resumes(tmp_path):
    cfg = json.loads(SMOKE.read_text())
    cfg["out"], cfg["table"] = str(tmp_path / "out"), str(tmp_path / "table.md")
    config = tmp_path / "smoke.json"
    config.write_text(json.dumps(cfg))

    first = run_cli("pipeline", config, "--no-progress", "--device", "cpu", check=True)
    table = (tmp_path / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4, table
    metrics = {m: json.loads((tmp_path / "out" / "runs" / m / "metrics.json").read_text())
               for m in cfg["models"]}
    assert all(m["n"] == cfg["simulate"]["n_test"] for m in metrics.values())
    # f_NL 2000 at lmax 63 is easy: the hybrid must have learned something
    assert metrics["hybrid"]["accuracy"] >= 0.75, metrics["hybrid"]
    # the parallel shards were joined into single files
    assert (tmp_path / "out" / "scat_train.h5").exists()
    # (simulate, scatter) x (train, test), one file per worker
    assert len(list((tmp_path / "out" / "shards").glob("*.h5"))) == 4 * cfg["workers"]

    again = run_cli("pipeline", config, "--no-progress", check=True)
    assert again.stderr.count("already done") == 4 + 2 * len(cfg["models"]), again.stderr
    assert "[train hybrid] ..." not in again.stderr and "[train hybrid] ..." in first.stderr


def test_scan_of_classical_models_skips_scattering_and_applies_the_fnl_rule(tmp_path):
    """`--scan --models onepoint,powspec`: no scatter stage, a table, a plot and the rule's f_NL."""
    cfg = json.loads(SMOKE.read_text())
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


def test_unknown_model_subset_is_refused(tmp_path):
    from conftest import assert_one_line_error

    assert_one_line_error(run_cli("pipeline", SMOKE, "--models", "onepoint,resnet"), "resnet")


def test_fnl_rule_picks_the_smallest_value_reaching_the_accuracy():
    from cmbscat.pipeline import choose_fnl

    results = {40: {"onepoint": {"accuracy": 0.9}}, 10: {"onepoint": {"accuracy": 0.55}},
               20: {"onepoint": {"accuracy": 0.76}, "hybrid": {"accuracy": 0.99}}, 30: {}}
    assert choose_fnl(results, "onepoint", 0.75) == 20
    assert choose_fnl(results, "onepoint", 0.95) is None
    assert choose_fnl(results, "hybrid", 0.5) == 20
