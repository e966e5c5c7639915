//! The HTTP side of [`crate::admission`]: middleware for the decision
//! routes. Past `--max-concurrent-requests` in flight, or past
//! `--request-timeout`, a call is answered 503 with `Retry-After: 1` (a 429
//! would read as "rate limited"): `/json` with its `{"error": ...}` body,
//! `/auth` with a problem+json body (also in `x-sluice-problem`, as every
//! `/auth` refusal). HTTP callers send no deadline, so `--request-timeout`
//! is the only one; past it the decision is not driven further.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admission::{Admission, DEADLINE_MESSAGE};
use crate::authz::{Answer, Denied};

/// Why a call was not decided.
enum Refusal {
    Overloaded(String),
    Deadline,
}

impl Refusal {
    fn detail(&self) -> &str {
        match self {
            Refusal::Overloaded(why) => why,
            Refusal::Deadline => DEADLINE_MESSAGE,
        }
    }
}

async fn run(admission: &Admission, req: Request, next: Next) -> Result<Response, Refusal> {
    let permit = admission
        .admit()
        .map_err(|e| Refusal::Overloaded(e.to_string()))?;
    match tokio::time::timeout(admission.time_allowed(None), next.run(req)).await {
        Ok(response) => {
            permit.answered();
            Ok(response)
        }
        Err(_) => {
            permit.deadline_passed();
            Err(Refusal::Deadline)
        }
    }
}

/// `POST /json`: refused with `{"error": ...}`.
pub async fn json(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    match run(&admission, req, next).await {
        Ok(response) => response,
        Err(refusal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({ "error": refusal.detail() })),
        )
            .into_response(),
    }
}

/// `/auth`: refused with a problem (code `OVERLOADED` or
/// `DEADLINE_EXCEEDED`).
pub async fn auth(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    match run(&admission, req, next).await {
        Ok(response) => response,
        Err(refusal) => {
            let code = match refusal {
                Refusal::Overloaded(_) => "OVERLOADED",
                Refusal::Deadline => "DEADLINE_EXCEEDED",
            };
            let body = serde_json::json!({
                "type": "about:blank",
                "title": "Service overloaded",
                "status": 503,
                "detail": refusal.detail(),
                "code": code,
            })
            .to_string();
            super::auth::respond(Answer::Deny(Denied {
                status: 503,
                code,
                headers: vec![
                    ("retry-after".into(), "1".into()),
                    (
                        "content-type".into(),
                        crate::authz::answer::PROBLEM_JSON.into(),
                    ),
                ],
                body,
            }))
        }
    }
}
