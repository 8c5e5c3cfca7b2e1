//! JWTs the way a Supabase project uses them: HS256 tokens with a `role` claim.
//!
//! `walcast keys` mints an `anon` and a `service_role` key; the HTTP API checks bearer tokens
//! with [`verify`]. Tokens and secrets are never logged.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims walcast reads and writes. Other claims are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Postgres role the token acts as: `anon`, `authenticated`, `service_role`, ...
    pub role: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject (user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Any other claims, kept for RLS (`request.jwt.claims`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was sent.
    #[error("missing token: send `Authorization: Bearer <jwt>` or an `apikey` header")]
    Missing,
    /// The token's signature, format or claims are invalid.
    #[error("invalid token: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// Signing failed.
    #[error("could not sign a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Signs a token for `role` valid for `valid_for`.
pub fn mint(secret: &str, role: &str, valid_for: Duration) -> Result<String, AuthError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        role: role.to_owned(),
        exp: now.saturating_add(valid_for.as_secs() as i64),
        iat: Some(now),
        iss: Some("walcast".to_owned()),
        sub: None,
        extra: Default::default(),
    };
    mint_claims(secret, &claims)
}

/// Signs arbitrary claims (tests and `keys`).
pub fn mint_claims(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(AuthError::Sign)
}

/// Checks an HS256 token's signature and expiry and returns its claims (`role` and `exp` required).
pub fn verify(secret: &str, token: &str) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_aud = false;
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|d| d.claims)
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn mint_and_verify() {
        let t = mint(SECRET, "service_role", Duration::from_secs(60)).unwrap();
        let c = verify(SECRET, &t).unwrap();
        assert_eq!(c.role, "service_role");
        assert!(verify("another-secret-another-secret-xx", &t).is_err());
        assert!(verify(SECRET, "not.a.jwt").is_err());
    }

    #[test]
    fn expired_and_missing_role() {
        let mut c = Claims {
            role: "anon".into(),
            exp: chrono::Utc::now().timestamp() - 10,
            iat: None,
            iss: None,
            sub: None,
            extra: Default::default(),
        };
        let t = mint_claims(SECRET, &c).unwrap();
        assert!(matches!(verify(SECRET, &t), Err(AuthError::Expired)));
        c.exp += 1000;
        let mut v = serde_json::to_value(&c).unwrap();
        v.as_object_mut().unwrap().remove("role");
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &v,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(verify(SECRET, &t), Err(AuthError::Invalid(_))));
    }
}
