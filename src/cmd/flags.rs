//! `walcast flags list|create|set|rollout|override|eval|history|delete`: SQL on
//! `--database-url` through [`crate::flags::store`], i.e. the same `walcast.flag_*` functions
//! psql users call. Running servers pick the changes up through `NOTIFY walcast_flags`.

use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use crate::cli::{DatabaseArgs, FlagsCommand};
use crate::config::validate_database_url;
use crate::flags::FlagDef;
use crate::flags::store::{self, FlagChange, NewFlag, OverrideTarget};

/// Runs a flags subcommand.
pub async fn run(cmd: FlagsCommand) -> anyhow::Result<()> {
    match cmd {
        FlagsCommand::List(a) => {
            let c = connect(&a.db).await?;
            let flags = store::list(&c).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&flags)?);
            } else {
                print_table(&flags);
            }
        }
        FlagsCommand::Create(a) => {
            let c = connect(&a.change.db).await?;
            let new = NewFlag {
                name: a.name,
                description: a.description,
                variants: a.variants.as_deref().map(parse_variants).transpose()?,
                default_variant: a.default_variant,
                enabled: Some(!a.disabled),
                rollout_percentage: a.rollout,
            };
            let f = store::create(&c, &new, a.change.who.as_deref()).await?;
            println!("created {}", summary(&f));
        }
        FlagsCommand::Set(a) => {
            let c = connect(&a.change.db).await?;
            let change = FlagChange {
                enabled: match (a.enable, a.disable) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                description: a.description,
                variants: a.variants.as_deref().map(parse_variants).transpose()?,
                default_variant: a.default_variant,
            };
            let f = store::set(&c, &a.name, &change, a.change.who.as_deref()).await?;
            println!("{}", summary(&f));
        }
        FlagsCommand::Rollout(a) => {
            let c = connect(&a.change.db).await?;
            let f = store::rollout(&c, &a.name, &a.percentage, a.change.who.as_deref()).await?;
            println!("{}", summary(&f));
        }
        FlagsCommand::Override(a) => {
            let c = connect(&a.change.db).await?;
            let target = OverrideTarget {
                subject: a.subject.clone(),
                segment: a.segment.clone(),
            };
            let what = match (&a.subject, &a.segment) {
                (Some(s), _) => format!("subject {s}"),
                (_, Some(g)) => format!("segment {g}"),
                _ => String::new(),
            };
            if a.clear {
                if store::clear_override(&c, &a.name, &target, a.change.who.as_deref()).await? {
                    println!("{}: cleared the override of {what}", a.name);
                } else {
                    println!("{}: {what} had no override", a.name);
                }
            } else {
                let f = store::set_override(
                    &c,
                    &a.name,
                    &target,
                    !a.off,
                    a.variant.as_deref(),
                    a.change.who.as_deref(),
                )
                .await?;
                println!("{}", summary(&f));
            }
        }
        FlagsCommand::Eval(a) => {
            let c = connect(&a.db).await?;
            let segments: Vec<String> = a
                .segments
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            let evals = store::evaluate_in_database(&c, &a.subject, &segments).await?;
            if a.json {
                let map: serde_json::Map<String, Value> =
                    evals.iter().map(|(n, e)| (n.clone(), json!(e))).collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else {
                println!("{:<32} {:<5} {:<16} SOURCE", "FLAG", "ON", "VARIANT");
                for (name, e) in &evals {
                    println!(
                        "{:<32} {:<5} {:<16} {}",
                        name,
                        if e.enabled { "on" } else { "off" },
                        e.variant.as_deref().unwrap_or("-"),
                        e.source.as_str()
                    );
                }
            }
        }
        FlagsCommand::History(a) => {
            let c = connect(&a.db).await?;
            let entries = store::history(&c, a.name.as_deref(), a.limit).await?;
            for h in &entries {
                if a.json {
                    println!("{}", serde_json::to_string(h)?);
                } else {
                    println!(
                        "#{:<6} {}  {:<24} {:<15} by {}",
                        h.id,
                        h.changed_at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
                        h.flag,
                        h.action,
                        h.who
                    );
                }
            }
        }
        FlagsCommand::Delete(a) => {
            let c = connect(&a.change.db).await?;
            store::delete(&c, &a.name, a.change.who.as_deref()).await?;
            println!("deleted flag {}", a.name);
        }
    }
    Ok(())
}

/// One SQL connection.
async fn connect(db: &DatabaseArgs) -> anyhow::Result<Client> {
    let url = validate_database_url(&db.database_url)?;
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// `a=50,b=50` (or a JSON list, or '' for none) as the JSON the database takes.
pub fn parse_variants(s: &str) -> anyhow::Result<Value> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(json!([]));
    }
    if s.starts_with('[') {
        return Ok(serde_json::from_str(s)?);
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let (name, weight) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("variant {part:?} has no weight: write name=weight, e.g. a=50,b=50")
        })?;
        let weight: u32 = weight.trim().parse().map_err(|_| {
            anyhow::anyhow!("variant {name:?} has weight {weight:?}: weights are whole numbers")
        })?;
        out.push(json!({ "name": name.trim(), "weight": weight }));
    }
    Ok(Value::Array(out))
}

/// One line about a flag.
fn summary(f: &FlagDef) -> String {
    let variants = if f.variants.is_empty() {
        "on/off".to_owned()
    } else {
        f.variants
            .iter()
            .map(|v| format!("{}={}", v.name, v.weight))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{}: {}, rollout {} %, variants {}, default {}, {} override(s)",
        f.name,
        if f.enabled { "enabled" } else { "DISABLED" },
        f.rollout_percentage,
        variants,
        f.default_variant.as_deref().unwrap_or("-"),
        f.overrides.len()
    )
}

/// The flags as a table, then their overrides.
fn print_table(flags: &[FlagDef]) {
    println!(
        "{:<28} {:<8} {:>8} {:<28} {:<12} {:>9}",
        "NAME", "ENABLED", "ROLLOUT", "VARIANTS", "DEFAULT", "OVERRIDES"
    );
    for f in flags {
        let variants = f
            .variants
            .iter()
            .map(|v| format!("{}={}", v.name, v.weight))
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<28} {:<8} {:>7}% {:<28} {:<12} {:>9}",
            f.name,
            f.enabled,
            f.rollout_percentage,
            if variants.is_empty() { "-" } else { &variants },
            f.default_variant.as_deref().unwrap_or("-"),
            f.overrides.len()
        );
    }
    for f in flags {
        for o in &f.overrides {
            println!(
                "  {} {:?} {} = {}{}",
                f.name,
                o.kind,
                o.key,
                if o.enabled { "on" } else { "off" },
                o.variant
                    .as_deref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_shorthand() {
        assert_eq!(
            parse_variants("a=30, b=70").unwrap(),
            json!([{"name": "a", "weight": 30}, {"name": "b", "weight": 70}])
        );
        assert_eq!(parse_variants("").unwrap(), json!([]));
        assert_eq!(
            parse_variants(r#"[{"name":"x","weight":100}]"#).unwrap(),
            json!([{"name": "x", "weight": 100}])
        );
        assert!(parse_variants("a").is_err());
        assert!(parse_variants("a=x").is_err());
    }
}
