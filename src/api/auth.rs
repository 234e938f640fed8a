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

/// A set of roles a route allows, as a type, so the check happens while extracting the
/// caller: a wrong role is refused (403) before the body is even read.
pub trait Roles: Send + Sync + 'static {
    const ALLOWED: &'static [Role];
}

macro_rules! roles {
    ($($(#[$doc:meta])* $name:ident = $roles:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl Roles for $name {
            const ALLOWED: &'static [Role] = $roles;
        }
    )*};
}

roles! {
    /// Any authenticated caller.
    AnyRole = &Role::ALL;
    /// Those who write decisions.
    Writers = &[Role::Practitioner, Role::Supervisor];
    Supervisors = &[Role::Supervisor];
    /// Those who watch the caseload.
    Overseers = &[Role::Supervisor, Role::Auditor];
    Auditors = &[Role::Auditor];
    /// Those who may read tool versions.
    VersionReaders = &[Role::Auditor, Role::Admin];
    Admins = &[Role::Admin];
}

/// A caller with one of the roles `R` allows.
#[derive(Debug)]
pub struct Authorized<R> {
    pub caller: Caller,
    roles: std::marker::PhantomData<R>,
}

impl<R> std::ops::Deref for Authorized<R> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<R: Roles> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(R::ALLOWED)?;
        Ok(Authorized {
            caller,
            roles: std::marker::PhantomData,
        })
    }
}

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
        let record = tokens.authenticate(token).ok_or(ApiError::TokenRefused)?;
        if let Some(slot) = parts.extensions.get::<super::observe::ActorSlot>() {
            slot.set(&record.subject);
        }
        Ok(Caller {
            subject: record.subject.clone(),
            role: record.role,
        })
    }
}
