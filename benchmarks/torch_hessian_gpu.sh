#!/usr/bin/env bash
# One device call (about 4 minutes): what a Hessian label costs the torch teachers on a
# GPU (issue 15), with the labels taken from the Hessian call's own forward pass
# ("merged") or from a label call beside it ("separate"), and the K double-backward
# passes vmapped (--hvp-batched on) or one by one (off); SevenNet-0 and Orb-v3
# conservative (random weights: none can be downloaded) on rattled 64-atom Si. Then the
# ASE calculator at 4096 Si atoms on compacted rows, PaiNN's reference path against its
# fused kernels, paired (issue 13: "auto" takes the reference path there).
# Prepare .device with `../shared/device/prepare.sh --with-sevenn vesin==0.6.2`; start
# the device command with `source .device/env.sh || exit 1;` and carry .device.
#   bash benchmarks/torch_hessian_gpu.sh
source "$(dirname "$0")/device_preamble.sh"
orb_weights=/tmp/orb-v3-conservative-random.ckpt
python - "$orb_weights" <<'PY'
import sys, torch
from orb_models.forcefield import pretrained
torch.manual_seed(0)
torch.save(pretrained.orb_v3_conservative_architecture(device="cpu").state_dict(), sys.argv[1])
PY
for teacher in sevennet:7net-0 "orb:orb-v3-conservative-inf-omat@$orb_weights"; do
  name=${teacher%%:*}
  timeout 170 python benchmarks/hessian_label_cost.py --teacher "$teacher" --device cuda \
    --system si64 --directions 2,4 --hvp-batched on,off --frames 8 --rounds 3 \
    --output "$out/hessian_label_cost_${name}_si64_gpu.json" 2>&1 | grep -E '^\{|Error'
done
JAXDISTILL_MESSAGE_PASSING=fused timeout 200 python benchmarks/calculator_ab.py \
  --option message_passing --architectures painn --systems si4096 --calls 100 \
  --output "$out/calculator_message_passing_si4096.json" 2>&1 | grep -E '^\[ab\]|Error'
echo "done $(date -u +%FT%TZ)"
