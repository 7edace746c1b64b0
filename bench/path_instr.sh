#!/usr/bin/env bash
# The cost of one proxied request as a repeatable count: instructions (callgrind's Ir) that the
# worker (one hop to the upstream) and the front (the supervisor process alone, 3 workers
# behind it, not instrumented) spend per POST /v1/chat/completions with bench/chat_body.json
# (866 bytes, not streamed), the body bench/run.sh sends with oha. Wall-clock throughput on
# this shared 2-core host scatters by ±25 %; an instruction count does not depend on the
# neighbours, so it shows what one change buys.
#
# Per process and RUST_LOG level: one run serving N1 requests and one serving N2 (on CONNS
# keep-alive connections, bench/keepalive_post.py), each stopped with SIGTERM so callgrind writes
# its totals; per request = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and shutdown cancel out.
#
# The workers behind the front are not counted: the supervisor starts them from its own image
# through a file descriptor, which valgrind cannot follow; what the front's hand-off saves a
# pooled worker (`x-gateway-peeked`) shows as `gateway::request::peek`'s inclusive count in a
# standalone worker's profile (PROFILE=1).
#
# Usage: bench/path_instr.sh [worker|front ...]   (default: both). Release build.
# Settings from the environment: N1 (100), N2 (600), CONNS (4), LEVELS ("warn info").
# PROFILE=1 keeps the callgrind files (bench/out/path_instr/*.out) for `callgrind_annotate`.
# TELEMETRY=1 turns `[telemetry]` on, exporting to examples/otlp_sink (a live OTLP/HTTP sink);
# requests to the worker then carry a `traceparent` (as the front's do to a pooled worker when
# telemetry is on), those to the front none (as most SDKs send). The count holds the spans' whole
# cost in the process, their export included (the stop flushes what is still queued, so every
# span is encoded and POSTed inside the run that made it). TELEMETRY=ab measures each process
# off, then on, and adds the difference.
# Writes bench/out/path_instr/ and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-100}
N2=${N2:-600}
CONNS=${CONNS:-4}
LEVELS=${LEVELS:-warn info}
OUT=bench/out; D=$OUT/path_instr; mkdir -p "$D"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 1; }
WHAT=("$@"); [ ${#WHAT[@]} -gt 0 ] || WHAT=(worker front)

. bench/lib.sh
release_build
trap kill_pids EXIT

BENCH_THREADS=2 start_upstream "$D/upstream.addr" 127.0.0.1:0
write_config "$D/cfg.toml" "$PWD/$D/run" ""
ARMS=(off); [ -z "${TELEMETRY:-}" ] || ARMS=(on); [ "${TELEMETRY:-}" != ab ] || ARMS=(off on)
cp "$D/cfg.toml" "$D/cfg.off.toml"
if [ -n "${TELEMETRY:-}" ]; then
  rm -f "$D/sink.addr"
  $EX/otlp_sink "$D/sink.count" >"$D/sink.addr" & pids+=($!)
  until [ -s "$D/sink.addr" ]; do kill -0 "${pids[-1]}" 2>/dev/null || { echo "otlp_sink failed" >&2; exit 1; }; sleep 0.05; done
  cp "$D/cfg.toml" "$D/cfg.on.toml"
  printf '[telemetry]\notlp_endpoint = "http://%s"\nservice_name = "bench"\n' "$(cat "$D/sink.addr")" >>"$D/cfg.on.toml"
fi

# wait_for FILE REGEX PID: the first match of REGEX in FILE (a log), within 60 s.
wait_for() {
  local got=""
  for _ in $(seq 600); do
    got=$( (grep -oE "$2" "$1" 2>/dev/null || true) | head -1)
    [ -n "$got" ] && break
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$got" ] || { echo "no '$2' in $1:" >&2; cat "$1" >&2; exit 1; }
  echo "$got"
}

# wait_port HOST:PORT PID: until something accepts on HOST:PORT, within 60 s.
wait_port() {
  for _ in $(seq 600); do
    python3 -c "import socket,sys;socket.create_connection(('${1%:*}',${1##*:}),0.2)" 2>/dev/null && return
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "nothing accepts on $1" >&2; exit 1
}

# ir WHAT LEVEL N ARM: prints "Ir errors" of one instrumented process serving N requests, with
# telemetry off or on (ARM).
ir() {
  local what=$1 level=$2 n=$3 arm=$4 f=$D/$1.$2.$3.$4.out log=$D/$1.$2.$3.$4.log pid addr tp=""
  local cfg=$D/cfg.$arm.toml
  rm -f "$f" "$log" "$log.out"
  [ "$arm.$what" != on.worker ] || tp=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$f" --log-file="$log.vg")
  if [ "$what" = worker ]; then
    # A free port chosen here: at RUST_LOG=warn the worker does not log the one it bound.
    addr=127.0.0.1:$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    RUST_LOG=$level "${vg[@]}" $BIN/gateway-worker --config "$cfg" --listen "$addr" 2>"$log" &
    pid=$!; pids+=($pid)
    wait_port "$addr" $pid
  else
    RUST_LOG=$level "${vg[@]}" $BIN/supervisor start -c "$cfg" >"$log.out" 2>"$log" &
    pid=$!; pids+=($pid)
    wait_for "$log.out" '"ready"' $pid >/dev/null
    addr=$(python3 -c "import json;print(json.loads(open('$log.out').readline())['listen'])")
  fi
  local errors
  errors=$(TRACEPARENT=$tp python3 bench/keepalive_post.py "http://$addr/v1/chat/completions" bench/chat_body.json "$CONNS" "$n")
  kill -TERM $pid; wait $pid || true
  local total
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  [ -n "$total" ] || { echo "no callgrind totals in $f" >&2; exit 1; }
  [ -n "${PROFILE:-}" ] || rm -f "$f"
  echo "$total $errors"
}

echo "| process | RUST_LOG | telemetry | Ir per request | errors |"
echo "|---|---|---|---|---|"
for w in "${WHAT[@]}"; do
  for level in $LEVELS; do
    per=()
    for arm in "${ARMS[@]}"; do
      read -r a ea <<<"$(ir "$w" "$level" "$N1" "$arm")"
      read -r b eb <<<"$(ir "$w" "$level" "$N2" "$arm")"
      per+=($(( (b - a) / (N2 - N1) )))
      echo "| $w | $level | $arm | ${per[-1]} | $((ea + eb)) |"
    done
    [ ${#per[@]} -lt 2 ] || echo "| $w | $level | on − off | $(( per[1] - per[0] )) | |"
  done
done
