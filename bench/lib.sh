# Shared by bench/run.sh, bench/translate.sh and bench/soak.sh, sourced from the repository root after OUT is set:
# the release binaries, the started-process list, and the common setup (the mock upstream, a
# config pointing at it, the supervisor in front).

BIN=target/release; EX=$BIN/examples

# release_build: the release binaries and examples every bench runs.
release_build() {
  cargo build --release -q -p supervisor -p gateway-worker
  cargo build --release -q -p gateway --examples
}
pids=()   # every background process started; kill_pids ends them

kill_pids() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }

# start_upstream ADDR_FILE [ARGS...]: starts $EX/bench_upstream ARGS (BENCH_* settings come from
# the environment: `BENCH_THREADS=2 start_upstream ...`), waits for its address, sets UP.
start_upstream() {
  local file=$1; shift
  # A file left by an earlier run would satisfy the wait below before the new process has
  # truncated it.
  rm -f "$file"
  $EX/bench_upstream "$@" >"$file" & pids+=($!)
  until [ -s "$file" ]; do kill -0 "${pids[-1]}" 2>/dev/null || { echo "bench_upstream failed to start" >&2; exit 1; }; sleep 0.05; done
  UP=$(head -1 "$file")
}

# write_config FILE RUNTIME_DIR [POOL_KEYS]: 3 workers on free ports, the front on a free port, no
# auth, no health probes, and one openai provider `up` at $UP serving `bench` and `bench-slow`.
# The usage ledger is $LEDGER ("off" or a path), else RUNTIME_DIR.usage.db: never the real home.
write_config() {
  cat >"$1" <<TOML
[server]
listen = "127.0.0.1:0"
auth_token_env = ""
[pool]
workers = 3
base_port = 0
${3:+$3
}runtime_dir = "$2"
[health]
probe_interval = "0s"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://$UP/v1"
models = ["bench", "bench-slow"]
[usage]
ledger = "${LEDGER:-$2.usage.db}"
TOML
}

# start_supervisor CONFIG STDOUT STDERR [POLL_SECS]: starts `supervisor start`, polls STDOUT for
# the ready line every POLL_SECS (default 0.05), then sets SPID, READY_NS (date +%s%N when the
# ready line was seen) and FRONT (the front listener's address).
start_supervisor() {
  rm -f "$2"
  $BIN/supervisor start -c "$1" >"$2" 2>"$3" & SPID=$!; pids+=($SPID)
  until grep -q '"ready"' "$2" 2>/dev/null; do
    kill -0 $SPID 2>/dev/null || { echo "supervisor exited before its ready line:" >&2; cat "$3" >&2; exit 1; }
    sleep "${4:-0.05}"
  done
  READY_NS=$(date +%s%N)
  FRONT=$(python3 -c "import json;print(json.loads(open('$2').readline())['listen'])")
}

# start_worker CONFIG LOG: starts a standalone `gateway-worker` on a free port (RUST_LOG=info for
# its one start-up line, "listening on ADDR"; it logs nothing per request), waits for that line,
# then sets WPID and WADDR.
start_worker() {
  RUST_LOG=info $BIN/gateway-worker --config "$1" --listen 127.0.0.1:0 2>"$2" & WPID=$!; pids+=($WPID)
  WADDR=""
  for _ in $(seq 100); do WADDR=$( (grep -oE 'listening on [0-9.:]+' "$2" 2>/dev/null || true) | head -1 | awk '{print $3}'); [ -n "$WADDR" ] && break; sleep 0.05; done
  [ -n "$WADDR" ] || { echo "worker did not report its address"; cat "$2"; exit 1; }
}

rss_kb() { # total RSS of the given pids and their descendants
  local total=0 p
  for p in "$@"; do
    for q in $p $(pgrep -P "$p" 2>/dev/null); do
      total=$((total + $(awk '/VmRSS/{print $2}' /proc/$q/status 2>/dev/null || echo 0)))
    done
  done
  echo $total
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# translate_providers: the [[providers]] that bench/translate.sh and bench/translate_instr.sh add
# to write_config's `up` (openai, every OpenAI API natively, bench*), on the same upstream $UP:
# `ant` (anthropic: Messages) mbench*, `chatonly` (Chat only) cbench*, `resp` (Responses only)
# rbench*; the client's path and model pick the translation.
translate_providers() {
  cat <<TOML
[[providers]]
name = "ant"
kind = "anthropic"
base_url = "http://$UP"
models = ["mbench", "mbench-slow"]
[[providers]]
name = "chatonly"
kind = "openai"
base_url = "http://$UP/v1"
apis = ["chat"]
models = ["cbench", "cbench-slow"]
[[providers]]
name = "resp"
kind = "openai"
base_url = "http://$UP/v1"
apis = ["responses"]
models = ["rbench", "rbench-slow"]
TOML
}

# pick_cases [NAME...]: sets CASES to the translation cases ("name client-path model") named,
# or all nine when none is.
pick_cases() {
  local all=("chat>chat /v1/chat/completions bench"
    "messages>messages /v1/messages mbench"
    "responses>responses /v1/responses bench"
    "chat>messages /v1/chat/completions mbench"
    "chat>responses /v1/chat/completions rbench"
    "messages>chat /v1/messages bench"
    "messages>responses /v1/messages rbench"
    "responses>chat /v1/responses cbench"
    "responses>messages /v1/responses mbench") c
  CASES=()
  for c in "${all[@]}"; do
    if [ $# -eq 0 ] || [[ " $* " == *" ${c%% *} "* ]]; then CASES+=("$c"); fi
  done
}

# many_streams_setup: what a run holding 10,000 streams needs (file descriptors, ephemeral ports),
# then the release binaries and examples built.
many_streams_setup() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  # 10,000 streams through the front take ~20,000 ephemeral ports (client->front,
  # worker->upstream) besides the direct run's; the default range (32768-60999) is too small
  # once TIME_WAITs pile up. Widen it when we may (root, writable /proc).
  if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
    echo "1024 65000" >/proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  fi
  cargo build --release -q -p supervisor -p gateway-worker
  cargo build --release -q -p gateway --examples
}

# kernel_kb: kernel memory that grows with open sockets (slab + TCP buffer pages), machine-wide,
# so other work on the host moves it too: a rough baseline, not a figure of ours.
kernel_kb() {
  local slab tcp
  slab=$(awk '/^Slab:/{print $2}' /proc/meminfo)
  tcp=$(awk '/^TCP:/{for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  echo $((slab + tcp * 4))
}

# held_row N HOLD: N SSE streams held for HOLD s through the front ($FRONT, supervisor $SPID and
# its workers) to the upstream's slow model, after the same N direct to $UP (the client's and the
# kernel's own cost, and the reference time to first byte). bench_load opens at most
# $BENCH_OPENING (default 100) at once in both runs. Prints one markdown row: bytes per stream of
# the supervisor alone, of its workers together, of both; of the client and the kernel (direct
# run, both ends); TTFB p50/p99 through the front and direct; how long the opening took; errors.
held_row() {
  local n=$1 hold=$2 f=$OUT/streams-direct.$n k0 kd cl sup0 all0 sup all res dres
  k0=$(kernel_kb)
  $EX/bench_load streams "http://$UP/v1/chat/completions" "$n" 1 >"$f" & local bp=$!
  until grep -q streams_open "$f" 2>/dev/null || ! kill -0 $bp 2>/dev/null; do sleep 0.1; done
  cl=$(rss_kb $bp); kd=$(( $(kernel_kb) - k0 )); wait $bp || true
  dres=$(tail -1 "$f")
  sup0=$(awk '/VmRSS/{print $2}' /proc/$SPID/status); all0=$(rss_kb $SPID)
  f=$OUT/streams.$n
  $EX/bench_load streams "http://$FRONT/v1/chat/completions" "$n" "$hold" >"$f" & bp=$!
  until grep -q streams_open "$f" 2>/dev/null || ! kill -0 $bp 2>/dev/null; do sleep 0.1; done
  sup=$(awk '/VmRSS/{print $2}' /proc/$SPID/status); all=$(rss_kb $SPID); wait $bp || true
  res=$(tail -1 "$f")
  echo "| $n | $(( (sup - sup0) * 1024 / n )) | $(( (all - all0 - sup + sup0) * 1024 / n )) | $(( (all - all0) * 1024 / n )) | $(( cl * 1024 / n )) | $(( kd * 1024 / n )) | $(field "$res" ttfb_p50_us) / $(field "$res" ttfb_p99_us) | $(field "$dres" ttfb_p50_us) / $(field "$dres" ttfb_p99_us) | $(field "$res" open_ms) ms ($(field "$dres" open_ms)) | $(field "$res" errors) ($(field "$dres" errors)) |"
}
held_header() {
  echo "| streams | supervisor B/stream | 3 workers B/stream | ours B/stream | client B/stream (direct) | kernel B/stream (direct, approx.) | TTFB p50 / p99 µs, front | direct | opening took, front (direct) | errors (direct) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
}
