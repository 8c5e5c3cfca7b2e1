//! Tests: the command line — help texts, configuration errors, `keys`, `emit` (also with auth
//! and against nothing), `slot status` / `slot drop`, and the separate `walcast-bench` binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{self, Walcast};

/// A scratch working directory, so `emit` never picks up a `.walcast/service_role.key` left in
/// the repository by `walcast dev`.
fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::temp_dir("cli"))
}

/// The benchmark binary built beside walcast.
const WALCAST_BENCH: &str = env!("CARGO_BIN_EXE_walcast-bench");

/// Runs walcast with `args`, only the given environment of walcast's own (every inherited
/// `WALCAST_*` and `DATABASE_URL` removed), optional stdin; returns (code, stdout, stderr).
fn walcast(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    run(support::WALCAST, args, env, stdin)
}

/// Runs the program `bin` the way [`walcast`] runs walcast.
fn run(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(scratch_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("WALCAST_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `walcast` on a blocking thread, for async tests.
async fn walcast_async(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        walcast(&args, &env, stdin.as_deref())
    })
    .await
    .expect("cli thread")
}

/// Whitespace collapsed to single spaces (help text wraps at the terminal width).
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The UUIDs printed by `emit`, one per line; fails on any other line.
#[track_caller]
fn printed_ids(out: &str, err: &str, n: usize) -> Vec<uuid::Uuid> {
    let ids: Vec<uuid::Uuid> = out
        .lines()
        .map(|l| {
            uuid::Uuid::parse_str(l.trim()).unwrap_or_else(|_| {
                panic!("emit printed {l:?}, not a UUID\nstdout:\n{out}\nstderr:\n{err}")
            })
        })
        .collect();
    assert_eq!(
        ids.len(),
        n,
        "emit printed {} ids\nstdout:\n{out}\nstderr:\n{err}",
        ids.len()
    );
    ids
}

#[test]
fn help_texts_have_examples_and_env_names() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["WALCAST_LOG"]),
        (&["migrate"], &["DATABASE_URL"]),
        (
            &["serve"],
            &[
                "DATABASE_URL",
                "WALCAST_LISTEN",
                "WALCAST_JWT_SECRET",
                "WALCAST_NODE",
                "WALCAST_SLOT",
                "WALCAST_PUBLICATION",
                "WALCAST_RETENTION",
                "WALCAST_RETENTION_BYTES",
                "WALCAST_CLIENT_QUEUE",
                "WALCAST_HEARTBEAT",
                "WALCAST_MAX_BODY",
                "WALCAST_MAX_EVENTS",
                "WALCAST_POOL_SIZE",
                "WALCAST_TIER_HIGH",
                "WALCAST_TIER_MEDIUM",
                "WALCAST_TIER_LOW",
                "WALCAST_HIGH_TYPES",
                "WALCAST_LOW_TYPES",
                "WALCAST_EAGER_FLUSH",
                "WALCAST_SHUTDOWN_TIMEOUT",
                "WALCAST_MAX_CONNECTIONS_PER_IP",
                "WALCAST_PER_IP_EXEMPT",
                "WALCAST_TRUSTED_PROXIES",
                "WALCAST_MAX_CHANNEL_MESSAGES_PER_SECOND",
                "WALCAST_ADMIN_MAX_FAILURES",
                "WALCAST_ADMIN_LOCKOUT",
            ],
        ),
        (
            &["dev"],
            &[
                "WALCAST_DEV_DIR",
                "WALCAST_DEV_PG_PORT",
                "WALCAST_LISTEN",
                "WALCAST_JWT_SECRET",
                "WALCAST_NODE",
            ],
        ),
        (
            &["emit"],
            &["WALCAST_URL", "WALCAST_SERVICE_KEY", "WALCAST_LISTEN"],
        ),
        (&["keys"], &["WALCAST_JWT_SECRET"]),
        (&["tail"], &["WALCAST_WS_URL", "WALCAST_LISTEN"]),
        (
            &["slot", "status"],
            &["DATABASE_URL", "WALCAST_NODE", "WALCAST_SLOT"],
        ),
        (
            &["slot", "drop"],
            &["DATABASE_URL", "WALCAST_NODE", "WALCAST_SLOT"],
        ),
    ];
    let bench_cases: &[(&[&str], &[&str])] = &[
        (&[], &["WALCAST_LOG"]),
        (&["ingest"], &["WALCAST_BENCH_DATABASE_URL"]),
        (&["drain"], &[]),
        (&["latency"], &[]),
        (&["fanout"], &[]),
        (&["spool"], &[]),
        (&["memory"], &[]),
        (&["realtime"], &[]),
    ];
    let runs = cases
        .iter()
        .map(|case| (support::WALCAST, "walcast", case))
        .chain(
            bench_cases
                .iter()
                .map(|case| (WALCAST_BENCH, "walcast-bench", case)),
        );
    for (bin, bin_name, (cmd, envs)) in runs {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (code, out, err) = run(bin, &args, &[], None);
        let name = format!("{bin_name} {}", args.join(" "));
        assert_eq!(code, 0, "{name} exited {code}\nstderr:\n{err}");
        assert!(out.contains("Example"), "{name} shows no example:\n{out}");
        let text = flat(&out);
        for env in *envs {
            // `[env: NAME=]`, or `[env: NAME]` for hidden values.
            assert!(
                text.contains(&format!("[env: {env}=")) || text.contains(&format!("[env: {env}]")),
                "{name} does not name {env}:\n{out}"
            );
        }
    }
    // Secret values from the environment are never shown.
    let (code, out, _) = walcast(
        &["serve", "--help"],
        &[
            ("WALCAST_JWT_SECRET", support::SECRET),
            ("WALCAST_LISTEN", "127.0.0.1:4999"),
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(
        !out.contains(support::SECRET),
        "serve --help shows the JWT secret:\n{out}"
    );
    assert!(
        flat(&out).contains("[env: WALCAST_LISTEN=127.0.0.1:4999]"),
        "{out}"
    );
}

/// The first word of each line of a help section: the names it lists.
fn listed(help: &str, heading: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn benchmarks_are_a_separate_binary() {
    let (code, out, err) = walcast(&["--help"], &[], None);
    assert_eq!(code, 0, "walcast --help exited {code}\nstderr:\n{err}");
    let commands = listed(&out, "Commands:");
    assert!(commands.contains(&"serve".to_owned()), "{out}");
    assert!(
        !commands.iter().any(|c| c.contains("bench")),
        "walcast --help lists a bench command:\n{out}"
    );
    let (code, _, err) = walcast(&["bench", "ingest"], &[], None);
    assert_eq!(code, 2, "walcast bench is still a command:\n{err}");

    let (code, out, err) = run(WALCAST_BENCH, &["--help"], &[], None);
    assert_eq!(
        code, 0,
        "walcast-bench --help exited {code}\nstderr:\n{err}"
    );
    let scenarios = listed(&out, "Scenarios:");
    let every = [
        "ingest", "drain", "latency", "fanout", "spool", "memory", "realtime", "dbcast",
    ];
    for scenario in every {
        assert!(
            scenarios.iter().any(|s| s == scenario),
            "walcast-bench --help does not list {scenario}:\n{out}"
        );
    }
    let (code, _, err) = run(WALCAST_BENCH, &["serve"], &[], None);
    assert_eq!(code, 2, "walcast-bench accepts serve:\n{err}");
}

/// Arguments after `serve`, environment, expected text of the one stderr line.
type ConfigCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn config_errors_exit_2_with_one_line() {
    let url = "postgres://postgres@127.0.0.1:1/db";
    let cases: &[ConfigCase] = &[
        (
            &["--database-url", "nope"],
            &[],
            "invalid --database-url (DATABASE_URL)",
        ),
        (
            &[],
            &[("DATABASE_URL", "nope")],
            "invalid --database-url (DATABASE_URL)",
        ),
        (
            &["--database-url", url, "--listen", "bogus"],
            &[],
            "invalid --listen (WALCAST_LISTEN): \"bogus\" is not an address",
        ),
        (
            &["--database-url", url],
            &[("WALCAST_LISTEN", "bogus")],
            "invalid --listen (WALCAST_LISTEN)",
        ),
        (
            &["--database-url", url, "--jwt-secret", "short"],
            &[],
            "invalid --jwt-secret (WALCAST_JWT_SECRET): secret has 5 characters; use at least 32",
        ),
        (
            &["--database-url", url, "--tier-high", "5"],
            &[],
            "invalid --tier-high (WALCAST_TIER_HIGH)",
        ),
        (
            &["--database-url", url, "--client-queue-bytes", "64KiB"],
            &[],
            "invalid --client-queue-bytes (WALCAST_CLIENT_QUEUE_BYTES): must be between 1MiB and 1TiB",
        ),
        (
            &["--database-url", url],
            &[("WALCAST_CLIENT_QUEUE_BYTES", "lots")],
            "invalid --client-queue-bytes (WALCAST_CLIENT_QUEUE_BYTES)",
        ),
        (
            &["--database-url", url, "--tier-low", "0@1s"],
            &[],
            "invalid --tier-low (WALCAST_TIER_LOW)",
        ),
        (
            &["--database-url", url, "--slot", "Bad-Name"],
            &[],
            "invalid --slot (WALCAST_SLOT): \"Bad-Name\"",
        ),
        (
            &["--database-url", url, "--node", "1node"],
            &[],
            "invalid --node (WALCAST_NODE)",
        ),
        (
            &["--database-url", url, "--max-body", "12 parsecs"],
            &[],
            "invalid --max-body (WALCAST_MAX_BODY)",
        ),
        (
            &["--database-url", url, "--retention", "forever"],
            &[],
            "invalid --retention (WALCAST_RETENTION)",
        ),
        (
            &[
                "--database-url",
                url,
                "--trusted-proxies",
                "10.0.0.1,proxy.local",
            ],
            &[],
            "invalid --trusted-proxies (WALCAST_TRUSTED_PROXIES): \"proxy.local\" is not an address or a CIDR range",
        ),
        (
            &["--database-url", url],
            &[("WALCAST_PER_IP_EXEMPT", "10.0.0.0/40")],
            "invalid --per-ip-exempt (WALCAST_PER_IP_EXEMPT): \"10.0.0.0/40\": the prefix length must be 0 to 32",
        ),
    ];
    for (args, env, expected) in cases {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let (code, out, err) = walcast(&all, env, None);
        let what = format!("walcast {} (env {env:?})", all.join(" "));
        assert_eq!(
            code, 2,
            "{what} exited {code}\nstdout:\n{out}\nstderr:\n{err}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected one stderr line, got:\n{err}"
        );
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expected),
            "{what}: stderr {:?} should contain {expected:?}",
            lines[0]
        );
        assert!(out.is_empty(), "{what} printed on stdout:\n{out}");
    }
    // Other subcommands validate the same way.
    for (args, expected) in [
        (
            &["migrate", "--database-url", "nope"][..],
            "invalid --database-url (DATABASE_URL)",
        ),
        (
            &["slot", "status", "--database-url", "nope"][..],
            "invalid --database-url (DATABASE_URL)",
        ),
        (
            &["slot", "drop", "--database-url", url, "--slot", "Bad-Name"][..],
            "invalid --slot (WALCAST_SLOT)",
        ),
    ] {
        let (code, out, err) = walcast(args, &[], None);
        let what = format!("walcast {}", args.join(" "));
        assert_eq!(
            code, 2,
            "{what} exited {code}\nstdout:\n{out}\nstderr:\n{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
    }
    // A valid URL nobody answers on is a runtime failure (1), not a usage error.
    let (code, _, err) = walcast(&["migrate", "--database-url", url], &[], None);
    assert_eq!(code, 1, "migrate against nothing: {err}");
    assert!(err.contains("could not connect to Postgres"), "{err}");
}

#[test]
fn keys_prints_verifiable_anon_and_service_role_keys() {
    let now = chrono::Utc::now().timestamp();
    for (args, env, valid_for) in [
        (
            vec!["keys", "--jwt-secret", support::SECRET],
            vec![],
            10 * 365 * 86400,
        ),
        (
            vec!["keys", "--valid-for", "1h"],
            vec![("WALCAST_JWT_SECRET", support::SECRET)],
            3600,
        ),
    ] {
        let (code, out, err) = walcast(&args, &env, None);
        assert_eq!(code, 0, "{args:?}: exit {code}\nstderr:\n{err}");
        let mut roles = Vec::new();
        for line in out.lines() {
            let (label, token) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("unexpected line {line:?} in:\n{out}"));
            let claims = walcast::auth::verify(support::SECRET, token.trim())
                .unwrap_or_else(|e| panic!("{label} does not verify: {e}\n{out}"));
            assert_eq!(format!("{} key", claims.role), label.trim(), "{out}");
            assert!(
                (claims.exp - now - valid_for).abs() < 120,
                "{label}: exp {} is not about now + {valid_for}s",
                claims.exp
            );
            roles.push(claims.role);
        }
        assert_eq!(roles, ["anon", "service_role"], "{out}");
        assert!(
            walcast::auth::verify(
                "another-secret-another-secret-0123",
                out.split_whitespace().nth(2).unwrap()
            )
            .is_err(),
            "keys verify with another secret"
        );
    }
    let (code, out, err) = walcast(&["keys", "--jwt-secret", "short"], &[], None);
    assert_eq!(
        code, 2,
        "short secret: exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("invalid --jwt-secret (WALCAST_JWT_SECRET)"),
        "stderr: {err}"
    );
    assert!(
        out.is_empty(),
        "no key may be printed for a short secret:\n{out}"
    );
    let (code, _, err) = walcast(&["keys"], &[], None);
    assert_eq!(code, 2, "no secret: stderr {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_posts_events_that_psql_sees() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;

    let (code, out, err) = walcast_async(
        &[
            "emit",
            "--url",
            &w.base,
            "--type",
            "cpu",
            "--source",
            "h1",
            "--data",
            r#"{"a":1}"#,
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(
        code,
        0,
        "emit failed\nstdout:\n{out}\nstderr:\n{err}\nserver log:\n{}",
        w.log_text()
    );
    let id = printed_ids(&out, &err, 1)[0];
    let psql = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || {
            Command::new("psql")
                .args([
                    url.as_str(),
                    "-At",
                    "-c",
                    "select event_type, source, data->>'a' from monitoring_events",
                ])
                .output()
                .expect("run psql")
        }
    })
    .await
    .unwrap();
    assert!(
        psql.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout), "cpu|h1|1\n");
    let c = db.client().await;
    let n: i64 = c
        .query_one(
            "select count(*) from monitoring_events where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the printed id is the stored one");

    // NDJSON on stdin (blank lines ignored); the server address from WALCAST_URL.
    let input = "{\"event_type\":\"s1\",\"source\":\"stdin\"}\n\n\
                 {\"event_type\":\"s2\",\"source\":\"stdin\",\"data\":{\"x\":2}}\n\
                 {\"event_type\":\"s3\",\"source\":\"stdin\"}\n";
    let (code, out, err) = walcast_async(
        &["emit", "--stdin"],
        &[("WALCAST_URL", &w.base)],
        Some(input),
    )
    .await;
    assert_eq!(
        code, 0,
        "emit --stdin failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    let ids = printed_ids(&out, &err, 3);
    let types: Vec<String> = c
        .query(
            "select event_type from monitoring_events where id = any($1) order by event_type",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["s1", "s2", "s3"]);

    // Without --url: http://<WALCAST_LISTEN>.
    let (code, out, err) = walcast_async(
        &["emit", "--type", "mem", "--source", "h2"],
        &[("WALCAST_LISTEN", &w.addr)],
        None,
    )
    .await;
    assert_eq!(code, 0, "emit via WALCAST_LISTEN failed\nstderr:\n{err}");
    printed_ids(&out, &err, 1);

    // A server-side rejection: exit 1 with the code and message.
    let (code, out, err) = walcast_async(
        &[
            "emit", "--url", &w.base, "--type", "cpu", "--source", "h1", "--data", "[1]",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("422 invalid_event: event 0: data must be a JSON object"),
        "stderr: {err}"
    );
    // Invalid JSON in --data never reaches the server.
    let (code, _, err) = walcast_async(
        &[
            "emit", "--url", &w.base, "--type", "cpu", "--source", "h1", "--data", "{",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("--data is not JSON"), "stderr: {err}");
    assert_eq!(db.count().await, 5);

    // Nobody listening: exit 1 saying so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let (code, out, err) = walcast_async(
        &["emit", "--url", &dead, "--type", "cpu", "--source", "h1"],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!("cannot reach {dead}/v1/events")),
        "stderr should say the URL cannot be reached: {err}"
    );
    assert!(out.is_empty(), "{out}");
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_auth_uses_service_role_keys() {
    let db = support::fresh_db().await;
    let w = Walcast::start_with_env(&db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let (code, keys, err) =
        walcast_async(&["keys", "--jwt-secret", support::SECRET], &[], None).await;
    assert_eq!(code, 0, "keys: {err}");
    let key_of = |label: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|t| t.trim_start_matches(':').trim().to_owned())
            .unwrap_or_else(|| panic!("no {label} in:\n{keys}"))
    };
    let (anon, service) = (key_of("anon key"), key_of("service_role key"));
    let emit = ["emit", "--url", &w.base, "--type", "cpu", "--source", "h1"];

    let mut with_key = emit.to_vec();
    with_key.extend(["--key", &service]);
    let (code, out, err) = walcast_async(&with_key, &[], None).await;
    assert_eq!(code, 0, "emit --key <service_role> failed\nstderr:\n{err}");
    printed_ids(&out, &err, 1);
    let (code, out, err) = walcast_async(&emit, &[("WALCAST_SERVICE_KEY", &service)], None).await;
    assert_eq!(
        code, 0,
        "emit with WALCAST_SERVICE_KEY failed\nstderr:\n{err}"
    );
    printed_ids(&out, &err, 1);
    // With the secret in the environment, emit mints its own key.
    let (code, out, err) =
        walcast_async(&emit, &[("WALCAST_JWT_SECRET", support::SECRET)], None).await;
    assert_eq!(
        code, 0,
        "emit with WALCAST_JWT_SECRET failed\nstderr:\n{err}"
    );
    printed_ids(&out, &err, 1);

    let (code, out, err) = walcast_async(&emit, &[], None).await;
    assert_eq!(
        code, 1,
        "emit without a key\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("401 unauthorized"), "stderr: {err}");
    assert!(out.is_empty(), "{out}");
    let mut with_anon = emit.to_vec();
    with_anon.extend(["--key", &anon]);
    let (code, _, err) = walcast_async(&with_anon, &[], None).await;
    assert_eq!(code, 1, "emit with the anon key: {err}");
    assert!(err.contains("403 forbidden"), "stderr: {err}");
    assert_eq!(db.count().await, 3);
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_status_and_drop() {
    let db = support::fresh_db().await;
    let node = db.node();
    let slot = format!("walcast_{node}");
    let mut w = Walcast::start(&db, &[]).await;
    let status = ["slot", "status", "--database-url", &db.url, "--node", &node];
    let active_line = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("active:").map(|v| v.trim().to_owned()))
    };

    let (code, out, err) = walcast_async(&status, &[], None).await;
    assert_eq!(code, 0, "slot status\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        active_line(&out).as_deref(),
        Some("true"),
        "while walcast runs:\n{out}"
    );
    assert!(flat(&out).contains(&format!("slot: {slot}")), "{out}");
    assert!(flat(&out).contains("plugin: pgoutput"), "{out}");

    // Dropping needs walcast stopped: while it streams, drop fails and the slot stays.
    let drop = ["slot", "drop", "--database-url", &db.url, "--slot", &slot];
    let (code, out, err) = walcast_async(&drop, &[], None).await;
    assert_eq!(
        code, 1,
        "slot drop while active\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.contains("active"),
        "stderr should say the slot is active: {err}"
    );
    let (_, out, _) = walcast_async(&status, &[], None).await;
    assert_eq!(active_line(&out).as_deref(), Some("true"), "{out}");

    // After a graceful stop the slot is released.
    let exit = tokio::task::block_in_place(|| w.terminate(Duration::from_secs(20)));
    assert!(
        exit.is_some_and(|s| s.success()),
        "walcast did not exit cleanly on SIGTERM: {exit:?}\nlog:\n{}",
        w.log_text()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (released, last) = loop {
        let (_, out, _) = walcast_async(&status, &[], None).await;
        if active_line(&out).as_deref() == Some("false") {
            break (true, out);
        }
        if std::time::Instant::now() >= deadline {
            break (false, out);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        released,
        "the slot stays active after walcast stopped:\n{last}"
    );

    let (code, out, err) = walcast_async(&drop, &[], None).await;
    assert_eq!(code, 0, "slot drop\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.trim(), format!("dropped replication slot {slot}"));
    let (code, out, err) = walcast_async(&drop, &[], None).await;
    assert_eq!(code, 0, "second slot drop\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        out.trim(),
        format!("replication slot {slot} does not exist")
    );
    let (code, out, _) = walcast_async(&status, &[], None).await;
    assert_eq!(code, 0);
    assert!(out.contains("does not exist"), "{out}");
    let n: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the slot is gone from pg_replication_slots");
}
