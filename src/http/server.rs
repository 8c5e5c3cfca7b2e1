//! The HTTP server: an accept loop with a cap on concurrent connections, a time limit on reading
//! a request's headers (the first request's too: a connection that sends nothing is closed),
//! and graceful shutdown.
//!
//! A connection over the cap is answered `503` with `Retry-After` and closed at once, so the
//! process keeps its file descriptors (and `/healthz`) for the connections it serves. A
//! connection's permit is held as long as the connection lives, also after a WebSocket
//! upgrade: the upgrade handlers keep it ([`ConnPermit`]) for the session's lifetime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpLimits;

/// How long the server waits after a failed `accept` (e.g. out of file descriptors) before it
/// accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer to a connection over the cap.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 101\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"walcast is at its connection cap; retry shortly\"}}";

/// A connection's place under the cap, in every request's extensions; a WebSocket session
/// keeps a clone so that the place is held until the session ends.
#[derive(Debug, Clone)]
pub struct ConnPermit {
    /// Held while any clone lives.
    _held: Arc<OwnedSemaphorePermit>,
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests (WebSocket sessions are ended by their own shutdown signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            // PRIORITY 1: shutdown.
            _ = shutdown.cancelled() => break,
            // PRIORITY 2: the next connection.
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; accepting again shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small frames must leave at once: without TCP_NODELAY they wait for the delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(&tcp);
            continue;
        };
        let permit = ConnPermit {
            _held: Arc::new(permit),
        };
        tracker.spawn(connection(
            tcp,
            peer,
            app.clone(),
            permit,
            limits.header_timeout,
            shutdown.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers a connection over the cap and closes it at once: the answer goes into the fresh
/// socket's send buffer without waiting (no task, no descriptor held past this call).
fn refuse(tcp: &tokio::net::TcpStream) {
    let _ = tcp.try_write(BUSY_RESPONSE);
}

/// Serves one connection.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    permit: ConnPermit,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(permit.clone());
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req).await }
    });
    // HTTP/1.1 only (what WebSocket clients speak): its header timer starts as soon as the
    // connection waits for a request, so a connection that never sends one is closed too.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }
}
