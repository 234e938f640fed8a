//! The caller of a request, from its bearer token, and the role check every handler makes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::auth::Role;
use crate::store::Actor;

/// Who is calling, as their token says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
}

impl Caller {
    /// Refuses the request (403) unless the caller has one of `roles`.
    pub fn require(&self, roles: &'static [Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(roles))
        }
    }

    /// The actor recorded on revisions this caller makes.
    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.subject.clone(),
            role: self.role,
        }
    }
}

/// Roles that may use any authenticated route.
pub const ANY: &[Role] = &Role::ALL;
/// Roles that write decisions.
pub const WRITERS: &[Role] = &[Role::Practitioner, Role::Supervisor];
pub const SUPERVISORS: &[Role] = &[Role::Supervisor];

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let tokens = state.tokens.read().expect("token lock poisoned");
        let record = tokens.authenticate(token).ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            subject: record.subject.clone(),
            role: record.role,
        })
    }
}
