#!/usr/bin/env bash
# The usage ledger's cost and speed, in one run: front-listener throughput (3 workers) with
# `usage.ledger = "off"` and with the ledger on, in ROUNDS interleaved rounds (off, on, off, on, ...)
# so host noise hits both, with the median of each; then `supervisor usage` timed (median of 3) on a
# ledger of 1,000,000 rows (supervisor/examples/ledger_fill.rs).
# Usage: [ROUNDS=5] bench/ledger.sh [SECS]   (default 8 s per measurement). Release build. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROWS=${ROWS:-1000000}
ROUNDS=${ROUNDS:-5}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release -q -p supervisor -p gateway-worker
cargo build --release -q -p gateway --examples
cargo build --release -q -p supervisor --example ledger_fill
. bench/lib.sh
trap kill_pids EXIT
median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 1))" "$@"; }

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
rm -f "$OUT"/ledger-on.db*
echo "round mode req/s errors requests_sent rows_written rows_dropped"
rps_off=(); rps_on=(); modes=()
for _ in $(seq "$ROUNDS"); do modes+=(off on); done
round=0
for mode in "${modes[@]}"; do
  [ "$mode" = off ] && round=$((round + 1))
  if [ "$mode" = on ]; then LEDGER=$PWD/$OUT/ledger-on.db; else LEDGER=off; fi
  LEDGER=$LEDGER write_config "$OUT/ledger-$mode.toml" "$PWD/$OUT/run-ledger" $'worker_max_inflight = 20000\nmax_queue = 20000'
  start_supervisor "$OUT/ledger-$mode.toml" "$OUT/ledger-sup.out" "$OUT/ledger-sup.log"
  t=$($EX/bench_load throughput "http://$FRONT/v1/chat/completions" 64 "$SECS")
  sleep 1   # the last batch (written every 200 ms)
  m=$(curl -s "http://$FRONT/metrics" || true)
  written=$(echo "$m" | awk '/^gateway_usage_records_total\{outcome="written"\}/{print $2}')
  dropped=$(echo "$m" | awk '/^gateway_usage_records_total\{outcome="dropped"\}/{print $2}')
  rps=$(field "$t" rps)
  if [ "$mode" = on ]; then rps_on+=("$rps"); else rps_off+=("$rps"); fi
  echo "$round $mode $rps $(field "$t" errors) $(field "$t" requests) ${written:-0} ${dropped:-0}"
  kill -TERM "$SPID"; wait "$SPID" || true
done
m_off=$(median "${rps_off[@]}"); m_on=$(median "${rps_on[@]}")
echo "median req/s over $ROUNDS rounds: off $m_off, on $m_on ($(python3 -c "print(f'{($m_on - $m_off) / $m_off * 100:+.1f}')" ) %)"

rm -f "$OUT"/ledger-1m.db*
$EX/ledger_fill "$PWD/$OUT/ledger-1m.db" "$ROWS"
printf '[usage]\nledger = "%s"\n' "$PWD/$OUT/ledger-1m.db" >"$OUT/ledger-1m.toml"
# Median of 3 runs of each query (the first run also warms the page cache).
time_usage() {
  local ms=()
  for _ in 1 2 3; do
    s=$(date +%s%N)
    # shellcheck disable=SC2068
    $BIN/supervisor usage -c "$OUT/ledger-1m.toml" $@ --json >/dev/null
    e=$(date +%s%N)
    ms+=($(( (e - s) / 1000000 )))
  done
  echo "supervisor usage ${*:-(total)} on $ROWS rows: median $(median "${ms[@]}") ms (runs: ${ms[*]})"
}
time_usage
time_usage --by model
time_usage --by client --by day
time_usage --by provider --by model
time_usage --since 7d --by model
