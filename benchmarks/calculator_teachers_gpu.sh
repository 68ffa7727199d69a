#!/usr/bin/env bash
# One device call (about 6 minutes) for issue 18's table: the student calculator's
# per-call times with the machine's null round trip (student_call.py), then the
# teachers' own ASE calculators on the same structures in the same call
# (md_speed.py --teachers-only: Orb-v3 conservative and direct with random weights,
# SevenNet-0, FeNNol ANI-1x on the water box).
# Prepare .device with `../shared/device/prepare.sh --with-sevenn vesin==0.6.2` and, for
# FeNNol, `cp ../shared/teachers/fennol-ani1x/ani1x_model0.fnx .device/` (the device
# gets the working tree only); start the device command with
# `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/calculator_teachers_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
timeout 150 python benchmarks/student_call.py --architectures painn,schnet --devices gpu \
  --layouts auto --compact-rows auto --repeats 300 --systems si64,si512,water648,si1000 \
  --output "$out/student_call.json" > "$out/student_call.log" 2>&1 \
  || echo "student_call stopped early (see student_call.log)"
timeout 220 python benchmarks/md_speed.py --teachers-only --sizes 64,512,1000 \
  --budget-seconds 200 --item-seconds 15 --fennol-model .device/ani1x_model0.fnx \
  --output "$out/teachers.json" 2>&1 | grep -E '^\[teacher\]|^\[error\]'
python - "$out/student_call.json" "$out/teachers.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print("student", r.get("architecture"), r["system"],
          {k: round(r[k]["median_ms"], 3) for k in ("forces", "bare", "null") if k in r})
for t in json.load(open(sys.argv[2]))["teachers"]:
    print("teacher", t["teacher"], t.get("system"), round(t["ms_per_call"]["median"], 3))
PY
echo "done $(date -u +%FT%TZ)"
