#!/usr/bin/env bash
# Crash-safety run against the release binary: the `crash` integration test, with more cycles.
#
#   benches/crash.sh                     # 20 cycles, a fresh random seed
#   CYCLES=50 SEED=42 benches/crash.sh   # more cycles; replay a seed's kill moments
#
# Each cycle drives 16 concurrent submitters against `safeguard serve`, kills the server with
# SIGKILL 50-800 ms in, restarts it on the same store and checks that every acknowledged decision
# reads back unchanged and the hash chain verifies (`GET /v1/audit/verify`); at the end every
# decision of every cycle is read back again and the stopped store is checked with
# `safeguard verify`. The last `crash summary` line is the result for BENCHMARKS.md. Nothing
# leaves this machine (127.0.0.1 only); the store is a temporary folder, removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

export SAFEGUARD_CRASH_CYCLES=${CYCLES:-20}
if [ -n "${SEED:-}" ]; then export SAFEGUARD_CRASH_SEED=$SEED; fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

# Build first, so the wall time below is the run's alone.
cargo test --release --quiet --test api --no-run
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $SAFEGUARD_CRASH_CYCLES cycles, release build"
started=$SECONDS
status=0
cargo test --release --quiet --test api crash -- --nocapture >"$LOG" 2>&1 || status=$?
# The summary is printed before the test asserts, so it is there even when the run fails.
grep -E '^crash' "$LOG" || true
echo "wall time: $((SECONDS - started)) s"
if [ "$status" -ne 0 ]; then
  echo "FAILED; the end of the test's output:"
  tail -n 40 "$LOG"
fi
exit "$status"
