//! Database plumbing: the connection pool and the embedded migrations.
//!
//! Owns no table. Migrations are embedded at compile time from `migrations/` (refinery,
//! forward-only, timestamp versions with `int8-versions`); `build.rs` makes cargo rebuild when a
//! migration file changes.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// The embedded migrations (`migrations/U{timestamp}__{name}.sql`).
mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Errors of this layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("invalid database URL")]
    Url(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("could not build the connection pool")]
    Pool(#[source] deadpool_postgres::BuildError),
    /// No connection could be obtained.
    #[error("could not connect to Postgres")]
    Connect(#[source] deadpool_postgres::PoolError),
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[source] refinery::Error),
    /// A query failed.
    #[error("query failed")]
    Query(#[source] tokio_postgres::Error),
}

/// Builds a pool of `size` connections to `url` (connections are opened lazily).
pub fn pool(url: &str, size: usize, application_name: &str) -> Result<Pool, DbError> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    pg.connect_timeout(std::time::Duration::from_secs(5));
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(DbError::Pool)
}

/// One applied migration, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Version (timestamp).
    pub version: i64,
    /// Name.
    pub name: String,
}

/// Applies the embedded migrations that are not applied yet; returns those it applied.
pub async fn migrate(pool: &Pool) -> Result<Vec<AppliedMigration>, DbError> {
    let mut conn = pool.get().await.map_err(DbError::Connect)?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let report = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(DbError::Migrate)?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration {
            version: m.version(),
            name: m.name().to_owned(),
        })
        .collect())
}

/// The newest embedded migration version.
pub fn latest_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// The newest version applied to the database (`None` before the first migration).
pub async fn applied_version(client: &tokio_postgres::Client) -> Result<Option<i64>, DbError> {
    let row = client
        .query_opt(
            "select max(version)::int8 from refinery_schema_history",
            &[],
        )
        .await;
    match row {
        Ok(Some(r)) => Ok(r.get::<_, Option<i64>>(0)),
        Ok(None) => Ok(None),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(DbError::Query(e)),
    }
}
