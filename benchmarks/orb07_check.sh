#!/usr/bin/env bash
# Runs the Orb teacher tests (tests/teachers/test_teacher_orb.py) with orb-models 0.7.0
# on the GPU machine (Python 3.12; 0.6+ needs Python >= 3.12, this machine has 3.11).
#
# orb-models 0.7 builds graphs with nvalchemi-toolkit-ops, which needs NVIDIA Warp
# (warp-lang): a 149 MB wheel, more than one device call may carry (64 MiB). So the
# wheel travels in 40 MB parts, one part per call, while the machine stays warm
# (each call copies its part to /tmp/p on the machine, which survives between calls;
# the part carried under .orb07/ does not: carrying a path replaces what was there),
# and the last call joins them (checking the SHA-256), installs everything offline and
# runs the tests.
#
# Here, from the project root:
#   benchmarks/orb07_check.sh prepare
#     -> .device/ (../shared/device/prepare.sh's wheels, orb-models 0.5.5 swapped for
#        0.7.0, plus nvalchemi-toolkit-ops, vesin, pytest) and .orb07/part-a? (warp-lang)
# Then on the device, one call per part and a last one, back to back (the machine goes
# back after 30 s idle, and /tmp/p with it):
#   run(command="mkdir -p /tmp/p && cp .orb07/part-* /tmp/p/", carry=[".orb07/part-aa"])
#   run(command="mkdir -p /tmp/p && cp .orb07/part-* /tmp/p/", carry=[".orb07/part-ab"])
#   run(command="mkdir -p /tmp/p && cp .orb07/part-* /tmp/p/", carry=[".orb07/part-ad"])
#   run(command="bash benchmarks/orb07_check.sh test",
#       carry=[".device", ".orb07/part-ac", ".orb07/warp.sha256"])
# (`prepare` prints the exact part names.) `test` refuses with a clear line when a
# part is missing (the machine went back between calls: start again from part aa).
# Run on an H100, 2026-12-06: 8 passed (benchmarks/results/orb07_h100.log).
set -euo pipefail
phase=${1:?usage: benchmarks/orb07_check.sh prepare|test}
WARP=warp-lang==1.19.0

case $phase in
prepare)
  root=$(git rev-parse --show-toplevel)
  cd "$root"
  ../shared/device/prepare.sh vesin==0.6.2 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
  rm -f .device/whl/orb_models-0.5.5-*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .device/whl \
    orb-models==0.7.0 'nvalchemi-toolkit-ops==0.3.1'
  grep -qx '/.orb07/' .git/info/exclude 2>/dev/null || echo '/.orb07/' >> .git/info/exclude
  rm -rf .orb07 && mkdir -p .orb07/whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .orb07/whl "$WARP"
  wheel=$(ls .orb07/whl/warp_lang-*.whl)
  (cd .orb07 && sha256sum "whl/$(basename "$wheel")" > warp.sha256)
  split -b 40M "$wheel" .orb07/part-
  rm -rf .orb07/whl
  du -sh .device .orb07/part-*
  echo "carry each of: $(cd .orb07 && ls part-* | sed 's|^|.orb07/|' | tr '\n' ' ')(one per call),"
  echo "then: bash benchmarks/orb07_check.sh test with carry [\".device\", \".orb07/warp.sha256\"]"
  ;;
test)
  source .device/env.sh || exit 1
  mkdir -p /tmp/orb07/whl /tmp/p
  cp .orb07/part-* /tmp/p/ 2>/dev/null || true
  cp /tmp/p/part-* .orb07/ 2>/dev/null || true
  name=$(awk '{print $2}' .orb07/warp.sha256)
  cat .orb07/part-* > "/tmp/orb07/$name"
  if ! (cd /tmp/orb07 && sha256sum -c --quiet "$OLDPWD/.orb07/warp.sha256"); then
    echo "warp-lang parts missing or incomplete (the machine went back between calls?):"
    ls -la .orb07
    exit 3
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "/tmp/orb07/$name"
  python3 - <<'EOF'
import importlib.metadata as m
import sys
print("python", sys.version.split()[0])
for name in ("orb-models", "nvalchemi-toolkit-ops", "warp-lang", "torch", "jax"):
    print(name, m.version(name))
EOF
  python3 -m pytest tests/teachers/test_teacher_orb.py -q -p no:cacheprovider -rA
  ;;
*)
  echo "unknown phase $phase (prepare or test)" >&2
  exit 2
  ;;
esac
