#!/usr/bin/env bash
# The CUDA path, run for real, in one call on the GPU machine (issue 13). Needs well under 10 minutes.
#
#   bash scripts/gpu_check.sh OUT_DIR [STEPS=500]
#
# The machine has Python 3.12, torch + CUDA, torchvision, scipy, scikit-learn, scikit-image, opencv,
# ninja and nvcc, and no internet. Bring the wheels: `bash scripts/gpu_wheels.sh` here, then carry the
# (git-ignored) gpu_wheels/ folder with the working tree, e.g. the device tool's carry: ["gpu_wheels"].
# Writes OUT_DIR/results.json (updated after every stage, so a cut-off run still reports) and
# OUT_DIR/gpu_check.log. Stages: environment, wheel install, gsplat JIT build (timed, build folder reused
# within the call), cross-check, splatfacto and unified-lift for STEPS steps on an 800x600 demo scene
# (step time, peak memory, PSNR, segmentation metrics), ulift render / eval / export, then the test suite
# with CUDA visible in whatever time is left.
set -uo pipefail
OUT=$(realpath -m "${1:?usage: gpu_check.sh OUT_DIR [STEPS]}")
STEPS=${2:-${STEPS:-500}}
BUDGET_S=${BUDGET_S:-560}          # stop starting stages past this (the call limit is 600 s)
WHEELS=${WHEELS:-gpu_wheels}
VIEWS=${VIEWS:-20}   # 18 train + 2 eval views (train_split_fraction 0.9)
WIDTH=${WIDTH:-800}
HEIGHT=${HEIGHT:-600}
# REHEARSE=1: a dry run on a CPU machine with an environment that already has everything (REHEARSE_PY):
# no wheel install, no kernel build, --machine.device-type cpu. Use tiny STEPS/VIEWS/WIDTH/HEIGHT there.
REHEARSE=${REHEARSE:-0}
cd "$(dirname "$0")/.."
REPO=$PWD
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d /tmp/gpu_check.XXXX)}
LOG="$OUT/gpu_check.log"
RES="$OUT/results.json"
T0=$(date +%s)
exec > >(tee -a "$LOG") 2>&1
echo '{}' > "$RES"

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }
# record KEY VALUE_JSON: merge one key into results.json.
record() { "${PY:-python3}" - "$RES" "$1" "$2" <<'PYEOF'
import json, sys
path, key, value = sys.argv[1:4]
data = json.load(open(path))
try:
    data[key] = json.loads(value)
except json.JSONDecodeError:
    data[key] = value
json.dump(data, open(path, "w"), indent=2)
PYEOF
}
stage() { echo; echo "=== [$(elapsed)s] $*"; }
# timed NAME LIMIT CMD...: run with a timeout, record rc and seconds as NAME.
timed() {
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"; local rc=$?
  record "$name" "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"limit_s\": $limit}"
  return $rc
}

stage "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -V; which nvcc && nvcc --version | tail -2
record env "$("${REHEARSE_PY:-python3}" -c 'import json,sys,torch; print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))')"

stage "wheels: a venv over the system packages, carried wheels for what is missing (--no-index --no-deps)"
if [[ $REHEARSE == 1 ]]; then
  PY=${REHEARSE_PY:?REHEARSE=1 needs REHEARSE_PY=/path/to/python with everything installed}
else
  python3 -m venv --system-site-packages "$WORK/venv"
  PY="$WORK/venv/bin/python"
fi
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH"
missing=$("$PY" - "$WHEELS" <<'PYEOF'
import importlib.metadata as md, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        print(whl)
PYEOF
)
echo "installing $(echo "$missing" | wc -w) of $(ls "$WHEELS"/*.whl | wc -l) carried wheels"
# shellcheck disable=SC2086
if [[ $REHEARSE == 1 ]]; then echo "rehearsal: would install: $missing" | head -c 600; echo
elif [[ -n "$missing" ]]; then timed install 120 "$PY" -m pip install -q --no-index --no-deps $missing; fi
export PYTHONPATH="$REPO"   # the working tree's code wins over the installed ulift_ns wheel (entry points only)
timed import_check 60 "$PY" -c "import nerfstudio.scripts.train, gsplat, viser, tyro, ulift_ns.cli, ulift_ns.model, ulift_ns.export; from nerfstudio.configs.method_configs import all_methods; assert 'unified-lift' in all_methods and 'splatfacto' in all_methods; print('imports ok')" || true

stage "gsplat JIT build (once; the build folder is reused by every later stage of this call)"
export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
arch=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(0); print(f"{m}.{n}")' 2>/dev/null || echo none)
[[ $arch == none ]] || export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}   # this GPU only: less to compile
[[ $REHEARSE == 1 ]] || timed gsplat_build 300 "$PY" -c "
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat kernels did not build'
from ulift_ns.rasterize import gsplat_unavailable_reason
print('gsplat kernels:', gsplat_unavailable_reason() or 'ok')"


stage "cross-check: torch rasterizer vs gsplat"
timed crosscheck 120 "$PY" -m pytest -q -rs tests/test_gsplat_crosscheck.py tests/test_cuda_path.py \
  --junitxml="$OUT/crosscheck.xml" || true

stage "demo scene ${VIEWS} views at ${WIDTH}x${HEIGHT}"
SCENE="$WORK/scene"
timed demo 150 "$BIN/ulift" demo --output "$SCENE" --width "$WIDTH" --height "$HEIGHT" --num-views "$VIEWS" || true

COMMON=(--max-num-iterations "$STEPS" --vis tensorboard --steps-per-save 100000 --steps-per-eval-image 100000
        --steps-per-eval-batch 0 --steps-per-eval-all-images 100000 --machine.seed 0 --output-dir "$WORK/outputs")
[[ $REHEARSE == 1 ]] && COMMON+=(--machine.device-type cpu)
for method in splatfacto unified-lift; do
  if (( $(left) < 90 )); then echo "skip $method: $(left)s left"; record "train_$method" '"skipped: out of time"'; continue; fi
  stage "ns-train $method, $STEPS steps"
  # Same scene, same parser: splatfacto reads it through the registered ulift-data parser; unified-lift's
  # datamanager has that parser built in (so no subcommand there).
  if [[ $method == splatfacto ]]; then data_args=(ulift-data --data "$SCENE"); else data_args=(--data "$SCENE"); fi
  timed "train_${method}_wall" 200 "$PY" scripts/gpu_train.py "$OUT/train_$method.json" "$method" "${COMMON[@]}" \
    --experiment-name "$method" "${data_args[@]}" || true
  [[ -f "$OUT/train_$method.json" ]] && record "train_$method" "$(cat "$OUT/train_$method.json")"
  cfg=$("$PY" -c "import json; print(json.load(open('$OUT/train_$method.json'))['config'] or '')" 2>/dev/null)
  if [[ -n "$cfg" && -f "$cfg" ]]; then
    timed "ns_eval_$method" 90 "$PY" scripts/gpu_train.py --eval --load-config "$cfg" --output-path "$OUT/eval_$method.json" || true
    [[ -f "$OUT/eval_$method.json" ]] && record "eval_$method" "$(cat "$OUT/eval_$method.json")"
  fi
  [[ $method == unified-lift ]] && UL_CFG=$cfg
done

if [[ -n "${UL_CFG:-}" && -f "${UL_CFG:-}" ]]; then
  stage "ulift render / eval / export"
  timed ulift_render 90 "$BIN/ulift" render --load-config "$UL_CFG" --split all --output-dir "$WORK/labels" || true
  timed ulift_eval 60 "$BIN/ulift" eval --data "$SCENE" --pred "$WORK/labels" || true
  [[ -f "$WORK/labels/metrics.json" ]] && record seg_metrics "$(cat "$WORK/labels/metrics.json")"
  timed ulift_export 90 "$BIN/ulift" export --load-config "$UL_CFG" --output-dir "$WORK/export" || true
  ls -la "$WORK/export" | head -20
  record export_files "$(ls "$WORK/export" 2>/dev/null | wc -l)"
fi

"$PY" - "$RES" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
s, u = r.get("train_splatfacto"), r.get("train_unified-lift")
if isinstance(s, dict) and isinstance(u, dict) and s.get("step_ms_median_after_50") and u.get("step_ms_median_after_50"):
    r["step_time_ratio_median"] = u["step_ms_median_after_50"] / s["step_ms_median_after_50"]
    r["peak_mem_ratio"] = u["peak_gpu_mem_mib"] / max(s["peak_gpu_mem_mib"], 1e-9)
    r["extrapolated_30k_minutes"] = {k: v["step_ms_mean_after_50"] * 30000 / 60000 for k, v in (("splatfacto", s), ("unified-lift", u))}
    print(f"step-time ratio unified-lift/splatfacto {r['step_time_ratio_median']:.3f}, peak memory ratio {r['peak_mem_ratio']:.3f}")
json.dump(r, open(sys.argv[1], "w"), indent=2)
PYEOF

stage "test suite with CUDA visible ($(left)s left)"
if [[ ${SUITE:-1} == 1 ]] && (( $(left) > 30 )); then
  timed test_suite "$(left)" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" tests/ || true
else
  record test_suite '"skipped: out of time"'
fi
record total_seconds "$(elapsed)"
echo "results: $RES"
