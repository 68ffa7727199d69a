#!/usr/bin/env bash
# One device call (< 7.5 minutes) for issues 13 and 18: the students' per-edge work
# recomputed in the backward pass (JAXDISTILL_EDGE_REMAT) against stored, A/B in one
# process (edge_remat_ab.py): a user's jax-md NVE loop at 512 and 4096 Si atoms on the
# list as allocated and compacted, the ASE calculator at 64 and 1000, and jax-md at 64;
# then the ASE calculator's table for issue 18 on the default path (student_call.py).
# Start the device command with `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/remat_gpu.sh          # < 7.5 minutes
#   bash benchmarks/remat_gpu.sh short    # < 5 minutes: jax-md at 512 (both lists) and
#                                         # 4096 (compacted), no 64-atom part
source "$(dirname "$0")/device_preamble.sh"
if [ "${1:-}" = short ]; then
  ab 80 --sizes 512 --compact false,true --rounds 5 --output "$out/edge_remat_ab_jaxmd.json"
  ab 70 --sizes 4096 --compact true --rounds 5 --output "$out/edge_remat_ab_jaxmd_4096.json"
else
  ab 190 --sizes 512,4096 --compact false,true --rounds 5 --output "$out/edge_remat_ab_jaxmd.json"
fi
ab 70 --sizes "" --students "painn 64x3,schnet 64x3" --calculator-systems si64,si1000 \
  --calculator-calls 300 --output "$out/edge_remat_ab_calculator.json"
[ "${1:-}" = short ] || ab 50 --sizes 64 --students "painn 64x3,schnet 64x3" \
  --compact false,true --rounds 5 --output "$out/edge_remat_ab_64.json"
timeout 70 python benchmarks/student_call.py --architectures painn,schnet --devices gpu \
  --layouts auto --repeats 300 --systems si64,si512,water648,si1000 \
  --output "$out/student_call.json" > /dev/null 2>&1 || echo "student_call stopped early"
python - "$out/student_call.json" <<'PY'
import json, sys
cases = ("forces", "bare", "null", "host")
for r in json.load(open(sys.argv[1]))["results"]:
    print(r.get("architecture"), r["system"], {k: round(r[k]["median_ms"], 3) for k in cases if k in r},
          "p99/med", round(r["forces"].get("p99_over_median", 0), 2) if "forces" in r else "", r.get("error", ""))
PY
echo "done $(date -u +%FT%TZ)"
