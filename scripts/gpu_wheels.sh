#!/usr/bin/env bash
# Collect the wheels scripts/gpu_check.sh installs on the GPU machine (which has no internet).
#   bash scripts/gpu_wheels.sh [DEST=gpu_wheels] [PYTHON_VERSION=3.12]
# Binary wheels are for CPython $PYTHON_VERSION on manylinux x86_64; the list is scripts/gpu_wheels.txt.
# Also builds this package's own wheel (for its nerfstudio entry points). Fails if the set exceeds 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu_wheels}
PYV=${2:-3.12}
LIMIT_MIB=${LIMIT_MIB:-56}   # the device carry limit is 64 MiB for everything carried: leave room
mkdir -p "$DEST"
reqs=$(grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$')
# manylinux2014 first; a few projects publish only newer manylinux tags, so accept those too.
platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
fetch() { python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${platforms[@]}" --dest "$DEST" "$1" 2>/dev/null; }
missing=()
for req in $reqs; do
  if ! fetch "$req"; then
    # The pin is what the CPU venv runs; where the registry lacks it for this Python, take its newest wheel.
    if fetch "${req%%==*}"; then echo "note: $req has no cp$PYV wheel; took the newest ${req%%==*}"; else missing+=("$req"); fi
  fi
done
if (( ${#missing[@]} )); then echo "no wheel for CPython $PYV: ${missing[*]}"; exit 1; fi
python -m pip wheel --no-deps --no-build-isolation --wheel-dir "$DEST" . >/dev/null
size_kib=$(du -sk "$DEST" | cut -f1)
count=$(ls "$DEST"/*.whl | wc -l)
echo "$count wheels in $DEST: $((size_kib / 1024)) MiB (limit ${LIMIT_MIB} MiB)"
if (( size_kib > LIMIT_MIB * 1024 )); then
  echo "too big: largest wheels:"; ls -S -l "$DEST" | head -8
  exit 1
fi
