//! Flag evaluation: the bucketing hash, the flag model and the precedence rules. Pure, no I/O.
//!
//! This is the Rust twin of `walcast.flag_evaluate` (migration `U20261123000400`); both give the
//! same answer for every flag, subject and segment list:
//!
//! 1. a disabled flag is off with its default variant (`disabled`);
//! 2. an override for the subject decides (`subject_override`);
//! 3. else the override of the first listed segment that has one decides (`segment_override`);
//! 4. else the subject is on when `bucket(flag, subject) < rollout_percentage × 100` (`rollout`);
//! 5. else it is off with the default variant (`default`).
//!
//! [`bucket`] is the first 8 bytes of `sha256(flag ‖ ":" ‖ subject)` read as a big-endian integer
//! with the top bit cleared, mod 10 000; raising the percentage only adds subjects. A subject that
//! is on gets the variant at [`variant_bucket`] (bytes 9..16 of the same hash, mod 100) in the
//! running sum of the variant weights, in list order. Subjects that are off get the default
//! variant.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Rollout buckets per subject space: a bucket is 0.01 %.
pub const BUCKETS: u32 = 10_000;
/// Variant buckets: a variant weight is a whole percentage.
pub const VARIANT_BUCKETS: u32 = 100;

/// `sha256(flag ‖ ":" ‖ subject)`.
fn digest(flag: &str, subject: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(flag.as_bytes());
    h.update(b":");
    h.update(subject.as_bytes());
    h.finalize().into()
}

/// Bytes `at..at+8` of a digest as a non-negative 63-bit integer.
fn word(d: &[u8; 32], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b) & (i64::MAX as u64)
}

/// The rollout bucket of `subject` for `flag`, `0..10_000` (same as `walcast.flag_bucket`).
pub fn bucket(flag: &str, subject: &str) -> u32 {
    (word(&digest(flag, subject), 0) % u64::from(BUCKETS)) as u32
}

/// The variant bucket of `subject` for `flag`, `0..100` (same as `walcast.flag_variant_bucket`).
pub fn variant_bucket(flag: &str, subject: &str) -> u32 {
    (word(&digest(flag, subject), 8) % u64::from(VARIANT_BUCKETS)) as u32
}

/// One variant of a flag and the share of enabled subjects that get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// Whole percentage; the weights of a flag sum to 100.
    pub weight: u32,
}

/// What an override sets for its subject or segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideDef {
    /// `subject` or `segment`.
    pub kind: OverrideKind,
    /// The subject or segment name.
    pub key: String,
    /// On or off.
    pub enabled: bool,
    /// A pinned variant (only when on); `None` uses the weighted variant.
    pub variant: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Who made the last change.
    pub updated_by: String,
}

/// Whom an override applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideKind {
    /// One subject (a user, client or node id).
    Subject,
    /// Every subject that names this segment.
    Segment,
}

/// A flag as stored in `walcast.flags`, with its overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagDef {
    /// Name (`[a-z][a-z0-9_]*`).
    pub name: String,
    /// What the flag is for.
    pub description: String,
    /// The kill switch: a disabled flag is off for everyone, overrides included.
    pub enabled: bool,
    /// Share of subjects that get the flag, 0–100 with two decimals.
    pub rollout_percentage: f64,
    /// Variants with weights; empty for an on/off flag.
    pub variants: Vec<Variant>,
    /// Variant of subjects that are off (required when there are variants).
    pub default_variant: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the flag row.
    pub updated_at: DateTime<Utc>,
    /// Who made the last change of the flag row.
    pub updated_by: String,
    /// Subject and segment overrides.
    #[serde(default)]
    pub overrides: Vec<OverrideDef>,
}

/// Which rule decided an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The environment forced the value (`WALCAST_FLAG_<NAME>`, `MONITORING_*`).
    Env,
    /// No such flag: off.
    Unknown,
    /// The flag is disabled: off for everyone.
    Disabled,
    /// An override for the subject.
    SubjectOverride,
    /// An override for one of the subject's segments.
    SegmentOverride,
    /// The subject's bucket is inside the rollout.
    Rollout,
    /// Outside the rollout: off.
    Default,
}

impl Source {
    /// The name used in SQL and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::Unknown => "unknown",
            Source::Disabled => "disabled",
            Source::SubjectOverride => "subject_override",
            Source::SegmentOverride => "segment_override",
            Source::Rollout => "rollout",
            Source::Default => "default",
        }
    }
}

/// The value of one flag for one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// On or off.
    pub enabled: bool,
    /// The variant (`None` for a flag without variants).
    pub variant: Option<String>,
    /// The rule that decided.
    pub source: Source,
}

/// An override's value, indexed for lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OverrideValue {
    /// On or off.
    enabled: bool,
    /// Pinned variant.
    variant: Option<String>,
}

/// A flag ready to evaluate.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The stored definition.
    pub def: FlagDef,
    /// `rollout_percentage × 100`: subjects with a smaller bucket are in the rollout.
    threshold: u32,
    /// Overrides by subject.
    subjects: HashMap<String, OverrideValue>,
    /// Overrides by segment.
    segments: HashMap<String, OverrideValue>,
}

impl Flag {
    /// Indexes a definition.
    pub fn new(def: FlagDef) -> Self {
        let threshold = (def.rollout_percentage * 100.0)
            .round()
            .clamp(0.0, BUCKETS as f64) as u32;
        let mut subjects = HashMap::new();
        let mut segments = HashMap::new();
        for o in &def.overrides {
            let v = OverrideValue {
                enabled: o.enabled,
                variant: o.variant.clone(),
            };
            match o.kind {
                OverrideKind::Subject => subjects.insert(o.key.clone(), v),
                OverrideKind::Segment => segments.insert(o.key.clone(), v),
            };
        }
        Flag {
            def,
            threshold,
            subjects,
            segments,
        }
    }

    /// The rollout threshold in buckets (`rollout_percentage × 100`).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The weighted variant of `subject` (`None` without variants).
    pub fn pick(&self, subject: &str) -> Option<String> {
        if self.def.variants.is_empty() {
            return None;
        }
        let b = variant_bucket(&self.def.name, subject);
        let mut upto = 0;
        for v in &self.def.variants {
            upto += v.weight;
            if b < upto {
                return Some(v.name.clone());
            }
        }
        None
    }

    /// On, with the pinned variant or the weighted one.
    fn on(&self, subject: &str, pinned: Option<&String>, source: Source) -> Evaluation {
        Evaluation {
            enabled: true,
            variant: pinned.cloned().or_else(|| self.pick(subject)),
            source,
        }
    }

    /// Off, with the default variant.
    fn off(&self, source: Source) -> Evaluation {
        Evaluation {
            enabled: false,
            variant: self.def.default_variant.clone(),
            source,
        }
    }

    /// Applies an override.
    fn apply(&self, subject: &str, o: &OverrideValue, source: Source) -> Evaluation {
        if o.enabled {
            self.on(subject, o.variant.as_ref(), source)
        } else {
            self.off(source)
        }
    }

    /// Evaluates the flag for a subject and its segments (in priority order).
    pub fn evaluate<S: AsRef<str>>(&self, subject: &str, segments: &[S]) -> Evaluation {
        if !self.def.enabled {
            return self.off(Source::Disabled);
        }
        if let Some(o) = self.subjects.get(subject) {
            return self.apply(subject, o, Source::SubjectOverride);
        }
        if let Some(o) = segments.iter().find_map(|s| self.segments.get(s.as_ref())) {
            return self.apply(subject, o, Source::SegmentOverride);
        }
        if bucket(&self.def.name, subject) < self.threshold {
            return self.on(subject, None, Source::Rollout);
        }
        self.off(Source::Default)
    }
}

/// Every flag, as loaded from the database at one moment.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    /// Flags by name.
    flags: BTreeMap<String, Flag>,
}

impl FlagSet {
    /// Indexes definitions.
    pub fn new(defs: impl IntoIterator<Item = FlagDef>) -> Self {
        FlagSet {
            flags: defs
                .into_iter()
                .map(|d| (d.name.clone(), Flag::new(d)))
                .collect(),
        }
    }

    /// One flag.
    pub fn get(&self, name: &str) -> Option<&Flag> {
        self.flags.get(name)
    }

    /// Every flag, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values()
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// True without flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Evaluates one flag; an unknown flag is off (`unknown`), as in SQL.
    pub fn evaluate<S: AsRef<str>>(&self, name: &str, subject: &str, segments: &[S]) -> Evaluation {
        match self.flags.get(name) {
            Some(f) => f.evaluate(subject, segments),
            None => Evaluation {
                enabled: false,
                variant: None,
                source: Source::Unknown,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag definition for tests.
    fn def(name: &str, pct: f64, variants: &[(&str, u32)], default: Option<&str>) -> FlagDef {
        FlagDef {
            name: name.into(),
            description: String::new(),
            enabled: true,
            rollout_percentage: pct,
            variants: variants
                .iter()
                .map(|(n, w)| Variant {
                    name: (*n).into(),
                    weight: *w,
                })
                .collect(),
            default_variant: default.map(Into::into),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            updated_by: "test".into(),
            overrides: Vec::new(),
        }
    }

    /// An override for tests.
    fn ov(kind: OverrideKind, key: &str, enabled: bool, variant: Option<&str>) -> OverrideDef {
        OverrideDef {
            kind,
            key: key.into(),
            enabled,
            variant: variant.map(Into::into),
            updated_at: Utc::now(),
            updated_by: "test".into(),
        }
    }

    #[test]
    fn bucket_matches_known_values() {
        // Also computed with Python's hashlib and with `walcast.flag_bucket` in psql.
        assert_eq!(bucket("use_realtime", "user-1"), 9419);
        assert_eq!(variant_bucket("use_realtime", "user-1"), 50);
        // Stable, and different per flag.
        assert_eq!(bucket("a", "s"), bucket("a", "s"));
        let differ = (0..100)
            .filter(|i| bucket("a", &i.to_string()) != bucket("b", &i.to_string()))
            .count();
        assert!(differ > 90);
    }

    #[test]
    fn buckets_are_in_range_and_uniform() {
        let mut hist = [0u32; 10];
        for i in 0..100_000 {
            let b = bucket("f", &format!("subject-{i}"));
            assert!(b < BUCKETS);
            hist[(b / 1000) as usize] += 1;
            assert!(variant_bucket("f", &format!("subject-{i}")) < VARIANT_BUCKETS);
        }
        for h in hist {
            assert!((9_500..10_500).contains(&h), "{hist:?}");
        }
    }

    #[test]
    fn rollout_only_grows() {
        let mut previous: Vec<bool> = vec![false; 5_000];
        for pct in [0.0, 10.0, 25.0, 50.0, 75.0, 99.99, 100.0] {
            let f = Flag::new(def("grow", pct, &[], None));
            let now: Vec<bool> = (0..5_000)
                .map(|i| f.evaluate::<&str>(&format!("u{i}"), &[]).enabled)
                .collect();
            for (a, b) in previous.iter().zip(&now) {
                assert!(!a || *b, "a subject left the rollout at {pct} %");
            }
            previous = now;
        }
        assert!(previous.iter().all(|b| *b), "100 % reaches everyone");
    }

    #[test]
    fn precedence() {
        let mut d = def("p", 0.0, &[("a", 50), ("b", 50)], Some("a"));
        d.overrides = vec![
            ov(OverrideKind::Subject, "pinned", true, Some("b")),
            ov(OverrideKind::Subject, "blocked", false, None),
            ov(OverrideKind::Segment, "beta", true, Some("b")),
            ov(OverrideKind::Segment, "alpha", false, None),
        ];
        let f = Flag::new(d.clone());
        let e = f.evaluate("pinned", &["alpha"]);
        assert_eq!(
            (e.enabled, e.variant.as_deref(), e.source),
            (true, Some("b"), Source::SubjectOverride)
        );
        let e = f.evaluate("blocked", &["beta"]);
        assert_eq!(
            (e.enabled, e.variant.as_deref(), e.source),
            (false, Some("a"), Source::SubjectOverride)
        );
        // The first listed segment with an override wins.
        let e = f.evaluate("x", &["none", "beta", "alpha"]);
        assert_eq!(
            (e.enabled, e.variant.as_deref(), e.source),
            (true, Some("b"), Source::SegmentOverride)
        );
        let e = f.evaluate("x", &["alpha", "beta"]);
        assert_eq!((e.enabled, e.source), (false, Source::SegmentOverride));
        let e = f.evaluate::<&str>("x", &[]);
        assert_eq!(
            (e.enabled, e.variant.as_deref(), e.source),
            (false, Some("a"), Source::Default)
        );
        // Rollout 100: everyone without an override is in.
        d.rollout_percentage = 100.0;
        let f = Flag::new(d.clone());
        let e = f.evaluate::<&str>("x", &[]);
        assert_eq!((e.enabled, e.source), (true, Source::Rollout));
        // The kill switch beats everything.
        d.enabled = false;
        let f = Flag::new(d);
        let e = f.evaluate("pinned", &["beta"]);
        assert_eq!(
            (e.enabled, e.variant.as_deref(), e.source),
            (false, Some("a"), Source::Disabled)
        );
    }

    #[test]
    fn variants_follow_weights() {
        let f = Flag::new(def(
            "v",
            100.0,
            &[("a", 0), ("b", 30), ("c", 70)],
            Some("a"),
        ));
        let mut counts = HashMap::new();
        for i in 0..20_000 {
            let e = f.evaluate::<&str>(&format!("s{i}"), &[]);
            *counts.entry(e.variant.unwrap()).or_insert(0u32) += 1;
        }
        assert_eq!(counts.get("a"), None, "a weight of 0 never wins");
        let b = counts["b"] as f64 / 20_000.0;
        assert!((0.28..0.32).contains(&b), "b share {b}");
    }

    #[test]
    fn unknown_flag_is_off() {
        let set = FlagSet::new([def("x", 100.0, &[], None)]);
        assert_eq!(
            set.evaluate::<&str>("nope", "s", &[]).source,
            Source::Unknown
        );
        assert!(set.evaluate::<&str>("x", "s", &[]).enabled);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn threshold_from_percentage() {
        assert_eq!(Flag::new(def("t", 12.5, &[], None)).threshold(), 1250);
        assert_eq!(Flag::new(def("t", 0.01, &[], None)).threshold(), 1);
        assert_eq!(Flag::new(def("t", 100.0, &[], None)).threshold(), 10_000);
    }
}
