#!/usr/bin/env bash
# Screenshot the MLflow UI page of one run with headless Chromium.
#
# Usage: scripts/screenshot_run.sh BACKEND_STORE_URI RUN_ID OUT.png
#   e.g. scripts/screenshot_run.sh sqlite:///$PWD/mlflow.db 0123abcd... docs/run.png
#
# Starts `.venv/bin/mlflow server` on a free 127.0.0.1 port (stopped on exit),
# looks up the run's experiment and saves a PNG of its page.
# Needs Chromium (Debian/Ubuntu: `apt-get install -y chromium`).
# Optional env: CHROMIUM (browser binary), WINDOW_SIZE (default 1400,1000),
# RENDER_BUDGET_MS (default 15000), MLFLOW_BIN (default <repo>/.venv/bin/mlflow).
#
# The page is loaded as http://mlflow-ui:<port>/ (mapped to 127.0.0.1 inside
# Chromium) rather than http://127.0.0.1:<port>/: on a localhost address the UI
# auto-opens its "MLflow Assistant" side panel, which would cover a quarter of
# the shot. The server is told to accept that host name and origin.
set -euo pipefail

die() { echo "screenshot_run.sh: $*" >&2; exit 1; }

[[ $# -eq 3 ]] || die "usage: $0 BACKEND_STORE_URI RUN_ID OUT.png"
store_uri=$1
run_id=$2
out_png=$3

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mlflow_bin=${MLFLOW_BIN:-$repo_root/.venv/bin/mlflow}
python_bin=$(dirname "$mlflow_bin")/python
window_size=${WINDOW_SIZE:-1400,1000}
budget_ms=${RENDER_BUDGET_MS:-15000}
ui_host=mlflow-ui

chromium_bin=${CHROMIUM:-}
if [[ -z $chromium_bin ]]; then
  for c in chromium chromium-browser google-chrome google-chrome-stable chromium-headless-shell; do
    if command -v "$c" >/dev/null 2>&1; then chromium_bin=$(command -v "$c"); break; fi
  done
fi
[[ -n $chromium_bin && -x $chromium_bin ]] \
  || die "chromium not found; install it with 'apt-get install -y chromium' (Debian/Ubuntu) or set CHROMIUM=/path/to/chrome"
[[ -x $mlflow_bin ]] || die "mlflow not found at $mlflow_bin (create the venv or set MLFLOW_BIN)"
command -v curl >/dev/null 2>&1 || die "curl not found; install it with 'apt-get install -y curl'"

# mlflow would silently create an empty database at a mistyped sqlite path.
if [[ $store_uri == sqlite:///* ]]; then
  db_path=${store_uri#sqlite:///}
  db_path=${db_path%%\?*}
  [[ -f $db_path ]] || die "sqlite database $db_path (from $store_uri) does not exist"
fi

out_dir=$(dirname "$out_png")
[[ -d $out_dir ]] || die "output directory $out_dir does not exist"
out_png=$(cd "$out_dir" && pwd)/$(basename "$out_png")

work=$(mktemp -d "${TMPDIR:-/tmp}/screenshot_run.XXXXXX")
server_pid=
cleanup() {
  # The server runs in its own process group (setsid), so signal that group
  # only: the mlflow CLI, its uvicorn worker and anything they spawned.
  if [[ -n $server_pid ]]; then
    kill -TERM -- "-$server_pid" 2>/dev/null || kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 20); do
      kill -0 -- "-$server_pid" 2>/dev/null || kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$server_pid" 2>/dev/null || kill -KILL "$server_pid" 2>/dev/null || true
    { wait "$server_pid"; } 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

setsid_cmd=()
command -v setsid >/dev/null 2>&1 && setsid_cmd=(setsid)
# Background jobs are not needed to render pages; keep them off the store.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "${setsid_cmd[@]}" "$mlflow_bin" server \
  --backend-store-uri "$store_uri" \
  --host 127.0.0.1 --port "$port" --workers 1 \
  --allowed-hosts "$ui_host:$port,127.0.0.1:$port,localhost:$port" \
  --cors-allowed-origins "http://$ui_host:$port" \
  >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 120); do
  if curl -sf "$base/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    tail -n 20 "$work/server.log" >&2
    die "mlflow server exited before becoming healthy (log above)"
  fi
  sleep 0.5
done
curl -sf "$base/health" >/dev/null 2>&1 || { tail -n 20 "$work/server.log" >&2; die "mlflow server on port $port not healthy after 60s"; }

run_json=$(curl -s "$base/api/2.0/mlflow/runs/get?run_id=$run_id") || die "could not query run $run_id"
exp_id=$(printf '%s' "$run_json" | "$python_bin" -c '
import json, sys
try:
    print(json.load(sys.stdin)["run"]["info"]["experiment_id"])
except Exception:
    sys.exit(1)
') || die "run $run_id not found in $store_uri: $run_json"

url="http://$ui_host:$port/#/experiments/$exp_id/runs/$run_id?workflowType=machine_learning"

rm -f "$out_png"
"$chromium_bin" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
  --no-first-run --no-default-browser-check --user-data-dir="$work/profile" \
  --host-resolver-rules="MAP $ui_host 127.0.0.1" \
  --window-size="$window_size" --virtual-time-budget="$budget_ms" \
  --screenshot="$out_png" "$url" >"$work/chromium.log" 2>&1 \
  || { tail -n 20 "$work/chromium.log" >&2; die "chromium failed (log above)"; }
[[ -s $out_png ]] || { tail -n 20 "$work/chromium.log" >&2; die "chromium wrote no screenshot"; }

echo "wrote $out_png (run $run_id, experiment $exp_id)"
