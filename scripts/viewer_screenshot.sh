#!/usr/bin/env bash
# Screenshot nerfstudio's web viewer running our `unified-lift` model (developer tool, not CI).
#
# Usage:
#     scripts/viewer_screenshot.sh path/to/run/config.yml [extra args for viewer_screenshot.mjs]
# e.g.
#     scripts/viewer_screenshot.sh outputs/scene/unified-lift/2026-11-24_020928/config.yml
#
# It starts `ns-viewer` on 127.0.0.1:$PORT (default 7007), waits until the port answers, runs
# scripts/viewer_screenshot.mjs (headless Chromium via playwright-core) which writes
# docs/viewer_instance.png and, if clicking an object works, docs/viewer_selection.png and
# docs/viewer_only_selection.png (Show: only selection),
# (refusing to replace existing ones unless --overwrite is passed), and stops the viewer on exit (trap).  The viewer's log goes to $LOG (default /tmp/ns-viewer.log).
#
# Needs, installed once (no browser download; never `npx playwright install`):
#     apt-get update -qq && apt-get install -y chromium        # /usr/bin/chromium
#     npm install --prefix /tmp/pw playwright-core              # outside the repo / git-ignored
#     node >= 18, and this package installed so `ns-viewer` can load the run.
# Environment: PORT, LOG, MIN_SHARE (smallest canvas share of the clicked object), PLAYWRIGHT_CORE (.../node_modules/playwright-core), CHROMIUM (binary).
# Everything stays on loopback.  On CPU the first frames take a while; the node script polls for
# up to --timeout seconds (default 180) at each step.
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1" ]]; then
    echo "usage: $0 path/to/config.yml [--out-dir docs] [--timeout 180] [--no-selection] [--overwrite]" >&2
    exit 2
fi
CONFIG=$1
shift
OUT_DIR=docs
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [[ ${ARGS[i]} == --out-dir && $((i + 1)) -lt ${#ARGS[@]} ]] && OUT_DIR=${ARGS[i + 1]}
done
if [[ " $* " != *" --overwrite "* ]]; then
    for f in "$OUT_DIR/viewer_instance.png" "$OUT_DIR/viewer_selection.png" "$OUT_DIR/viewer_only_selection.png"; do
        if [[ -e $f ]]; then
            echo "$f already exists: pass --overwrite to replace it, or --out-dir another folder" >&2
            exit 2
        fi
    done
fi
PORT=${PORT:-7007}
LOG=${LOG:-/tmp/ns-viewer.log}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is already in use; stop whatever is there or set PORT" >&2
    exit 1
fi

echo "starting ns-viewer for $CONFIG on 127.0.0.1:$PORT (log: $LOG)"
ns-viewer --load-config "$CONFIG" \
    --viewer.websocket-port "$PORT" --viewer.websocket-host 127.0.0.1 >"$LOG" 2>&1 &
VIEWER_PID=$!

stop_viewer() {
    if kill -0 "$VIEWER_PID" 2>/dev/null; then
        echo "stopping ns-viewer (pid $VIEWER_PID)"
        kill "$VIEWER_PID" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$VIEWER_PID" 2>/dev/null || return 0; sleep 0.5; done
        kill -9 "$VIEWER_PID" 2>/dev/null || true
    fi
}
trap stop_viewer EXIT
trap 'exit 130' INT TERM

# Loading torch + the checkpoint takes a while on CPU.
for i in $(seq 300); do
    if ! kill -0 "$VIEWER_PID" 2>/dev/null; then
        echo "ns-viewer exited early; last lines of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; then
        echo "viewer answers on port $PORT after ~${i}s"
        break
    fi
    if [[ $i -eq 300 ]]; then
        echo "viewer did not answer on port $PORT within 300s" >&2
        exit 1
    fi
    sleep 1
done

rc=0
node "$HERE/viewer_screenshot.mjs" --url "http://127.0.0.1:$PORT" "$@" || rc=$?
# The server side of a canvas click, if there was one.
grep -a "Selected instances" "$LOG" | sed 's/^/ns-viewer: /' || true
exit "$rc"
