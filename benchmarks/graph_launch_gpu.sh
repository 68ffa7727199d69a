#!/usr/bin/env bash
# One device call (about 4 minutes) for issue 18: the host cost of XLA's CUDA-graph
# launches in a single calculator call, under XLA's command-buffer settings, one
# process each (graph_launch.py). Start the device command with
# `source .device/env.sh || exit 1;` and carry .device (prepared with vesin==0.6.2).
#   bash benchmarks/graph_launch_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
# Which update modes this XLA knows (an unknown value fails at the first compile).
probe() { XLA_FLAGS="$1" timeout 60 python -c "import jax.numpy as j; print(float(j.ones(3).sum()))" 2>&1 | tail -2; }
echo "--- bogus mode:"; probe "--xla_gpu_command_buffer_update_mode=BOGUS"
modes=""
for m in SKIP_PROFILED SKIP_TEMP ALWAYS_UPDATE FULL_UPDATE_FREE CUSTOM_LIBRARY_UPDATE_FREE NEVER_UPDATE; do
  if probe "--xla_gpu_command_buffer_update_mode=$m" | grep -q '^3.0$'; then modes="$modes $m"; fi
done
echo "modes accepted:$modes"
run() { XLA_FLAGS="$2" timeout 100 python benchmarks/graph_launch.py --systems si64,si1000 \
  --calls 200 --label "$1" --output "$out/graph_launch_$1.json" 2>&1 | grep -E '^\[launch\]|Error|error' | tail -4; }
run default ""
run no_command_buffers "--xla_gpu_enable_command_buffer="
for m in $modes; do run "$m" "--xla_gpu_command_buffer_update_mode=$m"; done
echo "done $(date -u +%FT%TZ)"
