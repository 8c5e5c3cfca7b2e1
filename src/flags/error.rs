//! Errors of the flags layer, and the stable codes of refused changes.

use super::env::EnvError;

/// Why a flag change was refused: one code per check of the `walcast.flag_*` functions, which
/// raise it as a `WF0nn` SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// `WF001`: no flag of that name.
    UnknownFlag,
    /// `WF002`: the flag name is not `[a-z][a-z0-9_]*` (or is reserved).
    InvalidName,
    /// `WF003`: the rollout percentage is not 0–100 with at most two decimals.
    InvalidPercentage,
    /// `WF004`: the variants are not a list of names with weights summing to 100.
    InvalidVariants,
    /// `WF005`: a variant that the flag does not have.
    UnknownVariant,
    /// `WF006`: an override without exactly one of subject and segment, or otherwise malformed.
    InvalidOverride,
    /// `WF007`: a flag of that name exists already.
    FlagExists,
    /// `WF008`: another argument is missing or out of range.
    InvalidArgument,
    /// `WF009`: history rows cannot change.
    AppendOnly,
}

impl RejectCode {
    /// Every code.
    pub const ALL: [RejectCode; 9] = [
        RejectCode::UnknownFlag,
        RejectCode::InvalidName,
        RejectCode::InvalidPercentage,
        RejectCode::InvalidVariants,
        RejectCode::UnknownVariant,
        RejectCode::InvalidOverride,
        RejectCode::FlagExists,
        RejectCode::InvalidArgument,
        RejectCode::AppendOnly,
    ];

    /// The SQLSTATE the database raises.
    pub fn sqlstate(self) -> &'static str {
        match self {
            RejectCode::UnknownFlag => "WF001",
            RejectCode::InvalidName => "WF002",
            RejectCode::InvalidPercentage => "WF003",
            RejectCode::InvalidVariants => "WF004",
            RejectCode::UnknownVariant => "WF005",
            RejectCode::InvalidOverride => "WF006",
            RejectCode::FlagExists => "WF007",
            RejectCode::InvalidArgument => "WF008",
            RejectCode::AppendOnly => "WF009",
        }
    }

    /// The code for a SQLSTATE, if it is one of ours.
    pub fn from_sqlstate(state: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.sqlstate() == state)
    }

    /// The stable code clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownFlag => "unknown_flag",
            RejectCode::InvalidName => "invalid_name",
            RejectCode::InvalidPercentage => "invalid_percentage",
            RejectCode::InvalidVariants => "invalid_variants",
            RejectCode::UnknownVariant => "unknown_variant",
            RejectCode::InvalidOverride => "invalid_override",
            RejectCode::FlagExists => "flag_exists",
            RejectCode::InvalidArgument => "invalid_argument",
            RejectCode::AppendOnly => "append_only",
        }
    }
}

/// A change the database refused, with its message and hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub code: RejectCode,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

/// Errors of the flags layer.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// An environment variable has a bad value.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The database URL does not parse.
    #[error("invalid database URL")]
    Url(#[source] tokio_postgres::Error),
    /// No connection to Postgres.
    #[error("could not connect to Postgres")]
    Connect(#[source] tokio_postgres::Error),
    /// No pooled connection.
    #[error("could not get a database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// A flag query failed.
    #[error("flag query failed")]
    Query(#[source] tokio_postgres::Error),
    /// A flag row did not decode (the schema is newer or older than this walcast).
    #[error("a flag row does not decode")]
    Decode(#[source] serde_json::Error),
    /// The notification connection closed.
    #[error("the connection that listens for flag changes closed")]
    Closed,
    /// The database refused a change.
    #[error("{0}")]
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in RejectCode::ALL {
            assert_eq!(RejectCode::from_sqlstate(c.sqlstate()), Some(c));
        }
        assert_eq!(RejectCode::from_sqlstate("23505"), None);
        let r = Rejection {
            code: RejectCode::UnknownFlag,
            message: "unknown flag 'x'".into(),
            hint: Some("list them".into()),
        };
        assert_eq!(r.to_string(), "unknown flag 'x'\nhint: list them");
    }
}
