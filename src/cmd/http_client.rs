//! A minimal HTTP/1.1 client for the CLI (`emit`) and `walcast-bench`: JSON POSTs to a walcast
//! server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// The hyper client.
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// A response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A new client.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// POSTs `body` with a content type and an optional bearer token.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<HttpResponse> {
        let mut req = hyper::Request::post(url).header("content-type", content_type);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body))?;
        let resp = self.inner.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(HttpResponse { status, body })
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<HttpResponse> {
        self.get_with_token(url, None).await
    }

    /// GETs `url` with an optional bearer token.
    pub async fn get_with_token(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> anyhow::Result<HttpResponse> {
        let mut req = hyper::Request::get(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = self.inner.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(HttpResponse { status, body })
    }
}
