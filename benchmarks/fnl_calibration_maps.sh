#!/usr/bin/env bash
# Calibration maps for an f_NL estimator (docs/fnl_regression.md, sixth run): simulate and
# scatter N maps with f_NL drawn from DIST in SH shards side by side (`--shard K/SH`, then
# `cmbscat combine`), and estimate them with the ensemble of the runs in RUNS/seed*
# (`cmbscat evaluate RUN... --out`) and with each run alone. Writes OUTDIR/truth.npy
# (true f_NL, seed per map), predictions.npy (the ensemble's mean, sigma), per_seed.npy
# (runs x maps x 2), metrics.json and fnl.png; the maps stay in W.
#
#   RUNS=results/fnl_regression/runs/hybrid OUTDIR=docs/fnl_calibration \
#       bash benchmarks/fnl_calibration_maps.sh      # from the repository root
#
# Defaults: the sixth run's (800 maps, uniform:-60,60, seed 36, nside 512, lmax 1023, J0 5,
# odd channels with q 2, 16 shards, --device cuda); PY picks the interpreter.
set -euo pipefail
N=${N:-800}; SH=${SH:-16}; NSIDE=${NSIDE:-512}; LMAX=${LMAX:-1023}; J0=${J0:-5}
DIST=${DIST:-uniform:-60,60}; SEED=${SEED:-36}; DEVICE=${DEVICE:-cuda}
RUNS=$(cd "${RUNS:?RUNS: the folder of the runs seed0, seed1, ...}" && pwd); W=${W:-/tmp/calib}
OUTDIR=$(mkdir -p "${OUTDIR:?OUTDIR: where the estimates go}" && cd "$OUTDIR" && pwd)
PY=${PY:-python3}
mkdir -p "$W"; cd "$W"   # not the repository root: its cmbscat/ lacks the package data
export OMP_NUM_THREADS=1
t0=$(date +%s)
seq 0 $((SH - 1)) | xargs -P "$SH" -I{} "$PY" -m cmbscat simulate sims.{}of$SH.h5 --n-maps "$N" \
    --nside "$NSIDE" --lmax "$LMAX" --ng-model local --fnl-dist "$DIST" --seed "$SEED" --store alm \
    --shard {}/$SH --no-progress
"$PY" -m cmbscat combine sims.h5 $(for k in $(seq 0 $((SH - 1))); do echo sims.${k}of$SH.h5; done)
echo "# simulate: $(( $(date +%s) - t0 )) s"
seq 0 $((SH - 1)) | xargs -P "$SH" -I{} "$PY" -m cmbscat scatter sims.h5 scat.{}of$SH.h5 --J0 "$J0" \
    --odd --odd-power 2 --shard {}/$SH --no-progress
"$PY" -m cmbscat combine scat.h5 $(for k in $(seq 0 $((SH - 1))); do echo scat.${k}of$SH.h5; done)
echo "# scatter: $(( $(date +%s) - t0 )) s"
"$PY" -m cmbscat evaluate $(ls -d "$RUNS"/seed*) scat.h5 --out "$OUTDIR" --device "$DEVICE" --no-progress
echo "# evaluate: $(( $(date +%s) - t0 )) s"
for run in "$RUNS"/seed*; do
    "$PY" -m cmbscat evaluate "$run" scat.h5 --out "$W/$(basename "$run")" --device "$DEVICE" --no-progress
done
"$PY" - "$W" "$OUTDIR" <<'PYEOF'
import sys, glob, h5py, numpy as np
w, out = sys.argv[1:]
with h5py.File(f"{w}/scat.h5", "r") as f:
    np.save(f"{out}/truth.npy", np.stack([f["fnl"][:], f["seeds"][:].astype(float)], axis=1))
runs = sorted(glob.glob(f"{w}/seed*/predictions.npy"))
np.save(f"{out}/per_seed.npy", np.stack([np.load(r) for r in runs]))
print("per-seed predictions from", runs)
PYEOF
echo "# per seed: $(( $(date +%s) - t0 )) s"
ls -la "$OUTDIR"
