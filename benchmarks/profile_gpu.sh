#!/usr/bin/env bash
# One device call (< 6.5 minutes) for issues 13 and 18: where the time goes, kernel by kernel.
#   1. the ASE calculator's call, its bare program and a jax-md force call of the same
#      crystal, traced (call_profile.py), PaiNN 64x3, Si 64 / 512 / 1000;
#      (the calculator's program compacted from 512 atoms, as it runs by default);
#   2. a user's jax-md NVE loop, PaiNN 64x3 on a receiver-major list at 512 and 4096 Si
#      atoms, traced, with the compiled loop's HLO written beside the trace
#      (step_profile.py --hlo-dir): the kernel names of the trace are the fusions'
#      names in that HLO, so the costly kernels can be read op by op
#      (benchmarks/hlo_kernels.py --profile step_profile.json --hlo hlo_...txt);
#   3. PaiNN 64x3 at 4096 Si atoms in a user's jax-md loop, message_passing "auto" (the
#      sorted fused kernels there) beside the receiver-major reference, no overrides.
# (bare_after_idle, once step 2 here, ran in calculator_gpu.sh on 2026-12-07.)
# $OUT gets three JSON files and two HLO texts (at most 8 files come back); the logs stay
# on the machine, their last lines are printed when a step fails.
# Start the device command with `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/profile_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
logs=$(mktemp -d)
step() {  # name, timeout seconds, pattern of the lines to print ("-": none), command
  local name=$1 seconds=$2 pattern=$3
  shift 3
  timeout "$seconds" "$@" > "$logs/$name.log" 2>&1 || tail -n 5 "$logs/$name.log"
  [ "$pattern" = - ] || grep -E "$pattern" "$logs/$name.log"
}
step call_profile 150 '^\[call\]' python benchmarks/call_profile.py --architectures painn \
  --systems si64,si512,si1000 --calls 50 --output "$out/call_profile.json"
step step_profile 130 '^\{' python benchmarks/step_profile.py --students painn64x3 \
  --sizes 512,4096 --formats dense --steps 200 --chunks 2 --hlo-dir "$out" \
  --output "$out/step_profile.json"
step auto4096 80 '^\[paths\] painn' python benchmarks/md_speed.py --fused-only --replicas 0 \
  --capacity-multiplier 1.6 --steps-per-chunk 300 --max-chunks 3 --budget-seconds 70 \
  --paths receiver_major,default --fused-students painn64x3 --sizes 4096 \
  --output "$out/md_speed_auto4096.json"
echo "done $(date +%F)"
