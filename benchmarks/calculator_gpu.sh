#!/usr/bin/env bash
# One device call (< 6 minutes) for issue 18: the ASE calculator's per-call table on the
# default path, with its receiver-major rows compacted per call (compact_rows=True)
# against the full rows (False), side by side in one process (student_call.py), plus the
# machine's transfer floor. Start the device command with `source .device/env.sh || exit 1;`
# and carry .device, prepared with `../shared/device/prepare.sh vesin==0.6.2` (the
# calculator's neighbour list; the GPU machine lacks it).
#   bash benchmarks/calculator_gpu.sh [systems]     # default si64,si512,water648,si1000
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
python -c "import vesin, ase, jax_md" || { echo "missing wheels: run prepare.sh vesin==0.6.2"; exit 1; }
timeout 330 python benchmarks/student_call.py --architectures painn,schnet --devices gpu \
  --layouts auto --compact-rows false,true --repeats 300 \
  --systems "${1:-si64,si512,water648,si1000}" --output "$out/student_call.json" \
  > "$out/student_call.log" 2>&1 || echo "student_call stopped early (see student_call.log)"
python - "$out/student_call.json" <<'PY'
import json, sys
cases = ("forces", "bare", "null", "host")
for r in json.load(open(sys.argv[1]))["results"]:
    print(r.get("architecture"), r["system"], "compact", r.get("compact_rows"), r.get("slots"),
          r.get("compact_slots"), {k: round(r[k]["median_ms"], 3) for k in cases if k in r},
          "p99/med", round(r["forces"].get("p99_over_median", 0), 2) if "forces" in r else "",
          "overflows", r.get("compaction_overflows"), r.get("error", ""))
PY
echo "done $(date -u +%FT%TZ)"
