#!/usr/bin/env bash
# One run, one machine, one table: the same fast upstream measured direct, through one worker,
# through the front listener with 3 workers, through nginx (one-hop reference) if installable,
# and through `bench_proxy`, the smallest hyper proxy (the floor for any hyper-based hop).
# Usage: bench/run.sh [SECS]   (default 10 s per measurement). Release build. Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RATE=${RATE:-500}            # fixed request rate for the latency figures
STREAMS=${STREAMS:-"2000 10000"}
OUT=bench/out; mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# 10,000 streams through three loopback hops need ~30,000 ephemeral ports; the default range
# (32768-60999) is smaller, and connects then fail. Widen it when we may (root, writable /proc).
if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
  echo "1024 65000" >/proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
fi
# No per-request access log, like the nginx reference (access_log off). With the default
# RUST_LOG=info the front writes one access line per request; measured cost about 15 % of
# throughput on this machine (run with RUST_LOG=info to see it).
export RUST_LOG=${RUST_LOG:-warn}

cargo build --release -q -p supervisor -p gateway-worker
cargo build --release -q -p gateway --examples
. bench/lib.sh
# nginx's master stops its workers on SIGTERM; a SIGKILL (kill_pids) would orphan them.
cleanup() {
  if [ -s "$OUT/nginx.pid" ]; then kill -TERM "$(cat "$OUT/nginx.pid")" 2>/dev/null || true; fi
  kill_pids
  pkill -f "$OUT/nginx.conf" 2>/dev/null || true
}
trap cleanup EXIT

# --- upstream (2 threads so it is not the bottleneck) ---
BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
write_config "$OUT/gateway.toml" "$PWD/$OUT/run" $'worker_max_inflight = 20000\nmax_queue = 20000'

# --- one worker ---
start_worker "$OUT/gateway.toml" "$OUT/worker.log"

# --- the hyper floor: a bare hyper proxy on one thread, no gateway logic ---
rm -f "$OUT/proxy.addr"; $EX/bench_proxy "$UP" >"$OUT/proxy.addr" & pids+=($!)
until [ -s "$OUT/proxy.addr" ]; do sleep 0.05; done
FLOOR=$(head -1 "$OUT/proxy.addr")

# --- front listener with 3 workers, timing start -> ready line ---
t0=$(date +%s%N)
start_supervisor "$OUT/gateway.toml" "$OUT/sup.out" "$OUT/sup.log" 0.002
READY_MS=$(( (READY_NS - t0) / 1000000 ))
sleep 1
IDLE_RSS=$(rss_kb $SPID)

# --- nginx reference, if installable ---
NGINX=""
if ! command -v nginx >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null 2>&1) || true
fi
if command -v nginx >/dev/null 2>&1; then
  NGINX_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  cat >"$OUT/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $PWD/$OUT/nginx.pid; error_log $PWD/$OUT/nginx.err;
events { worker_connections 4096; }
http { access_log off; upstream up { server $UP; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
NGX
  nginx -c "$PWD/$OUT/nginx.conf" & pids+=($!); sleep 0.5; NGINX=127.0.0.1:$NGINX_PORT
fi

measure() { # name addr
  local url="http://$2/v1/chat/completions" t l
  t=$($EX/bench_load throughput "$url" 64 "$SECS")
  l=$($EX/bench_load latency "$url" "$RATE" "$SECS")
  echo "$1 $(field "$t" rps) $(field "$t" errors) $(field "$l" p50_us) $(field "$l" p99_us) $(field "$l" errors)" >>"$OUT/rows"
}
: >"$OUT/rows"
measure direct "$UP"
measure hyper-floor "$FLOOR"
measure worker "$WADDR"
LOAD_RSS_BEFORE=$(rss_kb $SPID)
( $EX/bench_load throughput "http://$FRONT/v1/chat/completions" 64 "$SECS" >/dev/null ) & LP=$!
sleep $((SECS / 2)); LOAD_RSS=$(rss_kb $SPID); wait $LP
measure front3 "$FRONT"
[ -n "$NGINX" ] && measure nginx "$NGINX"

# --- held SSE streams through the front: memory per stream and time to first byte ---
kill -9 $WPID 2>/dev/null || true
STREAM_ROWS=""
for n in $STREAMS; do
  # Baseline: the same streams direct to the upstream, for the added time to first byte.
  $EX/bench_load streams "http://$UP/v1/chat/completions" "$n" 1 >"$OUT/streams-direct.$n" || true
  dres=$(tail -1 "$OUT/streams-direct.$n")
  base=$(rss_kb $SPID)
  $EX/bench_load streams "http://$FRONT/v1/chat/completions" "$n" 5 >"$OUT/streams.$n" & BP=$!
  until grep -q streams_open "$OUT/streams.$n" 2>/dev/null || ! kill -0 $BP 2>/dev/null; do sleep 0.1; done
  held=$(rss_kb $SPID); wait $BP || true
  res=$(tail -1 "$OUT/streams.$n")
  STREAM_ROWS+="| $n streams held | $(( (held - base) * 1024 / n )) B/stream (supervisor + workers) | TTFB p50 $(field "$res" ttfb_p50_us) µs (direct $(field "$dres" ttfb_p50_us) µs), p99 $(field "$res" ttfb_p99_us) µs (direct $(field "$dres" ttfb_p99_us) µs) | errors $(field "$res" errors) |"$'\n'
done

# --- worker kill recovery: detection and replacement, from the admin status ---
RECOVERY=$(python3 bench/kill_recovery.py "$BIN/supervisor" "$OUT/gateway.toml")

python3 - "$OUT/rows" <<PY
import sys
rows=[l.split() for l in open(sys.argv[1])]
d=next(r for r in rows if r[0]=="direct"); drps=float(d[1]); dp50=int(d[3])
print("| path | req/s @64 | ratio | errors | p50 µs @${RATE}/s | +p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {float(r[1]):.0f} | {float(r[1])/drps:.2f}x | {r[2]} | {r[3]} | {int(r[3])-dp50:+d} | {r[4]} | {r[5]} |")
PY
echo
echo "| figure | value |"
echo "|---|---|"
echo "| start -> ready line (3 workers) | ${READY_MS} ms |"
echo "| RSS supervisor + 3 workers, idle | $((IDLE_RSS / 1024)) MB |"
echo "| RSS supervisor + 3 workers, under load (c=64) | $((LOAD_RSS / 1024)) MB |"
echo "$RECOVERY"
echo
printf '%s' "$STREAM_ROWS"
