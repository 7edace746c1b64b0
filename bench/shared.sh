#!/usr/bin/env bash
# The cost of `[shared] backend = "redis"` (Redis on loopback), in one run: front-listener
# throughput (3 workers, 64 connections) in five modes, alternated (two rounds) so host noise
# hits all:
#   off         no [shared], no client limit
#   off-client  no [shared], the requests from client `desk` with rpm and tpm (local counters)
#   on-nolimit  [shared] on, no shared limit (no token, no provider max_concurrency)
#   on-client   [shared] on, client `desk` with rpm and tpm (limits high enough never to refuse):
#               one admission script per request, one settlement per batch of records
#   on-limit    [shared] on, provider max_concurrency (a lease per request)
# plus Redis round trips per request from `INFO commandstats` (script calls: the gateway sends
# nothing else but PING), taken before/after each measurement, minus the host's background calls
# (the breaker sync's tick, 4 a second; lease renewals), measured on the idle host for 2 s just
# before the load; and the commands those scripts ran inside Redis, per request.
# Goal: <= 2 per request with a shared limit, 0 with none.
# Usage: bench/shared.sh [SECS]   (default 8 s per measurement). Release build. Needs
# redis-server and redis-cli. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
OUT=bench/out; mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-warn}
. bench/lib.sh
release_build
trap kill_pids EXIT

RPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
RDIR=$(mktemp -d)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RDIR" >/dev/null & pids+=($!)
until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.05; done
export GATEWAY_REDIS_URL="redis://127.0.0.1:$RPORT/0"
export BENCH_SERVER_TOKEN=bench-server-token BENCH_DESK_TOKEN=bench-desk-token
# Round trips: the commands clients sent, i.e. the script calls (the gateway sends nothing else
# but PING, the circuit's once-a-second probe per process). `INFO commandstats` also counts every
# command a script runs inside Redis (cmdstat_hget, ...): those are not round trips, and
# `redis_inner` reports them apart.
redis_calls() {
  redis-cli -p "$RPORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|script|fcall|fcall_ro):/ {n += $3} END {print n + 0}'
}
redis_inner() {
  redis-cli -p "$RPORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ && $1 !~ /^cmdstat_(ping|eval|evalsha|eval_ro|evalsha_ro|script|fcall|fcall_ro|info|config)$/ {n += $3} END {print n + 0}'
}

BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
echo "mode req/s errors requests round_trips background_rt/s rt/request inner_cmds/request"
for mode in off off-client on-nolimit on-client on-limit off off-client on-nolimit on-client on-limit; do
  cfg="$OUT/shared-$mode.toml"
  LEDGER=off write_config "$cfg" "$PWD/$OUT/run-shared" $'worker_max_inflight = 20000\nmax_queue = 20000'
  token=""
  case $mode in
    *-client)
      sed -i 's/^auth_token_env = ""$/auth_token_env = "BENCH_SERVER_TOKEN"/' "$cfg"
      printf '[[clients]]\nname = "desk"\ntoken_env = "BENCH_DESK_TOKEN"\nrpm = 1000000000\ntpm = 1000000000000\n' >>"$cfg"
      token=$BENCH_DESK_TOKEN ;;
    on-limit)
      sed -i 's/^models = \["bench", "bench-slow"\]$/&\nmax_concurrency = 100000/' "$cfg" ;;
  esac
  case $mode in
    on-*) printf '[shared]\nbackend = "redis"\nkey_prefix = "bench:"\n' >>"$cfg" ;;
  esac
  start_supervisor "$cfg" "$OUT/shared-sup.out" "$OUT/shared-sup.log"
  idle0=$(redis_calls); sleep 2; idle=$(( $(redis_calls) - idle0 ))
  before=$(redis_calls); inner0=$(redis_inner)
  t0=$(date +%s%N)
  t=$(BENCH_TOKEN=$token $EX/bench_load throughput "http://$FRONT/v1/chat/completions" 64 "$SECS")
  sleep 0.5   # batched releases and settlements land
  calls=$(( $(redis_calls) - before )); inner=$(( $(redis_inner) - inner0 ))
  secs=$(python3 -c "print(($(date +%s%N) - $t0) / 1e9)")
  reqs=$(field "$t" requests)
  echo "$mode $(field "$t" rps) $(field "$t" errors) $reqs $calls $(python3 -c "print($idle / 2)") $(python3 -c "print(round(max($calls - $idle / 2 * $secs, 0) / max($reqs, 1), 3))") $(python3 -c "print(round($inner / max($reqs, 1), 2))")"
  kill -TERM "$SPID"; wait "$SPID" || true
done
rm -rf "$RDIR"
