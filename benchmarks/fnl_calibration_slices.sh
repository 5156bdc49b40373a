#!/usr/bin/env bash
# Calibration maps for the paired response fit (docs/fnl_regression.md, "Ninth reading"): the
# slices SHARDS of an N-map set (seed SEED, f_NL drawn from DIST), each slice simulated with
# `--shard K/SH`, then its statistics and scattering, one process per slice and JOBS slices at
# once (a slice needs no other: no `cmbscat combine`, so the slices of one set can be made on
# different machines and read together); then every hybrid run in RUNS/seed* and the anchor
# run ANCHOR (cubic S / F) estimate every slice (`predict_fnl`, as `cmbscat evaluate` does).
# Writes OUTDIR/slices_K0-K1_of_SH.npz: fnl (true f_NL), seeds (per map), per_seed (runs x maps
# x 2: mean, sigma), anchor (maps x 2), runs (their folders' names); maps in file order.
#
#   RUNS=results/fnl_regression/runs/hybrid ANCHOR=results/fnl_regression/runs/cubic_fisher/seed0 \
#       OUTDIR=results/fnl_ninth/calib bash benchmarks/fnl_calibration_slices.sh
#
# Defaults: 1600 maps, seed 41, uniform:-80,80 (the training prior), 40 slices of 40 maps, all
# of them, 2 at once; the f_NL run's settings (nside 512, lmax 1023, store alm; depth 2, J0 5,
# odd channels with q 2). W holds the slices' files (each slice's maps are deleted once its
# statistics and scattering are written, unless KEEP_SIMS=1). Re-running resumes. PY picks the
# interpreter.
set -euo pipefail
N=${N:-1600}; SH=${SH:-40}; SEED=${SEED:-41}; DIST=${DIST:-uniform:-80,80}; JOBS=${JOBS:-2}
SHARDS=${SHARDS:-$(seq 0 $((SH - 1)))}
RUNS=$(cd "${RUNS:?RUNS: the folder of the hybrid runs seed0, seed1, ...}" && pwd)
ANCHOR=$(cd "${ANCHOR:?ANCHOR: the anchor run (runs/cubic_fisher/seed0)}" && pwd)
OUTDIR=$(mkdir -p "${OUTDIR:?OUTDIR: where the estimates go}" && cd "$OUTDIR" && pwd)
W=$(mkdir -p "${W:-/tmp/calib_slices}" && cd "${W:-/tmp/calib_slices}" && pwd)
PY=${PY:-python3}; KEEP_SIMS=${KEEP_SIMS:-0}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac   # W is the working folder
cd "$W"   # not the repository root: its cmbscat/ lacks the package data
export OMP_NUM_THREADS=1 N SH SEED DIST PY KEEP_SIMS
t0=$(date +%s)
slice() {  # slice K: simulate, statistics, scattering of slice K (each stage resumes itself)
    local k=$1
    [ -f "scat.$k.h5" ] && [ -f "stats.$k.h5" ] && return 0
    "$PY" -m cmbscat simulate "sims.$k.h5" --n-maps "$N" --nside 512 --lmax 1023 --ng-model local \
        --fnl-dist "$DIST" --seed "$SEED" --store alm --shard "$k/$SH" --no-progress
    "$PY" -m cmbscat stats "sims.$k.h5" "stats.$k.h5" --no-progress
    "$PY" -m cmbscat scatter "sims.$k.h5" "scat.$k.h5" --depth 2 --J0 5 --odd --odd-power 2 --no-progress
    [ "$KEEP_SIMS" = 1 ] || rm -f "sims.$k.h5"
}
export -f slice
printf '%s\n' $SHARDS | xargs -P "$JOBS" -I{} bash -c 'slice {}' 2>&1 | grep -v "^wrote " || true
for k in $SHARDS; do [ -f "scat.$k.h5" ] && [ -f "stats.$k.h5" ] || { echo "slice $k failed"; exit 1; }; done
echo "# slices: $(( $(date +%s) - t0 )) s"
"$PY" - "$RUNS" "$ANCHOR" "$OUTDIR" "$JOBS" "$SH" $SHARDS <<'PYEOF'
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

runs_dir, anchor, out, jobs, n_slices, *slices = sys.argv[1:]
runs = sorted((p for p in Path(runs_dir).glob("seed[0-9]*") if p.is_dir()), key=lambda p: int(p.name[4:]))


def estimates(run_and_kind):
    import torch
    torch.set_num_threads(1)
    from cmbscat.experiment.evaluate import predict_fnl
    run, kind = run_and_kind
    return np.concatenate([np.stack(predict_fnl(run, f"{kind}.{k}.h5", device="cpu", progress=False), axis=1)
                           for k in slices])


with ProcessPoolExecutor(int(jobs)) as pool:
    per_seed = list(pool.map(estimates, [(r, "scat") for r in runs] + [(anchor, "stats")]))
anchor_estimates = per_seed.pop()
fnl, seeds = [], []
for k in slices:
    with h5py.File(f"scat.{k}.h5", "r") as f:
        fnl.append(f["fnl"][:]); seeds.append(f["seeds"][:])
path = Path(out) / f"slices_{slices[0]}-{slices[-1]}_of_{n_slices}.npz"
np.savez(path, fnl=np.concatenate(fnl), seeds=np.concatenate(seeds), per_seed=np.stack(per_seed),
         anchor=anchor_estimates, runs=np.array([r.name for r in runs]))
print(f"wrote {path}: {sum(map(len, fnl))} maps, {len(runs)} runs and the anchor")
PYEOF
echo "# estimates: $(( $(date +%s) - t0 )) s"
