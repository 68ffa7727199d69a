#!/usr/bin/env bash
# The commands that produced docs/results/ on the GPU machine (one H200), in phases that
# each fit one device call; run directories live in runs/ (kept between calls on a warm
# machine, and resumable if a phase is cut short).
#
#   benchmarks/distill_gpu.sh data    sample, label, train, evaluate both configs side by
#                                     side (their times overlap: not speed measurements)
#   benchmarks/distill_gpu.sh md      MD validation and report, one config after the other
#                                     (quiet GPU: these timings are the speed results)
#   benchmarks/distill_gpu.sh long    long jax-md runs: NVE 100 ps and NVT 1 ns
#   benchmarks/distill_gpu.sh mol-gpu train + evaluate molecules sampled and labelled elsewhere
#                                     (runs/mol carried), then GPU speed of student and teacher
#   benchmarks/distill_gpu.sh pack    tar both run directories (no checkpoints) into $OUT
#
# The ANI-1x files are expected in .device/teachers/ (the GPU machine has no ../shared).
set -uo pipefail
phase=${1:?phase: data, md, long or pack}
budget=${2:-540}
mkdir -p runs
sed "s#\.\./shared/teachers/fennol-ani1x#.device/teachers#g" configs/molecules-fennol.yaml \
  >runs/molecules-fennol.yaml
distill() { timeout "$budget" python3 -m jaxdistill.cli distill "$@"; }

case $phase in
data | data-mol)
  stages=(--stage sample --stage label --stage train --stage evaluate)
  [ "$phase" = data ] && (distill configs/si-sevennet.yaml --run-dir runs/si "${stages[@]}" >runs/si-data.log 2>&1
   echo "exit $?" >>runs/si-data.log) &
  (distill runs/molecules-fennol.yaml --run-dir runs/mol "${stages[@]}" >runs/mol-data.log 2>&1
   echo "exit $?" >>runs/mol-data.log) &
  [ "$phase" = data-mol ] && "$0" long-si "$budget" >runs/long-si.log 2>&1 &
  wait
  tail -n 25 runs/*-data.log runs/long-si.log
  ;;
md)
  for run in si mol; do
    config=configs/si-sevennet.yaml
    [ "$run" = mol ] && config=runs/molecules-fennol.yaml
    distill "$config" --run-dir runs/$run >runs/$run-md.log 2>&1
    echo "exit $?" >>runs/$run-md.log
    tail -n 40 runs/$run-md.log
  done
  ;;
long-si | long-mol)
  run=${phase#long-}
  python3 -c "import ase.io; ase.io.write('runs/$run-start.extxyz', ase.io.read('runs/$run/frames.extxyz', index=0))"
  md() { timeout "$budget" python3 -m jaxdistill.cli md --no-progress "$@"; }
  if [ "$phase" = long-si ]; then
    md --student runs/si/student --structure runs/si-start.extxyz --ensemble nve \
      --temperature 300 --timestep-fs 2 --steps 50000 --output runs/si-nve.extxyz \
      --sample-every 500 --summary-json runs/si/md/nve_100ps.json
    md --student runs/si/student --structure runs/si-start.extxyz --ensemble nvt \
      --temperature 1500 --timestep-fs 2 --steps 500000 --friction-per-fs 0.02 \
      --output runs/si-nvt.extxyz --sample-every 5000 --summary-json runs/si/md/nvt_1ns_1500K.json
  else
    md --student runs/mol/student --structure runs/mol-start.extxyz --ensemble nve \
      --temperature 300 --timestep-fs 0.5 --steps 200000 --output runs/mol-nve.extxyz \
      --sample-every 2000 --summary-json runs/mol/md/nve_100ps.json
    md --student runs/mol/student --structure runs/mol-start.extxyz --ensemble nvt \
      --temperature 600 --timestep-fs 1.0 --steps 1000000 --friction-per-fs 0.02 \
      --output runs/mol-nvt.extxyz --sample-every 20000 --summary-json runs/mol/md/nvt_1ns_600K.json
  fi
  ;;
mol-gpu)
  # Molecules when their sample and label stages ran elsewhere (runs/mol carried in):
  # train + evaluate here, then the GPU speed of student (jax-md) and teacher (ASE).
  # The config names ../shared/teachers/...: point that path at the carried files so
  # the config (and so the stage hashes) stay exactly as committed.
  mkdir -p ../shared/teachers && ln -sfn "$PWD/.device/teachers" ../shared/teachers/fennol-ani1x
  timeout 190 python3 -m jaxdistill.cli distill configs/molecules-fennol.yaml --run-dir runs/mol \
    --stage train --stage evaluate >runs/mol-train.log 2>&1
  echo "exit $?" >>runs/mol-train.log
  tail -n 12 runs/mol-train.log
  mkdir -p runs/mol/md
  python3 -c "import ase.io; ase.io.write('runs/mol-start.extxyz', ase.io.read('runs/mol/frames.extxyz', index=0))"
  timeout 50 python3 -m jaxdistill.cli md --no-progress --student runs/mol/student \
    --structure runs/mol-start.extxyz --ensemble nve --temperature 300 --timestep-fs 0.5 \
    --steps 200000 --sample-every 2000 --summary-json runs/mol/md/nve_100ps.json
  timeout 60 python3 benchmarks/teacher_md_step.py \
    "fennol:../shared/teachers/fennol-ani1x/ani1x_model*.fnx" runs/mol-start.extxyz \
    --timestep-fs 0.5 --steps 200 --output runs/mol/md/teacher_md_step_h200.json
  tar czf "$OUT/mol.tgz" --exclude=checkpoints --exclude='*.extxyz' --exclude=labels.h5 runs/mol
  ;;
pack)
  for run in si mol; do
    tar czf "$OUT/$run.tgz" --exclude=training --exclude='*.extxyz' runs/$run
  done
  cp runs/*.log "$OUT/" 2>/dev/null
  ls -la "$OUT"
  ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
