//! Supabase's new API keys: `sb_publishable_…` (public, in browsers) and `sb_secret_…`
//! (servers only). They are opaque strings, not JWTs: Supabase's gateway maps a publishable key
//! to the `anon` role and a secret key to `service_role`, and so does walcast ([`ApiKeys::role`]).
//!
//! A string that starts with `sb_` is an API key wherever a token is read ([`is_api_key`]); one
//! that is not configured is refused, never tried as a JWT. Keys are compared in constant time
//! (every configured key is compared with the whole candidate, whatever matches first), and
//! never printed: [`ApiKeys`]' `Debug` shows only how many there are.

use subtle::ConstantTimeEq;

use super::{API_ROLE_ANON, SERVICE_ROLE};

/// The prefix of every Supabase API key.
pub const API_KEY_PREFIX: &str = "sb_";
/// The prefix of a publishable key.
pub const PUBLISHABLE_PREFIX: &str = "sb_publishable_";
/// The prefix of a secret key.
pub const SECRET_PREFIX: &str = "sb_secret_";

/// Shortest key accepted in configuration: the prefix and at least 16 characters (Supabase's
/// keys carry about 30), so that a truncated copy-paste is caught at startup.
const MIN_KEY_BODY: usize = 16;
/// Longest key accepted in configuration (Supabase's are under 64 characters).
const MAX_KEY_LEN: usize = 256;

/// Whether `token` is an API key (`sb_…`) rather than a JWT.
pub fn is_api_key(token: &str) -> bool {
    token.trim_start().starts_with(API_KEY_PREFIX)
}

/// Which kind of API key a configured key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `sb_publishable_…`: acts as `anon`.
    Publishable,
    /// `sb_secret_…`: acts as `service_role`.
    Secret,
}

impl KeyKind {
    /// The role a key of this kind acts as.
    pub fn role(self) -> &'static str {
        match self {
            KeyKind::Publishable => API_ROLE_ANON,
            KeyKind::Secret => SERVICE_ROLE,
        }
    }

    /// The prefix keys of this kind carry.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Publishable => PUBLISHABLE_PREFIX,
            KeyKind::Secret => SECRET_PREFIX,
        }
    }
}

/// A configured key that is not shaped like one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key #{position} is not a {kind:?} key: expected {prefix}… with at least {MIN_KEY_BODY} more characters (letters, digits, `_`, `-`), at most {MAX_KEY_LEN} in all"
)]
pub struct BadApiKey {
    /// 1-based position in the list.
    pub position: usize,
    /// The kind expected.
    pub kind: KeyKind,
    /// The prefix expected.
    pub prefix: &'static str,
}

/// The configured API keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// Each key with its kind.
    keys: Vec<(Vec<u8>, KeyKind)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |k: KeyKind| self.keys.iter().filter(|(_, kind)| *kind == k).count();
        f.debug_struct("ApiKeys")
            .field("publishable", &count(KeyKind::Publishable))
            .field("secret", &count(KeyKind::Secret))
            .finish()
    }
}

impl ApiKeys {
    /// Validates configured keys: each must carry its kind's prefix. Blank entries (a trailing
    /// comma) are skipped.
    pub fn new<P, S>(publishable: P, secret: S) -> Result<Self, BadApiKey>
    where
        P: IntoIterator,
        P::Item: AsRef<str>,
        S: IntoIterator,
        S::Item: AsRef<str>,
    {
        let mut keys = Vec::new();
        for (kind, list) in [
            (
                KeyKind::Publishable,
                publishable
                    .into_iter()
                    .map(|k| k.as_ref().trim().to_owned())
                    .collect::<Vec<_>>(),
            ),
            (
                KeyKind::Secret,
                secret
                    .into_iter()
                    .map(|k| k.as_ref().trim().to_owned())
                    .collect(),
            ),
        ] {
            for (i, key) in list.iter().filter(|k| !k.is_empty()).enumerate() {
                let body = key.strip_prefix(kind.prefix()).unwrap_or("");
                let shaped = body.len() >= MIN_KEY_BODY
                    && key.len() <= MAX_KEY_LEN
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !shaped {
                    return Err(BadApiKey {
                        position: i + 1,
                        kind,
                        prefix: kind.prefix(),
                    });
                }
                keys.push((key.as_bytes().to_vec(), kind));
            }
        }
        Ok(ApiKeys { keys })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The kind of `candidate` when it is a configured key. Compares with every key in
    /// constant time for keys of equal length (the length of a key is not a secret: it is the
    /// same for every key of a project).
    pub fn kind_of(&self, candidate: &str) -> Option<KeyKind> {
        let candidate = candidate.trim().as_bytes();
        let mut found = None;
        for (key, kind) in &self.keys {
            if bool::from(key.as_slice().ct_eq(candidate)) {
                found = Some(*kind);
            }
        }
        found
    }

    /// The role `candidate` acts as when it is a configured key.
    pub fn role(&self, candidate: &str) -> Option<&'static str> {
        self.kind_of(candidate).map(KeyKind::role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "sb_publishable_abcdefghijklmnop_0123";
    const SEC: &str = "sb_secret_abcdefghijklmnop-0123";

    #[test]
    fn maps_each_kind_to_its_role() {
        let keys = ApiKeys::new([PUB, ""], [SEC]).unwrap();
        assert_eq!(keys.role(PUB), Some("anon"));
        assert_eq!(keys.role(&format!(" {SEC} ")), Some("service_role"));
        assert_eq!(keys.role("sb_publishable_abcdefghijklmnop_0124"), None);
        assert_eq!(keys.role("sb_publishable_abcdefghijklmnop_012"), None);
        assert_eq!(keys.role(""), None);
        assert!(!keys.is_empty());
        assert!(ApiKeys::default().is_empty());
        assert_eq!(ApiKeys::default().role(PUB), None);
    }

    #[test]
    fn refuses_misshaped_keys_and_never_prints_them() {
        let e = ApiKeys::new([SEC], Vec::<String>::new()).unwrap_err();
        assert_eq!(e.position, 1);
        assert_eq!(e.kind, KeyKind::Publishable);
        assert!(!e.to_string().contains("abcdefghij"), "{e}");
        assert!(ApiKeys::new(["sb_publishable_short"], [""; 0]).is_err());
        assert!(ApiKeys::new(["sb_publishable_abcdefghijklmnop!"], [""; 0]).is_err());
        assert!(ApiKeys::new([""; 0], [PUB]).is_err());
        let keys = ApiKeys::new([PUB], [SEC]).unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "ApiKeys { publishable: 1, secret: 1 }");
    }

    #[test]
    fn recognises_api_keys() {
        assert!(is_api_key(PUB));
        assert!(is_api_key(" sb_anything"));
        assert!(!is_api_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
    }
}
