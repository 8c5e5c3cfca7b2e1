//! Tests: feature flags. SQL and Rust evaluate alike (10,000 subjects × several flags), rollouts
//! are accurate and only grow, every tier has its precedence (environment included), a change
//! made in SQL reaches a running walcast within a second, broadcaster modes guard `/ws`, and
//! every setter, endpoint and CLI command refuses bad input with its stable code.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use walcast::flags::{Evaluation, FlagSet, Source, bucket, store, variant_bucket};

use crate::support::{self, SECRET, TestDb, Walcast};

/// SQL that evaluates one flag for many subjects with the same segments, in order.
const EVAL_MANY: &str = "select e.enabled, e.variant, e.source \
     from unnest($1::text[]) with ordinality as s (subject, ord) \
     cross join lateral walcast.flag_evaluate($2, s.subject, $3) as e \
     order by s.ord";

/// The database's evaluations of `flag` for `subjects`.
async fn sql_eval(
    c: &tokio_postgres::Client,
    flag: &str,
    subjects: &[String],
    segments: &[String],
) -> Vec<Evaluation> {
    c.query(EVAL_MANY, &[&subjects, &flag, &segments])
        .await
        .expect("flag_evaluate")
        .iter()
        .map(|r| Evaluation {
            enabled: r.get(0),
            variant: r.get(1),
            source: serde_json::from_value(Value::String(r.get(2))).expect("source"),
        })
        .collect()
}

/// The flags as walcast loads them.
async fn load(c: &tokio_postgres::Client) -> FlagSet {
    store::load(c).await.expect("load flags")
}

/// Subjects `prefix0..prefixN`.
fn subjects(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Runs SQL, panicking with the statement on failure.
async fn exec(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// A few flags of every shape.
async fn create_test_flags(c: &tokio_postgres::Client) {
    exec(
        c,
        "select walcast.flag_create('quarter', rollout_percentage => 25);
         select walcast.flag_create('fine', rollout_percentage => 12.34);
         select walcast.flag_create('theme', variants => '[{\"name\":\"light\",\"weight\":20},{\"name\":\"dark\",\"weight\":30},{\"name\":\"blue\",\"weight\":50}]',
                                    default_variant => 'light', rollout_percentage => 60);
         select walcast.flag_create('layered', variants => '[{\"name\":\"a\",\"weight\":0},{\"name\":\"b\",\"weight\":100}]',
                                    default_variant => 'a', rollout_percentage => 50);
         select walcast.flag_override('layered', subject => 's7', enabled => false);
         select walcast.flag_override('layered', subject => 's8', variant => 'a');
         select walcast.flag_override('layered', segment => 'beta', variant => 'a');
         select walcast.flag_override('layered', segment => 'alpha', enabled => false);
         select walcast.flag_create('killed', enabled => false, rollout_percentage => 100);
         select walcast.flag_rollout('use_realtime', 33.33);",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_rust_agree_on_10000_subjects() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    create_test_flags(&c).await;
    let set = load(&c).await;
    // Plain ASCII, and non-ASCII to pin the UTF-8 encoding of the hash input.
    let mut subs = subjects("s", 9_000);
    subs.extend((0..1_000).map(|i| format!("usér-ü-ß-{i}-✓")));
    let segment_lists: [Vec<String>; 3] = [
        vec![],
        vec!["beta".into()],
        vec!["x".into(), "alpha".into(), "beta".into()],
    ];
    let flags = [
        "quarter",
        "fine",
        "theme",
        "layered",
        "killed",
        "use_realtime",
        "broadcaster_mode",
        "no_such_flag",
    ];
    // Every subject once per flag, a third of them with each segment list.
    let mut compared = 0;
    for flag in flags {
        for (k, segs) in segment_lists.iter().enumerate() {
            let group: Vec<String> = subs.iter().skip(k).step_by(3).cloned().collect();
            let sql = sql_eval(&c, flag, &group, segs).await;
            assert_eq!(sql.len(), group.len());
            for (s, from_sql) in group.iter().zip(&sql) {
                let from_rust = set.evaluate(flag, s, segs);
                assert_eq!(
                    &from_rust, from_sql,
                    "flag {flag}, subject {s:?}, segments {segs:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, flags.len() * 10_000);

    // The buckets themselves, bit for bit.
    let rows = c
        .query(
            "select walcast.flag_bucket('theme', s), walcast.flag_variant_bucket('theme', s) \
             from unnest($1::text[]) with ordinality as t (s, ord) order by ord",
            &[&subs],
        )
        .await
        .unwrap();
    for (s, r) in subs.iter().zip(&rows) {
        assert_eq!(r.get::<_, i32>(0) as u32, bucket("theme", s), "{s}");
        assert_eq!(r.get::<_, i32>(1) as u32, variant_bucket("theme", s), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_is_accurate_within_one_point() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    exec(&c, "select walcast.flag_create('accuracy')").await;
    let subs = subjects("user-", 100_000);
    for pct in [1.0, 5.0, 12.5, 25.0, 33.33, 50.0, 75.0, 99.0] {
        let threshold = (pct * 100.0_f64).round() as u32;
        let on = subs
            .iter()
            .filter(|s| bucket("accuracy", s) < threshold)
            .count();
        let actual = on as f64 * 100.0 / subs.len() as f64;
        assert!(
            (actual - pct).abs() < 1.0,
            "rollout {pct} % enabled {actual:.3} % of 100,000 subjects"
        );
    }
    // A sample checked in SQL at 25 %.
    exec(&c, "select walcast.flag_rollout('accuracy', 25)").await;
    let set = load(&c).await;
    let sample: Vec<String> = subs.iter().step_by(50).cloned().collect();
    let sql = sql_eval(&c, "accuracy", &sample, &[]).await;
    let mut on = 0;
    for (s, e) in sample.iter().zip(&sql) {
        assert_eq!(e, &set.evaluate::<&str>("accuracy", s, &[]), "{s}");
        assert_eq!(e.enabled, bucket("accuracy", s) < 2500);
        on += usize::from(e.enabled);
    }
    let share = on as f64 * 100.0 / sample.len() as f64;
    assert!((share - 25.0).abs() < 3.0, "sample share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_only_adds_subjects() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let subs = subjects("dash-", 5_000);
    let mut previous: Vec<bool> = vec![false; subs.len()];
    let mut previous_count = 0;
    for pct in [25, 50, 75, 100] {
        exec(
            &c,
            &format!("select walcast.flag_rollout('use_realtime', {pct})"),
        )
        .await;
        let now: Vec<bool> = sql_eval(&c, "use_realtime", &subs, &[])
            .await
            .iter()
            .map(|e| e.enabled)
            .collect();
        for (i, (was, is)) in previous.iter().zip(&now).enumerate() {
            assert!(!was || *is, "{} left the rollout at {pct} %", subs[i]);
        }
        let count = now.iter().filter(|b| **b).count();
        assert!(
            count > previous_count,
            "{pct} %: {count} <= {previous_count}"
        );
        previous_count = count;
        previous = now;
    }
    assert_eq!(previous_count, subs.len(), "100 % reaches everyone");
}

/// Checks that SQL and Rust agree on flag `tiers` for a subject and give `want`.
async fn check_tiers(
    c: &tokio_postgres::Client,
    subject: &str,
    segments: Vec<String>,
    want: (bool, Option<&str>, Source),
) {
    let sql = sql_eval(c, "tiers", &[subject.to_owned()], &segments).await;
    let rust = load(c).await.evaluate("tiers", subject, &segments);
    assert_eq!(sql[0], rust, "{subject} {segments:?}");
    assert_eq!(
        (rust.enabled, rust.variant.as_deref(), rust.source),
        want,
        "{subject} {segments:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tier_takes_precedence_over_the_next() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    exec(
        &c,
        "select walcast.flag_create('tiers', variants => '[{\"name\":\"a\",\"weight\":50},{\"name\":\"b\",\"weight\":50}]',
                                    default_variant => 'a');",
    )
    .await;
    let beta = || vec!["beta".to_owned()];
    // Default: rollout 0.
    check_tiers(&c, "u1", beta(), (false, Some("a"), Source::Default)).await;
    // Rollout beats default.
    exec(&c, "select walcast.flag_rollout('tiers', 100)").await;
    let picked = load(&c).await.get("tiers").unwrap().pick("u1");
    let e = load(&c).await.evaluate("tiers", "u1", &beta());
    assert_eq!(
        (e.enabled, e.variant, e.source),
        (true, picked, Source::Rollout)
    );
    // A segment override beats the rollout.
    exec(
        &c,
        "select walcast.flag_override('tiers', segment => 'beta', enabled => false)",
    )
    .await;
    check_tiers(
        &c,
        "u1",
        beta(),
        (false, Some("a"), Source::SegmentOverride),
    )
    .await;
    // ...only for subjects in that segment.
    assert_eq!(
        load(&c).await.evaluate::<&str>("tiers", "u1", &[]).source,
        Source::Rollout
    );
    // A subject override beats the segment override.
    exec(
        &c,
        "select walcast.flag_override('tiers', subject => 'u1', variant => 'b')",
    )
    .await;
    check_tiers(&c, "u1", beta(), (true, Some("b"), Source::SubjectOverride)).await;
    // The first listed segment with an override wins.
    exec(
        &c,
        "select walcast.flag_override('tiers', segment => 'gamma', variant => 'b')",
    )
    .await;
    check_tiers(
        &c,
        "u2",
        vec!["gamma".into(), "beta".into()],
        (true, Some("b"), Source::SegmentOverride),
    )
    .await;
    check_tiers(
        &c,
        "u2",
        vec!["beta".into(), "gamma".into()],
        (false, Some("a"), Source::SegmentOverride),
    )
    .await;
    // Clearing the subject override falls back to the segment.
    exec(
        &c,
        "select walcast.flag_clear_override('tiers', subject => 'u1')",
    )
    .await;
    check_tiers(
        &c,
        "u1",
        beta(),
        (false, Some("a"), Source::SegmentOverride),
    )
    .await;
    // The kill switch beats everything.
    exec(&c, "select walcast.flag_override('tiers', subject => 'u1')").await;
    exec(&c, "select walcast.flag_set('tiers', enabled => false)").await;
    check_tiers(&c, "u1", beta(), (false, Some("a"), Source::Disabled)).await;
}

/// An HTTP request to walcast; returns (status, JSON body).
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .expect("request");
    let resp = client.request(req).await.expect("http request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

/// `GET /v1/flags/evaluate?{query}`.
async fn evaluate(w: &Walcast, query: &str) -> Value {
    let (status, v) = call(
        "GET",
        &w.url(&format!("/v1/flags/evaluate?{query}")),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls `GET /v1/flags/evaluate?{query}` until `pred` holds; returns how long that took.
async fn wait_for(
    w: &Walcast,
    query: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let v = evaluate(w, query).await;
        if pred(&v) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not seen within {limit:?}; last answer: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_change_reaches_walcast_within_a_second() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let v = evaluate(&w, "subject=user-42").await;
    assert_eq!(v["mode"], "dual", "{v}");
    assert_eq!(v["paths"], json!(["direct", "realtime"]), "{v}");
    assert_eq!(v["endpoints"]["direct"], "/ws");
    assert_eq!(v["flags"]["use_realtime"]["enabled"], false, "{v}");
    assert_eq!(v["flags"]["use_realtime"]["source"], "default", "{v}");

    // As an operator would in psql, on a connection of its own.
    let c = db.client().await;
    exec(
        &c,
        "select walcast.flag_override('use_realtime', subject => 'user-42')",
    )
    .await;
    let took = wait_for(&w, "subject=user-42", Duration::from_secs(1), |v| {
        v["flags"]["use_realtime"]["enabled"] == true
    })
    .await;
    let v = evaluate(&w, "subject=user-42").await;
    assert_eq!(v["flags"]["use_realtime"]["source"], "subject_override");
    assert_eq!(v["paths"], json!(["realtime", "direct"]), "{v}");
    eprintln!("change seen after {took:?}");

    // A rollout and a new flag, too.
    exec(
        &c,
        "select walcast.flag_rollout('use_realtime', 100); select walcast.flag_create('late_flag', rollout_percentage => 100)",
    )
    .await;
    wait_for(&w, "subject=someone", Duration::from_secs(1), |v| {
        v["flags"]["use_realtime"]["source"] == "rollout"
            && v["flags"]["late_flag"]["enabled"] == true
    })
    .await;
}

/// Connects to /ws expecting a refusal; returns (status, JSON body).
async fn refused_ws(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("{url} accepted a connection"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Err(e) => panic!("unexpected error from {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_switch_applies_to_new_connections() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let mut open = support::ws::WsClient::connect(&w.ws_url("/ws")).await;

    let c = db.client().await;
    exec(
        &c,
        "select walcast.flag_set('broadcaster_mode', default_variant => 'realtime')",
    )
    .await;
    wait_for(&w, "subject=dash", Duration::from_secs(1), |v| {
        v["mode"] == "realtime"
    })
    .await;
    let v = evaluate(&w, "subject=dash").await;
    assert_eq!(v["paths"], json!(["realtime"]), "{v}");

    let (status, body) = refused_ws(&w.ws_url("/ws")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "mode_disabled", "{body}");
    assert_eq!(body["error"]["mode"], "realtime", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/realtime/v1/websocket"),
        "{body}"
    );

    // The connection opened before the switch stays and works.
    open.subscribe("all", json!({})).await;

    // Back to direct: /ws accepts again.
    exec(
        &c,
        "select walcast.flag_set('broadcaster_mode', default_variant => 'direct')",
    )
    .await;
    wait_for(&w, "subject=dash", Duration::from_secs(1), |v| {
        v["mode"] == "direct"
    })
    .await;
    let _again = support::ws::WsClient::connect(&w.ws_url("/ws")).await;
    // ... and the Realtime endpoint is refused before any token check.
    let (status, body) = refused_ws(&w.ws_url("/realtime/v1/websocket?vsn=2.0.0")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "mode_disabled", "{body}");

    // A per-node override beats the default variant.
    exec(
        &c,
        &format!(
            "select walcast.flag_override('broadcaster_mode', subject => '{}', variant => 'realtime')",
            db.node()
        ),
    )
    .await;
    wait_for(&w, "subject=dash", Duration::from_secs(1), |v| {
        v["mode"] == "realtime"
    })
    .await;
    assert_eq!(refused_ws(&w.ws_url("/ws")).await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_beats_the_database() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    exec(
        &c,
        "select walcast.flag_override('use_realtime', subject => 'u1', enabled => false);
         select walcast.flag_create('theme', variants => '[{\"name\":\"light\",\"weight\":100},{\"name\":\"dark\",\"weight\":0}]');",
    )
    .await;
    let w = Walcast::start_with_env(
        &db,
        &[],
        &[
            ("MONITORING_USE_ADAPTER", "true"),
            ("WALCAST_FLAG_THEME", "dark"),
            ("WALCAST_FLAG_FROM_ENV_ONLY", "on"),
        ],
    )
    .await;
    let v = evaluate(&w, "subject=u1").await;
    assert_eq!(v["mode"], "realtime", "{v}");
    assert_eq!(v["paths"], json!(["realtime"]), "{v}");
    assert_eq!(
        v["flags"]["use_realtime"],
        json!({"enabled": true, "variant": null, "source": "env"})
    );
    assert_eq!(
        v["flags"]["theme"],
        json!({"enabled": true, "variant": "dark", "source": "env"})
    );
    assert_eq!(v["flags"]["from_env_only"]["enabled"], true, "{v}");
    assert_eq!(v["flags"]["broadcaster_mode"]["source"], "env", "{v}");
    let (status, body) = refused_ws(&w.ws_url("/ws")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("mode_disabled"))
    );

    // The database cannot undo it.
    exec(
        &c,
        "select walcast.flag_set('broadcaster_mode', default_variant => 'direct')",
    )
    .await;
    exec(
        &c,
        "select walcast.flag_create('marker', rollout_percentage => 100)",
    )
    .await;
    wait_for(&w, "subject=u1", Duration::from_secs(1), |v| {
        v["flags"]["marker"]["enabled"] == true
    })
    .await;
    assert_eq!(evaluate(&w, "subject=u1").await["mode"], "realtime");

    // A bad value stops walcast before it starts, exit code 2, naming the variable.
    for (var, value) in [
        ("MONITORING_USE_ADAPTER", "maybe"),
        ("MONITORING_ADAPTER_TYPE", "kafka"),
        ("WALCAST_FLAG_BROADCASTER_MODE", "sideways"),
    ] {
        let (code, _, err) = support::run_cli(
            &[
                "serve",
                "--database-url",
                &db.url,
                "--listen",
                "127.0.0.1:0",
                "--insecure-no-auth",
            ],
            &[(var, value)],
        );
        assert_eq!(code, 2, "{var}={value}: {err}");
        assert!(err.contains(&format!("invalid {var}")), "{err}");
    }
}

/// The SQLSTATE, message and hint of a failing statement.
async fn sql_error(c: &tokio_postgres::Client, sql: &str) -> (String, String, Option<String>) {
    let e = c
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} succeeded"));
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.hint().map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setter_refuses_bad_input() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    exec(&c, "set role service_role").await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "select walcast.flag_create('Bad')",
            "WF002",
            "invalid flag name 'Bad'",
        ),
        (
            "select walcast.flag_create('evaluate')",
            "WF002",
            "invalid flag name",
        ),
        (
            "select walcast.flag_create('use_realtime')",
            "WF007",
            "flag 'use_realtime' already exists",
        ),
        (
            "select walcast.flag_create('x', variants => '[{\"name\":\"a\",\"weight\":60}]')",
            "WF004",
            "variant weights sum to 60, not 100",
        ),
        (
            "select walcast.flag_create('x', variants => '[{\"name\":\"a\",\"weight\":50.5},{\"name\":\"b\",\"weight\":49.5}]')",
            "WF004",
            "whole numbers",
        ),
        (
            "select walcast.flag_create('x', variants => '{}')",
            "WF004",
            "must be a JSON array",
        ),
        (
            "select walcast.flag_create('x', variants => '[{\"name\":\"on\",\"weight\":100}]')",
            "WF004",
            "invalid variant name 'on'",
        ),
        (
            "select walcast.flag_create('x', variants => '[{\"name\":\"a\",\"weight\":100}]', default_variant => 'b')",
            "WF005",
            "flag 'x' has no variant 'b'",
        ),
        (
            "select walcast.flag_create('x', rollout_percentage => 101)",
            "WF003",
            "between 0 and 100, got 101",
        ),
        (
            "select walcast.flag_create('x', who => '')",
            "WF008",
            "who must name",
        ),
        (
            "select walcast.flag_create('x', description => null)",
            "WF008",
            "description",
        ),
        (
            "select walcast.flag_set('nope', enabled => true)",
            "WF001",
            "unknown flag 'nope'",
        ),
        (
            "select walcast.flag_set('use_realtime')",
            "WF008",
            "nothing to change for flag 'use_realtime'",
        ),
        (
            "select walcast.flag_set('broadcaster_mode', default_variant => 'sideways')",
            "WF005",
            "flag 'broadcaster_mode' has no variant 'sideways'",
        ),
        (
            "select walcast.flag_set('broadcaster_mode', variants => '[{\"name\":\"dual\",\"weight\":50},{\"name\":\"dual\",\"weight\":50}]')",
            "WF004",
            "variant 'dual' appears twice",
        ),
        (
            "select walcast.flag_set('broadcaster_mode', variants => '[{\"name\":\"direct\",\"weight\":100}]')",
            "WF005",
            "default variant",
        ),
        (
            "select walcast.flag_rollout('use_realtime', -1)",
            "WF003",
            "between 0 and 100, got -1",
        ),
        (
            "select walcast.flag_rollout('use_realtime', null)",
            "WF003",
            "got null",
        ),
        (
            "select walcast.flag_rollout('use_realtime', 12.345)",
            "WF003",
            "more than two decimals",
        ),
        (
            "select walcast.flag_rollout('nope', 5)",
            "WF001",
            "unknown flag 'nope'",
        ),
        (
            "select walcast.flag_override('use_realtime')",
            "WF006",
            "exactly one of subject and segment",
        ),
        (
            "select walcast.flag_override('use_realtime', subject => 'u', segment => 's')",
            "WF006",
            "exactly one of subject and segment",
        ),
        (
            "select walcast.flag_override('use_realtime', subject => '')",
            "WF006",
            "1-256 characters",
        ),
        (
            "select walcast.flag_override('use_realtime', subject => 'u', variant => 'x')",
            "WF005",
            "has no variants",
        ),
        (
            "select walcast.flag_override('broadcaster_mode', subject => 'u', enabled => false, variant => 'direct')",
            "WF006",
            "cannot pick a variant",
        ),
        (
            "select walcast.flag_override('nope', subject => 'u')",
            "WF001",
            "unknown flag 'nope'",
        ),
        (
            "select walcast.flag_clear_override('use_realtime')",
            "WF006",
            "exactly one of subject and segment",
        ),
        (
            "select walcast.flag_clear_override('nope', subject => 'u')",
            "WF001",
            "unknown flag 'nope'",
        ),
        (
            "select walcast.flag_delete('nope')",
            "WF001",
            "unknown flag 'nope'",
        ),
    ];
    for (sql, code, message) in cases {
        let (got_code, got_message, hint) = sql_error(&c, sql).await;
        assert_eq!(&got_code, code, "{sql}: {got_message}");
        assert!(
            got_message.contains(message),
            "{sql}: {got_message:?} lacks {message:?}"
        );
        assert!(hint.is_some_and(|h| !h.is_empty()), "{sql}: no hint");
    }

    // An override whose variant a new variant list lacks blocks the change.
    exec(
        &c,
        "select walcast.flag_override('broadcaster_mode', subject => 'n1', variant => 'direct')",
    )
    .await;
    let (code, message, _) = sql_error(
        &c,
        "select walcast.flag_set('broadcaster_mode', variants => '[{\"name\":\"dual\",\"weight\":100}]', default_variant => 'dual')",
    )
    .await;
    assert_eq!(code, "WF005");
    assert!(message.contains("subject 'n1'"), "{message}");

    // Tables are read-only to service_role; history is append-only even for the owner.
    let (code, _, _) = sql_error(&c, "insert into walcast.flags (name) values ('sneaky')").await;
    assert_eq!(code, "42501");
    let (code, _, _) = sql_error(&c, "update walcast.flag_history set who = 'x'").await;
    assert_eq!(code, "42501");
    exec(&c, "reset role").await;
    let (code, message, _) = sql_error(&c, "delete from walcast.flag_history").await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("WF009", "walcast.flag_history is append-only")
    );
    let (code, _, _) = sql_error(&c, "truncate walcast.flag_history").await;
    assert_eq!(code, "WF009");

    // History: every change with who, old and new; who defaults to the caller's role.
    exec(&c, "set role service_role").await;
    exec(
        &c,
        "select walcast.flag_rollout('use_realtime', 25);
         select walcast.flag_rollout('use_realtime', 50, who => 'alice');
         select walcast.flag_clear_override('use_realtime', subject => 'nobody')",
    )
    .await;
    let rows = c
        .query(
            "select action, who, old ->> 'rollout_percentage', new ->> 'rollout_percentage' \
             from walcast.flag_history where flag = 'use_realtime' order by id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        [
            (
                "create".into(),
                "migration".into(),
                None,
                Some("0.00".into())
            ),
            (
                "rollout".into(),
                "service_role".into(),
                Some("0.00".into()),
                Some("25.00".into())
            ),
            (
                "rollout".into(),
                "alice".into(),
                Some("25.00".into()),
                Some("50.00".into())
            ),
        ],
        "a cleared override that did not exist writes no history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_refuses_bad_input() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--jwt-secret", SECRET]).await;
    let service = walcast::auth::mint(SECRET, "service_role", Duration::from_secs(600)).unwrap();
    let anon = walcast::auth::mint(SECRET, "anon", Duration::from_secs(600)).unwrap();
    let s = Some(service.as_str());
    let u = |p: &str| w.url(p);

    // Authorization on every management endpoint.
    let management: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/v1/flags", None),
        ("POST", "/v1/flags", Some(r#"{"name":"x"}"#)),
        ("GET", "/v1/flags/use_realtime", None),
        (
            "PATCH",
            "/v1/flags/use_realtime",
            Some(r#"{"enabled":true}"#),
        ),
        ("DELETE", "/v1/flags/use_realtime", None),
        (
            "PUT",
            "/v1/flags/use_realtime/rollout",
            Some(r#"{"percentage":5}"#),
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/overrides",
            Some(r#"{"subject":"u"}"#),
        ),
        ("DELETE", "/v1/flags/use_realtime/overrides?subject=u", None),
        ("GET", "/v1/flags/use_realtime/history", None),
    ];
    for (method, path, body) in management {
        let (status, v) = call(method, &u(path), None, *body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}: {v}"
        );
        let (status, v) = call(method, &u(path), Some(&anon), *body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}: {v}"
        );
    }

    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "POST",
            "/v1/flags",
            Some("{not json"),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"x","bogus":1}"#),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"Bad"}"#),
            422,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"use_realtime"}"#),
            409,
            "flag_exists",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"t","variants":[{"name":"a","weight":10}]}"#),
            422,
            "invalid_variants",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"t","rollout_percentage":"x"}"#),
            422,
            "invalid_percentage",
        ),
        (
            "POST",
            "/v1/flags",
            Some(r#"{"name":"t","rollout_percentage":120}"#),
            422,
            "invalid_percentage",
        ),
        ("GET", "/v1/flags/nope", None, 404, "unknown_flag"),
        (
            "PATCH",
            "/v1/flags/nope",
            Some(r#"{"enabled":true}"#),
            404,
            "unknown_flag",
        ),
        (
            "PATCH",
            "/v1/flags/use_realtime",
            Some("{}"),
            422,
            "invalid_argument",
        ),
        (
            "PATCH",
            "/v1/flags/use_realtime",
            Some("5"),
            422,
            "invalid_request",
        ),
        (
            "PATCH",
            "/v1/flags/broadcaster_mode",
            Some(r#"{"default_variant":"zz"}"#),
            422,
            "unknown_variant",
        ),
        ("DELETE", "/v1/flags/nope", None, 404, "unknown_flag"),
        (
            "PUT",
            "/v1/flags/use_realtime/rollout",
            Some(r#"{"percentage":150}"#),
            422,
            "invalid_percentage",
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/rollout",
            Some(r#"{"percentage":"50"}"#),
            422,
            "invalid_percentage",
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/rollout",
            Some(r#"{"percentage":1.234}"#),
            422,
            "invalid_percentage",
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/rollout",
            Some("{}"),
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/flags/nope/rollout",
            Some(r#"{"percentage":5}"#),
            404,
            "unknown_flag",
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/overrides",
            Some("{}"),
            422,
            "invalid_override",
        ),
        (
            "PUT",
            "/v1/flags/use_realtime/overrides",
            Some(r#"{"subject":"u","segment":"s"}"#),
            422,
            "invalid_override",
        ),
        (
            "PUT",
            "/v1/flags/broadcaster_mode/overrides",
            Some(r#"{"subject":"u","variant":"zz"}"#),
            422,
            "unknown_variant",
        ),
        (
            "PUT",
            "/v1/flags/nope/overrides",
            Some(r#"{"subject":"u"}"#),
            404,
            "unknown_flag",
        ),
        (
            "DELETE",
            "/v1/flags/use_realtime/overrides?bogus=1",
            None,
            400,
            "invalid_request",
        ),
        (
            "DELETE",
            "/v1/flags/use_realtime/overrides",
            None,
            422,
            "invalid_override",
        ),
        (
            "DELETE",
            "/v1/flags/nope/overrides?subject=u",
            None,
            404,
            "unknown_flag",
        ),
        (
            "GET",
            "/v1/flags/use_realtime/history?limit=0",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/flags/use_realtime/history?limit=x",
            None,
            400,
            "invalid_request",
        ),
        ("GET", "/v1/flags/nope/history", None, 404, "unknown_flag"),
        ("GET", "/v1/flags/evaluate", None, 400, "invalid_request"),
        (
            "GET",
            "/v1/flags/evaluate?subject=",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/flags/evaluate?subject=u&colour=red",
            None,
            400,
            "invalid_request",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, v) = call(method, &u(path), s, *body).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path} {body:?}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let long = "x".repeat(300);
    let (status, v) = call(
        "GET",
        &u(&format!("/v1/flags/evaluate?subject={long}")),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let many: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    let (status, _) = call(
        "GET",
        &u(&format!(
            "/v1/flags/evaluate?subject=u&segments={}",
            many.join(",")
        )),
        None,
        None,
    )
    .await;
    assert_eq!(status, 400);

    // The happy paths, end to end.
    let (status, v) = call("GET", &u("/v1/flags"), s, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broadcaster_mode", "use_realtime"]);
    let (status, v) = call(
        "POST",
        &u("/v1/flags"),
        s,
        Some(r#"{"name":"theme","variants":[{"name":"light","weight":50},{"name":"dark","weight":50}],"rollout_percentage":12.5,"description":"colours"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (
            v["default_variant"].as_str(),
            v["rollout_percentage"].as_f64()
        ),
        (Some("light"), Some(12.5))
    );
    let (status, v) = call(
        "PUT",
        &u("/v1/flags/theme/rollout"),
        s,
        Some(r#"{"percentage":50}"#),
    )
    .await;
    assert_eq!(
        (status, v["rollout_percentage"].as_f64()),
        (200, Some(50.0)),
        "{v}"
    );
    let (status, v) = call(
        "PUT",
        &u("/v1/flags/theme/overrides"),
        s,
        Some(r#"{"segment":"beta","variant":"dark"}"#),
    )
    .await;
    assert_eq!(
        (status, v["overrides"][0]["key"].as_str()),
        (200, Some("beta")),
        "{v}"
    );
    let (status, v) = call(
        "PATCH",
        &u("/v1/flags/theme"),
        s,
        Some(r#"{"description":"new colours","who":"bob"}"#),
    )
    .await;
    assert_eq!(
        (status, v["description"].as_str(), v["updated_by"].as_str()),
        (200, Some("new colours"), Some("bob"))
    );
    let (status, v) = call("GET", &u("/v1/flags/theme"), s, None).await;
    assert_eq!((status, v["name"].as_str()), (200, Some("theme")));
    wait_for(
        &w,
        "subject=anyone&segments=beta",
        Duration::from_secs(1),
        |v| v["flags"]["theme"]["source"] == "segment_override",
    )
    .await;
    let (status, v) = call(
        "GET",
        &u("/v1/flags/evaluate?subject=anyone&segments=beta"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["flags"]["theme"],
        json!({"enabled": true, "variant": "dark", "source": "segment_override"})
    );
    let (status, v) = call(
        "DELETE",
        &u("/v1/flags/theme/overrides?segment=beta"),
        s,
        None,
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"cleared": true})));
    let (status, v) = call("GET", &u("/v1/flags/theme/history?limit=10"), s, None).await;
    assert_eq!(status, 200);
    let actions: Vec<(&str, &str)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["action"].as_str().unwrap(), h["who"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("clear_override", "http:service_role"),
            ("set", "bob"),
            ("override", "http:service_role"),
            ("rollout", "http:service_role"),
            ("create", "http:service_role"),
        ]
    );
    let (status, v) = call("DELETE", &u("/v1/flags/theme"), s, None).await;
    assert_eq!((status, &v), (200, &json!({"deleted": "theme"})));
    let (status, v) = call("GET", &u("/v1/flags/theme/history?limit=1"), s, None).await;
    assert_eq!(
        (status, v["history"][0]["action"].as_str()),
        (200, Some("delete")),
        "history outlives the flag"
    );
}

/// `walcast flags ...` against a database.
fn flags_cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["flags"];
    all.extend_from_slice(args);
    support::run_cli(&all, &[("DATABASE_URL", db.url.as_str())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_flags_through_the_sql_functions() {
    for sub in [
        "list", "create", "set", "rollout", "override", "eval", "history", "delete",
    ] {
        let (code, out, err) = support::run_cli(&["flags", sub, "--help"], &[]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(
            out.contains("Example"),
            "flags {sub} --help has no example:\n{out}"
        );
    }
    let db = support::fresh_db().await;

    let (code, out, err) = flags_cli(&db, &["rollout", "use_realtime", "25", "--who", "carol"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rollout 25 %"), "{out}");
    let (code, out, err) = flags_cli(
        &db,
        &[
            "create",
            "theme",
            "--variants",
            "light=50,dark=50",
            "--rollout",
            "100",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("light=50,dark=50"), "{out}");
    let (code, _, err) = flags_cli(
        &db,
        &["override", "theme", "--subject", "u1", "--variant", "dark"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = flags_cli(
        &db,
        &["set", "broadcaster_mode", "--default-variant", "direct"],
    );
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = flags_cli(&db, &["eval", "u1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("eval --json");
    assert_eq!(
        v["theme"],
        json!({"enabled": true, "variant": "dark", "source": "subject_override"})
    );
    assert_eq!(v["broadcaster_mode"]["variant"], "direct");
    let (code, out, _) = flags_cli(&db, &["eval", "u1"]);
    assert_eq!(code, 0);
    assert!(out.contains("subject_override"), "{out}");

    let (code, out, err) = flags_cli(&db, &["list"]);
    assert_eq!(code, 0, "{err}");
    for name in ["broadcaster_mode", "theme", "use_realtime"] {
        assert!(out.contains(name), "{out}");
    }
    let (code, out, _) = flags_cli(&db, &["history", "use_realtime", "--json"]);
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["action"].as_str(), first["who"].as_str()),
        (Some("rollout"), Some("carol"))
    );
    let (code, out, _) = flags_cli(&db, &["override", "theme", "--subject", "u1", "--clear"]);
    assert_eq!(code, 0);
    assert!(out.contains("cleared"), "{out}");

    // Refusals: the database's message and hint, exit code 1.
    let (code, _, err) = flags_cli(&db, &["rollout", "use_realtime", "150"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("rollout percentage must be between 0 and 100, got 150"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let (code, _, err) = flags_cli(&db, &["set", "nope", "--enable"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown flag 'nope'"), "{err}");
    let (code, _, err) = flags_cli(&db, &["create", "t", "--variants", "a=10"]);
    assert_eq!(code, 1);
    assert!(err.contains("sum to 10"), "{err}");
    // Usage errors: exit code 2.
    let (code, _, _) = flags_cli(&db, &["override", "theme"]);
    assert_eq!(code, 2, "override needs --subject or --segment");
    let (code, _, _) = flags_cli(&db, &["set", "theme", "--enable", "--disable"]);
    assert_eq!(code, 2);
    let (code, _, _) = flags_cli(&db, &["delete", "theme"]);
    assert_eq!(code, 0);
}
