#!/usr/bin/env bash
# The ASE-call, memory and reproducibility measurements of docs/benchmarks.md and
# docs/training.md on the GPU machine (one H200), one device call per phase:
#
#   benchmarks/calls_gpu.sh calls   StudentCalculator per-call cost on the CPU and the GPU
#                                   against the null-call floor (student_call.py), then
#                                   two trainings with one seed, with and without XLA's
#                                   deterministic ops (train_determinism.py; needs
#                                   runs/bench/si_store.h5 carried: make it with
#                                   `python benchmarks/train_determinism.py --store
#                                   runs/bench/si_store.h5 --make-store 96`)
#   benchmarks/calls_gpu.sh soak    a million ASE calls on the GPU (64-atom Si) and on
#                                   the CPU (ethanol), and a million jax-md steps, side
#                                   by side (memory only: the timings disturb each other)
#   benchmarks/calls_gpu.sh route   the transfer routes of one call (round_trip.py), the
#                                   per-call table on the GPU (student_call.py, default
#                                   layout), then a million jax-md steps (soak.py)
#
# Start every device command with `source .device/env.sh || exit 1;` (see
# ../shared/device/prepare.sh); results go to $OUT.
set -uo pipefail
phase=${1:?phase: calls, route or soak}
case $phase in
route)
  timeout 170 python3 benchmarks/round_trip.py --atoms 9,64,1000 --repeats 2000 \
    --calculator-sizes 64,1000 --calculator-profile 500 --output "$OUT/round_trip_h200.json" \
    > "$OUT/round_trip.log" 2>&1
  timeout 200 python3 benchmarks/student_call.py --devices gpu --layouts auto --repeats 500 \
    --output "$OUT/student_call_h200.json" > "$OUT/student_call.log" 2>&1
  timeout 190 python3 benchmarks/soak.py jaxmd --system si64 --steps 1000000 \
    --output "$OUT/soak_jaxmd_si64_1e6.json" --plot "$OUT/soak_jaxmd_si64_1e6.png" \
    > "$OUT/soak_jaxmd.log" 2>&1
  ;;
calls)
  timeout 300 python3 benchmarks/student_call.py --output "$OUT/student_call_h200.json" \
    > "$OUT/student_call.log" 2>&1
  timeout 260 python3 benchmarks/train_determinism.py --store runs/bench/si_store.h5 \
    --steps 400 --output "$OUT/train_determinism_h200.json" > "$OUT/train_determinism.log" 2>&1
  ;;
soak)
  calls=${2:-1000000}
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # three processes share the GPU
  python3 benchmarks/soak.py ase --system si64 --device gpu --calls "$calls" --max-seconds 480 \
    --output "$OUT/soak_ase_gpu_si64.json" --plot "$OUT/soak_ase_gpu_si64.png" > "$OUT/soak_gpu.log" 2>&1 &
  JAX_PLATFORMS=cpu python3 benchmarks/soak.py ase --system ethanol --device cpu --calls "$calls" --max-seconds 480 \
    --output "$OUT/soak_ase_cpu_ethanol.json" --plot "$OUT/soak_ase_cpu_ethanol.png" > "$OUT/soak_cpu.log" 2>&1 &
  python3 benchmarks/soak.py jaxmd --system si64 --steps "$calls" \
    --output "$OUT/soak_jaxmd_si64.json" --plot "$OUT/soak_jaxmd_si64.png" > "$OUT/soak_jaxmd.log" 2>&1 &
  wait
  ;;
esac
tail -n 3 "$OUT"/*.log
