#!/usr/bin/env bash
# Two builds side by side on one upstream: the worker hop and the front path (3 workers) of an
# older checkout's release build against this one's, with oha (-c 64, the 866-byte chat body) in
# interleaved rounds (old new, then new old, ...), medians and paired differences by bench/ab.py.
# What a change bought in wall clock, where bench/path_instr.sh counts it in instructions.
# Build the old side first, in its own checkout: `git worktree add ../base REV && (cd ../base &&
# cargo build --release -p supervisor -p gateway-worker)`.
# Usage: bench/ab_builds.sh OLD_RELEASE_DIR [SECS]   (default 5 s per measurement). ROUNDS (6).
# Writes bench/out/ab_builds.rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out; mkdir -p "$OUT"
. bench/lib.sh
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[ -x "$OHA" ] || { echo "oha is missing: cargo install --locked oha" >&2; exit 1; }
[ -d "${1:-}" ] || { echo "usage: bench/ab_builds.sh OLD_RELEASE_DIR [SECS]" >&2; exit 2; }
OLD=$1 SECS=${2:-5} ROUNDS=${ROUNDS:-6}
export RUST_LOG=${RUST_LOG:-warn}
release_build
trap kill_pids EXIT

BENCH_THREADS=2 start_upstream "$OUT/ab-upstream.addr" 127.0.0.1:0
for v in old new; do
  if [ $v = old ]; then BIN=$OLD; else BIN=target/release; fi
  write_config "$OUT/ab-$v.toml" "$PWD/$OUT/ab-run-$v" $'worker_max_inflight = 20000\nmax_queue = 20000'
  start_worker "$OUT/ab-$v.toml" "$OUT/ab-worker-$v.log"
  start_supervisor "$OUT/ab-$v.toml" "$OUT/ab-sup-$v.out" "$OUT/ab-sup-$v.log"
  declare "worker_$v=$WADDR" "front3_$v=$FRONT"
done
BIN=target/release
sleep 1

# rps ADDR: "REQ_PER_S ERRORS" of one oha run.
rps() {
  "$OHA" --no-tui --output-format json -z "${SECS}s" -c 64 -m POST -H 'content-type: application/json' \
    -D bench/chat_body.json "http://$1/v1/chat/completions" |
    python3 -c 'import json, sys
d = json.load(sys.stdin)["statusCodeDistribution"]
print(round(d.get("200", 0) / float(sys.argv[1])), sum(v for k, v in d.items() if k != "200"))' "$SECS"
}
: >"$OUT/ab_builds.rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for path in worker front3; do
    for v in $order; do
      addr=${path}_$v
      echo "$path-$v $(rps "${!addr}")" | tee -a "$OUT/ab_builds.rounds"
    done
  done
done
for path in worker front3; do
  echo "== $path"
  sed -n "s/^$path-//p" "$OUT/ab_builds.rounds" | python3 bench/ab.py old new
done
