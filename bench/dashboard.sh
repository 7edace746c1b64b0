#!/usr/bin/env bash
# The dashboard's cost: front-listener throughput (3 workers, the fast upstream) with 0 and with
# 20 open dashboards (20 SSE clients on /dashboard/events, one snapshot a second each), in
# interleaved rounds (A B, then B A, ...) so drift on a shared machine cancels; medians by
# bench/ab.py. Then CPU per request at a fixed RATE below saturation, 0 vs 20 dashboards, also
# interleaved (less moved by the machine's noise than a closed loop); then the idle cost: CPU of
# the supervisor and its workers over IDLE_SECS with no traffic, with 0 and with 20 dashboards
# open. Release build; writes bench/out/.
# Usage: ROUNDS=5 bench/dashboard.sh [SECS] (default 10 s per round).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${ROUNDS:-5}
IDLE_SECS=${IDLE_SECS:-10}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
. bench/lib.sh
release_build
viewers=()
stop_viewers() { for p in "${viewers[@]}"; do kill "$p" 2>/dev/null || true; done; viewers=(); }
trap 'stop_viewers; kill_pids' EXIT

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
write_config "$OUT/dash.toml" "$PWD/$OUT/dash-run" $'worker_max_inflight = 20000\nmax_queue = 20000'
start_supervisor "$OUT/dash.toml" "$OUT/dash.out" "$OUT/dash.log"
URL="http://$FRONT/v1/chat/completions"
sleep 1
open_viewers() {
  for _ in $(seq 20); do
    curl -sN "http://$FRONT/dashboard/events" >/dev/null & viewers+=($!)
  done
  sleep 2
}
close_viewers() {
  stop_viewers
  sleep 6   # the sampler ends LINGER (5 s) after the last viewer
}
round() { # label
  local t; t=$($EX/bench_load throughput "$URL" 64 "$SECS")
  echo "$1 $(field "$t" rps) $(field "$t" errors)"
}
zero() { round "0-dashboards"; }
twenty() { open_viewers; round "20-dashboards"; close_viewers; }
: >"$OUT/dash.rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then zero; twenty; else twenty; zero; fi | tee -a "$OUT/dash.rounds"
done
python3 bench/ab.py 0-dashboards 20-dashboards <"$OUT/dash.rounds"

# CPU ticks (utime + stime) of the supervisor and its workers.
ticks() {
  local total=0 p
  for p in $SPID $(pgrep -P "$SPID"); do
    total=$((total + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
  done
  echo $total
}
RATE=${RATE:-2000}
cpu_round() { # label
  local a b t n hz; hz=$(getconf CLK_TCK); a=$(ticks)
  t=$($EX/bench_load latency "$URL" "$RATE" "$SECS")
  b=$(ticks); n=$(field "$t" requests)
  echo "$1 cpu_us_per_request $(( (b - a) * 1000000 / hz / n )) requests $n errors $(field "$t" errors)"
}
cpu_twenty() { open_viewers; cpu_round "20-dashboards"; close_viewers; }
: >"$OUT/dash.cpu"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then cpu_round "0-dashboards"; cpu_twenty; else cpu_twenty; cpu_round "0-dashboards"; fi | tee -a "$OUT/dash.cpu"
done
idle() { # label
  local a b hz; hz=$(getconf CLK_TCK); a=$(ticks); sleep "$IDLE_SECS"; b=$(ticks)
  echo "$1: $(( (b - a) * 1000 / hz )) ms CPU in ${IDLE_SECS}s (supervisor + workers, no traffic)"
}
idle "idle, 0 dashboards"
open_viewers
idle "idle, 20 dashboards"
close_viewers
idle "idle, 0 dashboards after they closed"
