//! Feature flags: which endpoints this node serves, which clients move to the Realtime endpoint,
//! and any flag an operator adds. See `docs/flags.md`.
//!
//! Owns the tables `walcast.flags`, `walcast.flag_overrides` and `walcast.flag_history`; only
//! [`store`] runs SQL against them, and every change goes through the `walcast.flag_*` SQL
//! functions (validation, history, `NOTIFY walcast_flags`).
//!
//! Three tiers, highest first:
//! 1. the environment ([`env`]), read once at startup;
//! 2. the database, held in memory as a [`FlagSet`] snapshot that hot paths read without locks
//!    ([`Flags`], an `ArcSwap`), refreshed by [`refresh`] on every notification and every
//!    [`refresh::RELOAD_INTERVAL`];
//! 3. built-in defaults: an unknown flag is off; a missing or unusable `broadcaster_mode` is
//!    [`Mode::Dual`].
//!
//! Evaluation ([`eval`]) is pure and equal bit for bit to `walcast.flag_evaluate`.
//!
//! The broadcaster is driven by two flags. `broadcaster_mode` (variants `direct`, `realtime`,
//! `dual`), evaluated with the node name as subject, says which WebSocket endpoints accept new
//! connections; a refused upgrade answers `409 mode_disabled` ([`ModeDisabled`]). Connections
//! that are open when the mode changes stay open. `use_realtime`, evaluated per client subject,
//! says which endpoint a client should prefer while both are served
//! (`GET /v1/flags/evaluate`, [`Flags::route`]).

pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod eval;
pub(crate) mod http;
pub(crate) mod refresh;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

pub use env::{EnvError, EnvTier};
pub use error::{FlagsError, RejectCode, Rejection};
pub use eval::{Evaluation, Flag, FlagDef, FlagSet, Source, bucket, variant_bucket};
pub use refresh::spawn_refresh_task;

/// The flag that chooses the endpoints a node serves.
pub const BROADCASTER_MODE: &str = "broadcaster_mode";
/// The flag that moves a client to the Realtime endpoint while both are served.
pub const USE_REALTIME: &str = "use_realtime";
/// The notification channel of flag changes.
pub const NOTIFY_CHANNEL: &str = "walcast_flags";

/// Which WebSocket endpoints a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only `/ws` (plain JSON).
    Direct,
    /// Only `/realtime/v1/websocket` (Supabase Realtime protocol).
    Realtime,
    /// Both.
    Dual,
}

impl Mode {
    /// The variant name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Realtime => "realtime",
            Mode::Dual => "dual",
        }
    }

    /// Does this mode serve `path`?
    pub fn serves(self, path: Endpoint) -> bool {
        matches!(
            (self, path),
            (Mode::Dual, _) | (Mode::Direct, Endpoint::Ws) | (Mode::Realtime, Endpoint::Realtime)
        )
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "direct" => Ok(Mode::Direct),
            "realtime" => Ok(Mode::Realtime),
            "dual" => Ok(Mode::Dual),
            _ => Err(()),
        }
    }
}

/// The node's mode and how it was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeState {
    /// The mode.
    pub mode: Mode,
    /// The evaluation of `broadcaster_mode` for the node (source `unknown` when the flag is
    /// missing; the mode is then [`Mode::Dual`]).
    pub evaluation: Evaluation,
}

/// Where one client should connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The node's mode.
    pub mode: Mode,
    /// Endpoints this client may use, preferred first (by their mode names: `direct`,
    /// `realtime`).
    #[serde(serialize_with = "crate::endpoint::serialize_mode_names")]
    pub paths: Vec<Endpoint>,
    /// `use_realtime` for the client.
    pub use_realtime: Evaluation,
}

/// An endpoint outside the node's mode was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeDisabled {
    /// The endpoint asked for.
    pub path: Endpoint,
    /// The node's mode.
    pub mode: Mode,
}

impl std::fmt::Display for ModeDisabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let other = self.path.other();
        write!(
            f,
            "{} is not served while broadcaster_mode is {}: connect to {} instead (GET /v1/flags/evaluate tells clients where to connect)",
            self.path.path(),
            self.mode,
            other.path()
        )
    }
}

/// State shared by every [`Flags`] clone.
#[derive(Debug)]
struct Inner {
    /// The database tier.
    snapshot: ArcSwap<FlagSet>,
    /// The environment tier.
    env: EnvTier,
    /// This node's name: the subject `broadcaster_mode` is evaluated for.
    node: String,
}

/// The flags as this node sees them; cheap to clone, lock-free to read.
#[derive(Debug, Clone)]
pub struct Flags {
    /// Shared state.
    inner: Arc<Inner>,
}

impl Flags {
    /// Flags for node `node` with an environment tier and a first snapshot.
    pub fn new(node: impl Into<String>, env: EnvTier, snapshot: FlagSet) -> Self {
        Flags {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(snapshot),
                env,
                node: node.into(),
            }),
        }
    }

    /// The current database snapshot.
    pub fn snapshot(&self) -> Arc<FlagSet> {
        self.inner.snapshot.load_full()
    }

    /// Replaces the database snapshot.
    pub fn replace(&self, set: FlagSet) {
        self.inner.snapshot.store(Arc::new(set));
    }

    /// The environment tier.
    pub fn env(&self) -> &EnvTier {
        &self.inner.env
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Evaluates one flag with every tier.
    pub fn evaluate<S: AsRef<str>>(&self, name: &str, subject: &str, segments: &[S]) -> Evaluation {
        let set = self.inner.snapshot.load();
        self.inner
            .env
            .evaluate(name, set.get(name), subject)
            .unwrap_or_else(|| set.evaluate(name, subject, segments))
    }

    /// Evaluates every flag (stored or forced by the environment), by name.
    pub fn evaluate_all<S: AsRef<str>>(
        &self,
        subject: &str,
        segments: &[S],
    ) -> BTreeMap<String, Evaluation> {
        let set = self.inner.snapshot.load();
        let mut out = BTreeMap::new();
        for f in set.iter() {
            let e = self
                .inner
                .env
                .evaluate(&f.def.name, Some(f), subject)
                .unwrap_or_else(|| f.evaluate(subject, segments));
            out.insert(f.def.name.clone(), e);
        }
        for (name, _) in self.inner.env.iter() {
            if !out.contains_key(name)
                && let Some(e) = self.inner.env.evaluate(name, None, subject)
            {
                out.insert(name.clone(), e);
            }
        }
        out
    }

    /// The node's mode.
    pub fn mode(&self) -> ModeState {
        let evaluation = self.evaluate::<&str>(BROADCASTER_MODE, &self.inner.node, &[]);
        let mode = evaluation
            .variant
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Mode::Dual);
        ModeState { mode, evaluation }
    }

    /// Where a client should connect: the endpoints its node serves, preferred first.
    pub fn route<S: AsRef<str>>(&self, subject: &str, segments: &[S]) -> Route {
        let mode = self.mode().mode;
        let use_realtime = self.evaluate(USE_REALTIME, subject, segments);
        let paths = match mode {
            Mode::Direct => vec![Endpoint::Ws],
            Mode::Realtime => vec![Endpoint::Realtime],
            Mode::Dual if use_realtime.enabled => vec![Endpoint::Realtime, Endpoint::Ws],
            Mode::Dual => vec![Endpoint::Ws, Endpoint::Realtime],
        };
        Route {
            mode,
            paths,
            use_realtime,
        }
    }

    /// `Ok` when the node's mode serves `path`; call before a WebSocket upgrade.
    pub fn check(&self, path: Endpoint) -> Result<(), ModeDisabled> {
        let mode = self.mode().mode;
        if mode.serves(path) {
            Ok(())
        } else {
            Err(ModeDisabled { path, mode })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use eval::Variant;

    /// broadcaster_mode with a default variant, plus use_realtime at `pct` %.
    fn set(mode: &str, pct: f64) -> FlagSet {
        let now = Utc::now();
        let variants = ["direct", "realtime", "dual"]
            .iter()
            .map(|n| Variant {
                name: (*n).into(),
                weight: if *n == "dual" { 100 } else { 0 },
            })
            .collect();
        FlagSet::new([
            FlagDef {
                name: BROADCASTER_MODE.into(),
                description: String::new(),
                enabled: true,
                rollout_percentage: 0.0,
                variants,
                default_variant: Some(mode.into()),
                created_at: now,
                updated_at: now,
                updated_by: "t".into(),
                overrides: vec![],
            },
            FlagDef {
                name: USE_REALTIME.into(),
                description: String::new(),
                enabled: true,
                rollout_percentage: pct,
                variants: vec![],
                default_variant: None,
                created_at: now,
                updated_at: now,
                updated_by: "t".into(),
                overrides: vec![],
            },
        ])
    }

    #[test]
    fn mode_guards_endpoints() {
        let f = Flags::new("node1", EnvTier::default(), set("realtime", 0.0));
        assert_eq!(f.mode().mode, Mode::Realtime);
        let e = f.check(Endpoint::Ws).unwrap_err();
        assert!(e.to_string().contains("/realtime/v1/websocket"), "{e}");
        assert!(f.check(Endpoint::Realtime).is_ok());
        f.replace(set("direct", 0.0));
        assert!(f.check(Endpoint::Ws).is_ok());
        assert!(f.check(Endpoint::Realtime).is_err());
        f.replace(FlagSet::default());
        assert_eq!(f.mode().mode, Mode::Dual, "missing flag: both endpoints");
    }

    #[test]
    fn routes_follow_use_realtime() {
        let f = Flags::new("node1", EnvTier::default(), set("dual", 100.0));
        assert_eq!(
            f.route::<&str>("u", &[]).paths,
            [Endpoint::Realtime, Endpoint::Ws]
        );
        f.replace(set("dual", 0.0));
        assert_eq!(
            f.route::<&str>("u", &[]).paths,
            [Endpoint::Ws, Endpoint::Realtime]
        );
        f.replace(set("direct", 100.0));
        assert_eq!(f.route::<&str>("u", &[]).paths, [Endpoint::Ws]);
    }

    #[test]
    fn env_beats_database() {
        let env = EnvTier::from_vars([
            ("MONITORING_USE_ADAPTER", "true"),
            ("WALCAST_FLAG_EXTRA", "on"),
        ])
        .unwrap();
        let f = Flags::new("node1", env, set("direct", 0.0));
        let m = f.mode();
        assert_eq!((m.mode, m.evaluation.source), (Mode::Realtime, Source::Env));
        let all = f.evaluate_all::<&str>("u", &[]);
        assert_eq!(all["use_realtime"].source, Source::Env);
        assert!(all["use_realtime"].enabled);
        assert!(all["extra"].enabled);
        assert_eq!(f.route::<&str>("u", &[]).paths, [Endpoint::Realtime]);
    }
}
