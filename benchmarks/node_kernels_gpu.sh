#!/usr/bin/env bash
# One device call (< 10 minutes) for issues 13 and 18: the fused PaiNN update block
# (models/node_kernels.py) on the GPU.
#   1. its tests with the Triton kernels compiled (not interpreted);
#   2. a user's jax-md NVE loop, 64/512/4096 Si: the receiver-major reference path
#      (no node kernels) beside message_passing="auto" with the node kernels on,
#      with the LJ floor (md_speed.py --fused-only);
#   3. the node kernels alone at 4096 atoms (messages forced to the reference), and
#      for PaiNN 128x3 + ZBL (beyond the 64 features a GPU kernel now takes);
#   4. the ASE calculator, PaiNN 64x3, JAXDISTILL_NODE_KERNELS=on against off.
# results/node_kernels_h100/ came from this script's first version (commit e957b04),
# which wrote md_speed_nodes.log, nodes_refmsg.log and nodes_f128.log by hand; the
# steps and their md_speed arguments are the same.
# `bash benchmarks/node_kernels_gpu.sh sweep` (about 9 minutes) runs kernel_sweep.py.
# `bash benchmarks/node_kernels_gpu.sh steps` (about 8 minutes) times the default path
# (receiver-major, no kernels) of all three students in a user's jax-md loop, then the
# ASE calculator (PaiNN and SchNet): the tables of docs/benchmarks.md measured again.
# `bash benchmarks/node_kernels_gpu.sh steps_sweep` (< 10 minutes) does the same with
# fewer calls, then a short PaiNN 64x3 kernel sweep.
# `bash benchmarks/node_kernels_gpu.sh next` (< 10 minutes): the ASE calls, MD steps
# with TF32 node kernels at 8 warps, and the Triton-for-every-product option.
# `bash benchmarks/node_kernels_gpu.sh xla` (about 6 minutes): the default path under
# XLA's Triton-for-every-product and cuBLAS-for-every-product options.
# `bash benchmarks/node_kernels_gpu.sh precision` (about 8 minutes) instead checks that
# XLA's default float32 product is TF32 and times the kernels with TF32 products
# (JAXDISTILL_KERNEL_PRECISION=default, as the reference path's) with 4 and 8 warps,
# slot and node kernels, then full float32 with 8 warps and the reference at `highest`.
# Start the device command with `source .device/env.sh || exit 1;` and carry .device;
# JSON and logs land in $OUT.
#   bash benchmarks/node_kernels_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# The node kernels are opt-in (measured slower by this script's first run).
export JAXDISTILL_NODE_KERNELS=on
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
common=(--fused-only --replicas 0 --capacity-multiplier 1.6 --steps-per-chunk 300 --max-chunks 3)
paths() {  # label, budget seconds, then md_speed arguments
  local label=$1 budget=$2
  shift 2
  timeout $((budget + 5)) python benchmarks/md_speed.py "${common[@]}" --budget-seconds "$budget" \
    --output "$out/md_speed_$label.json" "$@" > "$out/$label.log" 2>&1
  echo "$label: $(grep -E '^\[paths\] (painn|schnet)' "$out/$label.log" | sed 's/(target [0-9.]*)//' | tr '\n' ' ')"
}
if [ "${1:-}" = sweep ]; then
  # Force calls per kernel setting in one process (8 warps, TF32 or full float32, slot
  # and node kernels together), each setting's force error against the full-float32
  # reference; the sweep writes its JSON after every row, so a timeout keeps the rows.
  timeout 540 python benchmarks/kernel_sweep.py --sizes 64,512,4096 --budget-seconds 500 \
    --output "$out/kernel_sweep.json" 2>&1 | grep '^\[sweep\]'
  echo "done $(date +%F)"
  exit 0
fi
calls() {  # student_call timeout, repeats, systems: the ASE calls, then their table
  # The default path: without the override, the node kernels this script exports "on"
  # would run in PaiNN's calls (results/remeasure_h200/ was measured so, by mistake).
  JAXDISTILL_NODE_KERNELS=off timeout "$1" python benchmarks/student_call.py --architectures painn,schnet --devices gpu \
    --layouts auto --repeats "$2" --systems "$3" \
    --output "$out/student_call.json" > "$out/student_call.log" 2>&1
  python - "$out/student_call.json" <<'PY'
import json, sys
print("arch system forces_ms bare_ms null_ms host_ms overhead_ms")
for r in json.load(open(sys.argv[1]))["results"]:
    ms = {k: round(r.get(k, {}).get("median_ms", -1), 3) for k in ("forces", "bare", "null", "host")}
    print(r.get("architecture"), r["system"], *ms.values(), round(r.get("overhead_ms", -1), 3),
          r.get("error", ""))
PY
}
steps() {  # md_speed budget, student_call timeout and repeats
  JAXDISTILL_NODE_KERNELS=off paths steps "$1" --paths receiver_major \
    --fused-students painn64x3,painn128x3,schnet64x3 --sizes 64,512,4096
  calls "$2" "$3" hexanol21,si64,si512,water648,si1000
}
if [ "${1:-}" = steps ]; then
  steps 230 220 600
  echo "done $(date +%F)"
  exit 0
fi
if [ "${1:-}" = steps_sweep ]; then
  # One call of < 10 minutes: the steps phase, shorter, then a short PaiNN sweep.
  steps 200 200 400
  timeout 150 python benchmarks/kernel_sweep.py --sizes 64,512,4096 --students painn64x3 \
    --settings reference,reference_f32,nodes_f32_w8,nodes_tf32_w8,nodes_f32_r32_w8,slots_f32_w8,slots_nodes_f32_w8 \
    --budget-seconds 135 --output "$out/kernel_sweep.json" 2>&1 | grep '^\[sweep\]'
  echo "done $(date +%F)"
  exit 0
fi
if [ "${1:-}" = next ]; then
  # One call of < 10 minutes with what 2026-12-06's last session left to measure:
  #   1. the ASE calls after the per-edge batched product left the calculator's program
  #      (student_call.py, its interleaved cases rotating);
  #   2. MD steps with the TF32 node kernels at 8 warps (6-7 % faster force calls in
  #      the H200 sweep) beside the reference, PaiNN 64x3;
  #   3. the reference under XLA's Triton-for-every-product option.
  calls 150 300 si64,si512,si1000
  JAXDISTILL_NODE_BLOCKS=16,8 JAXDISTILL_KERNEL_PRECISION=default paths next_nodes 150 \
    --paths receiver_major,default --fused-students painn64x3 --sizes 64,512,4096
  JAXDISTILL_NODE_KERNELS=off XLA_FLAGS=--xla_gpu_triton_gemm_any=true paths next_xla 100 \
    --paths receiver_major --fused-students painn64x3 --sizes 64,512,4096
  echo "done $(date +%F)"
  exit 0
fi
if [ "${1:-}" = xla ]; then
  # Do XLA's own GPU options cut the ~100 kernels of a small PaiNN step? Triton for every
  # matrix product (fusing its element-wise neighbours into it), or cuBLAS for all.
  export JAXDISTILL_NODE_KERNELS=off
  for flags in "" "--xla_gpu_triton_gemm_any=true" "--xla_gpu_enable_triton_gemm=false"; do
    label=xla_$(echo "${flags:-default}" | tr -dc 'a-z_')
    XLA_FLAGS="$flags" paths "$label" 100 --paths receiver_major \
      --fused-students painn64x3,schnet64x3 --sizes 64,512,4096
  done
  echo "done $(date +%F)"
  exit 0
fi
if [ "${1:-}" = precision ]; then
  # Does XLA's default f32 matrix product on this card round its inputs to TF32?
  python - > "$out/prec_matmul_check.log" 2>&1 <<'PY'
import jax, jax.numpy as jnp, numpy as np
a, b = (np.random.default_rng(i).standard_normal((256, 256)) for i in (0, 1))
exact = a @ b
for precision in ("default", "highest"):
    with jax.default_matmul_precision(precision):
        got = np.asarray(jax.jit(jnp.dot)(jnp.float32(a), jnp.float32(b)), np.float64)
    print(precision, "max relative error", np.abs(got - exact).max() / np.abs(exact).max())
PY
  cat "$out/prec_matmul_check.log"
  export JAXDISTILL_KERNEL_PRECISION=default
  paths prec_default 110 --paths receiver_major,default --fused-students painn64x3 --sizes 64,512,4096
  JAXDISTILL_NODE_KERNELS=off JAXDISTILL_FUSED_LAYOUT=slots paths prec_slots 60 --paths fused \
    --fused-students painn64x3 --sizes 64,512,4096
  JAXDISTILL_FUSED_LAYOUT=slots paths prec_slots_nodes 45 --paths fused \
    --fused-students painn64x3 --sizes 64,512
  JAXDISTILL_NODE_BLOCKS=16,8 paths prec_nodes_8warps 40 --paths default \
    --fused-students painn64x3 --sizes 64,512
  JAXDISTILL_NODE_KERNELS=off JAXDISTILL_FUSED_LAYOUT=slots paths prec_slots_schnet 60 \
    --paths fused --fused-students schnet64x3 --sizes 64,512,4096
  JAXDISTILL_MESSAGE_PASSING=reference paths prec_nodes_4096 40 --paths default \
    --fused-students painn64x3 --sizes 4096
  JAXDISTILL_KERNEL_PRECISION=highest JAXDISTILL_NODE_BLOCKS=16,8 paths prec_highest_8warps 40 \
    --paths default --fused-students painn64x3 --sizes 64,512
  JAX_DEFAULT_MATMUL_PRECISION=highest JAXDISTILL_NODE_KERNELS=off paths prec_reference_highest 40 \
    --paths receiver_major --fused-students painn64x3 --sizes 64,512
  echo "done $(date +%F)"
  exit 0
fi
# The kernels compute in full float32; so must the reference they are compared with.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 python -m pytest -q -p no:cacheprovider \
  tests/models/test_node_kernels.py > "$out/node_kernels_pytest.log" 2>&1
tail -n 2 "$out/node_kernels_pytest.log"
paths nodes 185 --paths receiver_major,default --fused-students painn64x3,painn128x3 \
  --sizes 64,512,4096
JAXDISTILL_MESSAGE_PASSING=reference paths nodes_reference_messages 40 --paths default \
  --fused-students painn64x3 --sizes 4096
paths nodes_f128 55 --paths default --fused-students painn128x3 --sizes 64,512
for setting in on off; do
  JAXDISTILL_NODE_KERNELS=$setting timeout 100 python benchmarks/student_call.py \
    --architectures painn --devices gpu --layouts auto --repeats 600 \
    --systems hexanol21,si64,si512,water648,si1000 \
    --output "$out/student_call_nodes_$setting.json" > "$out/student_call_$setting.log" 2>&1
  python - "$out/student_call_nodes_$setting.json" "$setting" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    f = r.get("forces", {})
    print(sys.argv[2], r["system"], round(f.get("median_ms", -1), 3),
          round(r.get("bare", {}).get("median_ms", -1), 3), r.get("error", ""))
PY
done
echo "done $(date +%F)"
