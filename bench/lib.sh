# Shared by bench/run.sh and bench/soak.sh, sourced from the repository root after OUT is set:
# the release binaries, the started-process list, and the common setup (the mock upstream, a
# config pointing at it, the supervisor in front).

BIN=target/release; EX=$BIN/examples
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
