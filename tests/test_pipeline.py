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
