//! Asymmetric signing keys: a JWKS (JSON Web Key Set, RFC 7517) from a file or a URL, the way
//! a Supabase project publishes its keys at `/auth/v1/.well-known/jwks.json`.
//!
//! What it owns: the current [`KeySet`] (behind an `ArcSwap`, read lock-free by every token
//! check) and its refreshes. A key set is replaced only by a document that parses; a failed
//! refresh keeps the keys walcast has. Refreshes happen
//! - every `refresh` interval ([`spawn_refresh_task`]), so removed (revoked) keys go away and
//!   new ones arrive, and
//! - when a token names a `kid` walcast does not know ([`Jwks::refresh_for_unknown_kid`]), at
//!   most once per `min_refresh`: tokens with made-up kids cannot make walcast hammer the
//!   source. One refresh runs at a time; checks that wait for it see its result.
//!
//! Which keys are usable ([`KeySet::parse`]): public keys only. EC P-256 verifies ES256, P-384
//! ES384, Ed25519 EdDSA, RSA (at least 2048 bits) RS256/384/512 and PS256/384/512 — each
//! narrowed to the key's own `alg` when it names one. A key whose `use` is not `sig`, whose
//! `key_ops` do not include `verify`, or of another type (symmetric `oct` keys, P-521, ...) is
//! skipped with a note: a symmetric key has no place in a published key set, and HS* tokens are
//! only ever checked with the configured JWT secret. Key material is never printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use super::fetch::{FetchError, Fetcher, JwksSource};

/// Most keys kept from one document; the rest are skipped (a token without `kid` is tried
/// against every key of its algorithm, so this also bounds the work one token can cause).
pub const MAX_KEYS: usize = 32;

/// Smallest RSA modulus accepted, in bytes (2048 bits, the floor of RFC 7518 §3.3).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// How keys are found and kept fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// Where the keys come from.
    pub source: JwksSource,
    /// How often the keys are read again.
    pub refresh: Duration,
    /// Least time between two reads caused by unknown `kid`s.
    pub min_refresh: Duration,
}

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// The algorithms it verifies.
    pub algorithms: Vec<Algorithm>,
    /// The key.
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The key for `jsonwebtoken`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// A document that is not a JWKS.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWKS: expected a JSON object with a \"keys\" array")]
    NotAJwks(#[source] serde_json::Error),
    /// Reading the source failed.
    #[error("cannot read the JWKS from {source_name}")]
    Fetch {
        /// The source, for the message.
        source_name: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// The document has no usable key (see the notes).
    #[error("the JWKS from {source_name} has no usable signing key ({notes})")]
    NoUsableKey {
        /// The source.
        source_name: String,
        /// Why each key was skipped.
        notes: String,
    },
}

/// The keys of one document, and why others were skipped.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Usable keys, in document order.
    keys: Vec<Key>,
    /// One line per skipped key (no key material).
    pub notes: Vec<String>,
}

/// The document's outer shape.
#[derive(serde::Deserialize)]
struct Document {
    /// Each key, parsed one by one so that one odd key does not spoil the set.
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document; keys that cannot verify tokens are skipped with a note.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
        let doc: Document = serde_json::from_slice(bytes).map_err(JwksError::NotAJwks)?;
        let mut set = KeySet::default();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            let name = match &kid {
                Some(k) => format!("key {k:?}"),
                None => format!("key #{}", i + 1),
            };
            if set.keys.len() >= MAX_KEYS {
                set.notes
                    .push(format!("{name}: skipped, more than {MAX_KEYS} keys"));
                continue;
            }
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(j) => j,
                Err(_) => {
                    set.notes
                        .push(format!("{name}: not a JWK this version understands"));
                    continue;
                }
            };
            match usable(&jwk) {
                Ok(key) => set.keys.push(key),
                Err(why) => set.notes.push(format!("{name}: {why}")),
            }
        }
        Ok(set)
    }

    /// Usable keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether there is no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key named `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Every key that verifies `alg` (for a token without `kid`).
    pub fn for_algorithm(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg))
    }
}

/// The key `jwk` as a verification key, or why it cannot be one.
fn usable(jwk: &Jwk) -> Result<Key, String> {
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("skipped, its \"use\" is not \"sig\"".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("skipped, its \"key_ops\" do not include \"verify\"".into());
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("skipped, its curve is not P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("skipped, its curve is not Ed25519".into()),
        },
        AlgorithmParameters::RSA(p) => {
            use base64::Engine as _;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|_| "skipped, its modulus is not base64url".to_owned())?;
            let len = n.iter().skip_while(|b| **b == 0).count();
            if len < MIN_RSA_MODULUS_BYTES {
                return Err("skipped, an RSA key shorter than 2048 bits".into());
            }
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "skipped, a symmetric (oct) key: HS* tokens are checked only with --jwt-secret"
                    .into(),
            );
        }
        _ => return Err("skipped, an unknown key type".into()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family,
        Some(named) => match key_algorithm(named) {
            Some(a) if family.contains(&a) => vec![a],
            _ => return Err("skipped, its \"alg\" does not fit its key type".into()),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "skipped, unreadable key material")?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// A JWK `alg` as a JWS algorithm (encryption algorithms are not).
fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The live key set of one source, with its refresh policy.
pub struct Jwks {
    /// Reads the source.
    fetcher: Fetcher,
    /// Refresh intervals.
    config: JwksConfig,
    /// The current keys.
    keys: ArcSwap<KeySet>,
    /// Bumped on every successful refresh (waiters compare it).
    generation: std::sync::atomic::AtomicU64,
    /// When the last read started; held while a read runs (one at a time).
    last_read: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", self.fetcher.source())
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Reads the keys once. A file must give at least one usable key; a URL that cannot be
    /// read now is logged, and walcast starts with no asymmetric keys (tokens signed with them
    /// are refused until a refresh succeeds).
    pub async fn load(config: JwksConfig) -> Result<Arc<Jwks>, JwksError> {
        let source_name = config.source.to_string();
        let fetcher = Fetcher::new(config.source.clone()).map_err(|source| JwksError::Fetch {
            source_name: source_name.clone(),
            source,
        })?;
        let jwks = Arc::new(Jwks {
            fetcher,
            config,
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: Default::default(),
            last_read: tokio::sync::Mutex::new(None),
        });
        let mut last = jwks.last_read.lock().await;
        *last = Some(Instant::now());
        let first = jwks.read().await;
        drop(last);
        match (first, &jwks.config.source) {
            (Ok(()), _) if !jwks.current().is_empty() => {}
            (Ok(()), JwksSource::File(_)) => {
                return Err(JwksError::NoUsableKey {
                    source_name,
                    notes: jwks.current().notes.join("; "),
                });
            }
            (Err(e), JwksSource::File(_)) => return Err(e),
            (Ok(()), JwksSource::Url(_)) => tracing::warn!(
                source = %source_name,
                notes = %jwks.current().notes.join("; "),
                "the JWKS has no usable signing key yet"
            ),
            (Err(e), JwksSource::Url(_)) => tracing::warn!(
                error = %crate::error::error_chain(&e),
                "the JWKS could not be read at startup: tokens signed with its keys are refused until a refresh succeeds"
            ),
        }
        Ok(jwks)
    }

    /// A key set that never changes (tests, and tools that verify offline).
    pub fn fixed(set: KeySet) -> Arc<Jwks> {
        let source = JwksSource::File(Default::default());
        Arc::new(Jwks {
            fetcher: Fetcher::new(source.clone()).expect("a file source needs no client"),
            config: JwksConfig {
                source,
                refresh: Duration::MAX,
                min_refresh: Duration::MAX,
            },
            keys: ArcSwap::from_pointee(set),
            generation: Default::default(),
            last_read: tokio::sync::Mutex::new(Some(Instant::now())),
        })
    }

    /// The current keys.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Reads the source and swaps the keys in when the document parses.
    async fn read(&self) -> Result<(), JwksError> {
        let source_name = self.fetcher.source().to_string();
        let bytes = self
            .fetcher
            .fetch()
            .await
            .map_err(|source| JwksError::Fetch {
                source_name: source_name.clone(),
                source,
            })?;
        let set = KeySet::parse(&bytes)?;
        let kids: Vec<&str> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(
            source = %source_name,
            keys = set.keys.len(),
            kids = %kids.join(","),
            skipped = set.notes.len(),
            "jwks loaded"
        );
        for note in &set.notes {
            tracing::debug!(source = %source_name, "jwks: {note}");
        }
        self.keys.store(Arc::new(set));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Reads the keys again because a token named an unknown `kid`, unless a read happened
    /// less than `min_refresh` ago. Returns whether the keys may have changed since the caller
    /// looked (a read succeeded, here or in a check this one waited for).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        use std::sync::atomic::Ordering;
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.last_read.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.config.min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        match self.read().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %crate::error::error_chain(&e), "jwks refresh for an unknown kid failed; keeping the keys walcast has");
                false
            }
        }
    }

    /// The periodic refresh: reads the keys again, whatever `min_refresh` says.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let mut last = self.last_read.lock().await;
        *last = Some(Instant::now());
        self.read().await
    }
}

/// Refreshes `jwks` every `refresh` interval until `cancel`; a failed read keeps the keys.
pub fn spawn_refresh_task(
    jwks: Arc<Jwks>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = jwks.config.refresh;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = cancel.cancelled() => return,
                // PRIORITY 2: the periodic read.
                _ = ticks.tick() => {
                    if let Err(e) = jwks.refresh().await {
                        tracing::warn!(error = %crate::error::error_chain(&e), "jwks refresh failed; keeping the keys walcast has");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A P-256 public key (the point is checked only when a signature is verified).
    fn ec(kid: &str) -> serde_json::Value {
        json!({"kty":"EC","crv":"P-256","kid":kid,"use":"sig",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    #[test]
    fn keeps_signing_keys_and_says_why_others_are_skipped() {
        let n2048 = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xc5u8; 256],
        );
        let n1024 = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xc5u8; 128],
        );
        let doc = json!({"keys": [
            ec("a"),
            {"kty":"RSA","kid":"r","alg":"RS256","n":n2048,"e":"AQAB"},
            {"kty":"RSA","kid":"small","n":n1024,"e":"AQAB"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"AA","y":"AA"},
            {"kty":"EC","crv":"P-256","kid":"mismatch","alg":"RS256","x":"AA","y":"AA"},
            {"kty":"XYZ","kid":"odd"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys().iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["a", "r"]);
        assert_eq!(set.by_kid("a").unwrap().algorithms, [Algorithm::ES256]);
        assert_eq!(set.by_kid("r").unwrap().algorithms, [Algorithm::RS256]);
        assert!(set.by_kid("h").is_none());
        assert_eq!(set.notes.len(), 5, "{:?}", set.notes);
        let notes = set.notes.join("\n");
        for part in ["2048", "oct", "\"use\"", "\"alg\"", "\"odd\""] {
            assert!(notes.contains(part), "{part} in {notes}");
        }
        assert_eq!(set.for_algorithm(Algorithm::ES256).count(), 1);
        assert_eq!(set.for_algorithm(Algorithm::PS256).count(), 0);
        let shown = format!("{:?}", set.by_kid("a").unwrap());
        assert!(!shown.contains("f83O"), "{shown}");
    }

    #[test]
    fn refuses_documents_that_are_not_a_jwks() {
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"{\"kid\":\"x\"}").is_err());
        assert!(KeySet::parse(b"{\"keys\":[]}").unwrap().is_empty());
    }

    #[test]
    fn caps_the_number_of_keys() {
        let keys: Vec<_> = (0..MAX_KEYS + 3).map(|i| ec(&format!("k{i}"))).collect();
        let set = KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
        assert_eq!(set.keys().len(), MAX_KEYS);
        assert_eq!(set.notes.len(), 3);
    }
}
