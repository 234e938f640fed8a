#!/usr/bin/env bash
# Scale benchmark: does the cost of a decision stay flat as the store grows?
#
#   benches/scale.sh                              # 10k and 1M stored decisions
#   SIZES="10000 100000" SECS=10 benches/scale.sh
#
# Settings (environment): SIZES (default "10000 1000000"), SECS (seconds a wrk run, 10),
# THREADS (wrk threads, 2), SUBMIT_CONNS (64), LOOKUP_CONNS (4: latency rather than saturation),
# WARMUP (seconds of unrecorded lookups on a freshly opened store before the measured runs, 3).
#
# For each size N it fills a fresh store with `safeguard demo-data --count N --seed 7` (while no
# server runs: sled allows one process at a time; about 1.3k decisions/s on 2 shared cores: 1M
# took 12 minutes), reports the store's size on disk, then serves it with group
# commit and measures with wrk:
#   - case lookups, p50/p99: GET /v1/cases/{case} (the journey) and /v1/cases/{case}/decisions
#     for random existing cases. demo-data puts four decisions in each case and names them
#     demo-0000000, demo-0000001, ... (src/demo.rs), so N decisions make N/4 cases;
#   - durable submits/s, p50/p99, SUBMIT_CONNS clients, to a new case.
# It ends with the per-size figures and each one's ratio to the smallest size. Compare the ratios,
# not absolute figures (the machine is shared). Servers bind 127.0.0.1 only; every server and temp
# folder (with the filled stores) is removed on exit. It needs room for the largest store in
# $TMPDIR (about 5 KB a decision: 1M decisions took 4.8 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-10000 1000000}
SECS=${SECS:-10}
THREADS=${THREADS:-2}
SUBMIT_CONNS=${SUBMIT_CONNS:-64}
LOOKUP_CONNS=${LOOKUP_CONNS:-4}
WARMUP=${WARMUP:-3}
BIN=target/release/safeguard
source benches/lib.sh

need_wrk
cargo build --release --quiet
write_wrk_scripts
python3 - "$WORK/submit.json" <<'PY'
import glob, json, sys
paths = sorted(glob.glob("plugins/*/cases/harm-analysis/*.json")) or sorted(glob.glob("tests/cases/harm-analysis/*.json"))
case = next(c for c in map(lambda p: json.load(open(p)), paths) if "level" in c["expect"])
open(sys.argv[1], "w").write(json.dumps({"tool": "harm-analysis", "input": case["input"]}))
PY

SIZES_FILE="$WORK/sizes.tsv" # size, fill seconds, store bytes after the fill
: >"$SIZES_FILE"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(df -h --output=avail "$WORK" | tail -1 | tr -d ' ') free in $WORK; wrk -t$THREADS, ${SECS}s a run; $(date -u +%FT%TZ)"
started=$(date +%s)
for n in $SIZES; do
  data="$WORK/store-$n"
  echo "size $n: filling"
  fill_started=$(date +%s)
  SAFEGUARD_DATA_DIR="$data" "$BIN" demo-data --count "$n" --seed 7 | sed 's/^/  /'
  fill_secs=$(($(date +%s) - fill_started))
  filled_bytes=$(du -sb "$data" | cut -f1)
  cases=$(((n + 3) / 4))
  make_token "$data"
  start_server "$data" group
  # The cases exist: the first and the last have decisions.
  for c in 0 $((cases - 1)); do
    case_id=$(printf 'demo-%07d' "$c")
    found=$(curl -sf -H "Authorization: Bearer $TOKEN" "127.0.0.1:$PORT/v1/cases/$case_id/decisions")
    [[ $found == *"\"case\":\"$case_id\""* ]] ||
      { echo "case $case_id has no decisions: does demo-data still name cases demo-%07d?" >&2; exit 1; }
  done
  TOKEN="$TOKEN" CASES=$cases wrk -t1 -c"$LOOKUP_CONNS" -d"${WARMUP}s" -s "$WORK/cases.lua" "http://127.0.0.1:$PORT/" >/dev/null
  CASES=$cases SUFFIX="" wrk_run "case journey @$n" "$LOOKUP_CONNS" cases.lua /
  CASES=$cases SUFFIX=/decisions wrk_run "case decisions @$n" "$LOOKUP_CONNS" cases.lua /
  BODY_FILE="$WORK/submit.json" wrk_run "submit (group commit) @$n" "$SUBMIT_CONNS" post.lua /v1/cases/scale-new/decisions
  commit_stats "submit (group commit) @$n" "$SUBMIT_CONNS"
  stop_server
  printf '%s\t%s\t%s\n' "$n" "$fill_secs" "$filled_bytes" >>"$SIZES_FILE"
  rm -rf "$data" # the next size needs the room
done

print_table
print_commits
python3 - "$SIZES_FILE" "$RESULTS" <<'PY'
import sys
sizes = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
runs = {}
for line in open(sys.argv[2]).read().splitlines():
    label, conns, rps, p50, p99, *_ = line.split("\t")
    runs[label] = (float(rps), float(p50), float(p99))

def figures(n):
    s, j, d = runs[f"submit (group commit) @{n}"], runs[f"case journey @{n}"], runs[f"case decisions @{n}"]
    return [s[0], s[1], s[2], j[1], j[2], d[1], d[2]]

head = ["submit/s", "sub p50", "sub p99", "jour p50", "jour p99", "list p50", "list p99"]
print()
print(f"{'decisions':>10} {'fill s':>7} {'store MiB':>9} {'B/dec':>6}  " + " ".join(f"{h:>9}" for h in head))
for n, fill, filled in sizes:
    print(f"{int(n):>10} {fill:>7} {int(filled) / 2**20:>9.1f} {int(filled) / int(n):>6.0f}  "
          + " ".join(f"{v:>9.2f}" if i else f"{v:>9.0f}" for i, v in enumerate(figures(n))))
print(f"\nratio to {int(sizes[0][0])} decisions (submit/s: higher is better; latencies: lower is better)")
base = figures(sizes[0][0])
for n, *_ in sizes:
    print(f"{int(n):>10} {'':>7} {'':>9} {'':>6}  " + " ".join(f"{v / b:>8.2f}x" for v, b in zip(figures(n), base)))
print("(sub = submit, jour = GET /v1/cases/{case}, list = GET /v1/cases/{case}/decisions; latencies in ms; store MiB and B/dec after the fill)")
PY
echo "wall time: $(($(date +%s) - started)) s"
all_ok || { echo "FAILED: some requests were not answered 2xx (see the warnings above); those rows are not valid" >&2; exit 1; }
