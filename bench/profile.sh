#!/usr/bin/env bash
# Where the time of a hop goes: `perf` profiles of the worker (one hop) and of the front path
# (the supervisor and its 3 workers) under `oha -c 64`, as flame graphs (inferno) in bench/out/,
# the top frames by self time, and the syscalls per request of the worker against nginx's
# (`strace -c -f` over a fixed number of requests). Same upstream, same realistic chat body as
# bench/run.sh. Needs perf (Debian `linux-perf`), strace, nginx, oha and inferno; installs the
# last two with cargo when missing (never in CI: this is a tool for people, not a test).
# Usage: bench/profile.sh [SECS]   (default 10 s of load per profile). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
N=${N:-20000}   # requests per syscall count
OUT=bench/out; mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export RUST_LOG=${RUST_LOG:-warn}

for tool in perf strace nginx; do
  command -v $tool >/dev/null || { echo "bench/profile.sh needs $tool (apt-get install linux-perf strace nginx-light)" >&2; exit 1; }
done
for crate in oha inferno; do
  bin=$crate; [ $crate = inferno ] && bin=inferno-flamegraph
  command -v $bin >/dev/null || [ -x "$HOME/.cargo/bin/$bin" ] || cargo install -q --locked $crate
done
export PATH=$HOME/.cargo/bin:$PATH

. bench/lib.sh
release_build
cleanup() {
  [ -s "$OUT/nginx-prof.pid" ] && kill -TERM "$(cat "$OUT/nginx-prof.pid")" 2>/dev/null || true
  kill_pids
}
trap cleanup EXIT

BENCH_THREADS=2 start_upstream "$OUT/prof-upstream.addr" 127.0.0.1:0
write_config "$OUT/prof.toml" "$PWD/$OUT/prof-run" $'worker_max_inflight = 20000\nmax_queue = 20000'
start_worker "$OUT/prof.toml" "$OUT/prof-worker.log"
start_supervisor "$OUT/prof.toml" "$OUT/prof-sup.out" "$OUT/prof-sup.log"
HOP=127.0.0.1:$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
cat >"$OUT/nginx-prof.conf" <<NGX
worker_processes 1; daemon off; pid $PWD/$OUT/nginx-prof.pid; error_log $PWD/$OUT/nginx-prof.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; upstream up { server $UP; keepalive 64; }
  server { listen $HOP; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
NGX
nginx -c "$PWD/$OUT/nginx-prof.conf" & pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/${HOP%:*}/${HOP#*:}) 2>/dev/null && break; sleep 0.05; done

load() { # ADDR [oha args...]
  local a=$1; shift
  oha --no-tui --output-format quiet -m POST -H 'content-type: application/json' -D bench/chat_body.json "$@" \
    "http://$a/v1/chat/completions"
}

# profile NAME ADDR PIDS: perf samples (DWARF call graphs) of PIDS while oha loads ADDR.
profile() {
  perf record -q -F 499 --call-graph dwarf,16384 -o "$OUT/perf-$1.data" -p "$3" -- sleep "$SECS" 2>/dev/null &
  local pp=$!
  load "$2" -z "$((SECS + 1))s" -c 64
  wait $pp || true
  perf script -i "$OUT/perf-$1.data" 2>/dev/null | inferno-collapse-perf >"$OUT/perf-$1.folded"
  inferno-flamegraph --title "$1 under oha -c 64" <"$OUT/perf-$1.folded" >"$OUT/flame-$1.svg"
  echo "## $1: top frames by self time (perf report --no-children)"
  perf report -i "$OUT/perf-$1.data" --no-children --stdio --percent-limit 1.5 --sort dso,symbol -g none 2>/dev/null \
    | grep -E '^ +[0-9]' | head -25
  echo "flame graph: $OUT/flame-$1.svg"
  echo
}

profile worker "$WADDR" "$WPID"
# The front hop alone: the supervisor process (its workers are the hop profiled above).
profile front "$FRONT" "$SPID"

# cpu NAME ADDR PIDS...: CPU time (user + system, from /proc) that PIDS spend per request over N
# requests at -c 64. Unlike throughput this hardly moves when other jobs share the machine.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
cpu() {
  local name=$1 addr=$2; shift 2
  local t0; t0=$(ticks "$@")
  load "$addr" -n "$N" -c 64
  echo "## $name: $(( ($(ticks "$@") - t0) * 1000000 / $(getconf CLK_TCK) / N )) µs of CPU per request (user + system, $N requests)"
}
NGINX_WORKER=$(pgrep -P "$(cat "$OUT/nginx-prof.pid")")
UPSTREAM_PID=${pids[0]}
cpu upstream "$UP" "$UPSTREAM_PID"
cpu worker "$WADDR" "$WPID"
cpu nginx "$HOP" "$NGINX_WORKER"
cpu "front (supervisor only)" "$FRONT" "$SPID"
cpu "front3 (supervisor + 3 workers)" "$FRONT" "$SPID" $(pgrep -P "$SPID")
echo

# syscalls PID ADDR NAME: syscalls per request of PID (and its threads) over N requests.
syscalls() {
  strace -c -f -q -p "$1" -o "$OUT/strace-$3.txt" &
  local sp=$!
  sleep 0.5
  load "$2" -n "$N" -c 64
  kill -INT $sp; wait $sp 2>/dev/null || true
  echo "## $3: syscalls per request over $N requests (strace -c -f)"
  python3 - "$OUT/strace-$3.txt" "$N" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        calls = int(f[3]); rows.append((calls, f[-1]))
total = sum(c for c, _ in rows)
n = int(sys.argv[2])
print(f"total {total / n:.2f} per request; " + ", ".join(f"{name} {c / n:.2f}" for c, name in sorted(rows, reverse=True)[:8]))
PY
  echo
}
syscalls "$WPID" "$WADDR" worker
syscalls "$NGINX_WORKER" "$HOP" nginx
