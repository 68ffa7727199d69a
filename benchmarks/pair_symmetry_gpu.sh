#!/usr/bin/env bash
# Two device calls (< 10 minutes each) for issues 13 and 18: neighbour sums transposed by
# the list's symmetry (JAXDISTILL_PAIR_SYMMETRY=on, what "auto" takes on GPUs) against
# the reverse-edge map (off), A/B in one process each (edge_remat_ab.py --variable).
#   bash benchmarks/pair_symmetry_gpu.sh steps   a user's jax-md NVE loop at 512 and
#       4096 Si atoms on compacted rows and at 64 on the list as allocated
#   bash benchmarks/pair_symmetry_gpu.sh calls   the ASE calculator at Si 64 and Si 1000;
#       128 replicas of Si 64 in one run_md per setting (two processes, unpaired); with
#       symmetry on, the per-edge work recomputed in the backward pass against stored
# Start the device command with `source .device/env.sh || exit 1;` and carry .device.
# The first H100 run (2026-12-07) gave the first form 150 s for 512 and 4096 atoms
# together and 50 s for 64: too little for all but PaiNN at 512; these limits are wider.
source "$(dirname "$0")/device_preamble.sh"
pairs() { ab "$@" --variable JAXDISTILL_PAIR_SYMMETRY; }
case "${1:-}" in
  steps)
    pairs 170 --sizes 512 --compact true --rounds 5 --output "$out/pair_symmetry_jaxmd_512.json"
    pairs 260 --sizes 4096 --compact true --rounds 3 --output "$out/pair_symmetry_jaxmd_4096.json"
    pairs 120 --sizes 64 --compact false --rounds 5 --output "$out/pair_symmetry_jaxmd_64.json"
    ;;
  calls)
    pairs 100 --sizes "" --students "painn 64x3,schnet 64x3" --calculator-systems si64,si1000 \
      --calculator-calls 300 --output "$out/pair_symmetry_calculator.json"
    for setting in off on; do
      JAXDISTILL_PAIR_SYMMETRY=$setting timeout 120 python benchmarks/replicas_speed.py \
        --systems si64 --replicas 128 --steps 400 --rounds 2 \
        --output "$out/pair_symmetry_replicas_$setting.json" 2>&1 | tail -4
    done
    # With nothing per edge kept but the filters, recomputing them in the backward pass
    # (JAXDISTILL_EDGE_REMAT=on) may now pay: PaiNN 64x3 at 4096 atoms, compacted rows.
    JAXDISTILL_PAIR_SYMMETRY=on ab 130 --variable JAXDISTILL_EDGE_REMAT --sizes 4096 \
      --compact true --students "painn 64x3" --rounds 3 --output "$out/pair_symmetry_remat_4096.json"
    ;;
  *)
    echo "usage: bash benchmarks/pair_symmetry_gpu.sh steps|calls" >&2
    exit 2
    ;;
esac
echo "done $(date -u +%FT%TZ)"
