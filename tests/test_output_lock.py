"""One writer per output: ``<OUT>.lock`` refuses a second run at start, and the lock of a
dead run is taken over so that the run resumes (cmbscat/lock.py)."""

import json
import os
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cmbscat.errors import CmbscatError
from cmbscat.lock import EMPTY_LOCK_GRACE_S, OutputLock
from cmbscat.sky.simulate import SimulationConfig, SkySimulator, simulate
from cmbscat.store import remove_output

from conftest import assert_one_line_error, run_cli

SIM_ARGS = ["--n-maps", "60", "--nside", "16", "--lmax", "31", "--no-progress"]

# Imports first, then say "ready" and wait for the go file, then run the command: the
# processes reach the lock within milliseconds of each other, whatever the import times.
GATED = """
import os, sys, time
import cmbscat.cli, cmbscat.sky.simulate, cmbscat.lock
print("ready", flush=True)
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
{body}
"""
GATED_CLI = GATED.format(body="cmbscat.cli.main(sys.argv[2:], prog_name='cmbscat')")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _start_gated(code, go, *args, cwd):
    return subprocess.Popen([sys.executable, "-c", code, str(go), *map(str, args)], cwd=cwd,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _release(procs, go):
    """Wait until every gated process is ready, then let them all go at once."""
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path, pid, host=None, started="2020-01-01T00:00:00+00:00"):
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started": started, "command": "cmbscat simulate ..."}))


def _arrays(path):
    with h5py.File(path, "r") as f:
        return f["alm"][()], f["labels"][()]


def test_two_simultaneous_runs_one_is_refused_at_start(tmp_path):
    go = tmp_path / "go"
    procs = [_start_gated(GATED_CLI, go, "simulate", "cc.h5", *SIM_ARGS, cwd=tmp_path)
             for _ in range(2)]
    _release(procs, go)
    results = [(p, *p.communicate(timeout=60)) for p in procs]
    ok = [r for r in results if r[0].returncode == 0]
    refused = [r for r in results if r[0].returncode != 0]
    assert len(ok) == 1 and len(refused) == 1, [r[2] for r in results]
    winner, loser = ok[0][0], refused[0]
    assert_one_line_error(subprocess.CompletedProcess([], loser[0].returncode, loser[1], loser[2]),
                          "cc.h5 is being written by", f"pid {winner.pid}",
                          socket.gethostname(), "cc.h5.lock")
    assert "60 maps computed now" in ok[0][2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc.h5", "go"]  # no lock, no partial
    run_cli("simulate", "single.h5", *SIM_ARGS, cwd=tmp_path, check=True)
    raced, single = _arrays(tmp_path / "cc.h5"), _arrays(tmp_path / "single.h5")
    assert all(np.array_equal(a, b) for a, b in zip(raced, single))


def test_live_holder_is_named_and_nothing_is_written(tmp_path):
    out = tmp_path / "sub" / "s.h5"
    with OutputLock(out):  # held by this (live) process
        lock = json.loads((tmp_path / "sub" / "s.h5.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        proc = run_cli("simulate", out, *SIM_ARGS)
        assert_one_line_error(proc, f"{out} is being written by pid {os.getpid()}",
                              f"since {lock['started']}", "wait for it")
        assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5.lock"]
        # nor may another process delete it (the pipeline's --rerun-changed discards outputs)
        remover = subprocess.run([sys.executable, "-c", "import sys; from cmbscat.store import "
                                  "remove_output; remove_output(sys.argv[1])", str(out)],
                                 capture_output=True, text=True, env=_env())
        assert remover.returncode != 0 and "being written by" in remover.stderr
        remove_output(out)  # this process holds it: allowed
    assert not out.parent.exists()  # the lock made sub/ for itself and removed it, still empty


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path / "s.h5.lock", pid)
    proc = run_cli("simulate", "s.h5", *SIM_ARGS, cwd=tmp_path, check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"pid {pid}" in notes[0] and "no longer running" in notes[0]
    assert "60 maps computed now" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_lock_from_another_host_is_refused(tmp_path):
    _write_lock(tmp_path / "s.h5.lock", 12345, host="some-other-node")
    proc = run_cli("simulate", "s.h5", *SIM_ARGS, cwd=tmp_path)
    assert_one_line_error(proc, "being written by pid 12345 on some-other-node",
                          "another host", "remove the lock")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5.lock"]  # untouched


def test_empty_and_garbled_locks(tmp_path):
    lock = tmp_path / "o.h5.lock"
    lock.write_text("")
    with pytest.raises(CmbscatError, match="just starting"):  # a writer filling it in
        OutputLock(tmp_path / "o.h5").acquire()
    old = time.time() - EMPTY_LOCK_GRACE_S - 5  # a crash between create and write
    os.utime(lock, (old, old))
    with OutputLock(tmp_path / "o.h5"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text("not json")
    with pytest.raises(CmbscatError, match="cannot be read as a cmbscat lock"):
        OutputLock(tmp_path / "o.h5").acquire()


def test_many_takers_of_one_stale_lock_one_wins(tmp_path):
    _write_lock(tmp_path / "o.h5.lock", _dead_pid())
    code = GATED.format(body=(
        "from cmbscat.lock import OutputLock\n"
        "from cmbscat.errors import CmbscatError\n"
        "try:\n"
        "    with OutputLock('o.h5'):\n"
        "        print('got it', flush=True); time.sleep(1.0)\n"
        "except CmbscatError as e:\n"
        "    print('refused:', e.message, flush=True)\n"))
    go = tmp_path / "go"
    procs = [_start_gated(code, go, cwd=tmp_path) for _ in range(4)]
    _release(procs, go)
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert sum("got it" in o for o in outs) == 1, outs
    assert sum("refused:" in o and "being written by" in o for o in outs) == 3, outs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go"]  # no lock, no takeover marker


def test_train_on_one_run_folder_is_refused_while_held(tmp_path):
    simulate(tmp_path / "s.h5", SimulationConfig(40, 16, 31, 2000.0, 0, store="alm"), progress=False)
    run = tmp_path / "runs" / "r"
    args = ("train", tmp_path / "s.h5", run, "--model", "onepoint", "--no-progress")
    with OutputLock(run):  # as a running `cmbscat train` holds it
        assert_one_line_error(run_cli(*args), f"{run} is being written by pid {os.getpid()}")
        assert not run.exists()  # refused at start: no run folder
    run_cli(*args, check=True)
    assert (run / "summary.json").exists() and not (tmp_path / "runs" / "r.lock").exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "input.json", "model.pkl", "summary.json"]
    with OutputLock(run):  # a finished run is read without the lock
        run_cli(*args, check=True)


def test_evaluate_into_one_folder_is_refused_while_held(tmp_path):
    """Two evaluations writing one folder's metrics.json: the second is refused at start."""
    simulate(tmp_path / "s.h5", SimulationConfig(40, 16, 31, 2000.0, 0, store="alm"), progress=False)
    run = tmp_path / "r"
    run_cli("train", tmp_path / "s.h5", run, "--model", "onepoint", "--no-progress", check=True)
    args = ("evaluate", run, tmp_path / "s.h5", "--out", tmp_path / "e", "--no-progress")
    with OutputLock(tmp_path / "e" / "metrics.json"):  # as a running `cmbscat evaluate` holds it
        assert_one_line_error(run_cli(*args), f"metrics.json is being written by pid {os.getpid()}")
    run_cli(*args, check=True)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["metrics.json", "roc.png", "scores.npy"]


def test_sigterm_releases_the_lock_and_the_run_resumes(tmp_path):
    """SIGTERM (Slurm's time limit, kill) mid-run: exit 143 with one line, no lock left,
    and the re-run resumes to the file an uninterrupted run writes."""
    import signal

    args = ["--n-maps", "200", "--nside", "32", "--lmax", "63", "--no-progress"]
    out = tmp_path / "s.h5"
    proc = subprocess.Popen([sys.executable, "-m", "cmbscat", "simulate", str(out), *args], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "s.h5.partial"
    deadline = time.time() + 120
    while not (partial.is_dir() and any(partial.iterdir())) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Terminated (SIGTERM)" in err and "Traceback" not in err
    assert not (tmp_path / "s.h5.lock").exists() and not out.exists()
    run_cli("simulate", out, *args, check=True)
    run_cli("simulate", tmp_path / "whole.h5", *args, check=True)
    for a, b in zip(_arrays(out), _arrays(tmp_path / "whole.h5")):
        np.testing.assert_array_equal(a, b)


def test_no_lock_left_after_a_failing_run(tmp_path, monkeypatch):
    config = SimulationConfig(8, 16, 31, 1000.0, 0)
    for exc in (RuntimeError("boom"), KeyboardInterrupt(), CmbscatError("bad")):
        def failing(self, seed, label, store="both", exc=exc):
            assert (tmp_path / "s.h5.lock").exists()  # taken before the first map
            raise exc
        monkeypatch.setattr(SkySimulator, "sky", failing)
        with pytest.raises(type(exc)):
            simulate(tmp_path / "s.h5", config, progress=False)
        assert not (tmp_path / "s.h5.lock").exists()
    monkeypatch.undo()
    assert simulate(tmp_path / "s.h5", config, progress=False) == 8  # then it runs
    # a CLI run refused after taking the lock (non-finite input) leaves no lock either
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["alm"][3, 5] = np.nan
    assert_one_line_error(run_cli("stats", tmp_path / "s.h5", tmp_path / "new" / "st.h5"),
                          "map 3", "non-finite")
    assert not (tmp_path / "new").exists()
