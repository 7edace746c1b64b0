#!/usr/bin/env bash
# One run, one machine: two upstreams (ours, bench_upstream, and a canned nginx) each measured
# direct, through nginx (the one-hop reference), through `bench_proxy` (the smallest hyper proxy,
# the floor for any hyper-based hop), through one worker, and through the front listener with 3
# workers. The load generator is `oha` (installed with cargo when missing, never in CI); the
# project's own `bench_load` runs once per path in round 1 for comparison. The machine is shared
# and noisy, so the paths run in ROUNDS interleaved rounds (the order rotates) and the tables show
# medians. Every request is the same realistic 866-byte chat body (bench/chat_body.json). Two
# more front rows: the usage ledger off (front3-no-ledger; front3 has it on, as users run it),
# and the conversation as an Anthropic Messages request translated to the upstream's Chat
# (front3-translated, bench/messages_body.json).
# Usage: bench/run.sh [SECS]   (default 10 s per measurement). ROUNDS (default 5). Release build.
# Writes bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-500}            # fixed request rate for the latency figures
STREAMS=${STREAMS:-"2000 10000"}
OUT=bench/out; mkdir -p "$OUT"
. bench/lib.sh
# No per-request access log, like the nginx reference (access_log off). With the default
# RUST_LOG=info the front writes one access line per request; measured cost about 15 % of
# throughput on this machine (run with RUST_LOG=info to see it).
export RUST_LOG=${RUST_LOG:-warn}
many_streams_setup
# nginx's master stops its workers on SIGTERM; a SIGKILL (kill_pids) would orphan them.
cleanup() {
  for f in "$OUT"/nginx-*.pid; do [ -s "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  kill_pids
  pkill -f "$OUT/nginx-" 2>/dev/null || true
}
trap cleanup EXIT

# --- upstreams: ours (bench_upstream, 2 threads) and a canned nginx (2 workers) ---
BENCH_THREADS=2 start_upstream "$OUT/upstream.addr" 127.0.0.1:0
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
NGINX=""
if ! command -v nginx >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null 2>&1) || true
fi
if command -v nginx >/dev/null 2>&1; then NGINX=$(command -v nginx); fi
# nginx_start NAME WORKERS HTTP_BLOCK: one nginx with its own conf, pid and error log in bench/out.
nginx_start() {
  cat >"$OUT/nginx-$1.conf" <<NGX
worker_processes $2; daemon off; pid $PWD/$OUT/nginx-$1.pid; error_log $PWD/$OUT/nginx-$1.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s; $3 }
NGX
  "$NGINX" -c "$PWD/$OUT/nginx-$1.conf" & pids+=($!)
}
UPN=""
if [ -n "$NGINX" ]; then
  # The canned upstream answers every request with bench_upstream's reply, byte for byte.
  REPLY=$(grep -o 'const REPLY: &str = r#"[^#]*"#' examples/bench_upstream.rs | sed 's/^const REPLY: &str = r#"//; s/"#$//')
  P=$(free_port); UPN=127.0.0.1:$P
  nginx_start upstream 2 "server { listen $UPN reuseport; location / { default_type application/json; return 200 '$REPLY'; } }"
fi
write_config "$OUT/gateway.toml" "$PWD/$OUT/run" $'worker_max_inflight = 20000\nmax_queue = 20000'
if [ -n "$UPN" ]; then cat >>"$OUT/gateway.toml" <<TOML
[[providers]]
name = "ngx"
kind = "openai"
base_url = "http://$UPN/v1"
models = ["bench-ngx"]
TOML
fi

# --- one worker ---
start_worker "$OUT/gateway.toml" "$OUT/worker.log"

# --- the hyper floor: a bare hyper proxy on one thread, no gateway logic, one per upstream ---
# Not in a command substitution: the pid must reach this shell's `pids`, or kill_pids misses it.
floor() { rm -f "$OUT/proxy-$1.addr"; $EX/bench_proxy "$2" >"$OUT/proxy-$1.addr" & pids+=($!)
  until [ -s "$OUT/proxy-$1.addr" ]; do sleep 0.05; done; }
floor ours "$UP"; FLOOR=$(head -1 "$OUT/proxy-ours.addr")
if [ -n "$UPN" ]; then floor nginx "$UPN"; FLOORN=$(head -1 "$OUT/proxy-nginx.addr"); fi

# --- front listener with 3 workers, timing start -> ready line ---
t0=$(date +%s%N)
start_supervisor "$OUT/gateway.toml" "$OUT/sup.out" "$OUT/sup.log" 0.002
READY_MS=$(( (READY_NS - t0) / 1000000 ))
sleep 1
IDLE_RSS=$(rss_kb $SPID)

# --- the same front with the usage ledger off: what usage accounting's ledger costs ---
LEDGER=off write_config "$OUT/gateway-noledger.toml" "$PWD/$OUT/run-noledger" $'worker_max_inflight = 20000\nmax_queue = 20000'
MAIN_SPID=$SPID; MAIN_FRONT=$FRONT
start_supervisor "$OUT/gateway-noledger.toml" "$OUT/sup-noledger.out" "$OUT/sup-noledger.log" 0.002
FRONT_NOLEDGER=$FRONT; SPID=$MAIN_SPID; FRONT=$MAIN_FRONT

# --- nginx as the one-hop reference (1 worker, like one gateway worker), one port per upstream ---
if [ -n "$NGINX" ]; then
  HOP=127.0.0.1:$(free_port); HOPN=127.0.0.1:$(free_port)
  nginx_start hop 1 "upstream up { server $UP; keepalive 64; } upstream upn { server $UPN; keepalive 64; }
  server { listen $HOP; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }
  server { listen $HOPN; location / { proxy_pass http://upn; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
fi
for a in $UP $UPN $HOP $HOPN; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/${a%:*}/${a#*:}) 2>/dev/null && break; sleep 0.05; done
done

# --- the load generator: oha (the reference), installed when missing (not in CI) ---
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
if [ ! -x "$OHA" ] && [ -z "${CI:-}" ]; then cargo install -q --locked oha; fi
[ -x "$OHA" ] || { echo "oha is missing: cargo install --locked oha" >&2; exit 1; }
sed 's/"model":"bench"/"model":"bench-ngx"/' bench/chat_body.json >"$OUT/chat_body_ngx.json"

# oha_row ROUND UPSTREAM PATH ADDR BODY [URL_PATH]: throughput with -c 64, then latency at RATE
# req/s on 8 connections with coordinated-omission correction; appends one line to $OUT/rows with
# the generator's own CPU (user+sys seconds per second of load) so a generator-bound row shows.
oha_row() {
  local url="http://$4${6:-/v1/chat/completions}" t l
  /usr/bin/time -f '%U %S' -o "$OUT/oha.time" "$OHA" --no-tui --output-format json -z "${SECS}s" -c 64 \
    -m POST -H 'content-type: application/json' -D "$5" "$url" >"$OUT/oha-t.json"
  "$OHA" --no-tui --output-format json -z "${SECS}s" -c 8 -q "$RATE" --latency-correction \
    -m POST -H 'content-type: application/json' -D "$5" "$url" >"$OUT/oha-l.json"
  python3 - "$@" "$OUT" "$SECS" >>"$OUT/rows" <<'PY'
import json, sys
rnd, up, path, _addr, _body = sys.argv[1:6]
out, secs = sys.argv[-2:]
def load(f):
    d = json.load(open(f"{out}/{f}"))
    ok = d["statusCodeDistribution"].get("200", 0)
    bad = sum(v for k, v in d["statusCodeDistribution"].items() if k != "200")
    bad += sum(v for k, v in d["errorDistribution"].items() if "deadline" not in k)
    return d, ok, bad
t, tok, tbad = load("oha-t.json")
l, _, lbad = load("oha-l.json")
u, s = map(float, open(f"{out}/oha.time").read().split()[-2:])
p = l["latencyPercentiles"]
print(rnd, up, path, f'{tok / float(secs):.0f}', tbad, round(p["p50"] * 1e6), round(p["p99"] * 1e6), lbad,
      f"{(u + s) / float(secs):.2f}")
PY
}
# ours_row ROUND PATH ADDR: the project's own generator (bench_load, small body), for comparison.
ours_row() {
  local url="http://$3/v1/chat/completions" t l
  t=$($EX/bench_load throughput "$url" 64 "$SECS")
  l=$($EX/bench_load latency "$url" "$RATE" "$SECS")
  echo "$1 bench_load $2 $(field "$t" rps) $(field "$t" errors) $(field "$l" p50_us) $(field "$l" p99_us) $(field "$l" errors) -" >>"$OUT/rows"
}

: >"$OUT/rows"
# front3 runs with the usage ledger on (as users run it); front3-no-ledger is the same with
# `ledger = "off"`; front3-translated sends the same conversation as an Anthropic Messages
# request (bench/messages_body.json), which the worker translates to the openai upstream's Chat.
PATHS=("direct $UP $UPN" "nginx $HOP $HOPN" "hyper-floor $FLOOR ${FLOORN:-}" "worker $WADDR $WADDR" "front3 $FRONT $FRONT"
  "front3-no-ledger $FRONT_NOLEDGER" "front3-translated $FRONT")
for r in $(seq "$ROUNDS"); do
  # Interleaved: each round rotates the order of the paths so no path always runs first or last.
  n=${#PATHS[@]}
  for i in $(seq 0 $((n - 1))); do
    set -- ${PATHS[$(( (i + r) % n ))]}
    if [ "$1" = front3-translated ]; then
      oha_row "$r" ours "$1" "$2" bench/messages_body.json /v1/messages
      continue
    fi
    [ -n "${2:-}" ] && oha_row "$r" ours "$1" "$2" bench/chat_body.json
    [ -n "${3:-}" ] && [ -n "$UPN" ] && oha_row "$r" nginx-up "$1" "$3" "$OUT/chat_body_ngx.json"
    case "$r $1" in 1\ nginx | 1\ front3-*) ;; 1\ *) ours_row "$r" "$1" "$2" ;; esac
  done
  echo "round $r of $ROUNDS done" >&2
done
LOAD_RSS_BEFORE=$(rss_kb $SPID)
( "$OHA" --no-tui --output-format quiet -z "${SECS}s" -c 64 -m POST -H 'content-type: application/json' \
    -D bench/chat_body.json "http://$FRONT/v1/chat/completions" >/dev/null ) & LP=$!
sleep $((SECS / 2)); LOAD_RSS=$(rss_kb $SPID); wait $LP

# --- held SSE streams through the front: memory per stream and time to first byte ---
# (bench/lib.sh's held_row; bench/streams.sh runs this phase alone, a fresh supervisor per count)
kill -9 $WPID 2>/dev/null || true
STREAM_ROWS="$(held_header)"$'\n'
for n in $STREAMS; do STREAM_ROWS+="$(held_row "$n" 5)"$'\n'; done

# --- worker kill recovery: detection and replacement, from the admin status ---
RECOVERY=$(python3 bench/kill_recovery.py "$BIN/supervisor" "$OUT/gateway.toml")

python3 - "$OUT/rows" "$RATE" <<'PY'
import statistics as st, sys
rate = sys.argv[2]
rows = [l.split() for l in open(sys.argv[1])]
med = lambda xs: st.median(xs) if xs else float("nan")
for gen in ["ours", "nginx-up", "bench_load"]:
    rs = [r for r in rows if r[1] == gen]
    if not rs:
        continue
    title = {"ours": "oha, upstream bench_upstream", "nginx-up": "oha, upstream canned nginx",
             "bench_load": "bench_load (round 1 only), upstream bench_upstream"}[gen]
    print(f"\n{title}: medians of {len({r[0] for r in rs})} round(s); ratio = median of the per-round ratios to direct")
    print(f"| path | req/s @64 | ratio | errors | p50 µs @{rate}/s | +p50 µs | p99 µs | errors | generator CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    direct = {r[0]: r for r in rs if r[2] == "direct"}
    order = ["direct", "nginx", "hyper-floor", "worker", "front3", "front3-no-ledger", "front3-translated"]
    for path in sorted(dict.fromkeys(r[2] for r in rs), key=order.index):
        pr = [r for r in rs if r[2] == path]
        ratio = [float(r[3]) / float(direct[r[0]][3]) for r in pr if r[0] in direct]
        dp50 = [int(r[5]) - int(direct[r[0]][5]) for r in pr if r[0] in direct]
        print(f"| {path} | {med([float(r[3]) for r in pr]):.0f} | {med(ratio):.2f}x "
              f"({min(ratio):.2f}-{max(ratio):.2f}) | {sum(int(r[4]) for r in pr)} | {med([int(r[5]) for r in pr]):.0f} "
              f"| {med(dp50):+.0f} | {med([int(r[6]) for r in pr]):.0f} | {sum(int(r[7]) for r in pr)} | {pr[0][8]} |")
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
