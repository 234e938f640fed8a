"""schemathesis hooks for benches/fuzz.sh.

The API description says only that a form (`input`) is an object: which forms a tool accepts is
the tool's own JSON Schema. So that the fuzzer also reaches the paths where a form is accepted
(a 201 decision, a 200 evaluation, an amendment that is re-evaluated) and checks those
responses against the description, a generated empty form (`"input": {}`) for a tool the
service serves becomes a form that tool accepts: one of its cases, written out by fuzz.sh to
the file SAFEGUARD_FUZZ_FORMS names. Every other generated body is sent as generated.

A new token's subject is refused for more than its pattern can say (an ECMA-262 pattern names
characters of the Basic Multilingual Plane only, and cannot say "in NFKC"; the description says so
in words; nor where a zero-width joiner or non-joiner is needed), so a generated subject the
service refuses for that alone is not sent.
"""

import json
import os
import unicodedata

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


def invisible_beyond_the_bmp(c):
    """An invisible character the subject's pattern cannot name: a format character (Cf) or a
    default-ignorable code point (tags, variation selectors supplement) past U+FFFF."""
    return ord(c) > 0xFFFF and (unicodedata.category(c) == "Cf" or 0xE0000 <= ord(c) <= 0xE0FFF)


@schemathesis.hook.apply_to(operation_id=["token_create"])
def filter_body(context, body):
    subject = body.get("subject") if isinstance(body, dict) else None
    if not isinstance(subject, str):
        return True
    return (
        unicodedata.is_normalized("NFKC", subject)
        and not any(map(invisible_beyond_the_bmp, subject))
        and "\u200c" not in subject
        and "\u200d" not in subject
    )
