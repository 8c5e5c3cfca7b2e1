//! Caps per client address: open TCP connections and WebSocket sessions, and which address a
//! request comes from when a trusted proxy sits in front.
//!
//! Two counts per address key (an IPv4 address, or the /64 an IPv6 address is in, since one
//! IPv6 host usually has a whole /64 to pick from):
//! - **open TCP connections**, taken at accept, against the peer address, capped at
//!   `--max-connections-per-ip` + [`CONNECTION_HEADROOM`]. A connection over it is refused at
//!   once, before any request is read (the server writes a static 429 and closes, no task).
//!   A trusted proxy's connections are not counted: it carries many clients.
//! - **WebSocket sessions**, taken at upgrade, against the client address, capped at
//!   `--max-connections-per-ip`. One more upgrade is answered 429 "Too many connected users".
//!   The client address is the peer, or, for a peer that is a trusted proxy, the nearest
//!   `X-Forwarded-For` entry that is not itself a trusted proxy ([`PerIp::client_addr`]).
//!
//! Exempt addresses (`--per-ip-exempt`) are counted in neither. The maps hold only addresses
//! with something open, so they are bounded by `--max-connections`. A [`Place`] gives its
//! count back when it is dropped.
//!
//! Without `--trusted-proxies` the `X-Forwarded-For` header is never read: a client could
//! otherwise name any address and spread its sessions over made-up ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;

use crate::config::{PerIpLimits, mask};

/// Connections an address may open beyond its WebSocket session cap: a browser tab at its cap
/// can still fetch `/healthz` or post events, and its next upgrade reaches the handler and gets
/// a readable 429 instead of a closed socket. Small, so that one address can never hold more
/// than a handful of descriptors beyond its sessions.
pub const CONNECTION_HEADROOM: usize = 8;

/// IPv6 addresses are counted per network of this prefix length (a host's usual allocation).
pub const IPV6_PREFIX: u8 = 64;

/// The stable code of a refusal for too many connections from one address (`/ws` and the
/// static answer before any request is read).
pub const OVER_CAP_CODE: &str = "too_many_connected_users";

/// The message of that refusal.
pub const OVER_CAP_MESSAGE: &str = "Too many connected users: this address holds as many \
     connections as --max-connections-per-ip allows; close one or retry later";

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An open TCP connection.
    Connection,
    /// A WebSocket session.
    Session,
}

/// Open connections and sessions by address key.
#[derive(Debug, Default)]
struct Counts {
    /// Open TCP connections.
    connections: HashMap<IpAddr, usize>,
    /// WebSocket sessions.
    sessions: HashMap<IpAddr, usize>,
}

impl Counts {
    /// The map of `kind`.
    fn of(&mut self, kind: Kind) -> &mut HashMap<IpAddr, usize> {
        match kind {
            Kind::Connection => &mut self.connections,
            Kind::Session => &mut self.sessions,
        }
    }
}

/// The address is at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap;

/// The per-address counts of one server (see the module docs).
#[derive(Debug)]
pub struct PerIp {
    /// Caps, exemptions and trusted proxies.
    limits: PerIpLimits,
    /// The counts (a short critical section per accept, upgrade and close).
    counts: Mutex<Counts>,
}

/// One counted connection or session; dropping it gives the count back.
#[derive(Debug)]
pub struct Place {
    /// The counts it is in.
    owner: Arc<PerIp>,
    /// Its address key.
    key: IpAddr,
    /// What it counts as.
    kind: Kind,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        let map = counts.of(self.kind);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl PerIp {
    /// Counts for `limits`, all empty.
    pub fn new(limits: PerIpLimits) -> Arc<PerIp> {
        Arc::new(PerIp {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Locks the counts (a poisoned lock still holds consistent maps).
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key an address is counted under.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => v4,
            v6 => mask(v6, IPV6_PREFIX),
        }
    }

    /// Whether `ip` is a trusted proxy.
    fn trusted(&self, ip: IpAddr) -> bool {
        self.limits.trusted_proxies.iter().any(|r| r.contains(ip))
    }

    /// Whether `ip` is exempt from the caps.
    fn exempt(&self, ip: IpAddr) -> bool {
        self.limits.exempt.iter().any(|r| r.contains(ip))
    }

    /// Counts one more `kind` for `ip` under `cap`; `None` for exempt addresses.
    fn take(
        self: &Arc<Self>,
        ip: IpAddr,
        kind: Kind,
        cap: usize,
    ) -> Result<Option<Place>, OverCap> {
        if self.exempt(ip) {
            return Ok(None);
        }
        let key = Self::key(ip);
        let mut counts = self.lock();
        let n = counts.of(kind).entry(key).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                counts.of(kind).remove(&key);
            }
            return Err(OverCap);
        }
        *n += 1;
        Ok(Some(Place {
            owner: Arc::clone(self),
            key,
            kind,
        }))
    }

    /// Counts a new TCP connection from `peer` (nothing for trusted proxies and exempt
    /// addresses).
    pub fn accept(self: &Arc<Self>, peer: IpAddr) -> Result<Option<Place>, OverCap> {
        if self.trusted(peer) {
            return Ok(None);
        }
        let cap = self.limits.max_sessions.saturating_add(CONNECTION_HEADROOM);
        self.take(peer, Kind::Connection, cap)
    }

    /// Counts a new WebSocket session of the client behind `peer` (see [`PerIp::client_addr`]).
    pub fn open_session(
        self: &Arc<Self>,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Option<Place>, OverCap> {
        let client = self.client_addr(peer, headers);
        self.take(client, Kind::Session, self.limits.max_sessions)
    }

    /// The address a request is counted against: `peer`, unless `peer` is a trusted proxy;
    /// then the nearest `X-Forwarded-For` entry (from the right, the end the proxies append
    /// to) that is not a trusted proxy itself, or the farthest one if all are. An entry that is
    /// not an address makes the rest of the header untrustworthy: the last trusted hop counts.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        for entry in entries.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_forwarded(entry) else {
                return client;
            };
            client = ip;
            if !self.trusted(ip) {
                return ip;
            }
        }
        client
    }

    /// Open connections and sessions counted for `ip`'s key (for tests).
    #[cfg(test)]
    fn counted(&self, ip: IpAddr) -> (usize, usize) {
        let key = Self::key(ip);
        let counts = self.lock();
        (
            counts.connections.get(&key).copied().unwrap_or(0),
            counts.sessions.get(&key).copied().unwrap_or(0),
        )
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) as some proxies write it.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddrRange;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn per_ip(max: usize, exempt: &[&str], proxies: &[&str]) -> Arc<PerIp> {
        let ranges = |v: &[&str]| v.iter().map(|s| AddrRange::parse(s).unwrap()).collect();
        PerIp::new(PerIpLimits {
            max_sessions: max,
            exempt: ranges(exempt),
            trusted_proxies: ranges(proxies),
        })
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sessions_are_capped_per_address_and_given_back() {
        let p = per_ip(2, &[], &[]);
        let a = ip("192.0.2.1");
        let s1 = p.open_session(a, &HeaderMap::new()).unwrap();
        let _s2 = p.open_session(a, &HeaderMap::new()).unwrap();
        assert_eq!(p.open_session(a, &HeaderMap::new()).unwrap_err(), OverCap);
        // Another address has its own budget.
        assert!(p.open_session(ip("192.0.2.2"), &HeaderMap::new()).is_ok());
        drop(s1);
        assert!(p.open_session(a, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn connections_have_headroom_and_maps_empty_out() {
        let p = per_ip(1, &[], &[]);
        let a = ip("198.51.100.7");
        let held: Vec<_> = (0..1 + CONNECTION_HEADROOM)
            .map(|_| p.accept(a).unwrap())
            .collect();
        assert_eq!(p.accept(a).unwrap_err(), OverCap);
        assert_eq!(p.counted(a), (1 + CONNECTION_HEADROOM, 0));
        drop(held);
        assert_eq!(p.counted(a), (0, 0));
        assert!(p.lock().connections.is_empty(), "no entry left behind");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let p = per_ip(1, &[], &[]);
        let _s = p
            .open_session(ip("2001:db8:1:2::1"), &HeaderMap::new())
            .unwrap();
        assert!(
            p.open_session(ip("2001:db8:1:2:ffff::9"), &HeaderMap::new())
                .is_err(),
            "same /64"
        );
        assert!(
            p.open_session(ip("2001:db8:1:3::1"), &HeaderMap::new())
                .is_ok()
        );
        let _v4 = p.open_session(ip("192.0.2.9"), &HeaderMap::new()).unwrap();
        assert!(
            p.open_session(ip("::ffff:192.0.2.9"), &HeaderMap::new())
                .is_err()
        );
    }

    #[test]
    fn exempt_addresses_are_not_counted() {
        let p = per_ip(1, &["127.0.0.0/8"], &[]);
        let lo = ip("127.0.0.1");
        let held: Vec<_> = (0..5)
            .map(|_| p.open_session(lo, &HeaderMap::new()).unwrap())
            .collect();
        assert!(held.iter().all(Option::is_none));
        assert!(p.accept(lo).unwrap().is_none());
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let p = per_ip(1, &[], &["10.0.0.0/8"]);
        let proxy = ip("10.0.0.5");
        let outsider = ip("203.0.113.50");
        // An untrusted peer cannot name another address.
        assert_eq!(p.client_addr(outsider, &xff(&["198.51.100.1"])), outsider);
        // Through the proxy: the nearest untrusted entry, from the right.
        assert_eq!(
            p.client_addr(proxy, &xff(&["1.1.1.1, 198.51.100.1, 10.0.0.9"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            p.client_addr(proxy, &xff(&["1.1.1.1", "198.51.100.2:5555"])),
            ip("198.51.100.2")
        );
        assert_eq!(
            p.client_addr(proxy, &xff(&["[2001:db8::7]:443"])),
            ip("2001:db8::7")
        );
        // No header: the proxy itself; garbage: the last trusted hop.
        assert_eq!(p.client_addr(proxy, &HeaderMap::new()), proxy);
        assert_eq!(
            p.client_addr(proxy, &xff(&["198.51.100.3, nonsense, 10.0.0.7"])),
            ip("10.0.0.7")
        );
        // The proxy's own connections are not capped; sessions count per forwarded client.
        let _c: Vec<_> = (0..20).map(|_| p.accept(proxy).unwrap()).collect();
        let _a = p.open_session(proxy, &xff(&["198.51.100.1"])).unwrap();
        assert!(p.open_session(proxy, &xff(&["198.51.100.1"])).is_err());
        assert!(p.open_session(proxy, &xff(&["198.51.100.2"])).is_ok());
    }
}
