#!/usr/bin/env bash
# The cost of translation, in one run against one upstream on one standalone worker: CPU per
# streamed chunk and memory per held stream of the six translated paths (client > upstream:
# chat>messages, chat>responses, messages>chat, messages>responses, responses>chat,
# responses>messages) against the passthrough of the same client dialect (chat>chat,
# messages>messages, responses>responses), every stream carrying the same CHUNKS text chunks. The host is shared
# and noisy, so the cases run interleaved (the order rotates each round) and the table shows
# medians over ROUNDS rounds.
# Usage: bench/translate.sh [SECS]   (default 5 s of load per case and round). Release build.
# Settings from the environment: ROUNDS (5), CHUNKS (50), CONNS (16), HELD (1000), CASES (all).
# The repeatable measure (instructions per chunk under callgrind) is bench/translate_instr.sh.
# Writes bench/out/translate*.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-5}
CHUNKS=${CHUNKS:-50}   # text chunks per stream, every case
CONNS=${CONNS:-16}     # keep-alive connections of the closed-loop load
HELD=${HELD:-1000}     # streams held open for the memory figure
OUT=bench/out; mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export RUST_LOG=${RUST_LOG:-warn}

cargo build --release -q -p gateway-worker
cargo build --release -q -p gateway --examples
. bench/lib.sh
trap kill_pids EXIT

BENCH_CHUNKS=$CHUNKS BENCH_THREADS=2 start_upstream "$OUT/translate-upstream.addr" 127.0.0.1:0
# Four providers on the one upstream: `up` (openai, every OpenAI API natively) serves bench*,
# `ant` (anthropic: Messages) mbench*, `chatonly` (Chat only) cbench*, `resp` (Responses only)
# rbench*; the client's path and model pick the case.
write_config "$OUT/translate.toml" "$PWD/$OUT/translate-run" $'worker_max_inflight = 20000\nmax_queue = 20000'
translate_providers >>"$OUT/translate.toml"
# CASES (space-separated names) picks some, e.g. CASES="chat>chat chat>responses".
pick_cases ${CASES:-}
# SIGKILL, then reap it, so the shell reports no "Killed" line.
stop_worker() { kill -9 "$WPID" 2>/dev/null || true; wait "$WPID" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
ROWS=$OUT/translate.rows; : >"$ROWS"

# --- CPU per chunk: one worker, closed-loop streamed load, the worker's CPU around it ---
start_worker "$OUT/translate.toml" "$OUT/translate-worker.log"
for r in $(seq "$ROUNDS"); do
  for i in "${!CASES[@]}"; do
    read -r name path model <<<"${CASES[$(( (i + r) % ${#CASES[@]} ))]}"
    t0=$(cpu_ticks "$WPID")
    res=$(BENCH_MODEL=$model $EX/bench_load sse "http://$WADDR$path" "$CONNS" "$SECS")
    t1=$(cpu_ticks "$WPID")
    echo "cpu $name $((t1 - t0)) $(field "$res" requests) $(field "$res" events) $(field "$res" errors)" >>"$ROWS"
  done
done
stop_worker

# --- memory per held stream: a fresh worker per measurement (freed memory a worker keeps
# would flatter the next case), RSS with HELD streams open minus RSS idle ---
for r in $(seq "$ROUNDS"); do
  for i in "${!CASES[@]}"; do
    read -r name path model <<<"${CASES[$(( (i + r) % ${#CASES[@]} ))]}"
    start_worker "$OUT/translate.toml" "$OUT/translate-worker.log"
    base=$(rss_kb "$WPID")
    f=$OUT/translate-streams.out
    BENCH_MODEL=$model $EX/bench_load streams "http://$WADDR$path" "$HELD" 1 >"$f" & BP=$!
    until grep -q streams_open "$f" 2>/dev/null || ! kill -0 $BP 2>/dev/null; do sleep 0.1; done
    held=$(rss_kb "$WPID"); wait $BP || true
    echo "mem $name $(( (held - base) * 1024 / HELD )) $(field "$(tail -1 "$f")" errors)" >>"$ROWS"
    stop_worker
  done
done

python3 - "$ROWS" "$(getconf CLK_TCK)" "$CHUNKS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
clk, chunks = int(sys.argv[2]), int(sys.argv[3])
names = list(dict.fromkeys(r[1] for r in rows))
cpu = {n: [] for n in names}; mem = {n: [] for n in names}; err = {n: 0 for n in names}
evs = {n: [] for n in names}; reqs = {n: [] for n in names}
for r in rows:
    if r[0] == "cpu":
        ticks, req, ev, e = map(int, r[2:6])
        cpu[r[1]].append(ticks / clk * 1e9 / (req * chunks))
        reqs[r[1]].append(req); evs[r[1]].append(ev / req); err[r[1]] += e
    else:
        mem[r[1]].append(int(r[2])); err[r[1]] += int(r[3])
# Each case against the passthrough of its client's dialect (chat>messages against chat>chat).
def base(n):
    c = n.split(">")[0]
    return f"{c}>{c}"
def ratio(d, n):
    b = base(n)
    return f"{st.median(d[n]) / st.median(d[b]):.2f}x" if d.get(b) else "-"
print(f"| client > upstream | CPU ns/chunk (median) | vs passthrough | rounds (ns/chunk) | streams/round | client events/stream | memory B/held stream (median) | vs passthrough | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names:
    c, m = st.median(cpu[n]), st.median(mem[n])
    print(f"| {n} | {c:.0f} | {ratio(cpu, n)} | {' '.join(f'{x:.0f}' for x in cpu[n])} "
          f"| {st.median(reqs[n]):.0f} | {st.median(evs[n]):.0f} | {m:.0f} | {ratio(mem, n)} | {err[n]} |")
PY
