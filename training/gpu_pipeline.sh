#!/usr/bin/env bash
# One prepared GPU run: PET training, after teacher-labelled data generation unless data is given.
#   DATA_MINUTES=3 TRAIN_MINUTES=4 OUT=/path bash training/gpu_pipeline.sh BPNN_DIR ICE_DIR
#   DATA=dir CONFIG=training/configs/water-pet-gpu-phase3.yaml TRAIN_MINUTES=6.5 OUT=/path bash training/gpu_pipeline.sh
# BPNN_DIR: the n2p2 files of the reference potential (../shared/data/bpnnp-revpbe0d3);
# ICE_DIR: folder with ice_ih_disordered_0{2,3}.xyz. DATA: a folder with train.extxyz and val.extxyz
# (or their .xz), made here by `make training-data`; then no teacher is needed. Writes
# OUT/{checkpoint.pt,log.jsonl,model.pt,train.log} (+ provenance.json, val.extxyz.gz when it generated
# the data). Needs torch with CUDA, ase, vesin (+ ipi to generate data).
set -euo pipefail
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
DATA_MINUTES=${DATA_MINUTES:-3}; TRAIN_MINUTES=${TRAIN_MINUTES:-4}; DEVICE=${DEVICE:-cuda}
STRIDE=${STRIDE:-20}; SKIP=${SKIP:-10}; CONFIG=${CONFIG:-training/configs/water-pet.yaml}
BATCH=${BATCH:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -n "${DATA:-}" ]; then
    mkdir -p /tmp/data
    for f in train val; do
        if [ -f "$DATA/$f.extxyz.xz" ]; then xz -dc "$DATA/$f.extxyz.xz" > /tmp/data/$f.extxyz
        else cp "$DATA/$f.extxyz" /tmp/data/$f.extxyz; fi
    done
else
    BPNN=${1:?n2p2 folder, or DATA=folder}; ICE=${2:-}
    $PY -m mlip_server.training.export_teacher --data "$BPNN" --out /tmp/teacher.pt
    $PY -m mlip_server.training.make_data --teacher /tmp/teacher.pt --out /tmp/data --device "$DEVICE" --minutes "$DATA_MINUTES" \
        --stride "$STRIDE" --skip "$SKIP" ${ICE:+--ice-dir "$ICE" --liquid "$ICE/water_512.xyz"} 2>&1 | tail -n 5
    cp /tmp/data/provenance.json "$OUT/"
    gzip -c /tmp/data/val.extxyz > "$OUT/val.extxyz.gz"
fi
$PY - "$CONFIG" "$TRAIN_MINUTES" "$OUT" "$BATCH" <<'PY'
import sys, yaml
config, minutes, out, batch = sys.argv[1:5]
cfg = yaml.safe_load(open(config))
cfg["data"]["train"], cfg["data"]["val"] = "/tmp/data/train.extxyz", "/tmp/data/val.extxyz"
cfg["max_minutes"] = float(minutes)
cfg["output_dir"] = out  # checkpoints land in OUT every epoch: they come back even if the call is cut
if batch:
    cfg["batch_size"] = int(batch)
yaml.safe_dump(cfg, open("/tmp/gpu.yaml", "w"))
PY
$PY -m mlip_server.training.train /tmp/gpu.yaml --device "$DEVICE" 2>&1 | grep -v "it/s\]" | tee "$OUT/train.log" | tail -n 40 || true
ls -la "$OUT"
