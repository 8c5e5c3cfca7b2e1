//! The HTTP server: an accept loop with a cap on concurrent connections and caps per client
//! address ([`super::per_ip`]), a time limit on reading a request's headers (the first
//! request's too: a connection that sends nothing is closed, and so is a keep-alive connection
//! idle that long between requests), and graceful shutdown.
//!
//! A connection over the total cap is answered `503` with `Retry-After`, one over its address's
//! cap `429`; either is closed at once, so the process keeps its file descriptors (and
//! `/healthz`) for the connections it serves. A connection's places are held as long as the
//! connection lives, also after a WebSocket upgrade: the upgrade handlers keep its
//! [`ConnPermit`] for the session's lifetime, and take a session place from it
//! ([`ConnPermit::open_session`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::per_ip::{OverCap, PerIp, Place};
use crate::config::HttpLimits;
use crate::metrics::Metrics;

/// How long the server waits after a failed `accept` (e.g. out of file descriptors) before it
/// accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer to a connection over the cap.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 101\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"walcast is at its connection cap; retry shortly\"}}";

/// The answer to a connection over its address's cap (the body names the option).
const PER_IP_RESPONSE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 183\r\n\r\n\
{\"error\":{\"code\":\"too_many_connected_users\",\"message\":\"Too many connected users: this \
address holds as many connections as --max-connections-per-ip allows; close one or retry later\"}}";

/// A connection's place under the caps, in every request's extensions; a WebSocket session
/// keeps a clone so that the place is held until the session ends.
#[derive(Debug, Clone)]
pub struct ConnPermit {
    /// Held while any clone lives.
    held: Arc<Held>,
}

/// What a connection holds.
#[derive(Debug)]
struct Held {
    /// Its place under the total cap.
    _permit: OwnedSemaphorePermit,
    /// Its place under its address's connection cap (none for exempt addresses and proxies).
    _per_ip: Option<Place>,
    /// The peer address.
    peer: std::net::IpAddr,
    /// The per-address counts.
    counts: Arc<PerIp>,
}

impl ConnPermit {
    /// Takes a WebSocket session place for the client of this connection (the peer, or the
    /// client a trusted proxy names in `headers`); hold it for the session's lifetime.
    /// `Ok(None)`: the client is exempt.
    pub fn open_session(&self, headers: &HeaderMap) -> Result<Option<Place>, OverCap> {
        self.held.counts.open_session(self.held.peer, headers)
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests (WebSocket sessions are ended by their own shutdown signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let counts = PerIp::new(limits.per_ip.clone());
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
            metrics.connections_refused.add("total", 1);
            refuse(&tcp, BUSY_RESPONSE);
            continue;
        };
        let Ok(per_ip) = counts.accept(peer.ip()) else {
            metrics.connections_refused.add("per_ip", 1);
            refuse(&tcp, PER_IP_RESPONSE);
            continue;
        };
        let permit = ConnPermit {
            held: Arc::new(Held {
                _permit: permit,
                _per_ip: per_ip,
                peer: peer.ip(),
                counts: Arc::clone(&counts),
            }),
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

/// Answers a connection over a cap and closes it at once: the answer goes into the fresh
/// socket's send buffer without waiting (no task, no descriptor held past this call).
fn refuse(tcp: &tokio::net::TcpStream, answer: &[u8]) {
    let _ = tcp.try_write(answer);
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

    /// The JSON body of a static answer, after checking its `content-length`.
    fn body_of(answer: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let v = body_of(BUSY_RESPONSE);
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn the_per_ip_answer_is_well_formed() {
        assert!(PER_IP_RESPONSE.starts_with(b"HTTP/1.1 429 "));
        let v = body_of(PER_IP_RESPONSE);
        assert_eq!(v["error"]["code"], crate::http::per_ip::OVER_CAP_CODE);
        assert_eq!(v["error"]["message"], crate::http::per_ip::OVER_CAP_MESSAGE);
    }
}

/// File descriptors walcast needs besides its client connections: the database pool, the
/// replication connections (reader, replays, writers), log and spool files, and headroom.
pub const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// The open-files limit (`RLIMIT_NOFILE`) before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit walcast started with.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit (the most an unprivileged process may raise its soft limit to).
    pub hard: u64,
}

impl OpenFiles {
    /// Connections that fit under the limit now, beside what walcast needs for itself.
    pub fn connections(&self) -> u64 {
        self.now.saturating_sub(FILES_BESIDE_CONNECTIONS)
    }
}

/// Raises the soft open-files limit to the hard limit, as servers that hold a socket per
/// client do: every connection is a file descriptor, and the soft limit (often 1024) is far
/// below what the hard limit allows. Raising the hard limit itself needs the operator (`ulimit
/// -Hn`, systemd `LimitNOFILE=`, docker `--ulimit nofile=`); see docs/scaling.md.
pub fn raise_open_files_limit() -> OpenFiles {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let mut now = before;
    if before < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            now = hard;
        }
    }
    OpenFiles { before, now, hard }
}

#[cfg(test)]
mod open_files_tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let files = raise_open_files_limit();
        assert!(
            files.before <= files.now && files.now <= files.hard,
            "{files:?}"
        );
        // Raised (or already there): a second call finds it at the hard limit.
        let again = raise_open_files_limit();
        assert_eq!(again.before, again.now);
        assert_eq!(again.now, files.now);
        assert_eq!(
            OpenFiles {
                before: 1024,
                now: 20_000,
                hard: 20_000
            }
            .connections(),
            20_000 - FILES_BESIDE_CONNECTIONS
        );
    }
}
