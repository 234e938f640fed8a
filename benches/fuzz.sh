#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis, driven by the service's own /openapi.json, against the
# release binary on loopback with a fresh data folder.
#
#   benches/fuzz.sh                          # every role, 100 examples an operation, seed 1
#   EXAMPLES=500 SEED=7 benches/fuzz.sh
#   ROLES="auditor admin" benches/fuzz.sh
#   ROLES=admin OPERATIONS=version_get benches/fuzz.sh    # one operation (by operationId)
#
# What it asserts, on every response: no 5xx; status code, content type, headers and body as the
# description says; data the description allows is accepted and data it rules out is refused;
# auth is not ignored. It exits non-zero on any failure, or if the server logged a panic.
#
# Each role gets its own run, limited to the operations that role may call (the DESIGN.md API
# table), so every route is exercised past its role check; the open routes and those any role may
# call run with the practitioner. One server serves every run, so later roles find the
# decisions earlier ones made (auditors replay, export and verify them).
#
# The run is bounded: EXAMPLES test cases per operation and phase, and a hard TIMEOUT per role.
# Nothing leaves this machine: the server listens on 127.0.0.1 only and schemathesis talks to it
# alone. The venv is kept in target/fuzz-venv; logs of the last run are left in target/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${EXAMPLES:-100}
SEED=${SEED:-1}
TIMEOUT=${TIMEOUT:-900}
ROLES=${ROLES:-practitioner supervisor auditor admin}
PORT=${PORT:-18992}
VENV=${FUZZ_VENV:-target/fuzz-venv}
LOGS=target/fuzz
BASE="http://127.0.0.1:$PORT"
WORK=$(mktemp -d)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --release --quiet
BIN=target/release/safeguard
rm -rf "$LOGS" && mkdir -p "$LOGS"

# Tokens are created while the service is stopped (sled allows one process at a time).
DATA="$WORK/data"
for role in $(printf '%s\n' $ROLES practitioner | sort -u); do
  SAFEGUARD_DATA_DIR="$DATA" $BIN token create --role "$role" --subject "fuzz-$role" >"$WORK/$role.token"
done

SAFEGUARD_DATA_DIR="$DATA" SAFEGUARD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn \
  $BIN serve >"$LOGS/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf "$BASE/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/healthz" >/dev/null || { echo "server did not start"; cat "$LOGS/server.log"; exit 1; }

# Known ids, so that requests reach past "no such decision" and "no such tool": two decisions
# (one with an override waiting for approval), every tool id and digest and the levels. The
# generator uses each with probability 0.5 and generates the parameter otherwise. And a form
# each tool accepts, which benches/fuzz_hooks.py sends in place of a generated empty form.
python3 - "$BASE" "$WORK" <<'PY'
import glob, json, sys, urllib.request, urllib.error

base, work = sys.argv[1], sys.argv[2]
token = open(f"{work}/practitioner.token").read().strip()

def call(method, path, body=None, headers=None):
    request = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token,
                 "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)

tool = "harm-analysis"
paths = sorted(glob.glob(f"plugins/*/cases/{tool}/*.json")) or sorted(glob.glob(f"tests/cases/{tool}/*.json"))
form = next(c["input"] for c in map(lambda p: json.load(open(p)), paths) if "level" in c["expect"])
decisions = []
for case in ("fuzz-case-1", "fuzz-case-2"):
    status, decision = call("POST", f"/v1/cases/{case}/decisions", {"tool": tool, "input": form})
    assert status == 201, decision
    decisions.append(decision)
status, detail = call("GET", f"/v1/tools/{tool}")
levels = [o["level"] for o in detail["outcomes"]]
pending = decisions[1]
for level in levels:
    if level == pending["level"]:
        continue
    status, _ = call("POST", f"/v1/decisions/{pending['id']}/override",
                     {"level": level, "reason": "the child said more at the visit"}, {"If-Match": '"1"'})
    if status == 201:
        break
else:
    sys.exit("no override of the seeded decision was accepted")
status, tools = call("GET", "/v1/tools")

# A form each tool accepts, for benches/fuzz_hooks.py: its first case that reaches a level, from
# the plugins' cases where a plugin changes the tool, else from the core cases.
forms = {}
for t in tools:
    paths = sorted(glob.glob(f"plugins/*/cases/{t['id']}/*.json")) or sorted(glob.glob(f"tests/cases/{t['id']}/*.json"))
    for case in map(lambda p: json.load(open(p)), paths):
        if "level" in case["expect"]:
            forms[t["id"]] = case["input"]
            break
json.dump(forms, open(f"{work}/forms.json", "w"))

def strings(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"

config = f'''
headers = {{ Authorization = "Bearer ${{SAFEGUARD_FUZZ_TOKEN}}" }}
hooks = "benches/fuzz_hooks.py"

[dictionaries]
tools = {{ values = {strings(t["id"] for t in tools)} }}
digests = {{ values = {strings(t["digest"] for t in tools)} }}
decisions = {{ values = {strings(d["id"] for d in decisions)} }}
cases = {{ values = {strings(d["case"] for d in decisions)} }}
levels = {{ values = {strings(levels)} }}
etags = {{ values = ['"1"', '"2"'] }}

[parameters]
"path.tool" = {{ dictionary = "tools", probability = 0.5 }}
"path.digest" = {{ dictionary = "digests", probability = 0.5 }}
"path.id" = {{ dictionary = "decisions", probability = 0.5 }}
"path.case" = {{ dictionary = "cases", probability = 0.5 }}
"header.If-Match" = {{ dictionary = "etags", probability = 0.5 }}
"body.tool" = {{ dictionary = "tools", probability = 0.5 }}
"body.level" = {{ dictionary = "levels", probability = 0.5 }}
"query.tool" = {{ dictionary = "tools", probability = 0.5 }}
'''
open(f"{work}/schemathesis.toml", "w").write(config)
PY

# Where the description cannot say what the service accepts, a schema-valid request may still be
# refused with a documented status; positive_data_acceptance is told which, operation by
# operation, and why:
#   422 on evaluate, submit and amend: `input` is any object in the API description; which forms
#       are valid is the tool's own JSON Schema, served at GET /v1/tools/{tool}.
#   422 on override: the level must be one the tool declares, within its override policy.
#   428 on amend, override and approve: the revision may come as If-Match or as
#       expected_revision, and one of them is required; 400 there: when both come they must
#       agree. OpenAPI cannot relate a header to a body field.
#   422 on replay: candidate rules, params and schema patches must load as a tool; and on replay
#       and export: a level the tool never had, or a `to` before `from`, is refused (the
#       description cannot relate a level to a tool, nor two parameters to each other).
#   422 on decline: a reason of only spaces; 403 there: a practitioner may withdraw only an
#       override they asked for.
#   400 on disparity: `to` before `from` is refused; JSON Schema cannot relate two fields.
#   409 on token_create: a subject that looks the same as another token's (UTS #39 confusables)
#       is refused; that depends on the tokens on record, which no schema can say.
cat >>"$WORK/schemathesis.toml" <<'TOML'

[[operations]]
include-operation-id = ["tool_evaluate", "decision_submit"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-operation-id = ["decision_amend", "decision_override"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "428"]

[[operations]]
include-operation-id = "decision_approve"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "428"]

[[operations]]
include-operation-id = "decision_decline"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "428"]

[[operations]]
include-operation-id = ["audit_replay", "audit_export"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422"]

[[operations]]
include-operation-id = "token_create"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409"]

[[operations]]
include-operation-id = "audit_disparity"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]
TOML

# The operations each role runs: its own, beyond what any role may call (DESIGN.md API table).
operations() {
  case "$1" in
    practitioner) echo health ready metrics openapi tools_list tool_get tool_evaluate case_journey \
                       case_decisions_list decision_get revisions_list \
                       decision_submit decision_amend decision_override decision_decline ;;
    supervisor) echo decision_submit decision_amend decision_override decision_approve \
                     decision_decline dashboard_get ;;
    auditor) echo versions_list version_get audit_replay audit_export audit_verify audit_disparity \
                  dashboard_get ;;
    admin) echo versions_list version_get catalog_reload tokens_list token_create token_revoke ;;
    *) echo "unknown role $1" >&2; exit 2 ;;
  esac
}

echo "schemathesis $SCHEMATHESIS_VERSION; $EXAMPLES examples an operation, seed $SEED; machine: $(nproc) cores"
failed=0
for role in $ROLES; do
  filters=()
  for id in ${OPERATIONS:-$(operations "$role")}; do filters+=(--include-operation-id "$id"); done
  started=$(date +%s)
  status=0
  SAFEGUARD_FUZZ_TOKEN=$(cat "$WORK/$role.token") SAFEGUARD_FUZZ_FORMS="$WORK/forms.json" timeout "$TIMEOUT" \
    "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" --no-color run "$BASE/openapi.json" \
      "${filters[@]}" --checks all --max-examples "$EXAMPLES" --seed "$SEED" \
      --generation-database none --workers 1 >"$LOGS/$role.log" 2>&1 || status=$?
  echo
  echo "== $role ($(( $(date +%s) - started )) s, exit $status)"
  if [ "$status" -ne 0 ]; then
    failed=1
    sed -n '/^=* FAILURES =*$/,$p' "$LOGS/$role.log"
  else
    sed -n '/^=* SUMMARY =*$/,$p' "$LOGS/$role.log"
  fi
done

if grep -q "panicked" "$LOGS/server.log"; then
  echo "the server panicked:"; grep -A5 "panicked" "$LOGS/server.log"; failed=1
fi
echo
[ "$failed" -eq 0 ] && echo "fuzz: clean (every role)" || echo "fuzz: FAILED (full logs in $LOGS/)"
exit "$failed"
