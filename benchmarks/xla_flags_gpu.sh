#!/usr/bin/env bash
# One device call (< 4.5 minutes) for issue 18: does the ASE calculator's call change with
# XLA's command buffers (CUDA graphs)? A single call launches ~115 kernels from the host
# (benchmarks/results/profile_h100: at 1000 Si atoms the GPU is busy 0.62 ms of a
# 1.33 ms call, against 0.44 of 0.46 ms per step inside a jax-md loop). XLA_FLAGS is read
# once per process, so each setting runs student_call.py in its own process, the
# settings in turn, twice. Start with `source .device/env.sh || exit 1;`, carry .device.
#   bash benchmarks/xla_flags_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
all="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,DYNAMIC_SLICE_COPY_FUSION"
settings=(
  "default|"
  "none|--xla_gpu_enable_command_buffer="
  "min1|--xla_gpu_graph_min_graph_size=1"
  "all_min1|--xla_gpu_enable_command_buffer=$all --xla_gpu_graph_min_graph_size=1"
)
for round in 1 2; do
  for setting in "${settings[@]}"; do
    name=${setting%%|*}
    flags=${setting#*|}
    XLA_FLAGS="$flags" timeout 45 python benchmarks/student_call.py --architectures painn \
      --devices gpu --layouts auto --repeats 300 --systems si64,si1000 \
      --output "$out/student_call_${name}_r${round}.json" > /dev/null 2>&1 \
      || echo "$name round $round stopped early"
    python - "$out/student_call_${name}_r${round}.json" "$name" "$round" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    m = {k: round(r[k]["median_ms"], 3) for k in ("forces", "bare", "null") if k in r}
    print("[flags]", sys.argv[2], "round", sys.argv[3], r["system"], m,
          "bare-null", round(m.get("bare", 0) - m.get("null", 0), 3), r.get("error", ""))
PY
  done
done
echo "done $(date -u +%FT%TZ)"
