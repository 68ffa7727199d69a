#!/usr/bin/env bash
# One device call (< 9 minutes) for issues 13 and 19 on the GPU machine:
#   1. the students' MD step on the slot kernels (fused message passing on receiver-major
#      lists) beside the receiver-major reference path and the LJ floor, 64/512/4096 Si
#      (md_speed.py --fused-only);
#   2. the slot kernels' tile settings (JAXDISTILL_SLOT_BLOCKS) for PaiNN 64x3 at 64 and
#      4096 atoms;
#   3. what a student committee costs, Si and molecules (ensemble_cost.py).
# Start the device command with `source .device/env.sh || exit 1;` and carry .device;
# JSON and logs land in $OUT.
#   bash benchmarks/slots_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# md_speed's "fused" path on a receiver-major list: the slot kernels (opt-in; the
# default sorts the list; results/md_speed_slots_h100.json was measured this way).
export JAXDISTILL_FUSED_LAYOUT=slots
nvidia-smi -L
common=(--fused-only --replicas 0 --capacity-multiplier 1.6 --steps-per-chunk 300 --max-chunks 3)
timeout 230 python benchmarks/md_speed.py "${common[@]}" --paths receiver_major,fused \
  --sizes 64,512,4096 --budget-seconds 210 --output "$out/md_speed_slots.json" \
  > "$out/md_speed_slots.log" 2>&1
grep -E "^\[paths\]|rror" "$out/md_speed_slots.log"
for blocks in 16,64,4 64,64,4; do
  JAXDISTILL_SLOT_BLOCKS=$blocks timeout 50 python benchmarks/md_speed.py "${common[@]}" \
    --paths fused --fused-students painn64x3 --sizes 64,4096 --budget-seconds 45 \
    --output "$out/md_speed_slots_blocks_${blocks//,/_}.json" > "$out/blocks_${blocks//,/_}.log" 2>&1
  echo "blocks $blocks: $(grep -E '^\[paths\] painn' "$out/blocks_${blocks//,/_}.log" | tr '\n' ' ')"
done
timeout 195 python benchmarks/ensemble_cost.py --systems si64,ethanol,hexanol,si512 \
  --members 0,1,2,4 --item-seconds 2 --budget-seconds 170 \
  --output "$out/ensemble_cost_gpu.json" > "$out/ensemble_cost.log" 2>&1
tail -n 3 "$out/ensemble_cost.log"
python - "$out/ensemble_cost_gpu.json" <<'PY'
import json, sys
print(json.dumps(json.load(open(sys.argv[1])).get("relative_to_one_student"), indent=0)[:1500])
PY
echo "done $(date +%F)"
