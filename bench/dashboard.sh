#!/usr/bin/env bash
# The dashboard's cost: front-listener throughput (3 workers, the fast upstream) with 0 and with
# 20 open dashboards (20 SSE clients on /dashboard/events, one snapshot a second each), in
# alternating rounds A B A B so drift on a shared machine shows. Release build; writes bench/out/.
# Usage: bench/dashboard.sh [SECS] (default 10 s per round).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release -q -p supervisor -p gateway-worker
cargo build --release -q -p gateway --examples
. bench/lib.sh
viewers=()
stop_viewers() { for p in "${viewers[@]}"; do kill "$p" 2>/dev/null || true; done; viewers=(); }
trap 'stop_viewers; kill_pids' EXIT

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
write_config "$OUT/dash.toml" "$PWD/$OUT/dash-run" $'worker_max_inflight = 20000\nmax_queue = 20000'
start_supervisor "$OUT/dash.toml" "$OUT/dash.out" "$OUT/dash.log"
URL="http://$FRONT/v1/chat/completions"
sleep 1
round() { # label
  local t; t=$($EX/bench_load throughput "$URL" 64 "$SECS")
  echo "$1 $(field "$t" rps) $(field "$t" errors)"
}
for r in 1 2; do
  round "0-dashboards"
  for i in $(seq 20); do
    curl -sN "http://$FRONT/dashboard/events" >/dev/null & viewers+=($!)
  done
  sleep 2
  round "20-dashboards"
  stop_viewers
  sleep 6   # the sampler ends LINGER (5 s) after the last viewer
done
