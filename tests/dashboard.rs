//! The dashboard (`GET /`, `src/dashboard/index.html`) in headless Chromium: walcast runs with a
//! JWT secret, `tests/dashboard/dashboard.mjs` (playwright-core) opens the page with a
//! `service_role` key, and this test commits rows with SQL whenever the script says
//! `{"ready":...}`. The script reports what the page shows; this side asserts on it and on the
//! screenshot it saves to `target/test-artifacts/dashboard.png`.
//!
//! Needs `node` (20 or newer), `npm ci --prefix tests/dashboard` and Debian's `chromium`
//! (`.ci/run` installs all three).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support::{self, TestDb, Walcast};

/// How long one wait for a script's line may take (a cold Chromium on a busy 2-core machine).
const WAIT: Duration = Duration::from_secs(60);
/// The script's own watchdog for the whole run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The script's directory.
fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// The browser: `WALCAST_CHROMIUM` or Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("WALCAST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Where the screenshot goes: `<target dir>/test-artifacts/dashboard.png`.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts/dashboard.png")
}

/// Panics with instructions when node, the npm package or Chromium is missing.
fn check_prerequisites() {
    let pkg = script_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pkg.exists(),
        "the dashboard test needs playwright-core ({} is missing): run \
         `npm ci --prefix tests/dashboard --no-audit --no-fund` (or .ci/run, which does it)",
        pkg.display()
    );
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        node,
        "`node` is not on PATH: install Node.js 20 or newer (e.g. `apt-get install nodejs npm`)"
    );
    let browser = chromium();
    assert!(
        browser.exists(),
        "the dashboard test needs Chromium at {}: run `apt-get install -y chromium` (or .ci/run, \
         which does it), or point WALCAST_CHROMIUM at a Chromium binary",
        browser.display()
    );
}

/// The running node script.
struct Script {
    /// The process (killed on drop).
    child: Child,
    /// Its stdout, line by line.
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its stdin (commands).
    stdin: ChildStdin,
    /// Every line read so far.
    seen: Vec<Value>,
    /// Its stderr log.
    stderr: PathBuf,
}

impl Script {
    /// Starts `dashboard.mjs` on `url`, saving the screenshot to `shot`.
    fn start(url: &str, shot: &Path) -> Script {
        let stderr = std::env::temp_dir().join(format!(
            "walcast-dashboard-{:016x}.log",
            rand::random::<u64>()
        ));
        let errf = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = tokio::process::Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(script_dir())
            .env("DASHBOARD_URL", url)
            .env("SCREENSHOT", shot)
            .env("CHROMIUM", chromium())
            .env(
                "WALCAST_JS_TIMEOUT_MS",
                SCRIPT_TIMEOUT.as_millis().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errf)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stdin = child.stdin.take().expect("stdin");
        Script {
            child,
            stdout,
            stdin,
            seen: Vec::new(),
            stderr,
        }
    }

    /// What the script printed, for failure messages.
    fn transcript(&self) -> String {
        let lines: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: String = err
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "dashboard.mjs printed:\n{}\nstderr (last lines):\n{tail}",
            lines.join("\n")
        )
    }

    /// The next line; panics on timeout, end of output, or a failure report.
    async fn next(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("dashboard.mjs ended before {what}\n{}", self.transcript()),
            Ok(Err(e)) => panic!("reading dashboard.mjs: {e}\n{}", self.transcript()),
            Err(_) => panic!(
                "no {what} from dashboard.mjs within {WAIT:?}\n{}",
                self.transcript()
            ),
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("not JSON: {line}\n{}", self.transcript()));
        self.seen.push(v.clone());
        if v.get("fail").is_some() || v.get("timeout").is_some() {
            panic!("dashboard.mjs failed: {v}\n{}", self.transcript());
        }
        v
    }

    /// Reads lines until `{"step": step}`; returns it.
    async fn step(&mut self, step: &str) -> Value {
        loop {
            let v = self.next(&format!("step {step}")).await;
            if v["step"] == step {
                return v;
            }
        }
    }

    /// Reads lines until `{"ready": what}`.
    async fn ready(&mut self, what: &str) {
        loop {
            let v = self.next(&format!("ready {what}")).await;
            if v["ready"] == what {
                return;
            }
        }
    }

    /// Tells the script to go on.
    async fn go(&mut self) {
        self.stdin.write_all(b"go\n").await.expect("write go");
        self.stdin.flush().await.expect("flush go");
    }
}

/// Commits one transaction inserting `rows` of (event_type, source).
async fn insert(db: &TestDb, rows: &[(&str, &str)]) {
    let client = db.client().await;
    let mut sql =
        String::from("insert into public.monitoring_events (event_type, source, data) values ");
    for (i, (t, s)) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "('{t}', '{s}', jsonb_build_object('n', {i}, 'load', round(random()::numeric, 2)))"
        ));
    }
    client.batch_execute(&sql).await.expect("insert rows");
}

/// The rows of a step report with `event_type`.
fn rows_of<'a>(step: &'a Value, event_type: &str) -> Vec<&'a Value> {
    step["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["event_type"] == event_type)
        .collect()
}

/// PNG width and height from the IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

/// The whole tour: plain path, switch to Realtime without a reload, both paths with a filter,
/// settings across a reload, reconnect and resume across a walcast restart, screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_streams_switches_and_persists() {
    check_prerequisites();
    let db = support::fresh_db().await;
    let mut w = Walcast::start_with_env(&db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let key = walcast::auth::mint(support::SECRET, "service_role", Duration::from_secs(3600))
        .expect("mint key");
    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let mut s = Script::start(&format!("{}/?apikey={key}", w.base), &shot);

    // Auto: the first of `paths` — dual mode with use_realtime off gives the plain path.
    let loaded = s.step("loaded").await;
    assert_eq!(loaded["address_has_apikey"], false, "{loaded}");
    assert_eq!(loaded["paths"]["direct"], "connected", "{loaded}");
    assert_eq!(loaded["paths"]["realtime"], "off", "{loaded}");
    assert_eq!(loaded["mode"], "dual", "{loaded}");
    assert_eq!(loaded["node"], db.node(), "{loaded}");
    assert_eq!(loaded["source_checked"], "auto", "{loaded}");
    let flags: Vec<&str> = loaded["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        flags.contains(&"use_realtime") && flags.contains(&"broadcaster_mode"),
        "{loaded}"
    );

    s.ready("plain").await;
    insert(
        &db,
        &[
            ("dash.plain", "host-a"),
            ("dash.plain", "host-b"),
            ("dash.plain", "host-c"),
        ],
    )
    .await;
    s.go().await;
    let plain = s.step("plain").await;
    let rows = rows_of(&plain, "dash.plain");
    assert_eq!(rows.len(), 3, "{plain}");
    let mut sources: Vec<&str> = rows.iter().filter_map(|r| r["source"].as_str()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["host-a", "host-b", "host-c"], "{plain}");
    for r in &rows {
        assert_eq!(r["path"], "direct", "{plain}");
        assert_eq!(r["op"], "INSERT", "{plain}");
        assert_eq!(r["visible"], true, "{plain}");
        assert!(
            r["latency"].as_str().is_some_and(|l| l.ends_with('s')),
            "{plain}"
        );
    }

    // Realtime, on the same page.
    let switched = s.step("switched").await;
    assert_eq!(switched["marker"], "kept", "the page reloaded: {switched}");
    assert_eq!(switched["navigations"], 1, "{switched}");
    assert_eq!(switched["paths"]["realtime"], "connected", "{switched}");
    assert_eq!(switched["paths"]["direct"], "off", "{switched}");
    s.ready("realtime").await;
    insert(
        &db,
        &[
            ("dash.rt", "host-a"),
            ("dash.rt", "host-b"),
            ("dash.rt", "host-c"),
        ],
    )
    .await;
    s.go().await;
    let rt = s.step("realtime").await;
    let rows = rows_of(&rt, "dash.rt");
    assert_eq!(rows.len(), 3, "{rt}");
    assert!(rows.iter().all(|r| r["path"] == "realtime"), "{rt}");

    // Both paths, filtered to one event type: unfiltered rows are committed first.
    s.ready("both").await;
    insert(&db, &[("dash.other", "host-a"), ("dash.other", "host-b")]).await;
    insert(
        &db,
        &[("dash.filtered", "host-a"), ("dash.filtered", "host-b")],
    )
    .await;
    s.go().await;
    let both = s.step("both").await;
    let filtered = rows_of(&both, "dash.filtered");
    assert_eq!(filtered.len(), 4, "{both}");
    assert_eq!(
        filtered.iter().filter(|r| r["path"] == "direct").count(),
        2,
        "{both}"
    );
    assert!(rows_of(&both, "dash.other").is_empty(), "{both}");
    assert!(
        both["rows"].as_array().expect("rows").len() == 4,
        "applying a filter clears the table: {both}"
    );

    // Settings survive a reload (localStorage).
    let reloaded = s.step("reloaded").await;
    assert_eq!(
        reloaded["marker"],
        Value::Null,
        "no reload happened: {reloaded}"
    );
    assert_eq!(reloaded["address_has_apikey"], false, "{reloaded}");
    assert_eq!(reloaded["source_checked"], "both", "{reloaded}");
    let inputs = &reloaded["inputs"];
    assert_eq!(inputs["subject"], "user-dash-1", "{reloaded}");
    assert_eq!(inputs["segments"], "beta", "{reloaded}");
    assert_eq!(inputs["apikey_set"], true, "{reloaded}");
    assert_eq!(inputs["event_type"], "dash.filtered", "{reloaded}");
    assert_eq!(reloaded["settings"]["source"], "both", "{reloaded}");

    // kill -9 and restart: the plain path resumes from its cursor.
    s.ready("cursor").await;
    insert(&db, &[("dash.before", "host-a")]).await;
    s.go().await;
    s.ready("restart").await;
    w.kill9();
    insert(
        &db,
        &[
            ("dash.resume", "host-a"),
            ("dash.resume", "host-b"),
            ("dash.resume", "host-c"),
        ],
    )
    .await;
    w.restart().await;
    s.go().await;
    let resumed = s.step("resumed").await;
    let rows = rows_of(&resumed, "dash.resume");
    assert_eq!(
        rows.iter().filter(|r| r["path"] == "direct").count(),
        3,
        "each row committed while walcast was down arrives once on the plain path: {resumed}"
    );
    assert!(
        resumed["direct_status"]
            .as_str()
            .is_some_and(|t| t.contains("resumed, ")),
        "{resumed}"
    );

    // A burst of varied rows, spread over a few seconds so the charts have a shape.
    s.ready("screenshot").await;
    let types = ["cpu", "mem", "disk.io", "http.request"];
    let hosts = ["host-1", "host-2", "host-3", "edge-eu-1"];
    for round in 0..6 {
        let rows: Vec<(&str, &str)> = (0..(3 + round % 3))
            .map(|i| (types[(round + i) % 3], hosts[(round + i) % hosts.len()]))
            .chain([("http.request", hosts[round % hosts.len()])])
            .collect();
        insert(&db, &rows).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.go().await;
    let done = s.step("screenshot").await;
    assert_eq!(done["page_errors"], serde_json::json!([]), "{done}");
    // GET /v1/status: this page's two sessions, the slot's lag, the validator's state.
    let status = &done["status"];
    let clients: u64 = status["clients"]
        .as_str()
        .and_then(|t| t.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("clients is not a number: {done}"));
    assert!(clients >= 2, "{done}");
    assert!(
        status["clients_sub"]
            .as_str()
            .is_some_and(|t| t.contains("plain") && t.contains("realtime")),
        "{done}"
    );
    assert!(
        status["slot_lag"]
            .as_str()
            .is_some_and(|t| t.ends_with('B')),
        "{done}"
    );
    assert!(
        status["slot_lag_sub"]
            .as_str()
            .is_some_and(|t| t.contains("streaming")),
        "{done}"
    );
    assert_ne!(status["consistency"], "n/a", "{done}");
    assert!(
        done["row_count"].as_u64().unwrap_or(0) >= 12,
        "both paths' rows are in the table: {done}"
    );
    let end = s.next("done").await;
    assert_eq!(end["done"], true, "{}", s.transcript());
    let status = s.child.wait().await.expect("wait node");
    assert!(
        status.success(),
        "node exited with {status}\n{}",
        s.transcript()
    );

    let bytes =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    let (width, height) =
        png_size(&bytes).unwrap_or_else(|| panic!("{} is not a PNG", shot.display()));
    assert!(
        bytes.len() > 30_000 && width >= 1000 && height >= 600,
        "{} looks empty: {} bytes, {width}x{height}",
        shot.display(),
        bytes.len()
    );
    eprintln!(
        "dashboard screenshot: {} ({width}x{height}, {} bytes)",
        shot.display(),
        bytes.len()
    );
}
