//! `walcast validate` against a real walcast: a clean run matches 100 %, an injected gap on `/ws`
//! is found, a quiet window says so; and the server's continuous check runs clean.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use walcast::validate::observe::{RealtimeObserver, SubscribeSpec, WsObserver};

use crate::support::{self, TestDb, Walcast};

/// walcast with the test JWT secret and extra arguments.
async fn walcast(db: &TestDb, extra: &[&str]) -> Walcast {
    Walcast::start_with_env(db, extra, &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// Runs `walcast validate` with arguments; returns (exit code, stdout, stderr).
async fn validate(w: &Walcast, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(support::WALCAST)
        .arg("validate")
        .arg("--url")
        .arg(&w.base)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("WALCAST_JWT_SECRET", support::SECRET)
        .output()
        .await
        .expect("run walcast validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON report of a `--json` run.
fn report(stdout: &str, stderr: &str) -> Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("validate --json printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test]
async fn a_clean_run_matches_everything() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let sql = db.client().await;
    let args = [
        "--duration",
        "5s",
        "--generate",
        "10",
        "--database-url",
        &db.url,
        "--json",
    ];
    let run = validate(&w, &args);
    // Meanwhile, changes of every kind straight through SQL.
    let writes = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sql.batch_execute(
            "insert into public.monitoring_events (event_type, source, data)
               select 'sql', 'validate-test', jsonb_build_object('n', g) from generate_series(1, 3) g;
             update public.monitoring_events set data = '{\"n\": 42}'
               where event_type = 'sql' and data = '{\"n\": 1}';
             delete from public.monitoring_events where event_type = 'sql' and data = '{\"n\": 2}';",
        )
        .await
        .expect("sql changes");
    };
    let ((code, stdout, stderr), ()) = tokio::join!(run, writes);
    let r = report(&stdout, &stderr);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(r["ok"], true, "{stdout}");
    assert_eq!(r["generated"], 10);
    let rep = &r["report"];
    // 10 generated + 3 inserted, 1 update, 1 delete.
    assert_eq!(rep["compared"], 15, "{stdout}");
    assert_eq!(rep["matched"], 15, "{stdout}");
    assert_eq!(rep["match_ratio"], 1.0);
    assert_eq!(
        rep["reference_rows"], 12,
        "one of the 13 rows was deleted: {stdout}"
    );
    for key in ["missing", "duplicates", "out_of_order"] {
        assert_eq!(rep[key], json!({"ws": 0, "realtime": 0}), "{key}: {stdout}");
    }
    assert_eq!(rep["mismatch_total"], 0);
    for path in ["ws", "realtime"] {
        assert_eq!(rep["latency_ms"][path]["count"], 15, "{stdout}");
        assert!(rep["latency_ms"][path]["p99"].as_f64().is_some());
    }
}

#[tokio::test]
async fn a_gap_on_one_path_is_reported_as_missing() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let (code, stdout, stderr) = validate(
        &w,
        &[
            "--duration",
            "3s",
            "--generate",
            "9",
            "--debug-drop-every",
            "3",
            "--json",
        ],
    )
    .await;
    let r = report(&stdout, &stderr);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(r["ok"], false);
    assert_eq!(
        r["report"]["missing"],
        json!({"ws": 3, "realtime": 0}),
        "{stdout}"
    );
    assert_eq!(r["report"]["matched"], 6);
    // The table for people says the same.
    let (code, text, _) = validate(
        &w,
        &[
            "--duration",
            "2s",
            "--generate",
            "4",
            "--debug-drop-every",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 1, "{text}");
    let missing = text
        .lines()
        .find(|l| l.starts_with("missing"))
        .unwrap_or_else(|| panic!("no missing row:\n{text}"));
    assert_eq!(
        missing.split_whitespace().collect::<Vec<_>>(),
        ["missing", "2", "0"]
    );
    assert!(text.contains("FAILED"), "{text}");
}

#[tokio::test]
async fn a_quiet_window_says_so() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &[]).await;
    let (code, stdout, stderr) = validate(&w, &["--duration", "1s", "--drain", "0s"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nothing happened during the window"),
        "{stdout}"
    );
    let (code, stdout, stderr) =
        validate(&w, &["--duration", "1s", "--drain", "0s", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(report(&stdout, &stderr)["report"]["compared"], 0);
}

#[tokio::test]
async fn the_server_checks_itself_continuously() {
    let db = support::fresh_db().await;
    let w = walcast(&db, &["--validate-interval", "1s"]).await;
    // One client per path that receives everything: their delivery counts get compared.
    let ws_base = w.ws_url("");
    let key = walcast::auth::mint(support::SECRET, "service_role", Duration::from_secs(600))
        .expect("mint");
    let spec = SubscribeSpec::default();
    let ws = WsObserver::connect(&ws_base, &key, &spec, None)
        .await
        .expect("ws");
    let rt = RealtimeObserver::connect(&ws_base, &key, &spec)
        .await
        .expect("realtime");
    let stop = CancellationToken::new();
    let ws_task = tokio::spawn(ws.run(stop.clone()));
    let rt_task = tokio::spawn(rt.run(stop.clone()));
    let status = || async {
        let (code, body) = support::get_as(&w.url("/v1/status"), Some(&key)).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("status json")
    };
    let mut n = 0;
    let checked = support::wait_until(Duration::from_secs(30), || {
        n += 1;
        let body = json!({"event_type": "cpu", "source": "check", "data": {"n": n}});
        let url = w.url("/v1/events");
        async move {
            let key = walcast::auth::mint(support::SECRET, "service_role", Duration::from_secs(60))
                .expect("mint");
            let (code, _) =
                support::post(&url, "application/json", Some(&key), body.to_string()).await;
            assert_eq!(code, 201);
            let s = status().await;
            s["consistency"]["checked_total"].as_u64().unwrap_or(0) > 0
        }
    })
    .await;
    assert!(
        checked,
        "the checker never checked a change: {}",
        status().await
    );
    // Once writes stop, both clients sit at the same position: their counts compare equal.
    let delivery_ok = support::wait_until(Duration::from_secs(15), || async {
        status().await["consistency"]["delivery"]["state"] == "ok"
    })
    .await;
    let s = status().await;
    assert!(delivery_ok, "delivery counts never compared: {s}");
    let c = &s["consistency"];
    assert_eq!(c["enabled"], true);
    assert_eq!(c["mismatches_total"], 0, "{s}");
    assert_eq!(c["match_ratio"], 1.0);
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    let checked_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("walcast_consistency_checked_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(checked_total > 0, "{metrics}");
    assert!(
        metrics.contains("walcast_consistency_match_ratio 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE walcast_consistency_mismatches_total counter"));
    stop.cancel();
    let ws_seen = ws_task.await.expect("ws task").expect("ws observer");
    let rt_seen = rt_task.await.expect("rt task").expect("rt observer");
    assert_eq!(ws_seen.len(), rt_seen.len());
}
