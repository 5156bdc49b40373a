"""Make one set of maps in shards, as the pipeline does: simulate, and optionally stats and scatter.

    python studies/map_set.py OUT --name NAME --n-maps N --seed S [--fnl F | --fnl-dist SPEC]
        [--nside 512] [--lmax 1023] [--stats] [--scatter --J0 5 --odd --odd-power 2] --shards K

Writes ``OUT/sims_NAME.h5`` and, with ``--stats`` / ``--scatter``, ``OUT/stats_NAME.h5`` /
``OUT/scat_NAME.h5``: the names, the shard files (``OUT/shards/sims_NAME.{k}of{K}.h5``) and
the records are those of a pipeline split NAME, because the stages are the pipeline's own.
The script builds a one-split config (``simulate.n_NAME``, ``seed_NAME``, ``fnl_dist_NAME``,
``scatter``, ``workers`` = ``--shards``) and settles its per-map stages with
:class:`cmbscat.experiment.pipeline.Experiment` and ``Runner``: each stage runs as ``--shards``
tasks ``cmbscat STAGE ... --shard k/K`` on a :class:`cmbscat.experiment.executor.ShardExecutor`
(a Dask ``LocalCluster`` of one-thread workers by default; ``--executor dask --scheduler ADDR``
for the workers of a running scheduler on other machines sharing OUT), and the shards are
joined with :func:`cmbscat.store.combine_shards` (HDF5 virtual datasets: keep ``OUT/shards/``).
A stage whose output records the same settings is reused, an interrupted one resumes (re-run
the same command), one made from other settings is refused in one line (``--rerun-changed``
recomputes it). The maps' content does not depend on ``--shards`` (map i's seed comes from
``--seed`` and i): the combined file's ``content_sha256`` equals an unsharded ``cmbscat
simulate`` of the same settings, so choose ``--shards`` by the cores at hand. Per-stage wall
times go to ``OUT/timings.json``.

It replaces three shell loops of benchmarks/ that each made a set this way by hand
(``xargs -P`` over ``--shard k/K``, then ``cmbscat combine``), removed in the commit that added
this script. Their runs, reproduced (RUNS = results/fnl_regression/runs/hybrid, the f_NL run's
hybrid seeds, the fifth run's for the sixth run; ANCHOR =
results/fnl_regression/runs/cubic_fisher/seed0, the cubic S / F run; OUTDIR = where the
estimates go):

* ``fnl_calibration_maps.sh``, the sixth f_NL run's 800 calibration maps (docs/fnl_regression.md,
  "Sixth run's result"; the estimates kept in studies/data/fnl_sixth_run_calibration/)::

    python studies/map_set.py /tmp/calib --name calib --n-maps 800 --seed 36 \\
        --fnl-dist uniform:-60,60 --nside 512 --lmax 1023 --scatter --J0 5 --odd --odd-power 2 --shards 16
    cmbscat evaluate RUNS/seed* /tmp/calib/scat_calib.h5 --out OUTDIR --device cuda   # the ensemble
    for run in RUNS/seed*; do cmbscat evaluate $run /tmp/calib/scat_calib.h5 \\
        --out /tmp/calib/$(basename $run) --device cuda; done                       # each seed
    python -c 'import glob, h5py, numpy as np; f = h5py.File("/tmp/calib/scat_calib.h5", "r")
    np.save("OUTDIR/truth.npy", np.stack([f["fnl"][:], f["seeds"][:].astype(float)], axis=1))
    np.save("OUTDIR/per_seed.npy", np.stack([np.load(p) for p in sorted(glob.glob("/tmp/calib/seed*/predictions.npy"))]))'

* ``fnl_calibration_slices.sh``, the ninth reading's 1600 calibration maps of seed 41, made as
  40 slices of 40 maps in three calls of 16 / 16 / 8 slices (docs/fnl_regression.md, "Ninth
  reading"; the estimates kept in studies/data/fnl_ninth_reading_calibration/). The slices were
  only a way to split the work; one set in shards has the same maps in the same order::

    python studies/map_set.py /tmp/calib_slices --name calib --n-maps 1600 --seed 41 \\
        --fnl-dist uniform:-80,80 --nside 512 --lmax 1023 --stats --scatter --depth 2 --J0 5 \\
        --odd --odd-power 2 --shards 16     # 16 on the lent machine's 16 cores; 2 on 2 cores
    for run in RUNS/seed*; do cmbscat evaluate $run /tmp/calib_slices/scat_calib.h5 \\
        --out /tmp/calib_slices/hybrid/$(basename $run) --device cpu; done
    cmbscat evaluate ANCHOR /tmp/calib_slices/stats_calib.h5 --out /tmp/calib_slices/anchor

  and the estimates in the one file ``studies/fnl_paired_calibration.py --slices`` reads
  (keys fnl, seeds, per_seed: runs x maps x (mean, sigma), anchor: maps x 2, runs)::

    mkdir -p results/fnl_ninth/calib
    python -c 'from pathlib import Path; import h5py, numpy as np; w = Path("/tmp/calib_slices")
    runs = sorted((w / "hybrid").glob("seed[0-9]*"), key=lambda p: int(p.name[4:]))
    f = h5py.File(w / "scat_calib.h5", "r")
    np.savez("results/fnl_ninth/calib/slices_0-39_of_40.npz", fnl=f["fnl"][:], seeds=f["seeds"][:],
             per_seed=np.stack([np.load(r / "predictions.npy") for r in runs]),
             anchor=np.load(w / "anchor/predictions.npy"), runs=np.array([r.name for r in runs]))'

  The shell loop deleted each slice's maps once its statistics and scattering were written
  (6.7 GB for 1600 maps at lmax 1023); here delete ``sims_calib.h5`` and
  ``shards/sims_calib.*`` by hand once both are made (a re-run would then simulate again).

* ``fnl_new_test_set.sh``, a new test set for the f_NL run's estimators (docs/fnl_regression.md:
  the eighth reading, seed 39 into results/fnl_eighth; the ninth, seed 40 into results/fnl_ninth),
  read by ``studies/fnl_test_reading.py --test W`` (the same file names as before)::

    W=results/fnl_eighth
    python studies/map_set.py $W --name test --n-maps 1080 --seed 39 \\
        --fnl-dist grid:-60,-40,-20,0,0,0,20,40,60 --nside 512 --lmax 1023 --stats --scatter \\
        --depth 2 --J0 5 --odd --odd-power 2 --shards 2
    for run in RUNS/seed*; do cmbscat evaluate $run $W/scat_test.h5 \\
        --out $W/runs/hybrid/$(basename $run) --device cpu; done
    cmbscat evaluate ANCHOR $W/stats_test.h5 --out $W/runs/cubic_fisher/seed0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from cmbscat.errors import CmbscatError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Output: OUT/sims_NAME.h5 (+ stats_NAME.h5, scat_NAME.h5), their shard files in "
               "OUT/shards/, OUT/timings.json. See the module docstring for the command lines "
               "that reproduce the shell scripts this replaces.")
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="folder of the set (created); its files are named as a pipeline "
                             "split NAME's: sims_NAME.h5, stats_NAME.h5, scat_NAME.h5")
    parser.add_argument("--name", default="set",
                        help="name of the set, in its file names (letters, digits, _; default: set; "
                             "'test' or 'calib' give the files a pipeline folder holds)")
    parts = parser.add_argument_group("simulate (the options of `cmbscat simulate`)")
    parts.add_argument("--n-maps", type=int, required=True,
                       help="number of maps (even unless --fnl-dist: half Gaussian, half non-Gaussian)")
    parts.add_argument("--seed", type=int, required=True,
                       help="run seed; map i's own seed is derived from it and i")
    parts.add_argument("--nside", type=int, default=512, help="HEALPix resolution (default: 512)")
    parts.add_argument("--lmax", type=int, default=1023,
                       help="band limit, at most 3 nside - 1 (default: 1023, the papers' L = 1024)")
    parts.add_argument("--ng-model", choices=["local", "gnl"], default="local",
                       help="non-Gaussian model (default: local)")
    amplitude = parts.add_mutually_exclusive_group()
    amplitude.add_argument("--fnl", type=float, default=None,
                           help="f_NL of the non-Gaussian class with --ng-model local "
                                "(default: cmbscat simulate's, 1000)")
    amplitude.add_argument("--fnl-dist", default=None, metavar="SPEC",
                           help="each map's own f_NL: uniform:LO,HI, normal:MU,SD or grid:V1,V2,... "
                                "(cmbscat simulate --fnl-dist)")
    parts.add_argument("--gnl", type=float, default=None,
                       help="g_NL of the non-Gaussian class, required with --ng-model gnl")
    parts.add_argument("--store", choices=["alm", "maps", "both"], default="alm",
                       help="what the sims file holds (default: alm, as the pipeline stores it)")
    stats = parser.add_argument_group("stats")
    stats.add_argument("--stats", action="store_true",
                       help="also compute the classical statistics, OUT/stats_NAME.h5 "
                            "(cmbscat stats with its defaults, as the pipeline runs it)")
    scat = parser.add_argument_group("scatter (the options of `cmbscat scatter`; left out: its default)")
    scat.add_argument("--scatter", action="store_true",
                      help="also compute the scattering coefficients, OUT/scat_NAME.h5")
    scat.add_argument("--depth", type=int, default=None, help="scattering depth (default: 2)")
    scat.add_argument("--J0", type=int, default=None, help="lowest wavelet scale (default: 5 for lam 2)")
    scat.add_argument("--lam", type=float, default=None, help="wavelet dilation factor (default: 2)")
    scat.add_argument("--oversample", type=float, default=None, help="modulus grid factor (default: 1)")
    scat.add_argument("--min-nside", type=int, default=None, help="floor on the modulus grids' nside (default: cmbscat scatter's)")
    scat.add_argument("--iter", type=int, default=None, help="map2alm iterations after each modulus (default: 0)")
    scat.add_argument("--odd", action="store_true", help="add the odd channels C[j1, j2]")
    scat.add_argument("--odd-power", type=int, default=None,
                      help="q of the odd channels' envelope, 1 or 2 (default: 2)")
    run = parser.add_argument_group("how it runs")
    run.add_argument("--shards", type=int, required=True,
                     help="shard tasks per stage, side by side (one one-thread worker each on a "
                          "LocalCluster); 1: each stage in this process, unsharded")
    run.add_argument("--executor", choices=["local", "dask"], default="local",
                     help="where the shard tasks run (cmbscat pipeline --executor; default: local)")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="with --executor dask: a running Dask scheduler, e.g. tcp://10.0.0.1:8786 "
                          "(its workers need cmbscat and OUT on a shared file system)")
    run.add_argument("--slurm", default=None, metavar="JSON",
                     help="with --executor dask: start dask_jobqueue's SLURMCluster with these "
                          "options, a JSON object, e.g. '{\"queue\": \"cosmo\", \"memory\": \"8GB\"}'")
    run.add_argument("--rerun-changed", action="store_true",
                     help="recompute a stage whose output records other settings, instead of refusing")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.name):
        parser.error(f"--name must be letters, digits and _, got {args.name!r}")
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    return args


def set_config(args: argparse.Namespace) -> dict:
    """The one-split pipeline config of the set (``cmbscat pipeline``'s keys)."""
    from cmbscat.sky.fnl_distribution import FnlDistribution
    from cmbscat.sky.simulate import resolve_ng_amplitudes

    fnl_dist = FnlDistribution.parse(args.fnl_dist).spec if args.fnl_dist else ""
    fnl, gnl = resolve_ng_amplitudes(args.ng_model, args.fnl, args.gnl, fnl_dist)  # the CLI's defaults
    name = args.name
    sim = {"nside": args.nside, "lmax": args.lmax, "store": args.store, "ng_model": args.ng_model,
           "fnl": fnl, "gnl": gnl, f"n_{name}": args.n_maps, f"seed_{name}": args.seed}
    if fnl_dist:
        sim[f"fnl_dist_{name}"] = fnl_dist
    scatter = {key: value for key, value in
               {"depth": args.depth, "J0": args.J0, "lam": args.lam, "oversample": args.oversample,
                "min_nside": args.min_nside, "iter": args.iter,
                "odd": True if args.odd else None, "odd_power": args.odd_power}.items()
               if value is not None}
    return {"out": str(args.out), "workers": args.shards, "simulate": sim, "scatter": scatter}


def make_set(args: argparse.Namespace) -> list[Path]:
    """Settle the set's stages (simulate, then stats and scatter if asked); their outputs."""
    from cmbscat.experiment.executor import ShardExecutor
    from cmbscat.experiment.pipeline import Experiment, Runner

    slurm = None
    if args.slurm is not None:
        try:
            slurm = json.loads(args.slurm)
        except json.JSONDecodeError as exc:
            raise CmbscatError(f"--slurm: not a JSON object: {exc}") from None
        if not isinstance(slurm, dict):
            raise CmbscatError("--slurm must be a JSON object of SLURMCluster options")
    cfg = set_config(args)
    with ShardExecutor(args.executor, args.scheduler, slurm) as executor:  # started at the first sharded stage
        exp = Experiment(cfg, device="cpu", progress=args.progress, executor=executor)
        exp.out.mkdir(parents=True, exist_ok=True)
        runner = Runner(exp.out, args.rerun_changed)
        stages = [exp.simulate_stage(args.name)]
        if args.stats:
            stages.append(exp.stats_stage(args.name))
        if args.scatter:
            stages.append(exp.scatter_stage(args.name))
        runner.refuse_changed(stages)
        for stage in stages:
            runner.settle(stage)
    return [stage.output for stage in stages]


def main(argv=None) -> None:
    args = parse_args(argv)
    scatter_options = (args.depth, args.J0, args.lam, args.oversample, args.min_nside, args.iter,
                       args.odd_power)
    if not args.scatter and (args.odd or any(v is not None for v in scatter_options)):
        sys.exit("Error: scatter options given without --scatter")
    try:
        outputs = make_set(args)
    except CmbscatError as exc:
        sys.exit(f"Error: {exc}")
    for path in outputs:
        print(path)


if __name__ == "__main__":
    main()
