"""schemathesis hooks for benches/fuzz.sh.

The API description says only that a form (`input`) is an object: which forms a tool accepts is
the tool's own JSON Schema. So that the fuzzer also reaches the paths where a form is accepted
(a 201 decision, a 200 evaluation, an amendment that is re-evaluated) and checks those
responses against the description, a generated empty form (`"input": {}`) for a tool the
service serves becomes a form that tool accepts: one of its cases, written out by fuzz.sh to
the file SAFEGUARD_FUZZ_FORMS names. Every other generated body is sent as generated.
"""

import json
import os

import schemathesis

with open(os.environ["SAFEGUARD_FUZZ_FORMS"]) as file:
    FORMS = json.load(file)
# The decisions fuzz.sh seeds, which amendments reach, are of this tool.
SEEDED_TOOL = "harm-analysis"


# Only where a form is sent: a case hook slows generation down wherever it applies.
@schemathesis.hook.apply_to(operation_id=["tool_evaluate", "decision_submit", "decision_amend"])
def map_case(context, case):
    body = case.body
    if not isinstance(body, dict) or body.get("input") != {}:
        return case
    path = context.operation.path if context.operation else ""
    if path == "/v1/decisions/{id}/revisions":
        tool = SEEDED_TOOL
    else:
        tool = body.get("tool", (case.path_parameters or {}).get("tool"))
    if isinstance(tool, str) and tool in FORMS:
        case.body = {**body, "input": FORMS[tool]}
    return case
