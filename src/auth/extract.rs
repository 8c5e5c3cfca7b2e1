//! Tokens on HTTP requests: where a token is read from ([`bearer_token`]) and the
//! [`ServiceRole`] extractor every management handler uses.
//!
//! With no JWT secret configured, [`Auth`] has no verifier and [`ServiceRole`] lets every
//! request through (as `serve` does without `--jwt-secret`).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Policy, Token, TokenProblem, Verifier, unix_now};
use crate::error::ApiError;

/// How requests are authenticated: the server's token verifier, if a secret is configured.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// The verifier; `None` without a JWT secret.
    verifier: Option<Arc<Verifier>>,
}

impl Auth {
    /// Tokens checked against `secret` under the default policy; `None` checks nothing.
    pub fn new(secret: Option<&str>) -> Self {
        Self::with_policy(secret, Policy::default())
    }

    /// Tokens checked against `secret` under `policy`; `None` checks nothing.
    pub fn with_policy(secret: Option<&str>, policy: Policy) -> Self {
        Auth {
            verifier: secret.map(|s| Arc::new(Verifier::with_policy(s, policy))),
        }
    }

    /// The verifier, when a secret is configured.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.verifier.as_ref()
    }

    /// Whether the request carries a valid `service_role` token (always, without a secret).
    pub fn service_role(&self, headers: &HeaderMap) -> Result<ServiceRole, AuthRejection> {
        let Some(verifier) = &self.verifier else {
            return Ok(ServiceRole { token: None });
        };
        let token =
            bearer_token(headers).ok_or(AuthRejection::Unauthorized(TokenProblem::Missing))?;
        let token = verifier
            .verify(token, unix_now())
            .map_err(AuthRejection::Unauthorized)?;
        if !token.is_service_role() {
            return Err(AuthRejection::Forbidden { role: token.role });
        }
        Ok(ServiceRole { token: Some(token) })
    }
}

/// Extracts a bearer token (or a Supabase-style `apikey` header).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// A request allowed to manage the node: a valid `service_role` token, or any request when no
/// secret is configured.
#[derive(Debug, Clone)]
pub struct ServiceRole {
    /// The token; `None` without a secret.
    pub token: Option<Token>,
}

impl ServiceRole {
    /// The token's subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.sub.as_deref())
    }
}

/// Why a request is not [`ServiceRole`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRejection {
    /// No acceptable token: 401 `unauthorized`.
    Unauthorized(TokenProblem),
    /// A valid token of another role: 403 `forbidden`.
    Forbidden {
        /// The token's role.
        role: String,
    },
}

impl AuthRejection {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRejection::Unauthorized(_) => "unauthorized",
            AuthRejection::Forbidden { .. } => "forbidden",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthRejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AuthRejection::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// What went wrong; a refused role is told it may not `action` (e.g. "write events").
    pub fn message(&self, action: &str) -> String {
        match self {
            AuthRejection::Unauthorized(p) => p.to_string(),
            AuthRejection::Forbidden { role } => {
                format!("role {role:?} may not {action}: use a service_role key (`walcast keys`)")
            }
        }
    }

    /// The refusal as an API error, for `action`.
    pub fn api_error(&self, action: &str) -> ApiError {
        ApiError::new(self.status(), self.code(), self.message(action))
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.api_error("use this endpoint").into_response()
    }
}

impl<S> FromRequestParts<S> for ServiceRole
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Auth::from_ref(state).service_role(&parts.headers)
    }
}
