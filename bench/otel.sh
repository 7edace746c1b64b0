#!/usr/bin/env bash
# The OTLP export's cost: front-listener throughput (3 workers, the fast upstream) of two
# supervisors started side by side, one with `[telemetry]` off and one exporting every request's
# two spans (front + worker) to a live OTLP/HTTP sink on 127.0.0.1 (examples/otlp_sink.rs: one
# thread, answers 200 to POST /v1/traces, discards the body, counts requests and bytes; it
# replaced a Python sink whose own CPU per span was a visible part of "on"). Interleaved rounds
# (off on, then on off, ...) so drift on a shared machine cancels; medians by bench/ab.py. The
# sink runs on the same 2 cores, so its CPU counts against "on" (and is reported apart in the
# fixed-rate phase). Release build; writes bench/out/. The per-span cost as an instruction count,
# which the machine's noise does not move: bench/span_cost.sh.
# Usage: ROUNDS=5 bench/otel.sh [SECS] (default 10 s per round).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${ROUNDS:-5}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
. bench/lib.sh
release_build
trap 'kill_pids' EXIT

rm -f "$OUT/sink.addr"
$EX/otlp_sink "$OUT/sink.count" >"$OUT/sink.addr" & pids+=($!); SINK_PID=$!
until [ -s "$OUT/sink.addr" ]; do kill -0 $SINK_PID 2>/dev/null || { echo "sink failed" >&2; exit 1; }; sleep 0.05; done
SINK=$(cat "$OUT/sink.addr")

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
POOL=$'worker_max_inflight = 20000\nmax_queue = 20000'
write_config "$OUT/otel-off.toml" "$PWD/$OUT/otel-off-run" "$POOL"
start_supervisor "$OUT/otel-off.toml" "$OUT/otel-off.out" "$OUT/otel-off.log"
OFF="http://$FRONT/v1/chat/completions"; OFF_PID=$SPID
write_config "$OUT/otel-on.toml" "$PWD/$OUT/otel-on-run" "$POOL"
printf '[telemetry]\notlp_endpoint = "http://%s"\nservice_name = "bench"\n' "$SINK" >>"$OUT/otel-on.toml"
start_supervisor "$OUT/otel-on.toml" "$OUT/otel-on.out" "$OUT/otel-on.log"
ON="http://$FRONT/v1/chat/completions"; ON_PID=$SPID
sleep 1
round() { # label url
  local t; t=$($EX/bench_load throughput "$2" 64 "$SECS")
  echo "$1 $(field "$t" rps) $(field "$t" errors)"
}
: >"$OUT/otel.rounds"; : >"$OUT/otel.cpu"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then round off "$OFF"; round on "$ON"; else round on "$ON"; round off "$OFF"; fi | tee -a "$OUT/otel.rounds"
done
python3 bench/ab.py off on <"$OUT/otel.rounds"

# CPU per request at a fixed rate below saturation (less moved by the machine's noise than a
# closed loop): ticks of each supervisor and its workers over an open-loop run at RATE req/s.
RATE=${RATE:-2000}
tree_ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
  done
  echo $total
}
HZ=$(getconf CLK_TCK)
cpu_round() { # label url pid
  local a b s0 s1 t
  a=$(tree_ticks "$3"); s0=$(tree_ticks "$SINK_PID")
  t=$($EX/bench_load latency "$2" "$RATE" "$SECS")
  b=$(tree_ticks "$3"); s1=$(tree_ticks "$SINK_PID")
  local n; n=$(field "$t" requests)
  echo "$1 cpu_us_per_request $(( (b - a) * 1000000 / HZ / n )) sink_us_per_request $(( (s1 - s0) * 1000000 / HZ / n )) requests $n errors $(field "$t" errors)"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then cpu_round off "$OFF" "$OFF_PID"; cpu_round on "$ON" "$ON_PID"; else cpu_round on "$ON" "$ON_PID"; cpu_round off "$OFF" "$OFF_PID"; fi | tee -a "$OUT/otel.cpu"
done
sleep 6   # the last batch goes out on the 5 s schedule
echo "sink: $(cat "$OUT/sink.count")"
for f in "$OFF" "$ON"; do
  m=${f%/v1/chat/completions}/metrics
  page=$(curl -s "$m")
  sum() { grep -E "^$1" <<<"$page" | awk '{s+=$2} END {print s+0}'; }
  echo "$m: $(sum gateway_otlp_export_failures_total) export failures, $(sum gateway_otlp_spans_dropped_total) spans dropped"
done
