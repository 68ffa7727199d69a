#!/usr/bin/env bash
# One device call (about 7 minutes) for issue 18: the forces program split in two
# (forward, backward: the second's launch behind the first's GPU work), then fewer
# kernels per calculator call:
# PaiNN's update blocks as fused node kernels against the pure-JAX ones (about 40 fewer
# kernels a call, each of which costs host time in XLA's CUDA-graph launch), then XLA
# command-buffer options per compilation, both in paired rounds in one process.
# Start the device command with `source .device/env.sh || exit 1;` and carry .device
# (prepared with `../shared/device/prepare.sh vesin==0.6.2`).
#   bash benchmarks/single_call_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
timeout 150 python benchmarks/split_launch.py --architectures painn,schnet \
  --systems si64,si512,si1000 --calls 300 \
  --output "$out/split_launch.json" 2>&1 | grep -E '^\[split\]|Error'
# 8 warps and TF32 products: the node kernels' setting that matched the reference path
# in MD steps (docs/benchmarks.md, "Node kernels"); 4 warps in full float32 were 2x slower
JAXDISTILL_NODE_BLOCKS=16,8 JAXDISTILL_KERNEL_PRECISION=default \
  timeout 170 python benchmarks/calculator_ab.py --option message_passing --node-kernels on \
  --architectures painn --systems si64,si512,si1000 --calls 300 \
  --output "$out/calculator_ab_node_kernels.json" 2>&1 | grep -E '^\[ab\]|Error'
timeout 120 python benchmarks/xla_options_ab.py --architectures painn,schnet \
  --systems si64,si1000 --calls 300 \
  --options "default=;fusion=xla_gpu_enable_command_buffer:FUSION;fusion_custom=xla_gpu_enable_command_buffer:FUSION,CUSTOM_CALL" \
  --output "$out/xla_options_ab.json" 2>&1 | grep -E '^\[xla\]|Error'
echo "done $(date -u +%FT%TZ)"
