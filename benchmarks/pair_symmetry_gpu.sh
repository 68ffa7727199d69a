#!/usr/bin/env bash
# One device call (< 9 minutes) for issues 13 and 18: neighbour sums transposed by the
# list's symmetry (JAXDISTILL_PAIR_SYMMETRY=on; "auto" leaves it off until this decides) against the reverse-edge
# map (off), A/B in one process each (edge_remat_ab.py --variable): a user's jax-md NVE
# loop at 512 and 4096 Si atoms on compacted rows and at 64 on the list as allocated
# (what "auto" compacts), the ASE calculator at Si 64 and Si 1000; then 128
# replicas of Si 64 in one run_md, once per setting (two processes, unpaired); and
# with symmetry on, the per-edge work recomputed in the backward pass against stored.
# Start the device command with `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/pair_symmetry_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
pairs() { ab "$@" --variable JAXDISTILL_PAIR_SYMMETRY; }
pairs 150 --sizes 512,4096 --compact true --rounds 5 --output "$out/pair_symmetry_jaxmd.json"
pairs 50 --sizes 64 --compact false --rounds 5 --output "$out/pair_symmetry_jaxmd_64.json"
# With nothing per edge kept but the filters, recomputing them in the backward pass
# (JAXDISTILL_EDGE_REMAT=on) may now pay: PaiNN 64x3 at 4096 atoms, compacted rows.
JAXDISTILL_PAIR_SYMMETRY=on ab 60 --variable JAXDISTILL_EDGE_REMAT --sizes 4096 --compact true \
  --students "painn 64x3" \
  --rounds 5 --output "$out/pair_symmetry_remat_4096.json"
pairs 80 --sizes "" --students "painn 64x3,schnet 64x3" --calculator-systems si64,si1000 \
  --calculator-calls 300 --output "$out/pair_symmetry_calculator.json"
for setting in off on; do
  JAXDISTILL_PAIR_SYMMETRY=$setting timeout 65 python benchmarks/replicas_speed.py \
    --systems si64 --replicas 128 --steps 400 --rounds 2 \
    --output "$out/pair_symmetry_replicas_$setting.json" 2>&1 | tail -3
done
echo "done $(date -u +%FT%TZ)"
