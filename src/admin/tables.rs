//! The admin console's resources as tables of text: which statements exist, their columns, and
//! their rows.
//!
//! The model is PgBouncer's admin console: `SHOW <resource>` (or `SELECT * FROM <resource>`)
//! returns one row per item, with lower-case column names and text values (`NULL` where a
//! value is unknown). Statement parsing ([`parse_statement`]) is pure; [`build`] reads the
//! server state, and the database only for `slot` and `dlq`.

use std::time::Duration;

use serde_json::Value;

use super::NodeView;
use super::error::AdminError;
use super::status;

/// How long a console query may wait for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// Most dead letters `SHOW DLQ` lists (newest first).
const DLQ_ROWS: i64 = 100;
/// Most sessions `SHOW CLIENTS` and `SHOW SUBSCRIPTIONS` list.
const MAX_CLIENT_ROWS: usize = 10_000;

/// What the console can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// One row per connected WebSocket session.
    Clients,
    /// One row per subscription (`/ws`) or joined channel (Realtime).
    Subscriptions,
    /// Counters and state, one row per value.
    Stats,
    /// The replication slot, as Postgres and the reader see it.
    Slot,
    /// One row per feature flag, evaluated for this node.
    Flags,
    /// The newest dead letters, one row each (no payload).
    Dlq,
    /// The continuous consistency check, one row per value.
    Consistency,
    /// The statements the console understands.
    Help,
}

impl Resource {
    /// Every resource, in help order.
    pub const ALL: [Resource; 8] = [
        Resource::Clients,
        Resource::Subscriptions,
        Resource::Stats,
        Resource::Slot,
        Resource::Flags,
        Resource::Dlq,
        Resource::Consistency,
        Resource::Help,
    ];

    /// Its name (lower case).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Clients => "clients",
            Resource::Subscriptions => "subscriptions",
            Resource::Stats => "stats",
            Resource::Slot => "slot",
            Resource::Flags => "flags",
            Resource::Dlq => "dlq",
            Resource::Consistency => "consistency",
            Resource::Help => "help",
        }
    }

    /// What it shows.
    fn description(self) -> &'static str {
        match self {
            Resource::Clients => "one row per connected WebSocket session",
            Resource::Subscriptions => "one row per /ws subscription or Realtime channel",
            Resource::Stats => "counters and state of every stage",
            Resource::Slot => "the replication slot, from Postgres and from the reader",
            Resource::Flags => "feature flags, evaluated for this node",
            Resource::Dlq => "the newest dead letters (no payload)",
            Resource::Consistency => "the continuous consistency check",
            Resource::Help => "this list",
        }
    }

    /// Its column names.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Resource::Clients => &[
                "id",
                "protocol",
                "peer",
                "connected_at",
                "connected_secs",
                "subscriptions",
                "frames_sent",
                "changes_sent",
            ],
            Resource::Subscriptions => &[
                "client_id",
                "protocol",
                "subscription",
                "filter",
                "everything",
            ],
            Resource::Stats | Resource::Consistency => &["name", "value"],
            Resource::Slot => &[
                "slot",
                "exists",
                "active",
                "confirmed_flush_lsn",
                "restart_lsn",
                "current_lsn",
                "lag_bytes",
                "retained_bytes",
                "wal_status",
                "streaming",
                "received_lsn",
                "confirmed_lsn",
                "last_error",
            ],
            Resource::Flags => &[
                "name",
                "enabled",
                "rollout_percentage",
                "default_variant",
                "variants",
                "node_enabled",
                "node_variant",
                "source",
                "updated_at",
                "updated_by",
            ],
            Resource::Dlq => &[
                "id",
                "operation",
                "source",
                "status",
                "error_code",
                "attempts",
                "requeues",
                "retry_policy",
                "created_at",
                "next_attempt_at",
            ],
            Resource::Help => &["command", "description"],
        }
    }

    /// The resource with this name (any case).
    fn from_name(name: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name))
    }
}

/// A statement the console does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StatementError {
    /// SQLSTATE: `42601` (syntax error) or `0A000` (feature not supported).
    pub code: &'static str,
    /// What is wrong and what is supported.
    pub message: String,
}

/// What the console supports, for error messages.
pub fn supported() -> String {
    let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
    format!(
        "walcast's admin console supports only SHOW <resource> and SELECT * FROM <resource>, \
         with resource one of: {}",
        names.join(", ")
    )
}

/// Splits a simple query into statements at `;` (empty ones dropped).
pub fn split_statements(sql: &str) -> Vec<&str> {
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses one statement (case-insensitive, optional trailing `;`).
pub fn parse_statement(sql: &str) -> Result<Resource, StatementError> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = sql.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let target = match lower
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["show", _] => words[1],
        ["select", "*", "from", _] => words[3],
        ["show", ..] | ["select", ..] => {
            return Err(StatementError {
                code: "0A000",
                message: format!("unsupported statement: {sql:?}. {}", supported()),
            });
        }
        [] => {
            return Err(StatementError {
                code: "42601",
                message: format!("empty statement. {}", supported()),
            });
        }
        _ => {
            return Err(StatementError {
                code: "0A000",
                message: format!(
                    "walcast's admin console is read-only and does not run {:?}. {}",
                    words[0],
                    supported()
                ),
            });
        }
    };
    Resource::from_name(target).ok_or_else(|| StatementError {
        code: "42601",
        message: format!("unknown resource {target:?}. {}", supported()),
    })
}

/// Column names and rows of text (`None`: SQL `NULL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub columns: &'static [&'static str],
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Option<String>>>,
}

/// A text cell.
fn t(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// A name/value row.
fn kv(name: &str, value: impl ToString) -> Vec<Option<String>> {
    vec![t(name), t(value)]
}

/// A timestamp cell.
fn ts(v: &chrono::DateTime<chrono::Utc>) -> Option<String> {
    t(v.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Reads a resource.
pub async fn build(resource: Resource, state: &NodeView) -> Result<Table, AdminError> {
    let columns = resource.columns();
    let rows = match resource {
        Resource::Clients => {
            let now = chrono::Utc::now();
            state
                .clients
                .snapshot(MAX_CLIENT_ROWS)
                .into_iter()
                .map(|c| {
                    vec![
                        t(c.id),
                        t(c.protocol.as_str()),
                        c.peer,
                        ts(&c.connected_at),
                        t(format!(
                            "{:.1}",
                            (now - c.connected_at).num_milliseconds() as f64 / 1000.0
                        )),
                        t(c.subscriptions.len()),
                        t(c.frames_sent),
                        t(c.changes_sent),
                    ]
                })
                .collect()
        }
        Resource::Subscriptions => state
            .clients
            .snapshot(MAX_CLIENT_ROWS)
            .into_iter()
            .flat_map(|c| {
                c.subscriptions.into_iter().map(move |s| {
                    vec![
                        t(c.id),
                        t(c.protocol.as_str()),
                        t(s.id),
                        t(s.filter),
                        t(s.everything),
                    ]
                })
            })
            .collect(),
        Resource::Stats => stats_rows(state).await,
        Resource::Consistency => consistency_rows(state),
        Resource::Slot => vec![slot_row(state).await?],
        Resource::Flags => flag_rows(state),
        Resource::Dlq => dlq_rows(state).await?,
        Resource::Help => Resource::ALL
            .iter()
            .flat_map(|r| {
                [
                    vec![
                        t(format!("SHOW {}", r.name().to_uppercase())),
                        t(r.description()),
                    ],
                    vec![t(format!("SELECT * FROM {}", r.name())), t(r.description())],
                ]
            })
            .collect(),
    };
    Ok(Table { columns, rows })
}

/// `SHOW STATS`: the `/v1/status` document, flattened.
async fn stats_rows(state: &NodeView) -> Vec<Vec<Option<String>>> {
    let doc = status::status(state).await;
    let mut rows = vec![
        kv("node", &doc.node),
        kv("version", doc.version),
        kv("started_at", doc.started_at.to_rfc3339()),
        kv("uptime_secs", format!("{:.0}", doc.uptime_secs)),
        kv("broadcaster_mode", doc.broadcaster.mode),
        kv("broadcaster_mode_source", doc.broadcaster.source),
        kv("clients_total", doc.clients.total),
        kv("clients_ws", doc.clients.ws),
        kv("clients_realtime", doc.clients.realtime),
    ];
    let r = &doc.replication;
    rows.extend([
        kv("replication_streaming", r.streaming),
        kv("replication_slot", &r.slot),
        kv("replication_received_lsn", &r.received_lsn),
        kv("replication_confirmed_lsn", &r.confirmed_lsn),
        kv("replication_slot_lag_bytes", r.slot_lag_bytes),
        kv("replication_changes", r.changes),
        kv("replication_transactions", r.transactions),
        kv("replication_reconnects", r.reconnects),
        vec![t("hub_last_cursor"), r.last_cursor.clone()],
    ]);
    let i = &doc.ingest;
    rows.extend([
        kv("ingest_accepted", i.accepted),
        kv("ingest_spooled", i.spooled),
        kv("ingest_dead_lettered", i.dead_lettered),
        kv("ingest_spool_replayed", i.spool_replayed),
        kv("ingest_breaker", i.breaker),
        kv("ingest_spool_bytes", i.spool_bytes),
    ]);
    let d = &doc.delivery;
    rows.extend([
        kv("deliveries", d.delivered),
        kv("clients_lagged", d.lagged),
        kv("replayed_changes", d.replayed),
        kv("frames_encoded", d.encoded),
    ]);
    let c = &doc.consistency;
    rows.extend([
        kv("consistency_checked", c.checked_total),
        kv("consistency_mismatches", c.mismatches_total),
        kv("consistency_match_ratio", c.match_ratio),
    ]);
    match &doc.dlq {
        Some(q) => rows.extend([
            kv("dlq_pending", q.stats.pending),
            kv("dlq_retrying", q.stats.retrying),
            kv("dlq_recovered", q.stats.recovered),
            kv("dlq_failed", q.stats.failed),
            kv("dlq_total", q.stats.total),
        ]),
        None => rows.push(vec![t("dlq_pending"), None]),
    }
    rows
}

/// `SHOW CONSISTENCY`.
fn consistency_rows(state: &NodeView) -> Vec<Vec<Option<String>>> {
    let c = state.consistency.snapshot();
    let mut rows = vec![
        kv("enabled", c.enabled),
        vec![t("interval_secs"), c.interval_secs.map(|s| s.to_string())],
        kv("runs", c.runs),
        kv("checked_total", c.checked_total),
        kv("mismatches_total", c.mismatches_total),
        kv("match_ratio", c.match_ratio),
        vec![t("last_run_at"), c.last_run_at.as_ref().and_then(ts)],
        kv("last_sample", c.last_sample),
        kv("last_sample_mismatched", c.last_sample_mismatched),
        kv(
            "delivery_state",
            value_text(&serde_json::json!(c.delivery.state)),
        ),
        kv("delivery_clients", c.delivery.clients),
        kv("delivery_detail", &c.delivery.detail),
    ];
    for (kind, n) in &c.mismatches {
        rows.push(kv(&format!("mismatches_{kind}"), n));
    }
    if let Some(m) = &c.last_mismatch {
        rows.push(kv(
            "last_mismatch",
            format!(
                "{} {} {} at {}",
                m.kind.as_str(),
                m.field,
                m.cursor,
                m.at.to_rfc3339()
            ),
        ));
    }
    rows
}

/// A JSON value as text (strings without quotes).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `SHOW SLOT`: Postgres' view of the slot and the reader's.
async fn slot_row(state: &NodeView) -> Result<Vec<Option<String>>, AdminError> {
    let slot = &state.config.slot;
    let st = tokio::time::timeout(DB_TIMEOUT, async {
        let client = state.pool.get().await.map_err(AdminError::Pool)?;
        crate::replication::slot::status(&client, slot)
            .await
            .map_err(AdminError::Slot)
    })
    .await
    .map_err(|_| AdminError::Timeout(DB_TIMEOUT.as_secs()))??;
    let r = &state.reader;
    let mut row = vec![t(slot)];
    match st {
        Some(s) => row.extend([
            t(true),
            t(s.active),
            s.confirmed_flush_lsn,
            s.restart_lsn,
            t(s.current_lsn),
            s.lag_bytes.map(|v| v.to_string()),
            s.retained_bytes.map(|v| v.to_string()),
            s.wal_status,
        ]),
        None => row.extend([t(false), None, None, None, None, None, None, None]),
    }
    row.extend([
        t(r.is_streaming()),
        t(r.received()),
        t(r.confirmed()),
        r.last_error(),
    ]);
    Ok(row)
}

/// `SHOW FLAGS`: stored flags and flags forced by the environment.
fn flag_rows(state: &NodeView) -> Vec<Vec<Option<String>>> {
    let node = state.flags.node().to_owned();
    let evaluated = state.flags.evaluate_all::<&str>(&node, &[]);
    let snapshot = state.flags.snapshot();
    let mut rows = Vec::new();
    for (name, e) in &evaluated {
        let def = snapshot.get(name).map(|f| &f.def);
        let variants = def.map(|d| {
            d.variants
                .iter()
                .map(|v| format!("{}={}", v.name, v.weight))
                .collect::<Vec<_>>()
                .join(",")
        });
        rows.push(vec![
            t(name),
            def.map(|d| d.enabled.to_string()),
            def.map(|d| d.rollout_percentage.to_string()),
            def.and_then(|d| d.default_variant.clone()),
            variants,
            t(e.enabled),
            e.variant.clone(),
            t(e.source.as_str()),
            def.map(|d| d.updated_at.to_rfc3339()),
            def.map(|d| d.updated_by.clone()),
        ]);
    }
    rows
}

/// `SHOW DLQ`: the newest dead letters, without their payload.
async fn dlq_rows(state: &NodeView) -> Result<Vec<Vec<Option<String>>>, AdminError> {
    let letters = tokio::time::timeout(DB_TIMEOUT, async {
        let client = state.pool.get().await.map_err(AdminError::Pool)?;
        let filter = crate::dlq::ListFilter {
            limit: DLQ_ROWS,
            ..Default::default()
        };
        crate::dlq::list(&client, &filter)
            .await
            .map_err(AdminError::Dlq)
    })
    .await
    .map_err(|_| AdminError::Timeout(DB_TIMEOUT.as_secs()))??;
    Ok(letters
        .into_iter()
        .map(|d| {
            vec![
                t(d.id),
                t(d.operation),
                t(d.source),
                t(d.status.as_str()),
                t(d.error_code),
                t(d.attempts),
                t(d.requeues),
                t(d.retry_policy.kind()),
                ts(&d.created_at),
                d.next_attempt_at.as_ref().and_then(ts),
            ]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_parse_case_insensitively() {
        assert_eq!(parse_statement("SHOW CLIENTS"), Ok(Resource::Clients));
        assert_eq!(parse_statement("show clients;"), Ok(Resource::Clients));
        assert_eq!(parse_statement("  Show   Stats ;  "), Ok(Resource::Stats));
        assert_eq!(parse_statement("select * from slot"), Ok(Resource::Slot));
        assert_eq!(
            parse_statement("SELECT * FROM consistency;"),
            Ok(Resource::Consistency)
        );
        assert_eq!(parse_statement("show help"), Ok(Resource::Help));
    }

    #[test]
    fn anything_else_says_what_is_supported() {
        let e = parse_statement("DROP TABLE x").unwrap_err();
        assert_eq!(e.code, "0A000");
        assert!(e.message.contains("SHOW <resource>"), "{}", e.message);
        let e = parse_statement("SHOW POOLS").unwrap_err();
        assert_eq!(e.code, "42601");
        assert!(
            e.message.contains("clients, subscriptions"),
            "{}",
            e.message
        );
        assert_eq!(parse_statement("select 1").unwrap_err().code, "0A000");
        assert_eq!(parse_statement("").unwrap_err().code, "42601");
    }

    #[test]
    fn simple_queries_split_at_semicolons() {
        assert_eq!(
            split_statements("show stats; SHOW SLOT;;"),
            vec!["show stats", "SHOW SLOT"]
        );
    }

    #[test]
    fn every_resource_has_lower_case_columns() {
        for r in Resource::ALL {
            assert!(!r.columns().is_empty());
            for c in r.columns() {
                assert_eq!(*c, c.to_lowercase());
            }
        }
    }
}
