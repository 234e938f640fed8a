# shellcheck shell=bash
# Shared by benches/load.sh and benches/scale.sh: sourced, never run on its own.
#
# It gives each script one temp folder ($WORK), a cleanup trap that stops every server this
# script started (by its pid) and removes the folder, the wrk Lua scripts, a safeguard server on a
# free loopback port, one wrk run that records a row of the results table, and the table itself.
#
# The caller sets: BIN (the safeguard binary), SECS (seconds per wrk run), THREADS (wrk threads).
: "${BIN:?}" "${SECS:?}" "${THREADS:?}"

WORK=$(mktemp -d)
SERVERS=()
bench_cleanup() {
  local pid
  for pid in "${SERVERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# Installs wrk from Debian's packages when it is missing.
need_wrk() {
  command -v wrk >/dev/null && return
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The wrk scripts. Both print one machine-readable line at the end, read by wrk_run:
#   RESULT rps=... p50_ms=... p99_ms=... requests=... non2xx=... sockerr=...
# post.lua sends BODY_FILE to the URL's path; cases.lua GETs /v1/cases/<random demo case><SUFFIX>
# for the CASES case ids that `safeguard demo-data` made (demo-0000000 ...).
write_wrk_scripts() {
  cat >"$WORK/report.lua" <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d non2xx=%d sockerr=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout))
end
LUA
  cat >"$WORK/post.lua" <<LUA
local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
dofile("$WORK/report.lua")
LUA
  cat >"$WORK/cases.lua" <<LUA
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
local cases = tonumber(os.getenv("CASES"))
local suffix = os.getenv("SUFFIX") or ""
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  return wrk.format("GET", string.format("/v1/cases/demo-%07d%s", math.random(0, cases - 1), suffix))
end
dofile("$WORK/report.lua")
LUA
}

# Creates a practitioner token in a stopped store: sets TOKEN.
make_token() { # data-dir
  TOKEN=$(SAFEGUARD_DATA_DIR="$1" "$BIN" token create --role practitioner --subject bench)
}

# Starts `safeguard serve` on a free loopback port: sets SERVER (pid) and PORT.
start_server() { # data-dir durability
  PORT=$(free_port)
  SAFEGUARD_DATA_DIR="$1" SAFEGUARD_LISTEN="127.0.0.1:$PORT" SAFEGUARD_DURABILITY="$2" \
    RUST_LOG=warn "$BIN" serve >"$WORK/server.log" 2>&1 &
  SERVER=$!
  SERVERS+=("$SERVER")
  for _ in $(seq 200); do
    # The pid check guards against another process that took the port first answering for us.
    kill -0 "$SERVER" 2>/dev/null || break
    curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "the server did not start:" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

# Stops the server gracefully (it commits what is queued) and checks it did not crash.
stop_server() {
  kill -TERM "$SERVER"
  wait "$SERVER" || { echo "the server exited with status $?:" >&2; cat "$WORK/server.log" >&2; exit 1; }
}

# Requests the server answered with a status other than 2xx, by route and status, from its own
# metrics: printed when wrk saw any, so a failure is reported precisely.
explain_non2xx() {
  curl -s "127.0.0.1:$PORT/metrics" |
    grep '^safeguard_http_requests_total' | grep -v 'status="2' | sed 's/^/    /' >&2 || true
  grep -m5 -iE 'error|warn' "$WORK/server.log" | sed 's/^/    server log: /' >&2 || true
}

# Responses the server has answered with this status so far, from its own metrics.
status_count() { # status
  curl -sf "127.0.0.1:$PORT/metrics" |
    awk -v s="status=\"$1\"" '/^safeguard_http_requests_total/ && index($0, s) { n += $2 } END { printf "%d", n }'
}

# One wrk run against the running server; prints and records one row of the table.
# Extra environment for the Lua script (BODY_FILE, CASES, SUFFIX) comes from the caller. With
# EXPECT_STATUS, every answer should have that status instead of a 2xx: the row's non2xx then
# counts the answers that did not (from the server's metrics, give or take those in flight when
# wrk stopped).
wrk_run() { # label connections lua-script path
  local label=$1 conns=$2 script=$3 path=$4 out before=0 answered
  local threads=$((THREADS < conns ? THREADS : conns))
  [ -z "${EXPECT_STATUS:-}" ] || before=$(status_count "$EXPECT_STATUS")
  out=$(TOKEN="$TOKEN" wrk -t"$threads" -c"$conns" -d"${SECS}s" --timeout 10s -s "$WORK/$script" \
        "http://127.0.0.1:$PORT$path" | grep '^RESULT') || { echo "wrk failed for $label" >&2; exit 1; }
  if [ -n "${EXPECT_STATUS:-}" ]; then
    answered=$(($(status_count "$EXPECT_STATUS") - before))
    local unexpected=$(($(field requests "$out") - answered))
    out=$(sed -E "s/non2xx=[0-9]+/non2xx=$((unexpected > 0 ? unexpected : 0))/" <<<"$out")
  fi
  record "$label" "$conns" "$out"
  case "$out" in
    *non2xx=0\ sockerr=0) ;;
    *) echo "WARNING: $label c=$conns: some requests failed ($out); from the server:" >&2; explain_non2xx ;;
  esac
}

# How the writer committed during the last run, from the server's own metrics (the counters start
# at zero with each server): batches committed, appends per batch, the mean time of a commit (the
# writer's whole turn) and its phases (prepare: checking, hashing and indexing each revision;
# apply: sled's apply_batch; flush: sled's flush; sync: the fdatasync), and the share of the run
# the writer spent committing. Prints it under the row and keeps it for print_commits.
commit_stats() { # label connections
  local line
  line=$(curl -sf "127.0.0.1:$PORT/metrics" | awk -v secs="$SECS" '
    /^safeguard_commit_batch_size_sum/    { appends = $2 }
    /^safeguard_commit_batch_size_count/  { commits = $2 }
    /^safeguard_commit_seconds_sum/       { busy = $2 }
    /^safeguard_commit_phase_seconds_sum/ { match($0, /phase="[a-z]+"/); phase[substr($0, RSTART + 7, RLENGTH - 8)] = $2 }
    END { if (commits) printf "%d\t%.1f\t%.2f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f", commits, appends / commits, 1000 * busy / commits, 100 * busy / secs,
            1000 * phase["prepare"] / commits, 1000 * phase["apply"] / commits, 1000 * phase["flush"] / commits, 1000 * phase["sync"] / commits }')
  [ -n "$line" ] || return 0
  printf '%s\t%s\t%s\n' "$1" "$2" "$line" >>"$WORK/commits.tsv"
  awk -F'\t' '{ printf "  %36s        %d commits, %.1f appends a commit, %.2f ms a commit (prepare %.2f, apply %.2f, flush %.2f, sync %.2f), writer busy %d%% of the run\n", "", $1, $2, $3, $5, $6, $7, $8, $4 }' <<<"$line"
}

print_commits() {
  [ -s "$WORK/commits.tsv" ] || return 0
  printf '\n%-36s %5s %9s %9s %9s %9s %9s %9s %9s %9s\n' "group commit (server metrics)" conns commits "appends" "ms each" "busy" prepare apply flush sync
  awk -F'\t' '{ printf "%-36s %5s %9s %9s %9s %8s%% %9s %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$WORK/commits.tsv"
}

# Adds a row (label, conns, then the fields of a RESULT line) to the table and prints it.
record() { # label connections result-line
  local rps p50 p99 non2xx sockerr
  rps=$(field rps "$3"); p50=$(field p50_ms "$3"); p99=$(field p99_ms "$3")
  non2xx=$(field non2xx "$3"); sockerr=$(field sockerr "$3")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" >>"$RESULTS"
  printf '  %-36s c=%-3s %8s req/s  p50 %8s ms  p99 %8s ms  non2xx %s  sockerr %s\n' \
    "$1" "$2" "$rps" "$p50" "$p99" "$non2xx" "$sockerr"
}

# The value of key=value in a RESULT line.
field() { # key line
  sed -nE "s/.*[ ]$1=([^ ]+).*/\1/p" <<<" $2"
}

# The requests/s recorded for a label at a connection count (the mean, when it ran more than once).
rps_of() { # label connections
  awk -F'\t' -v l="$1" -v c="$2" '$1 == l && $2 == c { sum += $3; n++ } END { if (n) print sum / n }' "$RESULTS"
}

# a / b to two decimals, or "n/a" when either is missing or b is zero.
ratio() {
  python3 -c 'import sys
a, b = sys.argv[1], sys.argv[2]
print(f"{float(a) / float(b):.2f}x" if a and b and float(b) else "n/a")' "${1:-}" "${2:-}"
}

print_table() {
  printf '\n%-36s %5s %9s %9s %9s %7s %7s\n' what conns "req/s" "p50 ms" "p99 ms" non2xx sockerr
  awk -F'\t' '{ printf "%-36s %5s %9s %9s %9s %7s %7s\n", $1, $2, $3, $4, $5, $6, $7 }' "$RESULTS"
}

# Whether every run answered every request with 2xx and no socket error.
all_ok() {
  awk -F'\t' '$6 != 0 || $7 != 0 { bad = 1 } END { exit bad }' "$RESULTS"
}
