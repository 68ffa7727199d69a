#!/usr/bin/env bash
# One device call (< 6 minutes) for issues 13 and 18: where the time goes, kernel by kernel.
#   1. the ASE calculator's call, its bare program and a jax-md force call of the same
#      crystal, traced (call_profile.py), PaiNN 64x3, Si 64 / 512 / 1000;
#   2. a user's jax-md NVE loop, PaiNN 64x3 on a receiver-major list at 512 and 4096 Si
#      atoms, traced, with the compiled loop's HLO written beside the trace
#      (step_profile.py --hlo-dir): the kernel names of the trace are the fusions'
#      names in that HLO, so the costly kernels can be read op by op;
#   3. PaiNN 64x3 at 4096 Si atoms in a user's jax-md loop, message_passing "auto" (the
#      sorted fused kernels there) beside the receiver-major reference, no overrides.
# Start the device command with `source .device/env.sh || exit 1;` and carry .device;
# JSON, logs and HLO land in $OUT.
#   bash benchmarks/profile_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
timeout 150 python benchmarks/call_profile.py --architectures painn \
  --systems si64,si512,si1000 --calls 50 --output "$out/call_profile.json" \
  > "$out/call_profile.log" 2>&1
grep '^\[call\]' "$out/call_profile.log"
timeout 130 python benchmarks/step_profile.py --students painn64x3 --sizes 512,4096 \
  --formats dense --steps 200 --chunks 2 --hlo-dir "$out" \
  --output "$out/step_profile.json" > "$out/step_profile.log" 2>&1
grep '^{' "$out/step_profile.log"
timeout 75 python benchmarks/md_speed.py --fused-only --replicas 0 --capacity-multiplier 1.6 \
  --steps-per-chunk 300 --max-chunks 3 --budget-seconds 70 --paths receiver_major,default \
  --fused-students painn64x3 --sizes 4096 --output "$out/md_speed_auto4096.json" \
  > "$out/md_speed_auto4096.log" 2>&1
grep -E '^\[paths\] painn' "$out/md_speed_auto4096.log"
echo "done $(date +%F)"
