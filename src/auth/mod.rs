//! Tokens the way a Supabase project uses them: JWTs signed with the project's secret, carrying
//! a `role` claim. One verifier with one policy serves every surface: ingest, the management
//! APIs (`/v1/dlq`, `/v1/flags`, `/v1/status`), and both WebSocket endpoints.
//!
//! The policy ([`Verifier`], [`Policy`]): HS256, HS384 or HS512 with the server's secret;
//! `role` (a string) and `exp` (a number) required; `exp` in the future and `nbf`, when present,
//! not in the future (no leeway); `iat`, when present, a number; `iss` and `aud` equal to the
//! configured ones when configured; `role` one of the API roles (`anon`, `authenticated`,
//! `service_role`, and any configured extra). A refusal names its reason ([`TokenProblem`]);
//! each surface words it for its clients (HTTP APIs use the [`std::fmt::Display`] text, the
//! Realtime endpoint Supabase's texts). Whether a role is a superuser or bypasses RLS is a
//! database fact: [`crate::access`] refuses such roles whatever the token says.
//!
//! `walcast keys` mints an `anon` and a `service_role` key with [`mint`]. [`extract`] holds the
//! HTTP side: reading the token from a request and the [`ServiceRole`] extractor. Tokens and
//! secrets are never logged.

pub(crate) mod extract;

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use extract::{Auth, AuthRejection, ServiceRole, bearer_token};

/// The role that may use the management APIs and sees every change.
pub const SERVICE_ROLE: &str = "service_role";

/// The roles a token may name by default: Supabase's API roles.
pub const API_ROLES: [&str; 3] = ["anon", "authenticated", SERVICE_ROLE];

/// What a token must satisfy besides its signature and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// The audience a token's `aud` must be or list, when set.
    pub audience: Option<String>,
    /// The roles a token may name.
    pub roles: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            issuer: None,
            audience: None,
            roles: API_ROLES.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// Claims to sign ([`mint_claims`]). Other claims are kept in `extra`.
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
    pub extra: Map<String, Value>,
}

/// A token that passed [`Verifier::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The `role` claim.
    pub role: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub exp: i64,
    /// The `sub` claim, when it is a string.
    pub sub: Option<String>,
    /// Every claim, as signed (for RLS: `request.jwt.claims`).
    pub claims: Map<String, Value>,
}

impl Token {
    /// Whether the token's role is `service_role`.
    pub fn is_service_role(&self) -> bool {
        self.role == SERVICE_ROLE
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// No token was sent.
    #[error("missing token: send `Authorization: Bearer <jwt>` or an `apikey` header")]
    Missing,
    /// The token expired `seconds_ago` seconds ago (0 when it expires this second).
    #[error("token has expired")]
    Expired {
        /// Seconds since `exp`.
        seconds_ago: u64,
    },
    /// `role` or `exp` is missing (or `exp` is not a number).
    #[error("invalid token: the claims `role` and `exp` are required")]
    MissingClaims,
    /// Not a JWT at all (or `iat` is not a number).
    #[error("invalid token: not a JWT")]
    Malformed,
    /// The signature does not verify with the server's secret, or the algorithm is not HS*.
    #[error("invalid token: the signature does not verify with the server's JWT secret")]
    BadSignature,
    /// `nbf` is in the future (or not a number).
    #[error("invalid token: it is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("invalid token: wrong issuer (iss)")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("invalid token: wrong audience (aud)")]
    WrongAudience,
    /// The `role` claim is not one of the API roles.
    #[error(
        "invalid token: role {role:?} is not an API role (anon, authenticated, service_role or --extra-roles)"
    )]
    RoleNotAllowed {
        /// The role the token names.
        role: String,
    },
}

/// Signing a token failed.
#[derive(Debug, thiserror::Error)]
#[error("could not sign a token")]
pub struct SignError(#[source] jsonwebtoken::errors::Error);

/// The one token policy (see the module doc), holding the server's secret.
#[derive(Clone)]
pub struct Verifier {
    /// The secret as a decoding key.
    key: DecodingKey,
    /// Issuer, audience and roles.
    policy: Policy,
    /// The signature algorithms accepted, and no other check (claims are checked by hand so
    /// that each problem gets its own name).
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`, under the default [`Policy`].
    pub fn new(secret: &str) -> Self {
        Self::with_policy(secret, Policy::default())
    }

    /// A verifier for tokens signed with `secret`, under `policy`.
    pub fn with_policy(secret: &str, policy: Policy) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = Default::default();
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            policy,
            validation,
        }
    }

    /// Checks `token` at time `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Token, TokenProblem> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenProblem::Missing);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::MissingAlgorithm => TokenProblem::BadSignature,
                _ => TokenProblem::Malformed,
            })?
            .claims;
        let role = claims.get("role").and_then(Value::as_str);
        let exp = claims.get("exp").and_then(number_as_i64);
        let (Some(role), Some(exp)) = (role, exp) else {
            return Err(TokenProblem::MissingClaims);
        };
        if claims
            .get("iat")
            .is_some_and(|v| number_as_i64(v).is_none())
        {
            return Err(TokenProblem::Malformed);
        }
        if exp <= now {
            return Err(TokenProblem::Expired {
                seconds_ago: u64::try_from(now - exp).unwrap_or(0),
            });
        }
        if let Some(nbf) = claims.get("nbf") {
            match number_as_i64(nbf) {
                Some(nbf) if nbf <= now => {}
                _ => return Err(TokenProblem::NotYetValid),
            }
        }
        if let Some(issuer) = &self.policy.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(TokenProblem::WrongIssuer);
        }
        if let Some(audience) = &self.policy.audience {
            let named = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !named {
                return Err(TokenProblem::WrongAudience);
            }
        }
        if !self.policy.roles.iter().any(|r| r == role) {
            return Err(TokenProblem::RoleNotAllowed {
                role: role.to_owned(),
            });
        }
        Ok(Token {
            role: role.to_owned(),
            exp,
            sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            claims,
        })
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Checks `token` against `secret` now (see [`Verifier`]).
pub fn verify(secret: &str, token: &str) -> Result<Token, TokenProblem> {
    Verifier::new(secret).verify(token, unix_now())
}

/// A JSON number as whole seconds (fractions are cut).
fn number_as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// Signs a token for `role` valid for `valid_for`.
pub fn mint(secret: &str, role: &str, valid_for: Duration) -> Result<String, SignError> {
    let now = unix_now();
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
pub fn mint_claims(secret: &str, claims: &Claims) -> Result<String, SignError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(SignError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn sign(alg: Algorithm, claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn check(token: &str, now: i64) -> Result<Token, TokenProblem> {
        Verifier::new(SECRET).verify(token, now)
    }

    #[test]
    fn mint_and_verify() {
        let t = mint(SECRET, "service_role", Duration::from_secs(60)).unwrap();
        let c = verify(SECRET, &t).unwrap();
        assert_eq!(c.role, "service_role");
        assert!(c.is_service_role());
        assert!(verify("another-secret-another-secret-xx", &t).is_err());
        assert!(verify(SECRET, "not.a.jwt").is_err());
    }

    #[test]
    fn accepts_hs_tokens_with_role_and_exp() {
        let now = 1_000_000;
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = sign(
                alg,
                json!({"role":"anon","exp":now + 60,"sub":"u1"}),
                SECRET,
            );
            let c = check(&format!(" {t} "), now).unwrap();
            assert_eq!(c.role, "anon");
            assert_eq!(c.exp, now + 60);
            assert_eq!(c.sub.as_deref(), Some("u1"));
            assert_eq!(c.claims["sub"], "u1");
            assert!(!c.is_service_role());
        }
    }

    #[test]
    fn names_each_problem() {
        let now = 1_000_000;
        assert_eq!(check(" ", now), Err(TokenProblem::Missing));
        assert_eq!(check("nope", now), Err(TokenProblem::Malformed));
        assert_eq!(check("a.b.c", now), Err(TokenProblem::Malformed));
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 60}),
            "another-secret-another-secret-xx",
        );
        assert_eq!(check(&t, now), Err(TokenProblem::BadSignature));
        for claims in [
            json!({"exp":now + 60}),
            json!({"role":"anon"}),
            json!({"role":"anon","exp":"soon"}),
        ] {
            let t = sign(Algorithm::HS256, claims, SECRET);
            assert_eq!(check(&t, now), Err(TokenProblem::MissingClaims));
        }
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 5,"iat":"x"}),
            SECRET,
        );
        assert_eq!(check(&t, now), Err(TokenProblem::Malformed));
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now - 7}),
            SECRET,
        );
        assert_eq!(
            check(&t, now),
            Err(TokenProblem::Expired { seconds_ago: 7 })
        );
        let t = sign(Algorithm::HS256, json!({"role":"anon","exp":now}), SECRET);
        assert_eq!(
            check(&t, now),
            Err(TokenProblem::Expired { seconds_ago: 0 })
        );
    }

    #[test]
    fn nbf_iss_aud_and_roles() {
        let now = 1_000_000;
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 60,"nbf":now + 1}),
            SECRET,
        );
        assert_eq!(check(&t, now), Err(TokenProblem::NotYetValid));
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 60,"nbf":now}),
            SECRET,
        );
        assert!(check(&t, now).is_ok());
        for role in ["postgres", "supabase_admin", "authenticator"] {
            let t = sign(
                Algorithm::HS256,
                json!({"role":role,"exp":now + 60}),
                SECRET,
            );
            assert_eq!(
                check(&t, now),
                Err(TokenProblem::RoleNotAllowed { role: role.into() })
            );
        }
        let policy = Policy {
            issuer: Some("https://x.supabase.co/auth/v1".into()),
            audience: Some("authenticated".into()),
            roles: vec!["authenticated".into(), "reporter".into()],
        };
        let v = Verifier::with_policy(SECRET, policy);
        let good = json!({"role":"reporter","exp":now + 60,
                          "iss":"https://x.supabase.co/auth/v1","aud":["x","authenticated"]});
        assert!(
            v.verify(&sign(Algorithm::HS256, good.clone(), SECRET), now)
                .is_ok()
        );
        let mut bad = good.clone();
        bad["iss"] = json!("https://other/auth/v1");
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::WrongIssuer)
        );
        let mut bad = good.clone();
        bad["aud"] = json!("anon");
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::WrongAudience)
        );
        let mut bad = good;
        bad["role"] = json!("anon");
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::RoleNotAllowed {
                role: "anon".into()
            })
        );
    }

    #[test]
    fn http_texts_say_what_is_wrong() {
        assert!(
            TokenProblem::Missing
                .to_string()
                .starts_with("missing token")
        );
        assert_eq!(
            TokenProblem::Expired { seconds_ago: 3 }.to_string(),
            "token has expired"
        );
        for p in [
            TokenProblem::Malformed,
            TokenProblem::BadSignature,
            TokenProblem::MissingClaims,
        ] {
            assert!(p.to_string().starts_with("invalid token"), "{p}");
        }
    }
}
