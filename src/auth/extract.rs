//! Credentials on HTTP requests: where they are read from ([`Credentials`]), which one decides
//! the role ([`authenticate`]), and the [`ServiceRole`] extractor every management handler uses.
//!
//! A request may carry an API key (the `apikey` header, or `?apikey=` as supabase-js puts it on
//! WebSocket URLs) and a user token (`Authorization: Bearer`). Like Supabase's gateway: every
//! `sb_…` key presented must be a configured one (else 401 `invalid_api_key`, whatever else the
//! request carries); a user JWT in `Authorization` decides the role and claims; without one,
//! the API key does (a publishable key is `anon`, a secret key `service_role`, a legacy JWT
//! key is checked as a token). supabase-js also sends its key as `Authorization: Bearer
//! sb_publishable_…` when no user is signed in: such a bearer is an API key, not a JWT.
//!
//! With no way to verify tokens configured (`--insecure-no-auth`), [`Auth`] has no verifier
//! and [`ServiceRole`] lets every request through.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Policy, Token, TokenProblem, Verifier, is_api_key, unix_now};
use crate::error::ApiError;

/// How requests are authenticated: the server's token verifier, if any way to verify is
/// configured.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// The verifier; `None` under `--insecure-no-auth`.
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

    /// Tokens checked by `verifier`; one that knows no key checks nothing.
    pub fn with_verifier(verifier: Verifier) -> Self {
        Auth {
            verifier: verifier.has_keys().then(|| Arc::new(verifier)),
        }
    }

    /// The verifier, when a way to verify is configured.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.verifier.as_ref()
    }

    /// Whether the request carries `service_role` credentials (always, without a verifier).
    pub async fn service_role(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<ServiceRole, AuthRejection> {
        let Some(verifier) = &self.verifier else {
            return Ok(ServiceRole { token: None });
        };
        let token = authenticate(verifier, &Credentials::read(headers, query), unix_now())
            .await
            .map_err(AuthRejection::Unauthorized)?;
        if !token.is_service_role() {
            return Err(AuthRejection::Forbidden { role: token.role });
        }
        Ok(ServiceRole { token: Some(token) })
    }
}

/// The credentials one request carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The `apikey` header, or else the `apikey` query parameter.
    pub api_key: Option<String>,
    /// `Authorization: Bearer <this>`, or else (for browsers' WebSockets) the `access_token`
    /// query parameter.
    pub bearer: Option<String>,
}

impl Credentials {
    /// Reads a request's credentials from its headers and query string.
    pub fn read(headers: &HeaderMap, query: Option<&str>) -> Self {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let bearer_header = header(header::AUTHORIZATION.as_str()).and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let mut api_key = header("apikey");
        let mut bearer = bearer_header;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "apikey" if api_key.is_none() => api_key = Some(v.to_owned()),
                "access_token" if bearer.is_none() => bearer = Some(v.to_owned()),
                _ => {}
            }
        }
        Credentials { api_key, bearer }
    }

    /// Credentials made of one token (as the Realtime endpoint reads its `apikey`).
    pub fn api_key(token: impl Into<String>) -> Self {
        Credentials {
            api_key: Some(token.into()),
            bearer: None,
        }
    }
}

/// Who the credentials say the request is (see the module doc): every `sb_…` key presented must
/// be configured; a bearer JWT decides; otherwise the API key does.
pub async fn authenticate(
    verifier: &Verifier,
    credentials: &Credentials,
    now: i64,
) -> Result<Token, TokenProblem> {
    let presented = [&credentials.api_key, &credentials.bearer];
    for key in presented.into_iter().flatten() {
        if is_api_key(key) && verifier.api_keys().kind_of(key).is_none() {
            return Err(TokenProblem::UnknownApiKey);
        }
    }
    let decides = match (&credentials.bearer, &credentials.api_key) {
        (Some(jwt), _) if !is_api_key(jwt) => jwt,
        (_, Some(key)) => key,
        (Some(key), None) => key,
        (None, None) => return Err(TokenProblem::Missing),
    };
    verifier.verify(decides, now).await
}

/// Extracts a bearer token (or a Supabase-style `apikey` header): the one credential of a
/// request that carries a single shared token (`/metrics`).
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

/// A request allowed to manage the node: valid `service_role` credentials, or any request
/// under `--insecure-no-auth`.
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
            AuthRejection::Unauthorized(p) => p.code(),
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
        Auth::from_ref(state)
            .service_role(&parts.headers, parts.uri.query())
            .await
    }
}
