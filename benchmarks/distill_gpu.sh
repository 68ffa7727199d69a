#!/usr/bin/env bash
# The commands that produced docs/results/ on the GPU machine (one H200), in phases that
# each fit one device call. Run directories live in runs/; a phase packs what the next
# one needs into $OUT (the machine is handed back between calls), and every stage
# resumes if a phase is cut short.
#
#   benchmarks/distill_gpu.sh si [SECONDS]  silicon: every stage of configs/si-sevennet.yaml,
#                                       then long jax-md runs (NVE 100 ps; NVT 1 ns at
#                                       1500 and 900 K), as far as SECONDS allow; call
#                                       again (with runs/si carried) to go on
#   benchmarks/distill_gpu.sh si-sizes [SECONDS]
#                                       silicon students of other sizes trained side by
#                                       side on runs/si's label store (carried), each in
#                                       its own runs/si-NAME, with their errors on
#                                       runs/si/md's teacher frames (VARIANTS below)
#   benchmarks/distill_gpu.sh mol-speed molecules: student jax-md step vs FeNNol ANI-1x
#                                       ensemble ASE step, same GPU, same molecule
#   benchmarks/distill_gpu.sh mol-long  molecule students: NVE 100 ps, NVT 1 ns x 4 replicas
#
# SevenNet needs `../shared/device/prepare.sh --with-sevenn`; the ANI-1x files are
# expected in .device/teachers/ (the GPU machine has no ../shared).
set -uo pipefail
phase=${1:?phase: si or mol-speed}
budget=${2:-540}
mkdir -p runs
distill() { timeout "$budget" python3 -m jaxdistill.cli distill configs/si-sevennet.yaml --run-dir runs/si "$@"; }
# $OUT returns files of at most 16 MiB: leave out checkpoints (finished stages do not need
# them) and exploration trajectories, and split what remains into 15 MB parts
# (cat si.tgz.part* > si.tgz to join).
pack() {
  tar czf - --exclude=checkpoints --exclude=explore --exclude='nvt_1ns_*.extxyz' runs/si |
    split -b 15M - "$OUT/si.tgz.part"
  ls -la "$OUT"
}
md() { timeout "$budget" python3 -m jaxdistill.cli md --no-progress "$@"; }

case $phase in
si)
  # As far as the time allows: the stages resume, the long runs skip what is done.
  end=$((SECONDS + budget))
  left() { echo $((end - SECONDS)); }
  timeout "$(left)" python3 -m jaxdistill.cli distill configs/si-sevennet.yaml --run-dir runs/si \
    2>&1 | grep -v "━" | tail -n 80
  pkill -f "multiprocessing.spawn" 2>/dev/null  # sample workers of a cut-short run
  if grep -q '"report"' runs/si/stages.json 2>/dev/null; then
    student=$(python3 -c "import json; print(json.load(open('runs/si/stages.json'))['refine']['summary']['student'])")
    python3 -c "import ase.io; ase.io.write('runs/si-start.extxyz', ase.io.read('runs/si/frames.extxyz', index=0))"
    [ -f runs/si/md/nve_100ps.json ] || [ "$(left)" -lt 60 ] || \
      md --student "$student" --structure runs/si-start.extxyz --ensemble nve \
        --temperature 300 --timestep-fs 2 --steps 50000 --output runs/si-nve.extxyz \
        --sample-every 500 --summary-json runs/si/md/nve_100ps.json | tail -n 3
    # the two nanoseconds side by side (their step times are then not speed figures;
    # the md stage's and the NVE run's are)
    for t in 1500 900; do
      [ -f runs/si/md/nvt_1ns_${t}K.json ] || [ "$(left)" -lt 150 ] || \
        timeout "$(left)" python3 -m jaxdistill.cli md --no-progress --student "$student" \
          --structure runs/si-start.extxyz --ensemble nvt --temperature $t --timestep-fs 2 \
          --steps 500000 --friction-per-fs 0.02 --output runs/si/md/nvt_1ns_${t}K.extxyz \
          --sample-every 5000 --summary-json runs/si/md/nvt_1ns_${t}K.json | tail -n 3 &
    done
    wait
  fi
  pack
  ;;
si-sizes)
  # VARIANTS: name:features:layers:energy_weight, each a copy of configs/si-sevennet.yaml
  # with those train keys; its run directory starts from runs/si's finished sample and
  # label stages, so only the train stage runs. Parallel runs share the GPU: their
  # training times are not speed figures.
  for variant in ${VARIANTS:-f128:128:3:1000 f128e300:128:3:300 f192:192:3:1000 f128l4:128:4:1000}; do
    IFS=: read -r name features layers energy_weight <<<"$variant"
    dir=runs/si-$name
    mkdir -p "$dir" && cp runs/si/labels.h5 runs/si/frames.extxyz runs/si/stages.json "$dir"/
    python3 -c "
import yaml
c = yaml.safe_load(open('configs/si-sevennet.yaml'))
c['train']['model'].update(features=$features, num_layers=$layers)
c['train']['energy_weight'] = float($energy_weight)
yaml.safe_dump(c, open('$dir/variant.yaml', 'w'), sort_keys=False)"
    (
      timeout "$budget" python3 -m jaxdistill.cli distill "$dir/variant.yaml" --run-dir "$dir" \
        --stage train >"$dir/log.txt" 2>&1
      python3 benchmarks/teacher_frame_errors.py "$dir/student" runs/si/md "$dir/errors.json" \
        >>"$dir/log.txt" 2>&1
    ) &
  done
  wait
  tail -n 5 runs/si-*/log.txt
  tar czf "$OUT/si-sizes.tgz" --exclude=checkpoints --exclude=labels.h5 --exclude=frames.extxyz runs/si-*
  ;;
mol-speed)
  # The config names ../shared/teachers/...: point that path at the carried files.
  mkdir -p ../shared/teachers && ln -sfn "$PWD/.device/teachers" ../shared/teachers/fennol-ani1x
  mkdir -p runs/mol-speed
  python3 -c "import ase.io; ase.io.write('runs/mol-start.extxyz', ase.io.read('runs/mol/frames.extxyz', index=0))"
  md --student "${MOL_STUDENT:-runs/mol/student}" --structure runs/mol-start.extxyz --ensemble nve \
    --temperature 300 --timestep-fs 0.5 --steps 200000 --sample-every 2000 \
    --summary-json runs/mol-speed/student_nve_100ps_h200.json | tail -n 3
  timeout 120 python3 benchmarks/teacher_md_step.py \
    "fennol:../shared/teachers/fennol-ani1x/ani1x_model*.fnx" runs/mol-start.extxyz \
    --timestep-fs 0.5 --steps 200 --output runs/mol-speed/teacher_md_step_h200.json
  cp runs/mol-speed/*.json "$OUT/"
  ;;
mol-long)
  # runs/mol-long/{start.extxyz, student-*/} carried in: per student, NVE 100 ps (0.5 fs)
  # and NVT 1 ns at 600 K for 4 replicas at once; the students side by side. NVT at
  # MOL_DT fs (0.5 by default): 1 fs halves the cost of the stability test but biases
  # the kinetic temperature of these molecules by about -3 % (0.5 fs: -0.5 %;
  # docs/results/README.md).
  cd runs/mol-long || exit 1
  dt=${MOL_DT:-0.5}
  steps=$(python3 -c "print(round(1e6 / $dt))")
  one() {
    s=$1
    [ "$2" = nve ] && md --student "$s" --structure start.extxyz --ensemble nve \
      --temperature 300 --timestep-fs 0.5 --steps 200000 --sample-every 2000 \
      --summary-json "$OUT/nve_100ps_$s.json" >"$OUT/log_$s.txt" 2>&1
    md --student "$s" --structure start.extxyz --ensemble nvt --temperature 600 \
      --timestep-fs "$dt" --steps "$steps" --friction-per-fs 0.02 --replicas 4 \
      --sample-every $((steps / 50)) --output "nvt_$s.extxyz" \
      --summary-json "$OUT/nvt_1ns_600K_x4_$s.json" >>"$OUT/log_$s.txt" 2>&1
  }
  for s in student-*; do one "$s" "${MOL_NVE:-nve}" & done
  wait
  tar czf "$OUT/nvt_traj.tgz" nvt_*.extxyz
  tail -n 6 "$OUT"/log_*.txt
  ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
