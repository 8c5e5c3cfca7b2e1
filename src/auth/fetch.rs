//! Reading a JWKS document from its source: a file, or an `http(s)://` URL fetched with rustls
//! (the system's CA roots; `SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured). Every read is bounded
//! in time ([`FETCH_TIMEOUT`]) and in bytes ([`MAX_JWKS_BYTES`]); redirects are not followed
//! (a JWKS that moved is a configuration change, not something to chase).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Longest a whole read may take (connect, TLS, headers and body). Supabase serves its JWKS from
/// an edge cache in well under a second; 5 s leaves room for a slow link without letting a
/// stuck server hold a token check (which may wait for a refresh) for long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS document read. A JWKS holds a few public keys (an RSA-4096 key is under 1 KiB
/// of JSON); 256 KiB is hundreds of keys, and caps what a hostile server can make walcast hold.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read again on every refresh.
    File(PathBuf),
    /// A JWKS URL (`http://` or `https://`).
    Url(url::Url),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Url(u) => write!(f, "{u}"),
        }
    }
}

/// Reading a JWKS document failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The request could not be built or sent, or the connection failed.
    #[error("cannot fetch the JWKS")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server answered with another status than 200.
    #[error("the JWKS URL answered HTTP {0} (expected 200)")]
    Status(u16),
    /// The read took longer than [`FETCH_TIMEOUT`].
    #[error("fetching the JWKS took longer than {FETCH_TIMEOUT:?}")]
    Timeout,
    /// No TLS roots could be loaded for an `https://` URL.
    #[error(
        "cannot load the system's CA certificates for an https JWKS URL (install ca-certificates or set SSL_CERT_FILE)"
    )]
    Roots(#[source] std::io::Error),
}

/// Reads JWKS documents from one source.
#[derive(Clone)]
pub struct Fetcher {
    /// The source.
    source: JwksSource,
    /// The HTTP(S) client, for a URL.
    client: Option<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `source`; for an `https://` URL the system's CA roots must load.
    pub fn new(source: JwksSource) -> Result<Self, FetchError> {
        let client = match &source {
            JwksSource::File(_) => None,
            JwksSource::Url(url) => {
                let roots = rustls::ClientConfig::builder_with_provider(tls_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| FetchError::Request(Box::new(e)))?;
                let tls = match hyper_rustls::ConfigBuilderExt::with_native_roots(roots) {
                    Ok(b) => b.with_no_client_auth(),
                    // Plain http needs no roots; https does.
                    Err(e) if url.scheme() == "https" => return Err(FetchError::Roots(e)),
                    Err(_) => rustls::ClientConfig::builder_with_provider(tls_provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| FetchError::Request(Box::new(e)))?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                };
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Some(Client::builder(TokioExecutor::new()).build(connector))
            }
        };
        Ok(Fetcher { source, client })
    }

    /// The source.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// Reads the document, within [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`].
    pub async fn fetch(&self) -> Result<Bytes, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded_in_time()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    /// [`Fetcher::fetch`] without the time bound.
    async fn fetch_unbounded_in_time(&self) -> Result<Bytes, FetchError> {
        match (&self.source, &self.client) {
            (JwksSource::File(path), _) => read_file(path).await,
            (JwksSource::Url(url), Some(client)) => {
                let req = hyper::Request::get(url.as_str())
                    .header(hyper::header::ACCEPT, "application/json")
                    .header(
                        hyper::header::USER_AGENT,
                        concat!("walcast/", env!("CARGO_PKG_VERSION")),
                    )
                    .body(Empty::new())
                    .map_err(|e| FetchError::Request(Box::new(e)))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| FetchError::Request(Box::new(e)))?;
                if resp.status() != hyper::StatusCode::OK {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES);
                match body.collect().await {
                    Ok(b) => Ok(b.to_bytes()),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(FetchError::TooLarge)
                    }
                    Err(e) => Err(FetchError::Request(e)),
                }
            }
            (JwksSource::Url(_), None) => Err(FetchError::Request("no HTTP client".into())),
        }
    }
}

/// rustls' ring provider. rustls now prefers aws-lc-rs for its post-quantum key exchange; a
/// JWKS is public data whose integrity rests on the server's certificate, not on long-term
/// secrecy, and ring builds without cmake, so walcast keeps ring here.
#[allow(deprecated)]
fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a JWKS file, refusing one over [`MAX_JWKS_BYTES`].
async fn read_file(path: &Path) -> Result<Bytes, FetchError> {
    use tokio::io::AsyncReadExt;
    let err = |source| FetchError::File {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let mut buf = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(err)?;
    if buf.len() > MAX_JWKS_BYTES {
        return Err(FetchError::TooLarge);
    }
    Ok(Bytes::from(buf))
}
