#!/usr/bin/env bash
# Memory per held stream and time to first byte, alone (the held-stream phase of bench/run.sh):
# for each count in HELD, a fresh supervisor with 3 workers (so memory freed by an earlier count
# cannot flatter a later one), the streams opened direct to bench_upstream first, then the same
# through the front; `held_row` (bench/lib.sh) prints one row each. bench_load opens at most
# BENCH_OPENING (default 100) streams at once, the same for both runs, so no accept queue
# overflows (see bench_load's `opening`).
# Usage: bench/streams.sh   HELD (default "2000 10000"), HOLD seconds held (default 5),
# ROUNDS (default 1). Release build. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
HELD=${HELD:-"2000 10000"}
HOLD=${HOLD:-5}
ROUNDS=${ROUNDS:-1}
OUT=bench/out; mkdir -p "$OUT"
. bench/lib.sh
export RUST_LOG=${RUST_LOG:-warn}
many_streams_setup
trap kill_pids EXIT
BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
write_config "$OUT/gateway.toml" "$PWD/$OUT/run" $'worker_max_inflight = 20000\nmax_queue = 20000'
held_header
for r in $(seq "$ROUNDS"); do
  for n in $HELD; do
    start_supervisor "$OUT/gateway.toml" "$OUT/sup.out" "$OUT/sup.log"
    sleep 1
    held_row "$n" "$HOLD"
    kill -TERM $SPID; wait $SPID 2>/dev/null || true
  done
done
