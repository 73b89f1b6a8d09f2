#!/usr/bin/env bash
# Issue 18 (v2 diagnosis) data on a shared 2-core CPU: classical liquid NVT with the teacher, distorted
# copies of its frames, then the teacher's per-atom energies on every frame. Everything niced, 1 thread.
#   bash training/v2_data.sh            # MINUTES=16 (i-PI runs), OUT=training/data
# Wall time on 2 shared AMD EPYC cores (2026-12-02): ~16 min MD + ~6 min labelling.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-training/data}
MINUTES=${MINUTES:-16}
TEACHER=${TEACHER:-models/local/bpnnp-revpbe0d3.pt}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f "$TEACHER" ] || make teacher
# 1. four 64-molecule classical liquids (250-400 K), one frame per 10 fs, the first 100 fs dropped
nice -n 19 $PY -m mlip_server.training.make_data --teacher "$TEACHER" --out "$OUT" --minutes "$MINUTES" \
    --only liquid-250K,liquid-300K,liquid-350K,liquid-400K --skip 10 --max-frames 500
# 2. distorted copies of those frames (compressed up to 1.3x and displaced by sigma <= 0.12 A; then
#    three O-O contacts of 1.75-2.4 A per frame), as in the shipped model's data
nice -n 19 $PY -m mlip_server.training.make_data --teacher "$TEACHER" --out "$OUT" --only none --perturb 150 --append
nice -n 19 $PY -m mlip_server.training.make_data --teacher "$TEACHER" --out "$OUT" --only none --perturb 100 \
    --close-pairs 3 --max-sigma 0.06 --append --seed 1
# 3. per-atom teacher energies (the teacher_atomic_energy column) for loss.atomic_energy_weight
nice -n 19 $PY -m mlip_server.training.atomic_energies --teacher "$TEACHER" "$OUT/train.extxyz" "$OUT/val.extxyz"
