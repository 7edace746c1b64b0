#!/usr/bin/env python3
"""Medians of an interleaved A/B bench: reads `LABEL RPS ERRORS` lines (stdin), prints per-label
rounds and medians, and B's cost against A in percent (positive = B slower): by the medians of
each arm, and as the median of the per-round paired differences (each A beside the B run next to
it), which a noisy round on a shared machine moves less.
Usage: ab.py A_LABEL B_LABEL < rounds.txt"""
import statistics
import sys

a, b = sys.argv[1], sys.argv[2]
rounds = {a: [], b: []}
errors = 0
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 3 and parts[0] in rounds:
        rounds[parts[0]].append(float(parts[1]))
        errors += int(parts[2])
for label, v in rounds.items():
    print(f"{label}: rounds {' '.join(f'{x:.0f}' for x in v)}  median {statistics.median(v):.0f} req/s")
ma, mb = statistics.median(rounds[a]), statistics.median(rounds[b])
pairs = [(x - y) / x * 100 for x, y in zip(rounds[a], rounds[b])]
print(f"cost of {b}: {(ma - mb) / ma * 100:+.2f}% by medians, {statistics.median(pairs):+.2f}% by the median "
      f"paired difference; per round {' '.join(f'{p:+.1f}%' for p in pairs)}; errors {errors}")
