import os
import subprocess
import sys

import pytest

# Set before any test module imports healpy: the suite's many small transforms run
# faster on one OpenMP thread than on two contending ones, and subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def run_cli(*args, cwd=None, check=False, env=None):
    """Run ``python -m cmbscat ARGS`` in a subprocess; return the CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, "-m", "cmbscat", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"cmbscat {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *fragments):
    """A refused input: non-zero exit, no traceback, one 'Error: ...' line naming the problem."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def cli():
    return run_cli
