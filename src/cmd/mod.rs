//! Subcommand implementations. Each returns `anyhow::Result` (the binary edge) and prints for
//! people on stdout, logs on stderr.

pub mod dev;
pub mod dlq;
pub mod emit;
pub mod flags;
pub mod http_client;
pub mod keys;
pub mod slot;
pub mod tail;
pub mod validate;

use crate::cli::MigrateArgs;
use crate::config::validate_database_url;

/// `walcast migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = validate_database_url(&args.db.database_url)?;
    let pool = crate::db::pool(&url, 2, "walcast_migrate")?;
    let applied = crate::db::migrate(&pool).await?;
    if applied.is_empty() {
        println!(
            "database is up to date (version {})",
            crate::db::latest_version()
        );
    } else {
        for m in &applied {
            println!("applied U{}__{}", m.version, m.name);
        }
        println!("{} migration(s) applied", applied.len());
    }
    Ok(())
}
