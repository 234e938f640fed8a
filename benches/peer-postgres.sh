#!/usr/bin/env bash
# The PostgreSQL peer of the load benchmark: durable INSERT + COMMIT of a safeguard revision,
# one row per transaction, driven by pgbench. benches/load.sh calls it; it also runs alone:
#
#   benches/peer-postgres.sh REVISION.json          # one revision as `safeguard export` writes it
#   CONNS=16 SECS=15 benches/peer-postgres.sh REVISION.json
#
# Settings (environment): CONNS (pgbench clients, 64), THREADS (pgbench threads, 2), SECS (10),
# PG_BIN (the folder with initdb, pg_ctl, postgres and pgbench; found when unset).
#
# What it does: installs PostgreSQL from Debian's packages only when it is missing; initdb's a
# cluster in a temp folder (as the `postgres` user, or `nobody`, when run as root: initdb refuses
# root) and starts it on 127.0.0.1 on a free port, its unix socket in the temp folder. Durability
# settings are PostgreSQL's defaults, named explicitly: fsync=on, synchronous_commit=on,
# full_page_writes=on, wal_sync_method=fdatasync (Linux's default). The table mirrors safeguard's
# journal (seq, decision_id, case_id, tool, body jsonb, hash, created_at) with an index on each of
# decision_id, case_id, tool and created_at, as safeguard writes four index entries in the same
# batch as each revision. Each transaction inserts the revision's JSON with a fresh decision id
# and a SHA-256 over the row (safeguard hashes each revision too; the PostgreSQL rows are not
# chained to each other), over TCP on loopback like wrk's requests.
#
# It prints pgbench's own report and then one line for load.sh:
#   RESULT rps=<tps> p50_ms=... p99_ms=... requests=<transactions> non2xx=<failed> sockerr=0
# p50/p99 come from pgbench's per-transaction log. The cluster and its folder are removed on exit.
set -euo pipefail

REVISION=${1:?usage: benches/peer-postgres.sh REVISION.json}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
SECS=${SECS:-10}

# Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin, off PATH.
find_pg_bin() {
  local dir
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pgbench" ] && { echo "$dir"; return; }
  done
}
PG_BIN=${PG_BIN:-$(find_pg_bin)}
if [ -z "$PG_BIN" ]; then
  echo "installing PostgreSQL from Debian's packages" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  PG_BIN=$(find_pg_bin)
fi
[ -n "$PG_BIN" ] || { echo "no PostgreSQL server binaries found" >&2; exit 1; }

PGWORK=$(mktemp -d)
PGDATA="$PGWORK/data"
STARTED=no
# initdb and the server refuse to run as root: run them as an ordinary user.
if [ "$(id -u)" = 0 ]; then
  PGUSER_OS=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
  chown "$PGUSER_OS" "$PGWORK"
  as_pg() { runuser -u "$PGUSER_OS" -- "$@"; }
else
  as_pg() { "$@"; }
fi
cleanup() {
  if [ "$STARTED" = yes ]; then as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$PGWORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cd "$PGWORK"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U bench --auth=trust -E UTF8 --locale=C.UTF-8 >"$PGWORK/initdb.log"
STARTED=yes
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGWORK/server.log" -w -o "\
  -c listen_addresses=127.0.0.1 -p $PORT -k $PGWORK -c max_connections=$((CONNS + 10)) \
  -c fsync=on -c synchronous_commit=on -c full_page_writes=on" start >/dev/null
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U bench -d postgres "$@"; }

psql <<'SQL'
CREATE TABLE journal (
  seq         bigserial PRIMARY KEY,
  decision_id text NOT NULL,
  case_id     text NOT NULL,
  tool        text NOT NULL,
  body        jsonb NOT NULL,
  hash        text NOT NULL,
  created_at  timestamptz NOT NULL
);
CREATE INDEX journal_decision ON journal (decision_id);
CREATE INDEX journal_case ON journal (case_id);
CREATE INDEX journal_tool ON journal (tool);
CREATE INDEX journal_created ON journal (created_at);
SQL

# The revision as a dollar-quoted literal: JSON has no `$revision$` in it, so it needs no escaping.
body=$(head -n1 "$REVISION")
# shellcheck disable=SC2016 # the marker is literal text
case "$body" in *'$revision$'*) echo "the revision contains the quote marker" >&2; exit 1 ;; esac
case_id=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(r["case_id"], r["tool"]["id"])' "$body")
read -r case_id tool <<<"$case_id"
cat >"$PGWORK/insert.sql" <<SQL
INSERT INTO journal (decision_id, case_id, tool, body, hash, created_at)
SELECT id, '$case_id', '$tool', body, encode(sha256(convert_to(id || body::text, 'UTF8')), 'hex'), now()
FROM (SELECT gen_random_uuid()::text AS id, \$revision\$$body\$revision\$::jsonb AS body) AS r;
SQL

echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') in $PG_BIN; body ${#body} bytes; pgbench -c $CONNS -j $THREADS -T $SECS" >&2
psql -At -c "SELECT name || '=' || current_setting(name) FROM pg_settings WHERE name IN
  ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'commit_delay', 'shared_buffers')" |
  tr '\n' ' ' >&2
echo >&2
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U bench -n -c "$CONNS" -j "$THREADS" -T "$SECS" -r \
  -f "$PGWORK/insert.sql" --log --log-prefix="$PGWORK/txlog" postgres >"$PGWORK/pgbench.out" 2>&1 ||
  { cat "$PGWORK/pgbench.out" >&2; exit 1; }
grep -E '^(number of|latency|tps|initial)' "$PGWORK/pgbench.out" >&2

tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' "$PGWORK/pgbench.out")
done_tx=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$PGWORK/pgbench.out")
failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$PGWORK/pgbench.out")
rows=$(psql -At -c 'SELECT count(*) FROM journal')
[ "$rows" = "$done_tx" ] || echo "WARNING: $done_tx transactions reported but $rows rows stored" >&2
# The log's third column is each transaction's latency in microseconds.
read -r p50 p99 < <(cat "$PGWORK"/txlog.* | python3 -c 'import sys
lat = sorted(int(line.split()[2]) for line in sys.stdin)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"{pick(0.50):.2f} {pick(0.99):.2f}")')
echo "RESULT rps=$(printf '%.0f' "$tps") p50_ms=$p50 p99_ms=$p99 requests=$done_tx non2xx=${failed:-0} sockerr=0"
