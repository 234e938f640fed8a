#!/usr/bin/env bash
# Load benchmark: the release binary on loopback, driven by wrk (Debian's package), with
# PostgreSQL beside it as a peer, all in one run.
#
#   benches/load.sh                          # c = 1, 16 and 64; 10 s a run; PostgreSQL peer
#   CONNS="16 64" SECS=15 benches/load.sh
#   CONNS="64 64 64" PEER=none benches/load.sh   # repeats: the ratio uses the mean of each
#   PEER=none benches/load.sh                # without the PostgreSQL stage
#
# Settings (environment): CONNS (default "1 16 64"), SECS (10), THREADS (wrk threads, 2),
# EVAL_CONNS (connections for evaluate, 64), PEER (postgres | none), PEER_CONNS (64), BIN (a
# binary to measure instead of building this checkout's).
#
# What it measures, each on a fresh store:
#   1. durable submits/s with p50/p99 at each of CONNS, group commit and then the
#      sync-per-request baseline (POST /v1/cases/load-1/decisions);
#   2. evaluate requests/s with p50/p99 (POST /v1/tools/harm-analysis/evaluate: a dry run that
#      stores nothing), the same with a form the schema refuses (all but the script), then
#      GET /healthz on the same server: what this machine's HTTP stack and client do with no
#      work behind the route, the ceiling every other row sits under;
#   3. the peer: PostgreSQL's durable INSERT + COMMIT of the same revision JSON, PEER_CONNS
#      clients (benches/peer-postgres.sh).
# It ends with one table (a row per run), how the writer committed in each submit run (from the
# server's /metrics: commits, appends per commit, time per commit, share of the run the writer was
# busy), and the ratios group / sync-per-request per connection count and safeguard's group-commit
# submits/s / PostgreSQL's transactions/s at PEER_CONNS. The machine is shared: compare ratios
# within one run, not absolute figures across runs. Servers bind 127.0.0.1 only; every server and temp folder is
# removed on exit. It exits non-zero when any request was not answered 2xx.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1 16 64}
SECS=${SECS:-10}
THREADS=${THREADS:-2}
EVAL_CONNS=${EVAL_CONNS:-64}
PEER=${PEER:-postgres}
PEER_CONNS=${PEER_CONNS:-64}
# BIN: another safeguard binary to measure (a build of an earlier commit, for a before/after in
# one run); by default the project is built and its release binary measured.
BIN_GIVEN=${BIN:-}
BIN=${BIN:-target/release/safeguard}
source benches/lib.sh

need_wrk
[ -n "$BIN_GIVEN" ] || cargo build --release --quiet
write_wrk_scripts

# A realistic filled-in form: the first harm-analysis case that reaches a level, as the served
# catalog decides it (a plugin's cases when a plugin changes the tool, else the core cases).
python3 - "$WORK" <<'PY'
import glob, json, os, sys
work = sys.argv[1]
paths = sorted(glob.glob("plugins/*/cases/harm-analysis/*.json")) or sorted(glob.glob("tests/cases/harm-analysis/*.json"))
case = next(c for c in map(lambda p: json.load(open(p)), paths) if "level" in c["expect"])
open(os.path.join(work, "submit.json"), "w").write(json.dumps({"tool": "harm-analysis", "input": case["input"]}))
open(os.path.join(work, "evaluate.json"), "w").write(json.dumps({"input": case["input"]}))
# The same form without one required field: the schema refuses it, so the script never runs.
refused = dict(case["input"])
refused.pop(next(iter(refused)))
open(os.path.join(work, "refused.json"), "w").write(json.dumps({"input": refused}))
PY

store=0
fresh_store() { # durability: a new data folder with a token, and a server on it
  store=$((store + 1))
  make_token "$WORK/data-$store"
  start_server "$WORK/data-$store" "$1"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; wrk -t$THREADS, ${SECS}s a run; $(date -u +%FT%TZ)"
started=$(date +%s)
for c in $CONNS; do
  fresh_store group
  BODY_FILE="$WORK/submit.json" wrk_run "submit (group commit)" "$c" post.lua /v1/cases/load-1/decisions
  commit_stats "submit (group commit)" "$c"
  stop_server
  fresh_store sync-per-request
  BODY_FILE="$WORK/submit.json" wrk_run "submit (sync-per-request)" "$c" post.lua /v1/cases/load-1/decisions
  commit_stats "submit (sync-per-request)" "$c"
  stop_server
done
fresh_store group
BODY_FILE="$WORK/evaluate.json" wrk_run "evaluate (dry run)" "$EVAL_CONNS" post.lua /v1/tools/harm-analysis/evaluate
# What the script costs: everything an evaluation does but the script (auth, routing, JSON,
# validation, a problem+json answer); all 422, so its non-2xx are expected.
BODY_FILE="$WORK/refused.json" EXPECT_STATUS=422 wrk_run "evaluate, form refused (no script)" "$EVAL_CONNS" post.lua /v1/tools/harm-analysis/evaluate
# The ceiling: the same server, client and connections on a route that does no work at all.
wrk_run "health (no work: HTTP ceiling)" "$EVAL_CONNS" report.lua /healthz
stop_server

if [ "$PEER" = postgres ]; then
  # The peer stores the revision exactly as safeguard stores it: submit the form once to a
  # fresh store, stop the server, and export the journal.
  fresh_store group
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary @"$WORK/submit.json" "127.0.0.1:$PORT/v1/cases/load-1/decisions"
  stop_server
  SAFEGUARD_DATA_DIR="$WORK/data-$store" "$BIN" export --out "$WORK/revision.json" 2>/dev/null
  SECS="$SECS" THREADS="$THREADS" CONNS="$PEER_CONNS" benches/peer-postgres.sh "$WORK/revision.json" >"$WORK/peer.out"
  record "postgres INSERT+COMMIT" "$PEER_CONNS" "$(grep '^RESULT' "$WORK/peer.out")"
elif [ "$PEER" != none ]; then
  echo "PEER must be postgres or none, not $PEER" >&2
  exit 2
fi

print_table
print_commits
echo
for c in $(tr ' ' '\n' <<<"$CONNS" | sort -nu); do
  echo "group / sync-per-request at c=$c: $(ratio "$(rps_of "submit (group commit)" "$c")" "$(rps_of "submit (sync-per-request)" "$c")")"
done
if [ "$PEER" = postgres ]; then
  echo "safeguard group / postgres at c=$PEER_CONNS: $(ratio "$(rps_of "submit (group commit)" "$PEER_CONNS")" "$(rps_of "postgres INSERT+COMMIT" "$PEER_CONNS")")"
fi
echo "evaluate / evaluate with the form refused (the script's share) at c=$EVAL_CONNS: $(ratio "$(rps_of "evaluate (dry run)" "$EVAL_CONNS")" "$(rps_of "evaluate, form refused (no script)" "$EVAL_CONNS")")"
echo "evaluate / health (share of the HTTP ceiling) at c=$EVAL_CONNS: $(ratio "$(rps_of "evaluate (dry run)" "$EVAL_CONNS")" "$(rps_of "health (no work: HTTP ceiling)" "$EVAL_CONNS")")"
echo "wall time: $(($(date +%s) - started)) s"
all_ok || { echo "FAILED: some requests were not answered 2xx (see the warnings above); those rows are not valid" >&2; exit 1; }
