//! Units on the command line: durations (`250ms`, `30s`, `7d`) and sizes (`8MiB`, `1GiB`).
//!
//! A leaf: used by [`crate::cli`] as clap value parsers and by [`crate::config`] when it
//! validates; imports nothing of walcast.

use std::time::Duration;

/// Parses durations like `250ms`, `30s`, `15m`, `2h`, `7d`, `10y`, or a plain number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 250ms, 30s, 15m or 2h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "y" => n * 365.0 * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {value:?}: use ms, s, m, h, d or y"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("{value:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses sizes like `512`, `64KiB`, `8MiB`, `1GiB`, `10MB`.
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a size like 8MiB or 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        "TiB" => 1024 * 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {value:?}: use B, KiB, MiB, GiB (or KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{value:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_bytes("12").unwrap(), 12);
        assert!(parse_bytes("12 parsecs").is_err());
    }
}
