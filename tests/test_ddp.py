"""Data-parallel training under torchrun (gloo on CPU): the same training as one process."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cmbscat.sky.simulate import SimulationConfig, simulate

from conftest import run_cli

pytest.importorskip("torch.distributed")


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "train.h5"
    simulate(path, SimulationConfig(84, 32, 63, 2000.0, 1, store="alm"), progress=False)
    return path


def _torchrun(nproc, *args):
    """``torchrun --standalone --nproc-per-node NPROC -m cmbscat ARGS`` (CompletedProcess)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", "-m", "cmbscat", *map(str, args)],
                          capture_output=True, text=True, env=env)


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_two_ranks_give_the_validation_curve_of_one_process(sims, tmp_path):
    """Same global batch (8): 2 ranks x 4 maps with global batch norm, the same shuffling and
    dropout masks, gradients averaged by DDP. The baseline exercises batch norm in training,
    precise BN before validation and dropout. Tolerance 1e-5 relative on every epoch's
    validation and training loss: float sums in another order, over 3 epochs."""
    args = [sims, None, "--model", "baseline", "--epochs", "3", "--batch-size", "8",
            "--baseline-nside", "8", "--baseline-lmax", "15", "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *[one if a is None else a for a in args], check=True)
    proc = _torchrun(2, "train", *[two if a is None else a for a in args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2) == 3
    for a, b in zip(h1, h2):
        for key in ("val_loss", "train_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
        for key in ("val_accuracy", "train_accuracy"):
            assert b[key] == a[key]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_train"] == json.loads(
        (one / "summary.json").read_text())["n_train"]
    # rank 0 wrote the run; it evaluates like any run
    assert (two / "model.pt").exists() and not list(tmp_path.glob("two.lock"))


def test_two_ranks_rotate_each_map_as_one_process_does(sims, tmp_path):
    """The hybrid with its default rotation augmentation: each rank rotates its rows of the
    global batch by the rotations one process draws for them."""
    scat = tmp_path / "scat.h5"
    run_cli("scatter", sims, scat, "--J0", "3", "--no-progress", check=True)
    args = [scat, None, "--model", "hybrid", "--epochs", "2", "--batch-size", "8", "--augment",
            "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *[one if a is None else a for a in args], check=True)
    proc = _torchrun(2, "train", *[two if a is None else a for a in args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(_history(one), _history(two)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5), (a, b)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (a, b)


def test_classical_model_under_torchrun_is_refused(sims, tmp_path):
    proc = _torchrun(2, "train", sims, tmp_path / "r", "--model", "onepoint", "--no-progress")
    assert proc.returncode != 0
    assert "not under torchrun" in proc.stderr
