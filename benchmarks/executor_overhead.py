"""The Dask executor's cost: each sharded per-map stage on a LocalCluster against plain processes.

    python benchmarks/executor_overhead.py [--maps 40] [--workers 2] [--repeats 2]
        [--stages simulate,scatter,stats]

At the paper's size (nside 512, lmax 1023, f_NL 30; scatter with odd channels, J0 5) runs
each per-map stage of ``make reproduce`` (``cmbscat simulate``, ``scatter``, ``stats``) on
``--maps`` maps as ``--workers`` shard tasks, alternately (a) as plain one-thread
subprocesses started and waited for here (what the pipeline did before the executor) and
(b) on a fresh Dask ``LocalCluster`` (:class:`cmbscat.experiment.executor.ShardExecutor`,
cluster start and stop included: the pipeline starts one per run, so this counts the start
once per stage), the order of the two swapped at every repeat so that a drift of the
machine's speed falls on both. Both join the shards the same way. Prints each wall time,
each stage's best-of ratio, and what those ratios make of a whole ``make reproduce``
(``--reproduce-minutes``: its measured stage times, README) when only the per-map stages
run on the executor (the trainings and evaluations do not use it).
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

SIMULATE = ["--nside", "512", "--lmax", "1023", "--ng-model", "local", "--fnl", "30", "--store", "alm"]
SCATTER = ["--depth", "2", "--J0", "5", "--odd", "--odd-power", "2"]
STAGES = ("simulate", "scatter", "stats")
# make reproduce's stage wall times on 2 cores (README, "The paper's experiment", run of
# 2026-11-26): simulate 5.0, scatter 18.6 + 9.1, stats 22.5 min, of about 155 min in all
REPRODUCE_MINUTES = "simulate=5.0,scatter=27.7,stats=22.5,total=155"


def stage_args(stage: str, sims: Path, n_maps: int) -> list[str]:
    """The arguments before the shard file of ``cmbscat STAGE`` (what the pipeline passes)."""
    if stage == "simulate":
        return ["simulate", "--n-maps", str(n_maps), *SIMULATE, "--seed", "99"]
    if stage == "scatter":
        return ["scatter", str(sims), *SCATTER]
    return ["stats", str(sims)]


def shard_commands(args: list[str], out: Path, workers: int) -> tuple[list[list[str]], list[Path]]:
    shards = [out / f"shard.{k}of{workers}.h5" for k in range(workers)]
    return [[*args, str(p), "--shard", f"{k}/{workers}", "--no-progress"]
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


RUNNERS = {"plain processes": plain_processes, "Dask LocalCluster": on_local_cluster}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of " + ", ".join(STAGES))
    parser.add_argument("--reproduce-minutes", default=REPRODUCE_MINUTES,
                        help="make reproduce's measured minutes per stage and in all (default: %(default)s)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        raise SystemExit(f"--stages: choose among {', '.join(STAGES)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sims = root / "sims.h5"  # the input of scatter and stats, made once, untimed
        subprocess.run([sys.executable, "-m", "cmbscat", *stage_args("simulate", sims, args.maps), str(sims),
                        "--no-progress"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        times = {(stage, name): [] for stage in stages for name in RUNNERS}
        for r in range(args.repeats):
            order = list(RUNNERS) if r % 2 == 0 else list(RUNNERS)[::-1]
            for stage in stages:
                for name in order:
                    out = root / f"{stage}_{name.split()[0]}_{r}"
                    out.mkdir()
                    commands, shards = shard_commands(stage_args(stage, sims, args.maps), out, args.workers)
                    t0 = time.perf_counter()
                    RUNNERS[name](commands)
                    combine_shards(out / f"{stage}.h5", shards)
                    times[stage, name].append(time.perf_counter() - t0)
                    print(f"{stage}, {name}: {times[stage, name][-1]:.1f} s ({args.maps} maps, "
                          f"{args.workers} shards)", flush=True)
    minutes = dict(kv.split("=") for kv in args.reproduce_minutes.split(","))
    print(f"\nbest of {args.repeats} | plain (s) | Dask (s) | ratio | make reproduce minutes")
    extra = 0.0
    for stage in stages:
        plain = min(times[stage, "plain processes"])
        dask = min(times[stage, "Dask LocalCluster"])
        stage_minutes = float(minutes.get(stage, 0.0))
        extra += (dask / plain - 1.0) * stage_minutes
        print(f"{stage} | {plain:.1f} | {dask:.1f} | {dask / plain:.3f} | {stage_minutes:g}")
    total = float(minutes["total"])
    print(f"make reproduce, per-map stages at these ratios, the rest unchanged: {total:g} -> "
          f"{total + extra:.1f} min, ratio {(total + extra) / total:.3f}")


if __name__ == "__main__":
    main()
