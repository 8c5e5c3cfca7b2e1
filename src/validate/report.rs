//! How a validation run is shown: a table for people, JSON for programs.

use std::fmt::Write as _;

use serde::Serialize;

use super::compare::{Endpoint, Latency, Report, Window};

/// A finished run: where, when, what was compared, and the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The server's base URL.
    pub url: String,
    /// The commit-time window compared.
    pub window: Window,
    /// Where the window's times come from: `database` or `local`.
    pub clock: &'static str,
    /// `table` when rows were read with SQL as the reference, else `none`.
    pub reference: &'static str,
    /// Events this run inserted through `POST /v1/events`.
    pub generated: u64,
    /// Nothing missing, duplicated, out of order or mismatched.
    pub ok: bool,
    /// The comparison.
    pub report: Report,
}

impl RunSummary {
    /// A run without changes.
    pub fn is_quiet(&self) -> bool {
        self.report.compared == 0
    }
}

/// A latency cell.
fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The terminal table.
pub fn render(run: &RunSummary) -> String {
    let r = &run.report;
    let mut out = String::new();
    let secs = (run.window.end - run.window.start).num_milliseconds() as f64 / 1000.0;
    let _ = writeln!(
        out,
        "walcast validate: {} · window {secs:.1} s ({} → {}, {} clock) · reference: {}{}",
        run.url,
        run.window.start.format("%H:%M:%S%.3f"),
        run.window.end.format("%H:%M:%S%.3f"),
        run.clock,
        run.reference,
        r.reference_rows
            .map(|n| format!(" ({n} rows)"))
            .unwrap_or_default(),
    );
    if run.generated > 0 {
        let _ = writeln!(
            out,
            "generated {} events through POST /v1/events",
            run.generated
        );
    }
    if run.is_quiet() {
        let _ = writeln!(
            out,
            "\nnothing happened during the window: 0 changes compared \
             (--generate N inserts events to validate a quiet system)"
        );
        return out;
    }
    let _ = writeln!(out, "\n{:<18}{:>12}{:>12}", "", "ws", "realtime");
    let row = |out: &mut String, name: &str, f: &dyn Fn(Endpoint) -> String| {
        let _ = writeln!(
            out,
            "{name:<18}{:>12}{:>12}",
            f(Endpoint::Ws),
            f(Endpoint::Realtime)
        );
    };
    row(&mut out, "received", &|p| r.received.get(p).to_string());
    row(&mut out, "missing", &|p| r.missing.get(p).to_string());
    row(&mut out, "duplicates", &|p| r.duplicates.get(p).to_string());
    row(&mut out, "out of order", &|p| {
        r.out_of_order.get(p).to_string()
    });
    let lat = |p: Endpoint| -> &Latency { r.latency_ms.get(p) };
    row(&mut out, "latency p50 ms", &|p| ms(lat(p).p50));
    row(&mut out, "latency p95 ms", &|p| ms(lat(p).p95));
    row(&mut out, "latency p99 ms", &|p| ms(lat(p).p99));
    row(&mut out, "latency max ms", &|p| ms(lat(p).max));
    let _ = writeln!(
        out,
        "\ncompared {}, matched {} ({:.2} %), field mismatches {}",
        r.compared,
        r.matched,
        r.match_ratio * 100.0,
        r.mismatch_total
    );
    if !r.mismatches.is_empty() {
        let _ = writeln!(out, "\n{:<28}{:<16}{:>8}", "field", "between", "count");
        for m in &r.mismatches {
            let _ = writeln!(out, "{:<28}{:<16}{:>8}", m.field, m.between, m.count);
        }
    }
    if !r.examples.is_empty() {
        let _ = writeln!(out, "\nexamples:");
        for e in &r.examples {
            let _ = writeln!(
                out,
                "  {:<13}{:<15}{:<7} {}  {}",
                e.kind, e.path, e.op, e.id, e.detail
            );
        }
    }
    let _ = writeln!(
        out,
        "\nresult: {}",
        if run.ok {
            "OK: every change reached both paths once, in order, with equal fields"
        } else {
            "FAILED: see above"
        }
    );
    out
}
