//! `walcast keys`: an `anon` and a `service_role` key signed with the configured secret.

use crate::auth;
use crate::cli::KeysArgs;
use crate::config::validate_jwt_secret;
use crate::units::parse_duration;

/// Prints the two keys.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let secret = validate_jwt_secret(&args.jwt_secret)?;
    let valid_for = parse_duration(&args.valid_for).map_err(anyhow::Error::msg)?;
    println!(
        "anon key:         {}",
        auth::mint(&secret, "anon", valid_for)?
    );
    println!(
        "service_role key: {}",
        auth::mint(&secret, "service_role", valid_for)?
    );
    Ok(())
}
