//! The kinds of problem the API answers with. Each is an RFC 9457 problem type whose `type` URI,
//! `/problems/<slug>`, is also a page on this service saying what the problem means and what to
//! do about it (RFC 9457 section 3.1.1: a type URI should lead to documentation a person can read).
//! [`super::ApiError`] maps each of its variants to one of these; nothing else names a slug.

use axum::http::StatusCode;

/// Declares [`ProblemType`] and its list of every kind, from one list of names.
macro_rules! problem_types {
    ($($kind:ident),* $(,)?) => {
        /// A kind of problem: its slug, title and status, and the page that explains it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $($kind),*
        }

        impl ProblemType {
            /// Every kind, in the order the index page lists them.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$kind),*];
        }
    };
}

problem_types! {
    Unauthorized,
    Forbidden,
    FourEyes,
    InvalidForm,
    InvalidRequest,
    InvalidFilter,
    UnsupportedMediaType,
    PayloadTooLarge,
    RequestTimeout,
    UnknownTool,
    UnknownDecision,
    UnknownVersion,
    CandidateInvalid,
    NotFound,
    MethodNotAllowed,
    InvalidOverride,
    NoPendingOverride,
    Conflict,
    RevisionRequired,
    IdempotencyMismatch,
    ScriptLimit,
    ToolError,
    CatalogInvalid,
    UnknownToken,
    TokenConflict,
    SubjectLooksAlike,
    Unavailable,
    StoreUnavailable,
    Internal,
}

/// What a problem type's page says.
#[derive(Debug, Clone, Copy)]
pub struct ProblemDoc {
    pub slug: &'static str,
    pub title: &'static str,
    pub status: StatusCode,
    /// What happened, for the developer of a case system or the person reading its log.
    pub meaning: &'static str,
    /// What to do about it.
    pub remedy: &'static str,
}

impl ProblemType {
    /// The kind whose slug is `slug`.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|kind| kind.doc().slug == slug)
    }

    /// The `type` of its problem documents, and the address of its page.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.doc().slug)
    }

    /// The table: every kind's slug, title, status and page.
    pub fn doc(self) -> ProblemDoc {
        use ProblemType::*;
        let (slug, title, status, meaning, remedy) = match self {
            Unauthorized => (
                "unauthorized",
                "Unauthorized",
                StatusCode::UNAUTHORIZED,
                "The request carried no bearer token, or one the service does not accept: unknown, mistyped, revoked, or sent other than as `Authorization: Bearer <token>`. The `detail` says which of the two.",
                "Send `Authorization: Bearer <token>` with a token an administrator created for the caller (`safeguard token create`, or `POST /v1/admin/tokens`). A revoked token never works again: ask for a new one.",
            ),
            Forbidden => (
                "forbidden",
                "Forbidden",
                StatusCode::FORBIDDEN,
                "The token is valid, but its role may not do this (the `detail` names the roles that may), or a practitioner tried to decline an override someone else asked for.",
                "Use the route with a token of a role it allows (the API description lists them for each route), or ask a supervisor.",
            ),
            FourEyes => (
                "four-eyes",
                "Approval needs a second person",
                StatusCode::FORBIDDEN,
                "A supervisor tried to approve an override they asked for themselves, or one asked for under a subject that looks the same as theirs (Unicode's confusables, UTS #39), which a record could not tell apart. An override takes effect only once a second person agrees with it.",
                "Ask another supervisor to approve it, or decline (withdraw) it.",
            ),
            InvalidForm => (
                "invalid-form",
                "The form is invalid",
                StatusCode::UNPROCESSABLE_ENTITY,
                "The form breaks its tool's schema: nothing was decided or stored. `errors` lists each problem as `{path, message}`, `path` a JSON Pointer to the field. Messages name the rule broken, never the value sent. At most 100 are listed, then one more at path `\"\"` says there were others; a form with a text, list or object too big for a tool to read is refused for that alone.",
                "Correct the fields named in `errors` and send the whole form again. `GET /v1/tools/{tool}` gives the schema the form must meet.",
            ),
            InvalidRequest => (
                "invalid-request",
                "The request is invalid",
                StatusCode::BAD_REQUEST,
                "The request itself could not be read: malformed JSON, a field of the wrong type, an unknown field, a missing one, or a bad header or query parameter. `errors` names the field (a JSON Pointer into the body, or the parameter's name). Nothing was stored.",
                "Correct the field named in `errors`; the API description (`/openapi.json`) gives every body's schema.",
            ),
            InvalidFilter => (
                "invalid-filter",
                "The filter matches nothing that could exist",
                StatusCode::UNPROCESSABLE_ENTITY,
                "A well-formed filter of an export or replay that can only be a mistake: a level no version of the tool declares, or a window whose end is before its start. `errors` names the parameter.",
                "Check the parameter named in `errors` against the tool's declared outcomes (`GET /v1/tools/{tool}`) or the window's dates.",
            ),
            UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported media type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The body was not sent as JSON. Nothing was stored.",
                "Send the body as JSON with `Content-Type: application/json`.",
            ),
            PayloadTooLarge => (
                "payload-too-large",
                "Payload too large",
                StatusCode::PAYLOAD_TOO_LARGE,
                "The body is larger than the service accepts (`body_limit_bytes`, 1 MiB by default). Nothing was stored.",
                "A form is far smaller than this: check what is being sent. An operator can raise the limit in the service's configuration.",
            ),
            RequestTimeout => (
                "request-timeout",
                "Request timeout",
                StatusCode::REQUEST_TIMEOUT,
                "The body did not arrive in full within the read timeout (`read_timeout_secs`) of the request's head. Nothing was stored.",
                "Send the request again; if it keeps happening, the network between the caller and the service is the place to look.",
            ),
            UnknownTool => (
                "unknown-tool",
                "Unknown tool",
                StatusCode::NOT_FOUND,
                "No tool of the catalog in force (nor, for an audit, any version ever served) has this id.",
                "`GET /v1/tools` lists the tools served now. Ids are the file stems of `tool-schemas/`, e.g. `harm-analysis`.",
            ),
            UnknownDecision => (
                "unknown-decision",
                "Unknown decision",
                StatusCode::NOT_FOUND,
                "No decision has this id.",
                "Use the `id` returned when the decision was submitted, or list a case's decisions with `GET /v1/cases/{case}/decisions`.",
            ),
            UnknownVersion => (
                "unknown-version",
                "Unknown tool version",
                StatusCode::NOT_FOUND,
                "No snapshot of a tool version with this digest is stored.",
                "`GET /v1/tools/{tool}/versions` lists every version of a tool the service has served, with its digest.",
            ),
            CandidateInvalid => (
                "candidate-invalid",
                "The candidate does not load",
                StatusCode::UNPROCESSABLE_ENTITY,
                "The candidate tool of a replay (its schema, rules or params) does not load; `errors` says where and why. Nothing was replayed.",
                "Fix the candidate as `safeguard check` would report it, and replay again.",
            ),
            NotFound => (
                "not-found",
                "Not found",
                StatusCode::NOT_FOUND,
                "Nothing is served at this address.",
                "`/openapi.json` lists every route.",
            ),
            MethodNotAllowed => (
                "method-not-allowed",
                "Method not allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                "This address does not take that method.",
                "The `Allow` header lists the methods it takes.",
            ),
            InvalidOverride => (
                "invalid-override",
                "The override request is not allowed",
                StatusCode::UNPROCESSABLE_ENTITY,
                "An override named a level the tool does not declare, gave no reason, asked for its level again, or went beyond the tool's override policy (`x-tool.override`: direction and steps). `errors` names the field and the rule. Nothing was stored.",
                "Choose a declared level within the policy (`GET /v1/tools/{tool}` shows both) and give the reason in words the family and a reviewer can follow.",
            ),
            NoPendingOverride => (
                "no-pending-override",
                "No override is waiting for a supervisor",
                StatusCode::CONFLICT,
                "An approval or a decline was sent for a decision with no override waiting: none was asked for, or it has already been approved or declined.",
                "Read the decision (`GET /v1/decisions/{id}`) to see its override and its status.",
            ),
            Conflict => (
                "conflict",
                "The decision has changed",
                StatusCode::CONFLICT,
                "The change was built on a revision of the decision that is no longer its latest: someone else changed it first. Nothing was stored.",
                "Read the decision again (its `ETag` is the latest revision), look at what changed, and send the change again built on that revision if it still stands.",
            ),
            RevisionRequired => (
                "revision-required",
                "Revision required",
                StatusCode::PRECONDITION_REQUIRED,
                "A change to a decision (amend, override, approve, decline) did not say which revision it builds on, so two people changing one decision at once could not be told apart.",
                "Send `If-Match` with the `ETag` of the decision as read, or `expected_revision` in the body.",
            ),
            IdempotencyMismatch => (
                "idempotency-mismatch",
                "Idempotency-Key reused",
                StatusCode::UNPROCESSABLE_ENTITY,
                "This `Idempotency-Key` was already used by the same caller with a different request. A retry must repeat the first request exactly; nothing was stored.",
                "Use a new key for a new request; repeat the first request unchanged to get its decision again.",
            ),
            ScriptLimit => (
                "script-limit",
                "The rules hit a safety limit",
                StatusCode::UNPROCESSABLE_ENTITY,
                "The tool's rules ran past one of the sandbox's bounds (operations, time, sizes, call depth) on this form. Nothing was decided or stored. The `detail` names the bound.",
                "Tell the tool's owner, with the tool and the time: this is a fault of the tool, which `safeguard check` and its cases should catch.",
            ),
            ToolError => (
                "tool-error",
                "The tool failed",
                StatusCode::INTERNAL_SERVER_ERROR,
                "The tool's rules failed on this form, or returned something that is not a decision (a level the tool does not declare, a missing explanation). Nothing was decided or stored; the cause is in the service log.",
                "Tell the tool's owner, with the tool and the time. The practitioner's form may be fine: this is a fault of the tool.",
            ),
            CatalogInvalid => (
                "catalog-invalid",
                "The catalog has problems",
                StatusCode::UNPROCESSABLE_ENTITY,
                "A reload found the tool files on disk broken: a tool or plugin that does not load, or a tool case that fails. `errors` lists each problem with its file. The catalog in force keeps serving, unchanged.",
                "Fix what `errors` lists (`safeguard check` reports the same), then reload again.",
            ),
            UnknownToken => (
                "unknown-token",
                "Unknown token",
                StatusCode::NOT_FOUND,
                "No token has this id.",
                "`GET /v1/admin/tokens` lists the tokens with their ids.",
            ),
            TokenConflict => (
                "token-conflict",
                "The token cannot be changed so",
                StatusCode::CONFLICT,
                "The token is already revoked, or it is the last admin token, which would leave no one able to manage the service.",
                "Create another admin token before revoking the last one.",
            ),
            SubjectLooksAlike => (
                "subject-looks-alike",
                "The subject looks like another token's",
                StatusCode::CONFLICT,
                "The new token's subject looks the same as the subject of a token on record (in use or revoked) without being it: a Cyrillic or Greek letter for a Latin one, \"rn\" for \"m\", \"I\" for \"l\", or another case (Unicode's confusables, UTS #39). Every revision records its actor by subject, and four eyes compare subjects, so a reader of the record could not tell the two holders apart.",
                "The detail names the token in the way and what to do. For another token of the same holder, use exactly the subject they already have (unless the detail says it is itself refused). For another holder, choose a subject that reads differently, with a surname or a staff number.",
            ),
            Unavailable => (
                "unavailable",
                "Service unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is starting or stopping and takes no requests now.",
                "Send the request again shortly, or to another instance.",
            ),
            StoreUnavailable => (
                "store-unavailable",
                "The store cannot take writes",
                StatusCode::SERVICE_UNAVAILABLE,
                "A write could not be made durable (a full or failing disk, or a data folder moved or replaced while the service ran). This request was not stored, and no write is taken until the service is restarted; reads are still answered.",
                "An operator must find the cause in the service log, repair it (free or repair the disk, put the data folder back) and restart the service; then send the request again.",
            ),
            Internal => (
                "internal",
                "Internal error",
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong inside the service. The cause is in the service log; nothing internal is said here.",
                "Send the request again; if it keeps happening, tell the operator the time and the request id (`x-request-id`).",
            ),
        };
        ProblemDoc {
            slug,
            title,
            status,
            meaning,
            remedy,
        }
    }
}

/// The page at a problem type's URI: HTML, its text written here and escaped all the same.
pub fn page(kind: ProblemType) -> String {
    let doc = kind.doc();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<p>HTTP status {status}. Problem type <code>{uri}</code>.</p>\n<h2>What it means</h2>\n<p>{meaning}</p>\n<h2>What to do</h2>\n<p>{remedy}</p>\n<p><a href=\"/problems\">Every problem type</a></p>\n</body>\n</html>\n",
        title = html(doc.title),
        status = doc.status.as_u16(),
        uri = html(&kind.uri()),
        meaning = code_spans(doc.meaning),
        remedy = code_spans(doc.remedy),
    )
}

/// The page at `/problems`: every problem type, linked.
pub fn index() -> String {
    let rows: String = ProblemType::ALL
        .iter()
        .map(|kind| {
            let doc = kind.doc();
            format!(
                "<li><a href=\"{uri}\"><code>{uri}</code></a> ({status}): {title}</li>\n",
                uri = html(&kind.uri()),
                status = doc.status.as_u16(),
                title = html(doc.title),
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Problem types</title></head>\n<body>\n<h1>Problem types</h1>\n<p>Every error this service answers is an RFC 9457 <code>application/problem+json</code> document whose <code>type</code> is one of these.</p>\n<ul>\n{rows}</ul>\n</body>\n</html>\n"
    )
}

/// `text` with HTML's special characters escaped.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// `text` escaped, with each `` `span` `` set as code.
fn code_spans(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", html(part))
            } else {
                html(part)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_slug_and_is_found_by_it() {
        let mut slugs: Vec<&str> = ProblemType::ALL.iter().map(|k| k.doc().slug).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemType::ALL.len());
        for &kind in ProblemType::ALL {
            assert_eq!(ProblemType::from_slug(kind.doc().slug), Some(kind));
        }
        assert_eq!(ProblemType::from_slug("nope"), None);
    }

    #[test]
    fn a_page_escapes_its_text_and_sets_code_spans() {
        assert_eq!(
            code_spans("send `If-Match` & <b>"),
            "send <code>If-Match</code> &amp; &lt;b&gt;"
        );
        let page = page(ProblemType::RevisionRequired);
        assert!(page.contains("<h1>Revision required</h1>"), "{page}");
        assert!(page.contains("HTTP status 428"), "{page}");
        assert!(page.contains("<code>If-Match</code>"), "{page}");
    }
}
