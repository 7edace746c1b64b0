#!/usr/bin/env bash
# The usage ledger's cost and speed, in one run: front-listener throughput (3 workers) with
# `usage.ledger = "off"` and with the ledger on, alternated off/on/off/on so host noise hits both,
# then `supervisor usage` timed on a ledger of 1,000,000 rows (supervisor/examples/ledger_fill.rs).
# Usage: bench/ledger.sh [SECS]   (default 8 s per measurement). Release build. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROWS=${ROWS:-1000000}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release -q -p supervisor -p gateway-worker
cargo build --release -q -p gateway --examples
cargo build --release -q -p supervisor --example ledger_fill
. bench/lib.sh
trap kill_pids EXIT
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
rm -f "$OUT"/ledger-on.db*
echo "mode req/s errors requests_sent rows_written rows_dropped"
for mode in off on off on; do
  if [ "$mode" = on ]; then LEDGER=$PWD/$OUT/ledger-on.db; else LEDGER=off; fi
  LEDGER=$LEDGER write_config "$OUT/ledger-$mode.toml" "$PWD/$OUT/run-ledger" $'worker_max_inflight = 20000\nmax_queue = 20000'
  start_supervisor "$OUT/ledger-$mode.toml" "$OUT/ledger-sup.out" "$OUT/ledger-sup.log"
  t=$($EX/bench_load throughput "http://$FRONT/v1/chat/completions" 64 "$SECS")
  sleep 1   # the last batch (written every 500 ms)
  m=$(curl -s "http://$FRONT/metrics" || true)
  written=$(echo "$m" | awk '/^gateway_usage_records_total\{outcome="written"\}/{print $2}')
  dropped=$(echo "$m" | awk '/^gateway_usage_records_total\{outcome="dropped"\}/{print $2}')
  echo "$mode $(field "$t" rps) $(field "$t" errors) $(field "$t" requests) ${written:-0} ${dropped:-0}"
  kill -TERM "$SPID"; wait "$SPID" || true
done

rm -f "$OUT"/ledger-1m.db*
$EX/ledger_fill "$PWD/$OUT/ledger-1m.db" "$ROWS"
printf '[usage]\nledger = "%s"\n' "$PWD/$OUT/ledger-1m.db" >"$OUT/ledger-1m.toml"
for by in "" "--by model" "--by client --by day" "--by provider --by model"; do
  s=$(date +%s%N)
  # shellcheck disable=SC2086
  $BIN/supervisor usage -c "$OUT/ledger-1m.toml" $by --json >/dev/null
  e=$(date +%s%N)
  echo "supervisor usage ${by:-(total)} on $ROWS rows: $(( (e - s) / 1000000 )) ms"
done
s=$(date +%s%N)
$BIN/supervisor usage -c "$OUT/ledger-1m.toml" --since 7d --by model --json >/dev/null
e=$(date +%s%N)
echo "supervisor usage --since 7d --by model on $ROWS rows: $(( (e - s) / 1000000 )) ms"
