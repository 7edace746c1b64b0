#!/usr/bin/env bash
# The CPU a request's two spans cost (front + worker, made through gateway::telemetry exactly as
# the request paths make them, exported to examples/otlp_sink), without the rest of the request
# path: examples/span_cost at a fixed RATE, telemetry off against on.
#  1. Instructions (callgrind's Ir, which the neighbours on a shared machine do not move):
#     (Ir(on) - Ir(off)) / N over the whole process (request threads and the exporter).
#  2. CPU ns per request from getrusage, ROUNDS interleaved rounds, median of the paired
#     differences (moved by the machine's load, so only a cross-check).
# Usage: bench/span_cost.sh   Settings: N (100000; callgrind runs N/5), RATE (20000), ROUNDS (5),
# SPAN_COST (the example binary; default the tree's release build, e.g. another tree's to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
RATE=${RATE:-20000}
ROUNDS=${ROUNDS:-5}
OUT=bench/out/span_cost; mkdir -p "$OUT"
cargo build --release -q -p gateway --example span_cost --example otlp_sink
. bench/lib.sh
trap kill_pids EXIT
BINARY=${SPAN_COST:-$EX/span_cost}
rm -f "$OUT/sink.addr"
$EX/otlp_sink "$OUT/sink.count" >"$OUT/sink.addr" & pids+=($!)
until [ -s "$OUT/sink.addr" ]; do kill -0 "${pids[-1]}" 2>/dev/null || { echo "sink failed" >&2; exit 1; }; sleep 0.05; done
SINK=$(head -1 "$OUT/sink.addr")

if command -v valgrind >/dev/null; then
  CN=$((N / 5))
  for arm in off on; do
    target=off; [ $arm = on ] && target=$SINK
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$arm.callgrind" "$BINARY" "$target" "$CN" "$RATE" >"$OUT/$arm.cg.txt" 2>&1
  done
  ir() { grep -E '^summary:' "$OUT/$1.callgrind" | awk '{print $2}'; }
  echo "instructions per request (2 spans): $(( ($(ir on) - $(ir off)) / CN ))  (Ir on $(ir on), off $(ir off), $CN requests)"
  echo "  (callgrind_annotate --inclusive=yes $OUT/on.callgrind: where they go)"
fi

field() { tr ' ' '\n' <<<"$1" | grep -A1 -x "$2" | tail -1; }
: >"$OUT/rounds"
for r in $(seq "$ROUNDS"); do
  off=$("$BINARY" off "$N" "$RATE"); on=$("$BINARY" "$SINK" "$N" "$RATE")
  echo "round $r: off $(field "$off" cpu_ns_per_request) ns, on $(field "$on" cpu_ns_per_request) ns, flush $(field "$on" flush_ms) ms, failures $(field "$on" export_failures)" | tee -a "$OUT/rounds"
  echo "$(( $(field "$on" cpu_ns_per_request) - $(field "$off" cpu_ns_per_request) ))" >>"$OUT/diffs"
done
echo "CPU ns per request, on - off: median $(sort -n "$OUT/diffs" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') of $(tr '\n' ' ' <"$OUT/diffs")"
rm -f "$OUT/diffs"
echo "sink: $(cat "$OUT/sink.count") (about 2 x N x rounds spans expected, plus warm-ups)"
