//! How to reach Postgres for replication, derived from the database URL.

use std::time::Duration;

use pgwire_replication::{Lsn as PgLsn, ReplicationConfig};

use super::error::ReplicationError;

/// Connection facts for a replication session.
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    /// Host name, IP address, or Unix socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role.
    pub user: String,
    /// Password (empty for trust/peer auth).
    pub password: String,
    /// Database.
    pub database: String,
    /// Publication to stream.
    pub publication: String,
    /// application_name shown in pg_stat_replication.
    pub application_name: String,
}

impl ReplicationSettings {
    /// Derives the settings from a Postgres URL.
    pub fn from_url(
        url: &str,
        publication: &str,
        application_name: &str,
    ) -> Result<Self, ReplicationError> {
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ReplicationError::Url(e.to_string()))?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .map(str::to_owned)
            .ok_or_else(|| ReplicationError::Url("the URL names no user".into()))?;
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = cfg.get_dbname().unwrap_or(&user).to_owned();
        Ok(ReplicationSettings {
            host,
            port,
            user,
            password,
            database,
            publication: publication.to_owned(),
            application_name: application_name.to_owned(),
        })
    }

    /// A pgwire-replication config for `slot`, starting at `start`, acknowledging `ack`.
    pub fn session(&self, slot: &str, start: u64, ack: Option<u64>) -> ReplicationConfig {
        let mut c = ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            slot.to_owned(),
            self.publication.as_str(),
        )
        .with_port(self.port)
        .with_start_lsn(PgLsn(start))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(2))
        .with_buffer_size(4096)
        .with_max_message_size(256 << 20)
        .with_application_name(self.application_name.clone())
        .with_options("-c datestyle=ISO,MDY -c intervalstyle=postgres -c timezone=UTC -c extra_float_digits=3");
        if let Some(a) = ack {
            c = c.with_ack_lsn(PgLsn(a));
        }
        c
    }
}
