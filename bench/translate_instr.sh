#!/usr/bin/env bash
# The cost of translation as a repeatable count: instructions (callgrind's Ir) the worker spends
# per streamed chunk, each translated cell against the passthrough of its client's dialect.
# Wall-clock CPU on this shared host scatters (bench/translate.sh); an instruction count does not
# depend on the neighbours.
#
# Per case, one standalone worker (one thread, as the pool runs them) under
# `valgrind --tool=callgrind` serves N streams of M1 text chunks, and another N streams of M2;
# each worker is stopped with SIGTERM (a clean exit, so callgrind writes its totals). The cost of
# one chunk is (Ir(M2) - Ir(M1)) / (N * (M2 - M1)): start-up, shutdown and everything per request
# (its head, the request's translation, the stream's first and last events) cancel out.
# The upstream spaces its chunks GAP_MS apart, so each reaches the worker in its own read, as a
# model's tokens do (back-to-back chunks would be coalesced, and cheaper per chunk, under the
# slowed-down worker).
#
# Usage: bench/translate_instr.sh [CASE...]   (default: all nine). Release build.
# Settings from the environment: N (10), M1 (20), M2 (220), GAP_MS (2), CONNS (1).
# PROFILE=1 keeps the callgrind files (bench/out/instr/*.out) for `callgrind_annotate`.
# Writes bench/out/instr/ and bench/out/translate_instr.rows.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
M1=${M1:-20}
M2=${M2:-220}
GAP_MS=${GAP_MS:-2}
CONNS=${CONNS:-1}
OUT=bench/out; mkdir -p "$OUT/instr"
export RUST_LOG=${RUST_LOG:-warn}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 1; }

cargo build --release -q -p gateway-worker
cargo build --release -q -p gateway --examples
. bench/lib.sh
trap kill_pids EXIT

# One upstream per size, and a config per size naming the same four providers as translate.sh
# (lib.sh's translate_providers).
for m in "$M1" "$M2"; do
  BENCH_CHUNKS=$m BENCH_CHUNK_MS=$GAP_MS start_upstream "$OUT/instr/upstream-$m.addr" 127.0.0.1:0
  write_config "$OUT/instr/$m.toml" "$PWD/$OUT/instr/run-$m" ""
  translate_providers >>"$OUT/instr/$m.toml"
done

pick_cases "$@"

# ir CASE SIZE PATH MODEL: one worker under callgrind serving N streams; prints "Ir events errors".
ir() {
  local name=$1 m=$2 path=$3 model=$4 f log
  f=$OUT/instr/${name/>/-}.$m.out; log=$OUT/instr/${name/>/-}.$m.log
  rm -f "$f"
  RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$f" --log-file="$log.vg" \
    $BIN/gateway-worker --config "$OUT/instr/$m.toml" --listen 127.0.0.1:0 2>"$log" & local wp=$!
  pids+=($wp)
  local addr=""
  for _ in $(seq 600); do
    addr=$( (grep -oE 'listening on [0-9.:]+' "$log" 2>/dev/null || true) | head -1 | awk '{print $3}')
    [ -n "$addr" ] && break
    kill -0 $wp 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "worker under valgrind did not report its address:" >&2; cat "$log" "$log.vg" >&2; exit 1; }
  local res
  res=$(BENCH_MODEL=$model $EX/bench_load ssecount "http://$addr$path" "$CONNS" "$N")
  kill -TERM $wp; wait $wp || true
  local total
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  [ -n "$total" ] || { echo "no callgrind totals in $f" >&2; exit 1; }
  [ -n "${PROFILE:-}" ] || rm -f "$f"
  echo "$total $(field "$res" events) $(field "$res" errors)"
}

ROWS=$OUT/translate_instr.rows; : >"$ROWS"
for c in "${CASES[@]}"; do
  read -r name path model <<<"$c"
  a=$(ir "$name" "$M1" "$path" "$model")
  b=$(ir "$name" "$M2" "$path" "$model")
  echo "$name $a $b" | tee -a "$ROWS" >&2
done

python3 - "$ROWS" "$N" "$M1" "$M2" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
n, m1, m2 = map(int, sys.argv[2:5])
per = {}
print(f"| client > upstream | Ir/chunk | vs passthrough | client events/stream ({m1}, {m2} chunks) | errors |")
print("|---|---|---|---|---|")
for name, ir1, ev1, e1, ir2, ev2, e2 in rows:
    per[name] = (int(ir2) - int(ir1)) / (n * (m2 - m1))
for name, ir1, ev1, e1, ir2, ev2, e2 in rows:
    c = name.split(">")[0]
    base = per.get(f"{c}>{c}")
    ratio = f"{per[name] / base:.3f}x" if base else "-"
    print(f"| {name} | {per[name]:.0f} | {ratio} | {int(ev1) / n:.0f}, {int(ev2) / n:.0f} | {int(e1) + int(e2)} |")
PY
