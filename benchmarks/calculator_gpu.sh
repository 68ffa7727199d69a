#!/usr/bin/env bash
# One device call (< 6 minutes) for issue 18: two ASE calculators that differ in one
# option, A/B in one process with paired rounds (calculator_ab.py; OPTION is
# host_wait, the default, or compact_rows), then the per-call table on the default path
# (student_call.py) with the machine's transfer floor. Start the device command with
# `source .device/env.sh || exit 1;` and carry .device, prepared with
# `../shared/device/prepare.sh vesin==0.6.2` (the GPU machine lacks vesin).
#   bash benchmarks/calculator_gpu.sh [OPTION]
source "$(dirname "$0")/device_preamble.sh"
option=${1:-host_wait}
timeout 200 python benchmarks/calculator_ab.py --option "$option" \
  --systems si64,si512,water648,si1000 --calls 400 \
  --output "$out/calculator_ab_$option.json" 2>&1 | grep -E '^\[ab\]|Error'
timeout 130 python benchmarks/student_call.py --architectures painn,schnet --devices gpu \
  --layouts auto --compact-rows auto --repeats 300 --systems si64,si512,water648,si1000 \
  --output "$out/student_call.json" > "$out/student_call.log" 2>&1 \
  || echo "student_call stopped early (see student_call.log)"
python - "$out/student_call.json" <<'PY'
import json, sys
cases = ("forces", "bare", "null", "host")
for r in json.load(open(sys.argv[1]))["results"]:
    print(r.get("architecture"), r["system"], "compact", r.get("compact_rows"), r.get("slots"),
          r.get("compact_width"), {k: round(r[k]["median_ms"], 3) for k in cases if k in r},
          "p99/med", round(r["forces"].get("p99_over_median", 0), 2) if "forces" in r else "",
          "overflows", r.get("compaction_overflows"), r.get("error", ""))
PY
echo "done $(date -u +%FT%TZ)"
