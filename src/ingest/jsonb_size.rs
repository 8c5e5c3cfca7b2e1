//! How large a JSON object is once Postgres stores it as `jsonb` and prints it: the measure the
//! table's size checks use, so ingest refuses what the database would refuse.

use serde_json::{Map, Value};

/// The size of `m` as Postgres prints it (`jsonb::text`), which is what the table's
/// `octet_length(data::text)` checks measure: `", "` and `": "` separators, and numbers
/// without exponents (`1e3` is `1000`). Measuring the compact JSON instead would accept
/// objects the database then rejects.
pub(super) fn jsonb_text_len(m: &Map<String, Value>) -> usize {
    use serde::Serialize;
    let mut counter = CountingWriter(0);
    let mut ser = serde_json::Serializer::with_formatter(&mut counter, JsonbFormatter::default());
    match m.serialize(&mut ser) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Counts bytes written.
struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// serde_json formatting that matches Postgres' jsonb output.
#[derive(Default)]
struct JsonbFormatter {
    /// Reused buffer for one number's text.
    scratch: Vec<u8>,
}

impl serde_json::ser::Formatter for JsonbFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        self.scratch.clear();
        serde_json::ser::CompactFormatter.write_f64(&mut self.scratch, v)?;
        if self.scratch.iter().any(|b| matches!(b, b'e' | b'E')) {
            w.write_all(numeric_text(&String::from_utf8_lossy(&self.scratch)).as_bytes())
        } else {
            // Without an exponent Postgres prints the literal as given.
            w.write_all(&self.scratch)
        }
    }
}

/// How Postgres' `numeric` prints a JSON number literal: exponents expanded (`1.5e-7` is
/// `0.00000015`, `1e3` is `1000`); a literal without an exponent is printed as given.
fn numeric_text(literal: &str) -> String {
    let Some((mantissa, exp)) = literal.split_once(['e', 'E']) else {
        return literal.to_owned();
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return literal.to_owned();
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    // Position of the decimal point in `digits` after shifting by the exponent.
    let point = int.len() as i64 + exp;
    let mut out = String::from(sign);
    if point <= 0 {
        out.push('0');
        out.push('.');
        out.push_str(&"0".repeat((-point) as usize));
        out.push_str(&digits);
    } else if (point as usize) < digits.len() {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else {
        out.push_str(&digits);
        out.push_str(&"0".repeat(point as usize - digits.len()));
    }
    // Leading zeros of the integer part (e.g. from `0.5e1`) are not printed.
    let body = out.trim_start_matches('-');
    let trimmed = body.trim_start_matches('0');
    let body = if trimmed.is_empty() || trimmed.starts_with('.') {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sizes_are_measured_like_postgres_jsonb_text() {
        let m = json!({"a": 1, "b": [1, 2], "c": {"d": "x"}});
        // Postgres prints {"a": 1, "b": [1, 2], "c": {"d": "x"}}
        assert_eq!(
            jsonb_text_len(m.as_object().unwrap()),
            r#"{"a": 1, "b": [1, 2], "c": {"d": "x"}}"#.len()
        );
        assert_eq!(numeric_text("1e300").len(), 301);
        assert_eq!(numeric_text("1e3"), "1000");
        assert_eq!(numeric_text("1.5e-7"), "0.00000015");
        assert_eq!(numeric_text("-2.5e20"), "-250000000000000000000");
        assert_eq!(numeric_text("1.25e1"), "12.5");
        assert_eq!(numeric_text("100.0"), "100.0");
        assert_eq!(numeric_text("0.5e1"), "5");
        let big = json!({"x": 1e300});
        assert_eq!(
            jsonb_text_len(big.as_object().unwrap()),
            r#"{"x": }"#.len() + 301
        );
    }
}
