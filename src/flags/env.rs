//! The environment tier: flag values forced when walcast starts, which beat the database.
//!
//! Read once, before the server starts; a bad value stops walcast with exit code 2.
//!
//! - `WALCAST_FLAG_<NAME>=on|off|<variant>` forces flag `<name>` (lower case) for every subject.
//! - `MONITORING_USE_ADAPTER`, `MONITORING_DUAL_MODE`, `MONITORING_ADAPTER_TYPE` keep their
//!   meaning from the broadcaster they come from (use the Realtime adapter; send through both
//!   paths; which adapter) and force `broadcaster_mode` and `use_realtime`:
//!
//! | `USE_ADAPTER` | `DUAL_MODE` | `ADAPTER_TYPE`            | `broadcaster_mode` | `use_realtime` |
//! |---------------|-------------|---------------------------|--------------------|----------------|
//! | unset         | unset/false | (ignored)                 | database           | database       |
//! | unset         | true        | (ignored)                 | `dual`             | database       |
//! | false         | (ignored)   | (ignored)                 | `direct`           | off            |
//! | true          | true        | (ignored)                 | `dual`             | on             |
//! | true          | unset/false | `auto` (default), `realtime` | `realtime`      | on             |
//! | true          | unset/false | `websocket`               | `direct`           | off            |
//!
//! `WALCAST_FLAG_BROADCASTER_MODE` and `WALCAST_FLAG_USE_REALTIME` beat the `MONITORING_*` values.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::eval::{Evaluation, Flag, Source};
use super::{BROADCASTER_MODE, Mode, USE_REALTIME};

/// Prefix of the per-flag variables.
pub const FLAG_PREFIX: &str = "WALCAST_FLAG_";
/// Use the Realtime adapter (`true`/`false`).
pub const USE_ADAPTER: &str = "MONITORING_USE_ADAPTER";
/// Send through both paths (`true`/`false`).
pub const DUAL_MODE: &str = "MONITORING_DUAL_MODE";
/// Which adapter: `auto`, `websocket` or `realtime`.
pub const ADAPTER_TYPE: &str = "MONITORING_ADAPTER_TYPE";

/// An environment variable with a value walcast cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct EnvError {
    /// The variable.
    pub var: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl EnvError {
    /// An error for one variable.
    fn new(var: impl Into<String>, reason: impl Into<String>) -> Self {
        EnvError {
            var: var.into(),
            reason: reason.into(),
        }
    }
}

/// A value forced by the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// On for everyone, with the weighted variant.
    On,
    /// Off for everyone, with the default variant.
    Off,
    /// On for everyone, with this variant.
    Variant(String),
}

impl Forced {
    /// The value as written in the environment.
    pub fn as_str(&self) -> &str {
        match self {
            Forced::On => "on",
            Forced::Off => "off",
            Forced::Variant(v) => v,
        }
    }
}

/// One forced flag and the variable that forced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedFlag {
    /// The value.
    pub value: Forced,
    /// The environment variable(s) it comes from, for messages.
    pub origin: String,
}

/// Every value the environment forces, plus what was ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvTier {
    /// Forced flags by name.
    forced: BTreeMap<String, ForcedFlag>,
    /// Variables that were set but had no effect, with the reason (logged at startup).
    pub ignored: Vec<String>,
}

/// Parses a boolean the way the source broadcaster did, plus the usual spellings.
fn parse_bool(var: &str, value: &str) -> Result<bool, EnvError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(EnvError::new(
            var,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

/// True for a valid flag name (`[a-z][a-z0-9_]{0,62}`, as the database checks).
pub fn valid_flag_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// True for a valid variant name (`[a-z][a-z0-9_-]{0,62}`, not `on`/`off`).
pub fn valid_variant_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        && name != "on"
        && name != "off"
}

impl EnvTier {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars_os(std::env::vars_os())
    }

    /// Reads variables given as OS strings (non-Unicode names are skipped).
    pub fn from_vars_os(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, EnvError> {
        let mut list = Vec::new();
        for (k, v) in vars {
            let Some(k) = k.to_str() else { continue };
            if !(k.starts_with(FLAG_PREFIX) || k.starts_with("MONITORING_")) {
                continue;
            }
            let v = v
                .into_string()
                .map_err(|_| EnvError::new(k, "the value is not valid UTF-8"))?;
            list.push((k.to_owned(), v));
        }
        Self::from_vars(list)
    }

    /// Reads variables from a list (tests use this).
    pub fn from_vars<K: AsRef<str>, V: AsRef<str>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, EnvError> {
        let mut use_adapter = None;
        let mut dual_mode = None;
        let mut adapter_type = None;
        let mut per_flag = Vec::new();
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            if v.trim().is_empty() {
                continue;
            }
            match k {
                USE_ADAPTER => use_adapter = Some(parse_bool(k, v)?),
                DUAL_MODE => dual_mode = Some(parse_bool(k, v)?),
                ADAPTER_TYPE => {
                    let t = v.trim().to_ascii_lowercase();
                    if !matches!(t.as_str(), "auto" | "websocket" | "realtime") {
                        return Err(EnvError::new(
                            k,
                            format!("expected auto, websocket or realtime, got {v:?}"),
                        ));
                    }
                    adapter_type = Some(t);
                }
                _ => {
                    if let Some(raw) = k.strip_prefix(FLAG_PREFIX) {
                        per_flag.push((
                            k.to_owned(),
                            raw.to_ascii_lowercase(),
                            v.trim().to_owned(),
                        ));
                    }
                }
            }
        }

        let mut tier = EnvTier::default();
        // The MONITORING_* variables first; WALCAST_FLAG_* beat them below.
        let monitoring = [USE_ADAPTER, DUAL_MODE, ADAPTER_TYPE].join("/");
        let force = |tier: &mut EnvTier, name: &str, value: Forced| {
            tier.forced.insert(
                name.to_owned(),
                ForcedFlag {
                    value,
                    origin: monitoring.clone(),
                },
            );
        };
        match (use_adapter, dual_mode) {
            (None, Some(true)) => {
                force(&mut tier, BROADCASTER_MODE, Forced::Variant("dual".into()));
            }
            (Some(false), _) => {
                force(
                    &mut tier,
                    BROADCASTER_MODE,
                    Forced::Variant("direct".into()),
                );
                force(&mut tier, USE_REALTIME, Forced::Off);
                if dual_mode == Some(true) {
                    tier.ignored.push(format!(
                        "{DUAL_MODE}=true is ignored because {USE_ADAPTER}=false (only /ws is served)"
                    ));
                }
            }
            (Some(true), Some(true)) => {
                force(&mut tier, BROADCASTER_MODE, Forced::Variant("dual".into()));
                force(&mut tier, USE_REALTIME, Forced::On);
            }
            (Some(true), _) => {
                if adapter_type.as_deref() == Some("websocket") {
                    force(
                        &mut tier,
                        BROADCASTER_MODE,
                        Forced::Variant("direct".into()),
                    );
                    force(&mut tier, USE_REALTIME, Forced::Off);
                } else {
                    force(
                        &mut tier,
                        BROADCASTER_MODE,
                        Forced::Variant("realtime".into()),
                    );
                    force(&mut tier, USE_REALTIME, Forced::On);
                }
            }
            (None, _) => {}
        }
        if adapter_type.is_some() && (use_adapter != Some(true) || dual_mode == Some(true)) {
            tier.ignored.push(format!(
                "{ADAPTER_TYPE} is ignored unless {USE_ADAPTER}=true and {DUAL_MODE} is not true"
            ));
        }

        for (var, name, value) in per_flag {
            if !valid_flag_name(&name) {
                return Err(EnvError::new(
                    var,
                    format!(
                        "{name:?} is not a flag name: flag names are [a-z][a-z0-9_]* (write them in upper case after {FLAG_PREFIX})"
                    ),
                ));
            }
            let value = match value.to_ascii_lowercase().as_str() {
                "on" => Forced::On,
                "off" => Forced::Off,
                _ if valid_variant_name(&value) => Forced::Variant(value),
                _ => {
                    return Err(EnvError::new(
                        var,
                        format!("expected on, off or a variant name, got {value:?}"),
                    ));
                }
            };
            if name == BROADCASTER_MODE
                && !matches!(&value, Forced::Variant(v) if v.parse::<Mode>().is_ok())
            {
                return Err(EnvError::new(
                    var,
                    format!(
                        "expected direct, realtime or dual, got {:?}",
                        value.as_str()
                    ),
                ));
            }
            tier.forced.insert(name, ForcedFlag { value, origin: var });
        }
        Ok(tier)
    }

    /// The forced value of a flag.
    pub fn get(&self, name: &str) -> Option<&ForcedFlag> {
        self.forced.get(name)
    }

    /// Every forced flag, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ForcedFlag)> {
        self.forced.iter()
    }

    /// True when nothing is forced.
    pub fn is_empty(&self) -> bool {
        self.forced.is_empty()
    }

    /// The evaluation the environment forces for `name` (`flag` is its stored definition, if any).
    pub fn evaluate(&self, name: &str, flag: Option<&Flag>, subject: &str) -> Option<Evaluation> {
        let forced = self.forced.get(name)?;
        Some(match &forced.value {
            Forced::On => Evaluation {
                enabled: true,
                variant: flag.and_then(|f| f.pick(subject)),
                source: Source::Env,
            },
            Forced::Off => Evaluation {
                enabled: false,
                variant: flag.and_then(|f| f.def.default_variant.clone()),
                source: Source::Env,
            },
            Forced::Variant(v) => Evaluation {
                enabled: true,
                variant: Some(v.clone()),
                source: Source::Env,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forced value of a flag as text.
    fn forced(t: &EnvTier, name: &str) -> Option<String> {
        t.get(name).map(|f| f.value.as_str().to_owned())
    }

    /// Mode and use_realtime forced by a combination of MONITORING_* values.
    fn monitoring(vars: &[(&str, &str)]) -> (Option<String>, Option<String>) {
        let t = EnvTier::from_vars(vars.iter().copied()).unwrap();
        (forced(&t, BROADCASTER_MODE), forced(&t, USE_REALTIME))
    }

    #[test]
    fn monitoring_variables_map_to_flags() {
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(monitoring(&[]), (None, None));
        assert_eq!(monitoring(&[(DUAL_MODE, "false")]), (None, None));
        assert_eq!(monitoring(&[(DUAL_MODE, "true")]), (s("dual"), None));
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "false")]),
            (s("direct"), s("off"))
        );
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "false"), (DUAL_MODE, "true")]),
            (s("direct"), s("off"))
        );
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "true"), (DUAL_MODE, "true")]),
            (s("dual"), s("on"))
        );
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "TRUE")]),
            (s("realtime"), s("on"))
        );
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "1"), (ADAPTER_TYPE, "realtime")]),
            (s("realtime"), s("on"))
        );
        assert_eq!(
            monitoring(&[(USE_ADAPTER, "true"), (ADAPTER_TYPE, "websocket")]),
            (s("direct"), s("off"))
        );
        let t = EnvTier::from_vars([(ADAPTER_TYPE, "realtime")]).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.ignored.len(), 1);
    }

    #[test]
    fn per_flag_variables_win() {
        let t = EnvTier::from_vars([
            (USE_ADAPTER, "true"),
            ("WALCAST_FLAG_BROADCASTER_MODE", "dual"),
            ("WALCAST_FLAG_NEW_CHART", "ON"),
            ("WALCAST_FLAG_THEME", "dark-blue"),
            ("WALCAST_FLAG_EMPTY", ""),
        ])
        .unwrap();
        assert_eq!(forced(&t, BROADCASTER_MODE).as_deref(), Some("dual"));
        assert_eq!(forced(&t, USE_REALTIME).as_deref(), Some("on"));
        assert_eq!(forced(&t, "new_chart").as_deref(), Some("on"));
        assert_eq!(forced(&t, "theme").as_deref(), Some("dark-blue"));
        assert_eq!(forced(&t, "empty"), None);
        assert_eq!(t.get("new_chart").unwrap().origin, "WALCAST_FLAG_NEW_CHART");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            (USE_ADAPTER, "maybe"),
            (DUAL_MODE, "2"),
            (ADAPTER_TYPE, "kafka"),
            ("WALCAST_FLAG_BROADCASTER_MODE", "on"),
            ("WALCAST_FLAG_BROADCASTER_MODE", "sideways"),
            ("WALCAST_FLAG_X", "Not A Variant"),
            ("WALCAST_FLAG_9LIVES", "on"),
        ] {
            let e = EnvTier::from_vars([(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            assert!(e.to_string().starts_with(&format!("invalid {k}: ")), "{e}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_flag_name("use_realtime"));
        assert!(!valid_flag_name("Use"));
        assert!(!valid_flag_name(""));
        assert!(valid_variant_name("dark-blue"));
        assert!(!valid_variant_name("on"));
        assert!(!valid_variant_name("-x"));
    }
}
