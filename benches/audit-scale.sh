#!/usr/bin/env bash
# Audit at scale: fill one store with N generated harm-analysis decisions, then time `verify`
# over the whole chain and `replay` of every decision against the recorded versions and against
# candidate params, with each command's peak resident memory.
#
#   benches/audit-scale.sh                 # N=1000000 (about 5 GiB of store, 15-25 minutes)
#   N=100000 benches/audit-scale.sh
#
# Settings (environment): N (decisions, default 1000000), TOOL (default harm-analysis), SEED (7),
# KEEP=1 keeps the filled store and prints where it is. The store lives in a temp folder under
# TMPDIR (it needs room for about 5 KiB a decision) and is removed on exit unless KEEP=1.
#
# The candidate is the example agency's recalibration: harm-analysis's medium cut-point at 7.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
TOOL=${TOOL:-harm-analysis}
SEED=${SEED:-7}
WORK=$(mktemp -d)
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "store kept in $WORK/data"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

cargo build --release --quiet
BIN=$PWD/target/release/safeguard
# The core tools only: the store and the candidate must not depend on which plugins are here.
CATALOG="$WORK/catalog"
mkdir -p "$CATALOG"
cp -r tool-schemas rules "$CATALOG/"
export SAFEGUARD_DATA_DIR="$WORK/data"
echo '{"cut_points": {"medium": 7}}' >"$WORK/candidate.json"

# Runs a command from the core catalog, printing its output and then `peak_rss_mib=<MiB>`.
timed() {
  (cd "$CATALOG" && /usr/bin/time -f 'peak_rss_mib=%M' -o "$WORK/time" "$@")
  awk -F= '{ printf "peak_rss_mib=%.0f\n", $2 / 1024 }' "$WORK/time"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 2^20 }' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== fill: $N $TOOL decisions (seed $SEED)"
timed "$BIN" demo-data --count "$N" --seed "$SEED" --tool "$TOOL"
echo "store: $(du -sh "$WORK/data" | cut -f1)"

echo "== verify"
timed "$BIN" verify

for what in recorded candidate; do
  echo "== replay $TOOL against the $what version"
  args=(replay --tool "$TOOL" --limit 3)
  [ "$what" = candidate ] && args+=(--params "$WORK/candidate.json")
  started=$(date +%s.%N)
  timed "$BIN" "${args[@]}" | grep -vE '^\s+(seq|decision|[a-z_]+:)' | head -40
  echo "seconds=$(echo "$(date +%s.%N) - $started" | bc)"
done
