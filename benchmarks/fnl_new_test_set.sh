#!/usr/bin/env bash
# The f_NL run's estimators on a new test set (docs/fnl_regression.md, "Eighth reading"):
# simulate N test maps (seed SEED, the run's grid), their statistics and scattering as SH
# shard processes side by side (`--shard K/SH`, `cmbscat combine`), then every hybrid seed
# and the anchor (cubic S / F) of the run in RUN evaluated on them (`cmbscat evaluate RUN
# TEST --out`); `benchmarks/fnl_test_reading.py` reads the result. The settings are
# pipelines/fnl_regression.json's (nside 512, lmax 1023, store alm; depth 2, J0 5, odd
# channels with q 2).
#
#   RUN=results/fnl_regression W=results/fnl_eighth bash benchmarks/fnl_new_test_set.sh
#
# Defaults: 1080 maps, seed 39, 2 shards. PY picks the interpreter.
set -euo pipefail
N=${N:-1080}; SEED=${SEED:-39}; SH=${SH:-2}
GRID=${GRID:-grid:-60,-40,-20,0,0,0,20,40,60}
RUN=${RUN:?RUN: the f_NL pipeline run (its runs/hybrid/seed*, runs/cubic_fisher/seed0)}
W=${W:?W: where the new test files and evaluations go}
PY=${PY:-python3}
mkdir -p "$W/shards"
export OMP_NUM_THREADS=1
t0=$(date +%s)
shards() { for k in $(seq 0 $((SH - 1))); do echo "$W/shards/$1.${k}of$SH.h5"; done; }
sharded() {  # sharded STAGE NAME ARGS...: SH shard processes side by side, then combine
    local stage=$1 name=$2; shift 2
    [ -f "$W/$name.h5" ] && return 0
    seq 0 $((SH - 1)) | xargs -P "$SH" -I{} "$PY" -m cmbscat "$stage" "$@" \
        "$W/shards/$name.{}of$SH.h5" --shard {}/$SH --no-progress
    "$PY" -m cmbscat combine "$W/$name.h5" $(shards "$name")
    echo "# $stage: $(( $(date +%s) - t0 )) s"
}
sharded simulate sims_test --n-maps "$N" --nside 512 --lmax 1023 --ng-model local \
    --fnl-dist "$GRID" --seed "$SEED" --store alm
sharded stats stats_test "$W/sims_test.h5"
sharded scatter scat_test "$W/sims_test.h5" --depth 2 --J0 5 --odd --odd-power 2
for run in "$RUN"/runs/hybrid/seed*; do
    [ -d "$run" ] || continue
    "$PY" -m cmbscat evaluate "$run" "$W/scat_test.h5" --out "$W/runs/hybrid/$(basename "$run")" \
        --device cpu --no-progress > /dev/null
done
"$PY" -m cmbscat evaluate "$RUN/runs/cubic_fisher/seed0" "$W/stats_test.h5" \
    --out "$W/runs/cubic_fisher/seed0" --no-progress > /dev/null
echo "# evaluate: $(( $(date +%s) - t0 )) s"
