#!/usr/bin/env bash
# Tiny end-to-end run of every stage that exists, on small defaults (seconds to minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/smoke}
mkdir -p "$OUT"
"$BIN/cmbscat" simulate "$OUT/sims.h5" --n-maps 8 --nside 32 --lmax 63 --fnl 1000 --seed 1
echo "smoke: all stages done; outputs in $OUT"
