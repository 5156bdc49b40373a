"""The Dask executor's cost: one sharded scatter stage on a LocalCluster against plain processes.

    python benchmarks/executor_overhead.py [--maps 40] [--workers 2] [--repeats 2]

Simulates ``--maps`` maps at the paper's size (nside 512, lmax 1023) into a temporary
folder, then scatters them (odd channels, J0 5) as ``--workers`` shard tasks, alternately
(a) as plain one-thread subprocesses started and waited for here (what the pipeline
did before the executor) and (b) on a fresh Dask ``LocalCluster``
(:class:`cmbscat.experiment.executor.ShardExecutor`, cluster start and stop included),
and prints each wall time and the difference. Both join the shards the same way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmbscat.experiment.executor import ShardExecutor
from cmbscat.store import combine_shards

SCATTER = ["--depth", "2", "--J0", "5", "--odd", "--odd-power", "2", "--no-progress"]


def _commands(sims: Path, out: Path, workers: int) -> tuple[list[list[str]], list[Path]]:
    shards = [out / f"scat.{k}of{workers}.h5" for k in range(workers)]
    return [["scatter", str(sims), *SCATTER, str(p), "--shard", f"{k}/{workers}"]
            for k, p in enumerate(shards)], shards


def plain_processes(commands: list[list[str]]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cmbscat", *c], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    for proc in procs:
        proc.wait()
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.read().decode())


def on_local_cluster(commands: list[list[str]]) -> None:
    with ShardExecutor() as executor:
        executor.run(commands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sims = root / "sims.h5"
        subprocess.run([sys.executable, "-m", "cmbscat", "simulate", str(sims), "--n-maps", str(args.maps),
                        "--nside", "512", "--lmax", "1023", "--fnl", "30", "--seed", "99", "--store", "alm",
                        "--no-progress"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        times = {"plain processes": [], "Dask LocalCluster": []}
        for r in range(args.repeats):
            for name, run in (("plain processes", plain_processes), ("Dask LocalCluster", on_local_cluster)):
                out = root / f"{name.split()[0]}_{r}"
                out.mkdir()
                commands, shards = _commands(sims, out, args.workers)
                t0 = time.perf_counter()
                run(commands)
                combine_shards(out / "scat.h5", shards)
                times[name].append(time.perf_counter() - t0)
                print(f"{name}: {times[name][-1]:.1f} s ({args.maps} maps, {args.workers} shards)", flush=True)
        plain = min(times["plain processes"])
        dask = min(times["Dask LocalCluster"])
        print(f"best of {args.repeats}: plain {plain:.1f} s, Dask {dask:.1f} s, ratio {dask / plain:.2f}, "
              f"difference {dask - plain:.1f} s per stage")


if __name__ == "__main__":
    main()
