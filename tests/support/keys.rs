//! Signing keys made in the test (ES256 with p256, RS256 with rsa), their JWKS, API keys, and a
//! tiny JWKS server on loopback that counts its reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A publishable key the tests configure.
pub const PUBLISHABLE: &str = "sb_publishable_walcastTestKey_0123456789";
/// A secret key the tests configure.
pub const SECRET_KEY: &str = "sb_secret_walcastTestKey_0123456789abcd";

/// base64url without padding.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A private signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The private key, as `jsonwebtoken` wants it.
    der: Vec<u8>,
    /// The public JWK.
    pub jwk: Value,
}

impl SigningKey {
    /// A fresh P-256 key for ES256.
    pub fn es256(kid: &str) -> SigningKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        use p256::pkcs8::EncodePrivateKey as _;
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = sk.public_key().to_encoded_point(false);
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            der: sk.to_pkcs8_der().expect("pkcs8").as_bytes().to_vec(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))}),
        }
    }

    /// An RSA-2048 key for RS256 (generated once per test binary: RSA key generation is slow
    /// in debug builds), named `kid`.
    pub fn rs256(kid: &str) -> SigningKey {
        static RSA: OnceLock<(Vec<u8>, String, String)> = OnceLock::new();
        let (der, n, e) = RSA.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key");
            (
                key.to_pkcs1_der().expect("pkcs1").as_bytes().to_vec(),
                b64(&key.n().to_bytes_be()),
                b64(&key.e().to_bytes_be()),
            )
        });
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            der: der.clone(),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e}),
        }
    }

    /// Signs `claims` with this key, naming its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }

    /// Signs `claims` with this key, naming `kid` (or none).
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let key = match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&self.der),
            _ => EncodingKey::from_ec_der(&self.der),
        };
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// A user token for `role` and `sub`, valid for ten minutes.
    pub fn user(&self, role: &str, sub: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({"role": role, "sub": sub, "exp": now + 600, "iat": now}))
    }
}

/// A JWKS document with these keys' public halves.
pub fn jwks(keys: &[&SigningKey]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys }).to_string()
}

/// A token with a hand-made header (e.g. `alg: none`) and signature.
pub fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A JWKS served over HTTP on loopback; the document can change, and reads are counted.
pub struct JwksServer {
    /// `http://127.0.0.1:PORT/jwks.json`.
    pub url: String,
    /// The document served.
    doc: Arc<Mutex<String>>,
    /// How many times it was read.
    hits: Arc<AtomicUsize>,
    /// The server task (aborted on drop).
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `doc` on a free port.
    pub async fn start(doc: String) -> JwksServer {
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (d, h) = (Arc::clone(&doc), Arc::clone(&hits));
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (d, h) = (Arc::clone(&d), Arc::clone(&h));
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().expect("doc").clone();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            doc,
            hits,
            task,
        }
    }

    /// Serves `doc` from now on.
    pub fn set(&self, doc: String) {
        *self.doc.lock().expect("doc") = doc;
    }

    /// Reads so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
