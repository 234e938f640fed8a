#!/usr/bin/env bash
# Load benchmark against the release binary on loopback, driven by wrk (Debian's package).
#
#   benches/load.sh                 # 64 connections, 10 s per run
#   CONNS="1 16 64" SECS=15 benches/load.sh
#
# For each connection count it measures durable submits/s with group commit and with the
# sync-per-request baseline, in the same run, then evaluate requests/s. Every server gets a fresh
# data folder; nothing leaves this machine (127.0.0.1 only), and every run is bounded by SECS.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
SECS=${SECS:-10}
THREADS=${THREADS:-2}
PORT=${PORT:-18990}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
BIN=target/release/safeguard

# A realistic filled-in form: the first harm-analysis case that reaches a level, as the served
# catalog decides it (a plugin's cases when a plugin changes the tool, else the core cases).
python3 - "$WORK" <<'PY'
import json, os, sys, glob
work = sys.argv[1]
paths = sorted(glob.glob("plugins/*/cases/harm-analysis/*.json")) or sorted(glob.glob("tests/cases/harm-analysis/*.json"))
for path in paths:
    case = json.load(open(path))
    if "level" in case["expect"]:
        break
open(os.path.join(work, "submit.json"), "w").write(json.dumps({"tool": "harm-analysis", "input": case["input"]}))
open(os.path.join(work, "evaluate.json"), "w").write(json.dumps({"input": case["input"]}))
PY

cat > "$WORK/post.lua" <<'LUA'
local body_file = os.getenv("BODY_FILE")
local f = assert(io.open(body_file, "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, non2xx))
end
LUA

start_server() { # durability
  local data="$WORK/data-$1-$RANDOM"
  TOKEN=$(SAFEGUARD_DATA_DIR="$data" $BIN token create --role practitioner --subject load)
  SAFEGUARD_DATA_DIR="$data" SAFEGUARD_LISTEN="127.0.0.1:$PORT" SAFEGUARD_DURABILITY="$1" \
    RUST_LOG=warn $BIN serve >"$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
stop_server() { kill -TERM "$SERVER"; wait "$SERVER" || true; }

run() { # label path body connections
  local out
  out=$(BODY_FILE="$WORK/$3" TOKEN="$TOKEN" wrk -t"$THREADS" -c"$4" -d"${SECS}s" --latency \
        -s "$WORK/post.lua" "http://127.0.0.1:$PORT$2" | grep RESULT)
  printf '%-34s c=%-3s %s\n' "$1" "$4" "${out#RESULT }"
  case "$out" in *non2xx=0) ;; *) echo "FAILED: some requests were not answered 2xx; the figures above are not valid" >&2; exit 1 ;; esac
  echo "$out" | sed -E 's/.*rps=([0-9]+).*/\1/'
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; wrk -t$THREADS, ${SECS}s per run"
for c in $CONNS; do
  start_server group
  group=$(run "submit (group commit)" /v1/cases/load-1/decisions submit.json "$c" | tee /dev/stderr | tail -1)
  stop_server
  start_server sync-per-request
  sync=$(run "submit (sync-per-request baseline)" /v1/cases/load-1/decisions submit.json "$c" | tee /dev/stderr | tail -1)
  stop_server
  echo "group / sync-per-request at c=$c: $(python3 -c "print(f'{$group/$sync:.1f}x')")"
done 2>&1 | grep -v '^[0-9]*$'
start_server group
run "evaluate (dry run)" /v1/tools/harm-analysis/evaluate evaluate.json 64 | head -1
stop_server
