#!/usr/bin/env bash
# Install ulift_ns and everything it needs into the active Python (a venv or the system one).
# Safe to re-run: a working, matched torch + torchvision pair that is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System packages: libusb-1.0 for open3d (imported by nerfstudio's dataparsers), ffmpeg for ns-render videos.
missing=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch and torchvision must come from one build, or `import torchvision` (and every ns-* command)
# fails with "operator torchvision::nms does not exist". Keep a pair that already imports together.
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.14.*" "torchvision==0.29.*"
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" - >"$constraints" <<'PYEOF'
import torch, torchvision
print(f"torch=={torch.__version__.split('+')[0]}")
print(f"torchvision=={torchvision.__version__.split('+')[0]}")
PYEOF

"$PY" -m pip install --quiet -c "$constraints" -e ".[test]"
"$PY" -c "import ulift_ns.config" # fails loudly here, not inside ns-train, if the install is broken
echo "ulift_ns installed: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
