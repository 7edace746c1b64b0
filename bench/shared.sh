#!/usr/bin/env bash
# The cost of `[shared] backend = "redis"` (Redis on loopback), in one run: front-listener
# throughput (3 workers) with `[shared]` off, on with no shared limit, and on with provider
# max_concurrency (a limit high enough never to refuse, so every request takes a lease), alternated
# so host noise hits all; plus Redis round trips per request from `INFO commandstats` (every
# command but the background PINGs), before/after each measurement.
# Goal: <= 2 per request with a shared limit (reserve on the request path, release batched in the
# background), 0 with none.
# Usage: bench/shared.sh [SECS]   (default 8 s per measurement). Release build. Needs
# redis-server and redis-cli. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release -q -p supervisor -p gateway-worker
cargo build --release -q -p gateway --examples
. bench/lib.sh
trap kill_pids EXIT

RPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
RDIR=$(mktemp -d)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RDIR" >/dev/null & pids+=($!)
until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.05; done
export GATEWAY_REDIS_URL="redis://127.0.0.1:$RPORT/0"
# Every command's calls except PING (the circuit's once-a-second probe per process).
redis_calls() {
  redis-cli -p "$RPORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_ping" {n += $3} END {print n + 0}'
}

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
echo "mode req/s errors requests redis_calls calls/request"
for mode in off on-nolimit on-limit off on-nolimit on-limit; do
  write_config "$OUT/shared-$mode.toml" "$PWD/$OUT/run-shared" $'worker_max_inflight = 20000\nmax_queue = 20000'
  cfg="$OUT/shared-$mode.toml"
  if [ "$mode" = on-limit ]; then
    sed -i 's/^models = \["bench", "bench-slow"\]$/&\nmax_concurrency = 100000/' "$cfg"
  fi
  if [ "$mode" != off ]; then
    printf '[shared]\nbackend = "redis"\nkey_prefix = "bench:"\n' >>"$cfg"
  fi
  start_supervisor "$cfg" "$OUT/shared-sup.out" "$OUT/shared-sup.log"
  before=$(redis_calls)
  t=$($EX/bench_load throughput "http://$FRONT/v1/chat/completions" 64 "$SECS")
  sleep 0.5   # batched releases land
  calls=$(( $(redis_calls) - before ))
  reqs=$(field "$t" requests)
  echo "$mode $(field "$t" rps) $(field "$t" errors) $reqs $calls $(python3 -c "print(round($calls/max($reqs,1),3))")"
  kill -TERM "$SPID"; wait "$SPID" || true
done
rm -rf "$RDIR"
