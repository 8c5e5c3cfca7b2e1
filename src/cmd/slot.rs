//! `walcast slot status|drop`.

use tokio_postgres::NoTls;

use crate::cli::{SlotArgs, SlotCommand};
use crate::config::validate_database_url;
use crate::replication::slot;

/// Runs a slot subcommand.
pub async fn run(cmd: SlotCommand) -> anyhow::Result<()> {
    let (args, drop) = match cmd {
        SlotCommand::Status(a) => (a, false),
        SlotCommand::Drop(a) => (a, true),
    };
    let name = slot_name(&args)?;
    let url = validate_database_url(&args.db.database_url)?;
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    if drop {
        if slot::drop(&client, &name).await? {
            println!("dropped replication slot {name}");
        } else {
            println!("replication slot {name} does not exist");
        }
        return Ok(());
    }
    match slot::status(&client, &name).await? {
        Some(st) => {
            println!("slot:            {}", st.name);
            println!("plugin:          {}", st.plugin.as_deref().unwrap_or("-"));
            println!("database:        {}", st.database.as_deref().unwrap_or("-"));
            println!("active:          {}", st.active);
            println!(
                "confirmed_lsn:   {}",
                st.confirmed_flush_lsn.as_deref().unwrap_or("-")
            );
            println!(
                "restart_lsn:     {}",
                st.restart_lsn.as_deref().unwrap_or("-")
            );
            println!("current_lsn:     {}", st.current_lsn);
            println!(
                "lag_bytes:       {}",
                st.lag_bytes.map(|v| v.to_string()).unwrap_or("-".into())
            );
            println!(
                "retained_bytes:  {}",
                st.retained_bytes
                    .map(|v| v.to_string())
                    .unwrap_or("-".into())
            );
            println!(
                "wal_status:      {}",
                st.wal_status.as_deref().unwrap_or("-")
            );
        }
        None => println!("replication slot {name} does not exist (walcast serve creates it)"),
    }
    Ok(())
}

/// The slot name from --slot or --node.
fn slot_name(args: &SlotArgs) -> anyhow::Result<String> {
    Ok(crate::config::resolve_slot(&args.node, args.slot.as_deref())?.1)
}
