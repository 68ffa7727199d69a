# Sourced first by the benchmarks/*_gpu.sh scripts (one device call each): goes to the
# project root, sets $out (the device's $OUT, else benchmarks/results), names the GPU and
# checks the wheels `../shared/device/prepare.sh vesin==0.6.2` carries in .device
# (the GPU machine lacks ase, jax-md and vesin); defines ab, an A/B of a setting read at
# trace time through edge_remat_ab.py.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
python -c "import vesin, ase, jax_md" || { echo "missing wheels: run prepare.sh vesin==0.6.2"; exit 1; }
ab() {  # A/B of a setting read at trace time: timeout seconds, then edge_remat_ab.py arguments
  local seconds=$1
  shift
  timeout "$seconds" python benchmarks/edge_remat_ab.py "$@" 2>&1 | grep -E '^\[remat\]|Error'
}
