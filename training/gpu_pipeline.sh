#!/usr/bin/env bash
# One prepared GPU run: teacher-labelled data generation, then PET training, in one go.
#   DATA_MINUTES=3 TRAIN_MINUTES=4 OUT=/path bash training/gpu_pipeline.sh BPNN_DIR ICE_DIR
# BPNN_DIR: the n2p2 files of the reference potential (../shared/data/bpnnp-revpbe0d3);
# ICE_DIR: folder with ice_ih_disordered_0{2,3}.xyz. Writes OUT/{checkpoint.pt,log.jsonl,
# provenance.json,val.extxyz.gz,train_report.json}. Needs torch with CUDA, ase, vesin, ipi.
set -euo pipefail
BPNN=${1:?n2p2 folder}; ICE=${2:-}
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
DATA_MINUTES=${DATA_MINUTES:-3}; TRAIN_MINUTES=${TRAIN_MINUTES:-4}; DEVICE=${DEVICE:-cuda}
STRIDE=${STRIDE:-20}; SKIP=${SKIP:-10}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -m training.export_teacher --data "$BPNN" --out /tmp/teacher.pt
$PY -m training.make_data --teacher /tmp/teacher.pt --out /tmp/data --device "$DEVICE" --minutes "$DATA_MINUTES" \
    --stride "$STRIDE" --skip "$SKIP" ${ICE:+--ice-dir "$ICE" --liquid "$ICE/water_512.xyz"} 2>&1 | tail -n 5
cp /tmp/data/provenance.json "$OUT/"
gzip -c /tmp/data/val.extxyz > "$OUT/val.extxyz.gz"
$PY - "$TRAIN_MINUTES" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open("training/configs/water-pet.yaml"))
cfg["data"]["train"], cfg["data"]["val"] = "/tmp/data/train.extxyz", "/tmp/data/val.extxyz"
cfg["max_minutes"] = float(sys.argv[1])
cfg["output_dir"] = "/tmp/pet"
cfg["batch_size"] = 16
yaml.safe_dump(cfg, open("/tmp/gpu.yaml", "w"))
PY
$PY -m training.train /tmp/gpu.yaml --device "$DEVICE" 2>&1 | grep -v "it/s\]" | tail -n 30 || true
cp /tmp/pet/checkpoint.pt /tmp/pet/log.jsonl "$OUT/" 2>/dev/null || true
ls -la "$OUT"
