//! The only code that touches `walcast.flags`, `walcast.flag_overrides` and
//! `walcast.flag_history`: reads with `sql/flags/select_*.sql` and `history.sql`, every change
//! through the `walcast.flag_*` functions (which validate, write history and notify).
//!
//! A change the functions refuse comes back as [`FlagsError::Rejected`] with a stable
//! [`RejectCode`] (from the function's SQLSTATE), the function's message and its hint.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Client;

use super::error::{FlagsError, RejectCode, Rejection};
use super::eval::{Evaluation, FlagDef, FlagSet, Source};

/// Every flag with its overrides, as JSON rows.
const SELECT_ALL: &str = include_str!("../../sql/flags/select_all.sql");
/// One flag with its overrides.
const SELECT_ONE: &str = include_str!("../../sql/flags/select_one.sql");
/// `walcast.flag_create`.
const CREATE: &str = include_str!("../../sql/flags/create.sql");
/// `walcast.flag_set`.
const SET: &str = include_str!("../../sql/flags/set.sql");
/// `walcast.flag_rollout`.
const ROLLOUT: &str = include_str!("../../sql/flags/rollout.sql");
/// `walcast.flag_override`.
const OVERRIDE: &str = include_str!("../../sql/flags/override.sql");
/// `walcast.flag_clear_override`.
const CLEAR_OVERRIDE: &str = include_str!("../../sql/flags/clear_override.sql");
/// `walcast.flag_delete`.
const DELETE: &str = include_str!("../../sql/flags/delete.sql");
/// The change history, newest first.
const HISTORY: &str = include_str!("../../sql/flags/history.sql");
/// `walcast.flag_evaluate` for every flag.
const EVALUATE: &str = include_str!("../../sql/flags/evaluate.sql");
/// `listen walcast_flags`.
pub(super) const LISTEN: &str = include_str!("../../sql/flags/listen.sql");

/// A new flag. `None` fields take the database defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFlag {
    /// Name.
    pub name: String,
    /// What it is for (default empty).
    #[serde(default)]
    pub description: Option<String>,
    /// Variants with weights (default none: an on/off flag).
    #[serde(default)]
    pub variants: Option<Value>,
    /// Variant of subjects that are off (default: the first variant).
    #[serde(default)]
    pub default_variant: Option<String>,
    /// Kill switch (default on).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Rollout percentage as a decimal string, e.g. `"12.5"` (default 0).
    #[serde(default)]
    pub rollout_percentage: Option<String>,
}

/// Changes to a flag; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagChange {
    /// Kill switch.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Variants with weights.
    #[serde(default)]
    pub variants: Option<Value>,
    /// Default variant.
    #[serde(default)]
    pub default_variant: Option<String>,
}

/// Whom an override is for: exactly one of the two should be set (the database checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverrideTarget {
    /// A subject.
    pub subject: Option<String>,
    /// A segment.
    pub segment: Option<String>,
}

/// One change in `walcast.flag_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Sequence number.
    pub id: i64,
    /// Flag name.
    pub flag: String,
    /// `create`, `set`, `rollout`, `override`, `clear_override` or `delete`.
    pub action: String,
    /// Who made the change.
    pub who: String,
    /// When (transaction time).
    pub changed_at: chrono::DateTime<chrono::Utc>,
    /// The row before (flag or override), if any.
    pub old: Option<Value>,
    /// The row after, if any.
    pub new: Option<Value>,
}

/// Maps a database error: the flag functions' own refusals become [`FlagsError::Rejected`].
fn classify(e: tokio_postgres::Error) -> FlagsError {
    if let Some(db) = e.as_db_error()
        && let Some(code) = RejectCode::from_sqlstate(db.code().code())
    {
        return FlagsError::Rejected(Rejection {
            code,
            message: db.message().to_owned(),
            hint: db.hint().map(str::to_owned),
        });
    }
    FlagsError::Query(e)
}

/// Decodes one JSON row.
fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, FlagsError> {
    serde_json::from_value(v).map_err(FlagsError::Decode)
}

/// Every flag with its overrides, by name.
pub async fn list(client: &Client) -> Result<Vec<FlagDef>, FlagsError> {
    let rows = client.query(SELECT_ALL, &[]).await.map_err(classify)?;
    rows.into_iter()
        .map(|r| decode(r.get::<_, Value>(0)))
        .collect()
}

/// The snapshot the server evaluates against.
pub async fn load(client: &Client) -> Result<FlagSet, FlagsError> {
    Ok(FlagSet::new(list(client).await?))
}

/// One flag, or `None`.
pub async fn get(client: &Client, name: &str) -> Result<Option<FlagDef>, FlagsError> {
    let row = client
        .query_opt(SELECT_ONE, &[&name])
        .await
        .map_err(classify)?;
    row.map(|r| decode(r.get::<_, Value>(0))).transpose()
}

/// One flag after a change (it exists: the change just succeeded).
async fn after_change(client: &Client, name: &str) -> Result<FlagDef, FlagsError> {
    get(client, name).await?.ok_or_else(|| {
        FlagsError::Rejected(Rejection {
            code: RejectCode::UnknownFlag,
            message: format!("flag '{name}' was deleted concurrently"),
            hint: None,
        })
    })
}

/// Creates a flag (`walcast.flag_create`).
pub async fn create(
    client: &Client,
    f: &NewFlag,
    who: Option<&str>,
) -> Result<FlagDef, FlagsError> {
    client
        .query_one(
            CREATE,
            &[
                &f.name,
                &f.description,
                &f.variants,
                &f.default_variant,
                &f.enabled,
                &f.rollout_percentage,
                &who,
            ],
        )
        .await
        .map_err(classify)?;
    after_change(client, &f.name).await
}

/// Changes a flag (`walcast.flag_set`).
pub async fn set(
    client: &Client,
    name: &str,
    c: &FlagChange,
    who: Option<&str>,
) -> Result<FlagDef, FlagsError> {
    client
        .query_one(
            SET,
            &[
                &name,
                &c.enabled,
                &c.description,
                &c.variants,
                &c.default_variant,
                &who,
            ],
        )
        .await
        .map_err(classify)?;
    after_change(client, name).await
}

/// Sets the rollout percentage, a decimal string such as `"25"` (`walcast.flag_rollout`).
pub async fn rollout(
    client: &Client,
    name: &str,
    percentage: &str,
    who: Option<&str>,
) -> Result<FlagDef, FlagsError> {
    client
        .query_one(ROLLOUT, &[&name, &percentage, &who])
        .await
        .map_err(classify)?;
    after_change(client, name).await
}

/// Sets an override (`walcast.flag_override`).
pub async fn set_override(
    client: &Client,
    name: &str,
    target: &OverrideTarget,
    enabled: bool,
    variant: Option<&str>,
    who: Option<&str>,
) -> Result<FlagDef, FlagsError> {
    client
        .query_one(
            OVERRIDE,
            &[
                &name,
                &target.subject,
                &target.segment,
                &enabled,
                &variant,
                &who,
            ],
        )
        .await
        .map_err(classify)?;
    after_change(client, name).await
}

/// Removes an override; false when there was none (`walcast.flag_clear_override`).
pub async fn clear_override(
    client: &Client,
    name: &str,
    target: &OverrideTarget,
    who: Option<&str>,
) -> Result<bool, FlagsError> {
    let row = client
        .query_one(
            CLEAR_OVERRIDE,
            &[&name, &target.subject, &target.segment, &who],
        )
        .await
        .map_err(classify)?;
    Ok(row.get(0))
}

/// Deletes a flag and its overrides (`walcast.flag_delete`).
pub async fn delete(client: &Client, name: &str, who: Option<&str>) -> Result<(), FlagsError> {
    client
        .query_one(DELETE, &[&name, &who])
        .await
        .map_err(classify)?;
    Ok(())
}

/// The newest `limit` changes, of one flag or of all.
pub async fn history(
    client: &Client,
    flag: Option<&str>,
    limit: i64,
) -> Result<Vec<HistoryEntry>, FlagsError> {
    let rows = client
        .query(HISTORY, &[&flag, &limit])
        .await
        .map_err(classify)?;
    rows.into_iter()
        .map(|r| decode(r.get::<_, Value>(0)))
        .collect()
}

/// Every flag evaluated by the database (`walcast.flag_evaluate`), by name.
pub async fn evaluate_in_database(
    client: &Client,
    subject: &str,
    segments: &[String],
) -> Result<Vec<(String, Evaluation)>, FlagsError> {
    let rows = client
        .query(EVALUATE, &[&subject, &segments])
        .await
        .map_err(classify)?;
    rows.into_iter()
        .map(|r| {
            let source: String = r.get(3);
            let source = serde_json::from_value::<Source>(Value::String(source))
                .map_err(FlagsError::Decode)?;
            Ok((
                r.get(0),
                Evaluation {
                    enabled: r.get(1),
                    variant: r.get(2),
                    source,
                },
            ))
        })
        .collect()
}
