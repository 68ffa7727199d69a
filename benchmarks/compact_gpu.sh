#!/usr/bin/env bash
# One device call (< 8 minutes) for issue 13: students on rows compacted to the pairs
# within the cutoff (jax_md_potential(compact_rows=True)) against the list as allocated,
# and the default path (message_passing and compact_rows "auto"), in a user's jax-md NVE
# loop, PaiNN 64x3, PaiNN 128x3 + ZBL and SchNet 64x3, beside the jax-md LJ floor
# (md_speed.py --fused-only). Start the device command with
# `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/compact_gpu.sh [capacity_multiplier (1.6)] [budget s (330)] [sizes (64,512,4096)]
source "$(dirname "$0")/device_preamble.sh"
capacity=${1:-1.6}
python benchmarks/md_speed.py --fused-only --replicas 0 --capacity-multiplier "$capacity" \
  --steps-per-chunk 300 --max-chunks 3 --budget-seconds "${2:-330}" \
  --paths receiver_major,compact,default --sizes "${3:-64,512,4096}" \
  --output "$out/md_speed_compact_${capacity}.json" 2>&1 | grep -E '^\[paths\]|Error|error'
echo "done $(date -u +%FT%TZ)"
