//! Tokens the way a Supabase project uses them. One verifier with one policy serves every
//! surface: ingest, the management APIs (`/v1/dlq`, `/v1/flags`, `/v1/status`), and both
//! WebSocket endpoints. A [`Verifier`] knows up to three kinds of credential:
//! - JWTs signed with the project's (legacy) JWT secret: HS256, HS384 or HS512;
//! - JWTs signed with the project's asymmetric signing keys, published as a JWKS ([`jwks`]):
//!   ES256, RS256 (and ES384, RS384/512, PS256/384/512, EdDSA), the key found by `kid`;
//! - API keys ([`api_keys`]): a configured `sb_publishable_…` key acts as `anon`, an
//!   `sb_secret_…` key as `service_role`, as behind Supabase's gateway.
//!
//! The policy ([`Verifier`], [`Policy`]): the token's `alg` decides which key may check it, and
//! nothing else does: `none` and unknown algorithms are refused; HS* only with the secret (never
//! with a JWKS key's bytes: the classic RS256/HS256 confusion); asymmetric algorithms only with a
//! JWKS key of that type, named by `kid` (a token without `kid` is tried against the keys of its
//! algorithm). Then, whatever signed it: `role` (a string) and `exp` (a number) required; `exp`
//! in the future and `nbf`, when present, not in the future (no leeway); `iat`, when present, a
//! number; `iss` and `aud` equal to the configured ones when configured; `role` one of the API
//! roles (`anon`, `authenticated`, `service_role`, and any configured extra). A refusal names its
//! reason ([`TokenProblem`]); each surface words it for its clients (HTTP APIs use the
//! [`std::fmt::Display`] text, the Realtime endpoint Supabase's texts). Whether a role is a
//! superuser or bypasses RLS is a database fact: [`crate::access`] refuses such roles whatever
//! the token says.
//!
//! `walcast keys` mints an `anon` and a `service_role` key with [`mint`]. [`extract`] holds the
//! HTTP side: which of a request's credentials decides ([`extract::authenticate`]) and the
//! [`ServiceRole`] extractor. Tokens, secrets and keys are never logged; `Debug` redacts them.

pub mod api_keys;
pub(crate) mod extract;
pub mod fetch;
pub mod jwks;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use api_keys::{ApiKeys, is_api_key};
pub use extract::{Auth, AuthRejection, Credentials, ServiceRole, authenticate, bearer_token};
pub use jwks::{Jwks, JwksConfig, KeySet};

/// The role that may use the management APIs and sees every change.
pub const SERVICE_ROLE: &str = "service_role";

/// The role of a publishable key (and of Supabase's legacy anon key).
pub const API_ROLE_ANON: &str = "anon";

/// The roles a token may name by default: Supabase's API roles.
pub const API_ROLES: [&str; 3] = [API_ROLE_ANON, "authenticated", SERVICE_ROLE];

/// The `exp` of a token made from an API key: API keys do not expire (a key is revoked by
/// removing it from the configuration). 9999-12-31T23:59:59Z, far enough to never fire and small
/// enough for every deadline computed from it.
pub const API_KEY_EXP: i64 = 253_402_300_799;

/// A secret held in configuration: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        SecretText(secret)
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

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
    /// The `exp` claim, seconds since the Unix epoch ([`API_KEY_EXP`] for an API key).
    pub exp: i64,
    /// The `sub` claim, when it is a string.
    pub sub: Option<String>,
    /// Every claim, as signed (for RLS: `request.jwt.claims`); `{"role": ...}` for an API key.
    pub claims: Map<String, Value>,
}

impl Token {
    /// Whether the token's role is `service_role`.
    pub fn is_service_role(&self) -> bool {
        self.role == SERVICE_ROLE
    }

    /// The token an API key of `role` stands for.
    fn for_api_key(role: &str) -> Token {
        let mut claims = Map::new();
        claims.insert("role".into(), Value::String(role.to_owned()));
        Token {
            role: role.to_owned(),
            exp: API_KEY_EXP,
            sub: None,
            claims,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// No token was sent.
    #[error(
        "missing token: send `Authorization: Bearer <jwt>` or an `apikey` header (a JWT or an sb_ API key)"
    )]
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
    /// The signature does not verify with the key its header selects.
    #[error(
        "invalid token: the signature does not verify with the server's JWT secret or signing key"
    )]
    BadSignature,
    /// The header's `alg` is `none`, unknown, or one no configured key uses (HS* without a JWT
    /// secret; ES*/RS*/PS*/EdDSA without a JWKS).
    #[error(
        "invalid token: algorithm {alg:?} is not accepted (HS256/384/512 need --jwt-secret; ES256, RS256 and the other asymmetric ones need --jwks-url or --jwks-file; never none)"
    )]
    AlgorithmNotAllowed {
        /// The header's `alg`.
        alg: String,
    },
    /// No signing key has the token's `kid`, even after reading the JWKS again (or, for a token
    /// without `kid`, no key of its algorithm).
    #[error("invalid token: no signing key with kid {kid:?} (the JWKS was checked for new keys)")]
    UnknownKey {
        /// The header's `kid` (empty when the token has none).
        kid: String,
    },
    /// The key named by `kid` is of another type than `alg` needs, or its own `alg` differs.
    #[error("invalid token: signing key {kid:?} does not sign {alg} tokens")]
    KeyMismatch {
        /// The header's `kid`.
        kid: String,
        /// The header's `alg`.
        alg: String,
    },
    /// An `sb_…` API key that is not one of the configured keys.
    #[error("invalid API key: not one of the server's publishable or secret keys")]
    UnknownApiKey,
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

impl TokenProblem {
    /// The stable code of an HTTP refusal: `invalid_api_key` for an unknown API key (Supabase's
    /// gateway also answers 401 "Invalid API key"), `unauthorized` for every token problem.
    pub fn code(&self) -> &'static str {
        match self {
            TokenProblem::UnknownApiKey => "invalid_api_key",
            _ => "unauthorized",
        }
    }
}

/// Signing a token failed.
#[derive(Debug, thiserror::Error)]
#[error("could not sign a token")]
pub struct SignError(#[source] jsonwebtoken::errors::Error);

/// The one token policy (see the module doc), holding the server's secret, signing keys and API
/// keys.
#[derive(Clone)]
pub struct Verifier {
    /// The JWT secret as a decoding key, for HS* tokens.
    secret: Option<DecodingKey>,
    /// The asymmetric signing keys, for ES*/RS*/PS*/EdDSA tokens.
    jwks: Option<Arc<Jwks>>,
    /// Publishable and secret API keys.
    api_keys: ApiKeys,
    /// Issuer, audience and roles.
    policy: Policy,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("jwks", &self.jwks)
            .field("api_keys", &self.api_keys)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`, under the default [`Policy`].
    pub fn new(secret: &str) -> Self {
        Self::with_policy(secret, Policy::default())
    }

    /// A verifier for tokens signed with `secret`, under `policy`.
    pub fn with_policy(secret: &str, policy: Policy) -> Self {
        Self::without_keys(policy).with_secret(secret)
    }

    /// A verifier that knows no key yet (add them with the `with_*` methods).
    pub fn without_keys(policy: Policy) -> Self {
        Verifier {
            secret: None,
            jwks: None,
            api_keys: ApiKeys::default(),
            policy,
        }
    }

    /// Also checks HS* tokens with `secret`.
    pub fn with_secret(mut self, secret: &str) -> Self {
        self.secret = Some(DecodingKey::from_secret(secret.as_bytes()));
        self
    }

    /// Also checks asymmetric tokens with the keys of `jwks`.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Also accepts these API keys.
    pub fn with_api_keys(mut self, api_keys: ApiKeys) -> Self {
        self.api_keys = api_keys;
        self
    }

    /// Whether the verifier can accept anything at all.
    pub fn has_keys(&self) -> bool {
        self.secret.is_some() || self.jwks.is_some() || !self.api_keys.is_empty()
    }

    /// The configured API keys.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    /// Checks `token` (a JWT or an `sb_` API key) at time `now` (seconds since the Unix epoch).
    /// A JWT naming an unknown `kid` makes the JWKS be read again (rate-limited, see
    /// [`Jwks::refresh_for_unknown_kid`]) before it is refused.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Token, TokenProblem> {
        let first = self.verify_cached(token, now);
        match (&first, &self.jwks) {
            (Err(TokenProblem::UnknownKey { .. }), Some(jwks)) => {
                if jwks.refresh_for_unknown_kid().await {
                    self.verify_cached(token, now)
                } else {
                    first
                }
            }
            _ => first,
        }
    }

    /// Checks `token` at time `now` with the keys at hand: never reads the JWKS.
    pub fn verify_cached(&self, token: &str, now: i64) -> Result<Token, TokenProblem> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenProblem::Missing);
        }
        if is_api_key(token) {
            let role = self
                .api_keys
                .role(token)
                .ok_or(TokenProblem::UnknownApiKey)?;
            if !self.policy.roles.iter().any(|r| r == role) {
                return Err(TokenProblem::RoleNotAllowed { role: role.into() });
            }
            return Ok(Token::for_api_key(role));
        }
        let claims = self.signed_claims(token)?;
        self.check_claims(claims, now)
    }

    /// The claims of `token` once its signature verifies with the key its header selects.
    fn signed_claims(&self, token: &str) -> Result<Map<String, Value>, TokenProblem> {
        let header = TokenHeader::read(token)?;
        let Ok(alg) = header.alg.parse::<Algorithm>() else {
            return Err(TokenProblem::AlgorithmNotAllowed { alg: header.alg });
        };
        let not_allowed = || TokenProblem::AlgorithmNotAllowed {
            alg: header.alg.clone(),
        };
        if alg.family() == AlgorithmFamily::Hmac {
            // Only ever the secret: a JWKS key's bytes are never an HMAC key.
            let key = self.secret.as_ref().ok_or_else(not_allowed)?;
            return decode(token, key, alg);
        }
        let jwks = self.jwks.as_ref().ok_or_else(not_allowed)?;
        let set = jwks.current();
        match &header.kid {
            Some(kid) => {
                let key = set
                    .by_kid(kid)
                    .ok_or_else(|| TokenProblem::UnknownKey { kid: kid.clone() })?;
                if !key.algorithms.contains(&alg) {
                    return Err(TokenProblem::KeyMismatch {
                        kid: kid.clone(),
                        alg: header.alg,
                    });
                }
                decode(token, key.decoding_key(), alg)
            }
            None => {
                let mut last = TokenProblem::UnknownKey { kid: String::new() };
                for key in set.for_algorithm(alg) {
                    match decode(token, key.decoding_key(), alg) {
                        Ok(claims) => return Ok(claims),
                        Err(p) => last = p,
                    }
                }
                Err(last)
            }
        }
    }

    /// The policy's checks of verified claims.
    fn check_claims(&self, claims: Map<String, Value>, now: i64) -> Result<Token, TokenProblem> {
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

/// The fields of a JWT header the policy reads, taken before any key is chosen.
#[derive(Debug, Deserialize)]
struct TokenHeader {
    /// The signature algorithm, as written (`none` included).
    alg: String,
    /// The signing key's id.
    #[serde(default)]
    kid: Option<String>,
}

impl TokenHeader {
    /// Reads the header of a compact JWS (`header.payload.signature`).
    fn read(token: &str) -> Result<TokenHeader, TokenProblem> {
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenProblem::Malformed);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| TokenProblem::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenProblem::Malformed)
    }
}

/// Verifies `token`'s signature with `key` for exactly `alg`; returns its claims.
fn decode(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Map<String, Value>, TokenProblem> {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    // Claims are checked by hand ([`Verifier::check_claims`]) so that each problem gets its name.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = Default::default();
    jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidKeyFormat => TokenProblem::BadSignature,
            _ => TokenProblem::Malformed,
        })
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Checks `token` against `secret` now (see [`Verifier`]).
pub fn verify(secret: &str, token: &str) -> Result<Token, TokenProblem> {
    Verifier::new(secret).verify_cached(token, unix_now())
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
        Verifier::new(SECRET).verify_cached(token, now)
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
            v.verify_cached(&sign(Algorithm::HS256, good.clone(), SECRET), now)
                .is_ok()
        );
        let mut bad = good.clone();
        bad["iss"] = json!("https://other/auth/v1");
        assert_eq!(
            v.verify_cached(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::WrongIssuer)
        );
        let mut bad = good.clone();
        bad["aud"] = json!("anon");
        assert_eq!(
            v.verify_cached(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::WrongAudience)
        );
        let mut bad = good;
        bad["role"] = json!("anon");
        assert_eq!(
            v.verify_cached(&sign(Algorithm::HS256, bad, SECRET), now),
            Err(TokenProblem::RoleNotAllowed {
                role: "anon".into()
            })
        );
    }

    /// An ES256 signing key made now, its JWK (with `kid`) and a signer.
    struct EcKey {
        /// PKCS#8 DER of the private key.
        der: Vec<u8>,
        /// The public JWK.
        jwk: Value,
    }

    impl EcKey {
        fn new(kid: &str) -> EcKey {
            use base64::Engine as _;
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            use p256::pkcs8::EncodePrivateKey as _;
            let sk = p256::SecretKey::random(&mut rand_core::OsRng);
            let point = sk.public_key().to_encoded_point(false);
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            EcKey {
                der: sk.to_pkcs8_der().unwrap().as_bytes().to_vec(),
                jwk: json!({"kty":"EC","crv":"P-256","kid":kid,"use":"sig","alg":"ES256",
                            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
            }
        }

        fn sign(&self, kid: Option<&str>, claims: Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.der)).unwrap()
        }
    }

    fn jwks_of(keys: &[&Value]) -> Arc<Jwks> {
        let doc = json!({ "keys": keys });
        Jwks::fixed(KeySet::parse(doc.to_string().as_bytes()).unwrap())
    }

    /// A token with a hand-made header and an arbitrary signature.
    fn forged(header: Value, claims: Value, signature: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(signature)
        )
    }

    #[test]
    fn es256_tokens_verify_with_the_key_their_kid_names() {
        let now = 1_000_000;
        let (a, b) = (EcKey::new("a"), EcKey::new("b"));
        let v = Verifier::without_keys(Policy::default()).with_jwks(jwks_of(&[&a.jwk, &b.jwk]));
        let claims = json!({"role":"authenticated","exp":now + 60,"sub":"u1"});
        let t = v
            .verify_cached(&a.sign(Some("a"), claims.clone()), now)
            .unwrap();
        assert_eq!(
            (t.role.as_str(), t.sub.as_deref()),
            ("authenticated", Some("u1"))
        );
        assert!(
            v.verify_cached(&b.sign(Some("b"), claims.clone()), now)
                .is_ok()
        );
        // Without kid: tried against the keys of its algorithm.
        assert!(v.verify_cached(&b.sign(None, claims.clone()), now).is_ok());
        // Signed by b, naming a.
        assert_eq!(
            v.verify_cached(&b.sign(Some("a"), claims.clone()), now),
            Err(TokenProblem::BadSignature)
        );
        assert_eq!(
            v.verify_cached(&a.sign(Some("zzz"), claims.clone()), now),
            Err(TokenProblem::UnknownKey { kid: "zzz".into() })
        );
        // The usual claim checks apply to asymmetric tokens too.
        assert_eq!(
            v.verify_cached(
                &a.sign(Some("a"), json!({"role":"anon","exp":now - 1})),
                now
            ),
            Err(TokenProblem::Expired { seconds_ago: 1 })
        );
        assert_eq!(
            v.verify_cached(
                &a.sign(Some("a"), json!({"role":"postgres","exp":now + 9})),
                now
            ),
            Err(TokenProblem::RoleNotAllowed {
                role: "postgres".into()
            })
        );
        // An ES256 token to a verifier with only a secret: no key for that algorithm.
        assert_eq!(
            Verifier::new(SECRET).verify_cached(&a.sign(Some("a"), claims), now),
            Err(TokenProblem::AlgorithmNotAllowed {
                alg: "ES256".into()
            })
        );
    }

    #[test]
    fn refuses_none_confusion_and_keys_of_another_type() {
        let now = 1_000_000;
        let a = EcKey::new("a");
        let v = Verifier::without_keys(Policy::default()).with_jwks(jwks_of(&[&a.jwk]));
        let claims = json!({"role":"service_role","exp":now + 60});
        for alg in ["none", "None", "NONE", "XS256", ""] {
            let t = forged(json!({"alg":alg,"kid":"a"}), claims.clone(), b"");
            assert_eq!(
                v.verify_cached(&t, now),
                Err(TokenProblem::AlgorithmNotAllowed { alg: alg.into() }),
                "{alg}"
            );
        }
        // HS256 "signed" with the public key's bytes: HS* is never checked with a JWKS key.
        let public = a.jwk.to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("a".into());
        let confused = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify_cached(&confused, now),
            Err(TokenProblem::AlgorithmNotAllowed {
                alg: "HS256".into()
            })
        );
        // With a secret configured too, it is checked with the secret, and fails.
        let both = v.clone().with_secret(SECRET);
        assert_eq!(
            both.verify_cached(&confused, now),
            Err(TokenProblem::BadSignature)
        );
        // RS256 and ES384 naming an EC P-256 key.
        for alg in ["RS256", "ES384", "PS256", "EdDSA"] {
            let t = forged(json!({"alg":alg,"kid":"a"}), claims.clone(), b"sig");
            assert_eq!(
                v.verify_cached(&t, now),
                Err(TokenProblem::KeyMismatch {
                    kid: "a".into(),
                    alg: alg.into()
                }),
                "{alg}"
            );
        }
        assert_eq!(v.verify_cached("a.b", now), Err(TokenProblem::Malformed));
        assert_eq!(v.verify_cached("!!.b.c", now), Err(TokenProblem::Malformed));
    }

    #[test]
    fn api_keys_act_as_their_role() {
        let now = 1_000_000;
        let publishable = "sb_publishable_0123456789abcdef";
        let secret = "sb_secret_0123456789abcdef";
        let v = Verifier::without_keys(Policy::default())
            .with_api_keys(ApiKeys::new([publishable], [secret]).unwrap());
        assert!(v.has_keys());
        let t = v.verify_cached(publishable, now).unwrap();
        assert_eq!(t.role, "anon");
        assert_eq!(t.exp, API_KEY_EXP);
        assert_eq!(
            t.claims,
            json!({"role":"anon"}).as_object().unwrap().clone()
        );
        assert!(v.verify_cached(secret, now).unwrap().is_service_role());
        assert_eq!(
            v.verify_cached("sb_secret_0123456789abcdeX", now),
            Err(TokenProblem::UnknownApiKey)
        );
        // No secret: HS256 tokens have no key.
        let t = sign(
            Algorithm::HS256,
            json!({"role":"anon","exp":now + 5}),
            SECRET,
        );
        assert_eq!(
            v.verify_cached(&t, now),
            Err(TokenProblem::AlgorithmNotAllowed {
                alg: "HS256".into()
            })
        );
        let shown = format!("{v:?}");
        assert!(!shown.contains("0123456789"), "{shown}");
        let shown = format!("{:?}", Verifier::new(SECRET));
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!Verifier::without_keys(Policy::default()).has_keys());
    }

    #[tokio::test]
    async fn a_request_s_credentials_decide_like_supabase_s_gateway() {
        let now = unix_now();
        let publishable = "sb_publishable_0123456789abcdef";
        let v = Verifier::new(SECRET).with_api_keys(ApiKeys::new([publishable], [""; 0]).unwrap());
        let user = sign(
            Algorithm::HS256,
            json!({"role":"authenticated","exp":now + 60}),
            SECRET,
        );
        let c = |api_key: Option<&str>, bearer: Option<&str>| Credentials {
            api_key: api_key.map(str::to_owned),
            bearer: bearer.map(str::to_owned),
        };
        let role = |r: Result<Token, TokenProblem>| r.map(|t| t.role);
        // The key alone: anon; with a user JWT: the JWT decides.
        assert_eq!(
            role(authenticate(&v, &c(Some(publishable), None), now).await),
            Ok("anon".into())
        );
        assert_eq!(
            role(authenticate(&v, &c(Some(publishable), Some(&user)), now).await),
            Ok("authenticated".into())
        );
        // supabase-js without a session: the key in both places.
        assert_eq!(
            role(authenticate(&v, &c(Some(publishable), Some(publishable)), now).await),
            Ok("anon".into())
        );
        assert_eq!(
            role(authenticate(&v, &c(None, Some(publishable)), now).await),
            Ok("anon".into())
        );
        // An unknown sb_ key is refused wherever it is, even beside a valid JWT.
        for creds in [
            c(Some("sb_publishable_nope"), Some(&user)),
            c(Some(publishable), Some("sb_secret_nope")),
            c(None, Some("sb_secret_nope")),
        ] {
            assert_eq!(
                authenticate(&v, &creds, now).await,
                Err(TokenProblem::UnknownApiKey)
            );
        }
        assert_eq!(
            authenticate(&v, &c(None, None), now).await,
            Err(TokenProblem::Missing)
        );
        assert_eq!(TokenProblem::UnknownApiKey.code(), "invalid_api_key");
        assert_eq!(TokenProblem::Missing.code(), "unauthorized");
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
