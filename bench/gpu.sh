#!/usr/bin/env bash
# Every GPU benchmark in one call (the limits add up to 18 minutes; the last, compiled, is the one
# a 15-minute device budget cuts), for a device machine:
#   bash bench/gpu.sh            (after `make install`; DEVICE=cuda:1 to pick another GPU)
# Results go to bench/results/NAME-gpu.json and .md beside the CPU ones (MLIP_BENCH_TAG=gpu),
# and BENCHMARKS.md is regenerated. Each step has its own time limit, so one slow part cannot
# eat the others' time; a step that fails or times out is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
export MLIP_BENCH_TAG=${MLIP_BENCH_TAG:-gpu}
export LD_LIBRARY_PATH="$PWD/.venv/lib:${LD_LIBRARY_PATH:-}"
status=0
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" || { echo "== $name FAILED (status $?)"; status=1; }
    echo "== $name took $((SECONDS - t0)) s"
}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch')" || exit 2
# rotational averaging and beads: batched vs the serial loop, float32 and float64
step 150 averaging "$PY" -m bench.averaging --device "$DEVICE" --no-ipi
# i-PI step time per transport (unix, shm, inet, ffdirect) with the server on the GPU
step 150 transports "$PY" -m bench.server_overhead --device "$DEVICE" --steps 20
# LAMMPS: 98,304 atoms through the bridge, one rank and two
step 180 lammps "$PY" bench/lammps_scaling.py --device "$DEVICE" --replicas 4 --np 1 2 --steps 4 --threads 0
# direct forces vs conservative, model calls only (the MD comparison is a CPU benchmark)
step 60 direct "$PY" -m bench.direct_forces --device "$DEVICE" --no-md
# our server vs i-PI's own metatomic driver on the same file, both on the GPU (one run per side)
step 120 peers "$PY" -m bench.peers --device "$DEVICE" --cases classical pimd8 2i ase --repeats 1 --steps 12
# compiled package (AOTInductor, compiled for the GPU here: a few minutes) vs TorchScript
step 420 compiled "$PY" -m bench.compiled --device "$DEVICE" --repeat 5
exit $status
