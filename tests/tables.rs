//! Every table of walcast's publication, on both endpoints: a second table (`public.orders`,
//! bigint key, own-rows policy by `owner`) and a third (`app.notes` in another schema, composite
//! text key, a tenant policy and a column privilege that hides `secret`), each added to the
//! publication while walcast runs, and a table without a primary key (`public.log`). Two users
//! and anon see exactly what their policies allow, service_role sees everything.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::realtime::{In, Rt, pg_join, subscribed};
use crate::support::{self, TestDb, Walcast, ws::WsClient};

/// How long to wait for what should come.
const WAIT: Duration = Duration::from_secs(10);

/// How long to listen for what should not come.
const QUIET: Duration = Duration::from_millis(1500);

/// Seconds since the Unix epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token for `role` with `sub`, valid for ten minutes.
fn user(role: &str, sub: &str) -> String {
    support::sign(json!({"role": role, "sub": sub, "exp": now() + 600, "iat": now()}))
}

/// walcast with the test JWT secret.
async fn walcast(db: &TestDb) -> Walcast {
    Walcast::start_with_env(db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await
}

/// The three tables and their policies (not yet published).
async fn create_tables(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "create function public.jwt_sub() returns text language sql stable as $$ \
               select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' $$;
             create table public.orders (
               id bigint primary key, owner text not null, amount int not null);
             alter table public.orders enable row level security;
             grant select on public.orders to anon, authenticated, service_role;
             create policy orders_own on public.orders for select to authenticated
               using (owner = public.jwt_sub());
             create policy orders_public on public.orders for select to anon
               using (owner = 'public');

             create schema app;
             grant usage on schema app to authenticated, service_role;
             create table app.notes (
               tenant text, slug text, body text, secret text, primary key (tenant, slug));
             alter table app.notes enable row level security;
             grant select (tenant, slug, body) on app.notes to authenticated;
             grant select on app.notes to service_role;
             create policy notes_tenant on app.notes for select to authenticated
               using (tenant = public.jwt_sub());

             create table public.log (msg text not null);
             alter table public.log replica identity full;
             grant select on public.log to anon, authenticated, service_role;",
        )
        .await
        .expect("create tables");
}

/// Adds tables to walcast's publication (while walcast runs).
async fn publish(db: &TestDb, tables: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "alter publication walcast_events add table {tables}"
        ))
        .await
        .expect("alter publication");
}

/// Runs statements in one transaction.
async fn sql(db: &TestDb, statements: &str) {
    db.client()
        .await
        .batch_execute(&format!("begin; {statements}; commit;"))
        .await
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// `table:type:key` of each change object, sorted, where key is the record's (or the old
/// record's) primary key values joined by `/`.
fn summary(changes: &[Value]) -> Vec<String> {
    let key = |d: &Value| {
        let row = match d["type"].as_str() {
            Some("DELETE") => &d["old_record"],
            _ => &d["record"],
        };
        let cols: &[&str] = match d["table"].as_str() {
            Some("notes") => &["tenant", "slug"],
            Some("log") => &["msg"],
            _ => &["id"],
        };
        cols.iter()
            .map(|c| match &row[*c] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                v => v.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut out: Vec<String> = changes
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{}",
                d["table"].as_str().unwrap_or("?"),
                d["type"].as_str().unwrap_or("?"),
                key(d)
            )
        })
        .collect();
    out.sort();
    out
}

/// Joins `topic` with `bindings` and asserts the subscription's system message says ok.
async fn join_ok(rt: &mut Rt, topic: &str, bindings: Value) {
    rt.join(topic, pg_join(bindings)).await;
    let sys = subscribed(rt, topic).await;
    assert_eq!(sys.payload["status"], "ok", "{topic}: {:?}", sys.payload);
}

/// The Realtime endpoint serves each published table under its own policies and column
/// privileges; a table without a primary key reaches roles as Supabase's 400 error object.
#[tokio::test]
async fn realtime_serves_each_table_under_its_own_policies() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    create_tables(&db).await;
    publish(&db, "public.orders, app.notes, public.log").await;

    let orders = json!([{"event": "*", "schema": "public", "table": "orders"}]);
    let notes = json!([{"event": "*", "schema": "app", "table": "notes"}]);
    let log = json!([{"event": "*", "schema": "public", "table": "log"}]);
    let mut service = Rt::connect(&w, &user("service_role", "svc"), true).await;
    let mut u1 = Rt::connect(&w, &user("authenticated", "u1"), true).await;
    let mut u2 = Rt::connect(&w, &user("authenticated", "u2"), false).await;
    let mut anon = Rt::connect(&w, &user("anon", "a"), true).await;
    for rt in [&mut service, &mut u1, &mut u2, &mut anon] {
        join_ok(rt, "realtime:orders", orders.clone()).await;
        join_ok(rt, "realtime:log", log.clone()).await;
    }
    for rt in [&mut service, &mut u1, &mut u2] {
        join_ok(rt, "realtime:notes", notes.clone()).await;
    }
    // anon has no USAGE on schema app: the binding is refused, the channel stays open.
    anon.join("realtime:notes", pg_join(notes.clone())).await;
    let sys = subscribed(&mut anon, "realtime:notes").await;
    assert_eq!(sys.payload["status"], "error");
    let message = sys.payload["message"].as_str().unwrap();
    assert!(
        message.starts_with("Unable to subscribe to changes with given parameters.")
            && message.contains("Exception: role \"anon\" may not read app.notes"),
        "{message}"
    );

    // One transaction over two tables: each row checked under its own table's policy.
    sql(
        &db,
        "insert into public.orders values (1, 'u1', 10), (2, 'u2', 20), (3, 'public', 30);
         insert into app.notes values ('u1', 'a', 'one', 's1'), ('u2', 'b', 'two', 's2')",
    )
    .await;
    let svc = all_changes(&mut service).await;
    assert_eq!(
        by_topic(&svc, "realtime:orders"),
        ["orders:INSERT:1", "orders:INSERT:2", "orders:INSERT:3"]
    );
    // The composite text key; service_role reads `secret`.
    assert_eq!(
        by_topic(&svc, "realtime:notes"),
        ["notes:INSERT:u1/a", "notes:INSERT:u2/b"]
    );
    assert!(
        svc.iter()
            .filter(|(t, _)| t == "realtime:notes")
            .all(|(_, d)| d["record"]["secret"].is_string())
    );
    let mine = all_changes(&mut u1).await;
    assert_eq!(by_topic(&mine, "realtime:orders"), ["orders:INSERT:1"]);
    assert_eq!(by_topic(&mine, "realtime:notes"), ["notes:INSERT:u1/a"]);
    // The column privilege: `secret` is not the user's to see.
    let note = &mine.iter().find(|(t, _)| t == "realtime:notes").unwrap().1;
    assert_eq!(
        note["record"],
        json!({"tenant": "u1", "slug": "a", "body": "one"})
    );
    let names: Vec<&str> = note["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tenant", "slug", "body"]);
    let theirs = all_changes(&mut u2).await;
    assert_eq!(by_topic(&theirs, "realtime:orders"), ["orders:INSERT:2"]);
    assert_eq!(by_topic(&theirs, "realtime:notes"), ["notes:INSERT:u2/b"]);
    let anons = all_changes(&mut anon).await;
    assert_eq!(by_topic(&anons, "realtime:orders"), ["orders:INSERT:3"]);
    assert!(by_topic(&anons, "realtime:notes").is_empty());

    // UPDATE is checked like INSERT; DELETE cannot be (the row is gone): every subscriber of
    // the table gets it, the old row cut to the primary key under row level security.
    sql(
        &db,
        "update public.orders set amount = 11 where id = 1;
         delete from public.orders where id = 2",
    )
    .await;
    let svc = all_changes(&mut service).await;
    assert_eq!(
        by_topic(&svc, "realtime:orders"),
        ["orders:DELETE:2", "orders:UPDATE:1"]
    );
    let mine = all_changes(&mut u1).await;
    assert_eq!(
        by_topic(&mine, "realtime:orders"),
        ["orders:DELETE:2", "orders:UPDATE:1"]
    );
    let delete = &mine.iter().find(|(_, d)| d["type"] == "DELETE").unwrap().1;
    assert_eq!(delete["old_record"], json!({"id": 2}));
    assert_eq!(
        by_topic(&all_changes(&mut u2).await, "realtime:orders"),
        ["orders:DELETE:2"]
    );
    assert_eq!(
        by_topic(&all_changes(&mut anon).await, "realtime:orders"),
        ["orders:DELETE:2"]
    );

    // No primary key: service_role gets the row; any other role gets Supabase's error object
    // (no values), whatever its filters.
    sql(&db, "insert into public.log values ('hello')").await;
    let svc = all_changes(&mut service).await;
    assert_eq!(svc.len(), 1, "{svc:?}");
    assert_eq!(svc[0].1["record"], json!({"msg": "hello"}));
    assert_eq!(svc[0].1["errors"], Value::Null);
    for rt in [&mut u1, &mut u2, &mut anon] {
        let seen = all_changes(rt).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (topic, data) = &seen[0];
        assert_eq!(topic, "realtime:log");
        assert_eq!(
            data["errors"],
            json!(["Error 400: Bad Request, no primary key"])
        );
        assert_eq!(data["record"], json!({}));
        assert_eq!(data["type"], "INSERT");
        assert_eq!(data["table"], "log");
    }
    // Few row check calls: one per round, whatever the number of tables and users.
    let (_, metrics) = support::get(&w.url("/metrics")).await;
    let calls = support::metric(&metrics, "walcast_realtime_rls_calls_total").unwrap_or(0.0);
    // A busy machine may split a round in two; one call per (commit, user, table, row) would be
    // well over 10.
    assert!(
        (2.0..=10.0).contains(&calls),
        "two commits with checked rows, three users, two tables: {calls} calls"
    );
}

/// `table:type:key` of the change objects of one topic, sorted (see [`summary`]).
fn by_topic(frames: &[(String, Value)], topic: &str) -> Vec<String> {
    summary(
        &frames
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, d)| d.clone())
            .collect::<Vec<_>>(),
    )
}

/// Bindings match tables as Supabase's do: schema only is every table of it, table only is
/// schema public, `*` is any, and names are `LIKE` patterns. A role gets only the tables it may
/// read among those a wildcard covers; a binding on an unpublished table is refused.
#[tokio::test]
async fn realtime_bindings_on_schema_table_and_wildcards() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    create_tables(&db).await;
    publish(&db, "public.orders, app.notes").await;
    let mut service = Rt::connect(&w, &user("service_role", "svc"), true).await;
    let mut u1 = Rt::connect(&w, &user("authenticated", "u1"), true).await;
    let mut anon = Rt::connect(&w, &user("anon", "a"), true).await;
    let scopes = [
        ("realtime:schema", json!([{"schema": "app"}])),
        ("realtime:table", json!([{"table": "orders"}])),
        ("realtime:any", json!([{"schema": "*", "table": "*"}])),
        ("realtime:like", json!([{"schema": "%", "table": "note_"}])),
    ];
    for (topic, bindings) in &scopes {
        join_ok(&mut service, topic, bindings.clone()).await;
        join_ok(&mut u1, topic, bindings.clone()).await;
    }
    // anon may read orders but nothing in schema app: `*` is fine, `app` alone is not.
    join_ok(&mut anon, "realtime:any", json!([{"schema": "*"}])).await;
    anon.join("realtime:schema", pg_join(json!([{"schema": "app"}])))
        .await;
    let sys = subscribed(&mut anon, "realtime:schema").await;
    assert_eq!(sys.payload["status"], "error", "{:?}", sys.payload);
    // A table name alone means schema public: there is no public.notes.
    service
        .join("realtime:missing", pg_join(json!([{"table": "notes"}])))
        .await;
    let sys = subscribed(&mut service, "realtime:missing").await;
    assert_eq!(sys.payload["status"], "error");
    assert!(
        sys.payload["message"]
            .as_str()
            .unwrap()
            .contains("Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: notes"),
        "{:?}",
        sys.payload
    );

    sql(
        &db,
        "insert into public.orders values (1, 'u1', 1), (2, 'public', 2);
         insert into app.notes values ('u1', 'a', 'x', 's'), ('u2', 'b', 'y', 's')",
    )
    .await;
    let expect = [
        (
            "realtime:schema",
            vec!["notes:INSERT:u1/a", "notes:INSERT:u2/b"],
            vec!["notes:INSERT:u1/a"],
        ),
        (
            "realtime:table",
            vec!["orders:INSERT:1", "orders:INSERT:2"],
            vec!["orders:INSERT:1"],
        ),
        (
            "realtime:any",
            vec![
                "notes:INSERT:u1/a",
                "notes:INSERT:u2/b",
                "orders:INSERT:1",
                "orders:INSERT:2",
            ],
            vec!["notes:INSERT:u1/a", "orders:INSERT:1"],
        ),
        (
            "realtime:like",
            vec!["notes:INSERT:u1/a", "notes:INSERT:u2/b"],
            vec!["notes:INSERT:u1/a"],
        ),
    ];
    // Frames of all topics arrive interleaved: collect them once per client.
    let svc = all_changes(&mut service).await;
    let mine = all_changes(&mut u1).await;
    for (topic, want_service, want_u1) in expect {
        assert_eq!(by_topic(&svc, topic), want_service, "service {topic}");
        assert_eq!(by_topic(&mine, topic), want_u1, "u1 {topic}");
    }
    let anons = all_changes(&mut anon).await;
    assert_eq!(by_topic(&anons, "realtime:any"), ["orders:INSERT:2"]);
}

/// Every postgres_changes frame (topic, data) until nothing comes for [`QUIET`].
async fn all_changes(rt: &mut Rt) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(m) = rt.next(QUIET).await {
        if let In::Text(f) = m
            && f.event == "postgres_changes"
        {
            out.push((f.topic.clone(), f.payload["data"].clone()));
        }
    }
    out
}

/// A `/ws` client for `token`.
async fn ws(w: &Walcast, token: &str) -> WsClient {
    WsClient::connect(&w.ws_url(&format!("/ws?apikey={token}"))).await
}

/// `table:op:key` of `/ws` event frames, sorted (like [`summary`]).
fn ws_summary(events: &[Value]) -> Vec<String> {
    let data: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({"table": e["table"], "type": e["op"], "record": e["record"],
                   "old_record": e["old_record"]})
        })
        .collect();
    summary(&data)
}

/// Every event frame until nothing comes for [`QUIET`].
async fn ws_events(c: &mut WsClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = c.next_frame(QUIET).await {
        if f["type"] == "event" {
            out.push(f);
        }
    }
    out
}

/// `/ws`: the `table` filter (one name, a list, `schema.*`), by default every table the role
/// may read; a role never gets rows of a table it may not read, a table without a primary key
/// is service_role's only, refusals name the table; a replay follows the same rules.
#[tokio::test]
async fn ws_table_filter_follows_each_tables_policies() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    create_tables(&db).await;
    publish(&db, "public.orders, app.notes, public.log").await;

    let mut service = ws(&w, &user("service_role", "svc")).await;
    service.subscribe("all", json!({})).await;
    let mut u1 = ws(&w, &user("authenticated", "u1")).await;
    u1.subscribe("all", json!({})).await;
    let mut u2_orders = ws(&w, &user("authenticated", "u2")).await;
    u2_orders.subscribe("o", json!({"table": "orders"})).await;
    let mut u2_app = ws(&w, &user("authenticated", "u2")).await;
    u2_app.subscribe("a", json!({"table": ["app.*"]})).await;
    let mut anon = ws(&w, &user("anon", "a")).await;
    anon.subscribe("all", json!({})).await;

    // Refusals answer the subscription and leave the connection open.
    let refusals = [
        (
            json!({"table": "app.notes"}),
            "forbidden",
            "may not read app.notes",
        ),
        (
            json!({"table": "public.log"}),
            "forbidden",
            "no primary key",
        ),
        (
            json!({"table": ["orders", "nope"]}),
            "invalid_filter",
            "public.nope is not in",
        ),
        (
            json!({"table": "x.*"}),
            "invalid_filter",
            "x.* has no table in",
        ),
    ];
    for (fields, code, text) in refusals {
        let mut frame = json!({"type": "subscribe", "id": "r"});
        for (k, v) in fields.as_object().unwrap() {
            frame[k] = v.clone();
        }
        anon.send(frame).await;
        let e = anon.next_non_event(WAIT).await.expect("refusal");
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{e}"
        );
        assert_eq!(e["ref"], "r", "{e}");
        assert!(e["message"].as_str().unwrap().contains(text), "{e}");
    }

    sql(
        &db,
        "insert into public.monitoring_events (event_type, source) values ('cpu', 'h');
         insert into public.orders values (1, 'u1', 1), (2, 'u2', 2), (3, 'public', 3);
         insert into app.notes values ('u1', 'a', 'x', 's'), ('u2', 'b', 'y', 's');
         insert into public.log values ('m')",
    )
    .await;
    let svc = ws_events(&mut service).await;
    let svc_summary = ws_summary(&svc);
    assert_eq!(
        svc_summary
            .iter()
            .filter(|s| !s.starts_with("monitoring_events"))
            .collect::<Vec<_>>(),
        [
            "log:INSERT:m",
            "notes:INSERT:u1/a",
            "notes:INSERT:u2/b",
            "orders:INSERT:1",
            "orders:INSERT:2",
            "orders:INSERT:3"
        ]
    );
    assert_eq!(svc.len(), 7, "and the event row: {svc_summary:?}");
    let mine = ws_events(&mut u1).await;
    let mut want = vec!["notes:INSERT:u1/a".to_owned(), "orders:INSERT:1".to_owned()];
    let events_row = ws_summary(&mine)
        .into_iter()
        .find(|s| s.starts_with("monitoring_events:INSERT"));
    want.extend(events_row);
    want.sort();
    assert_eq!(
        ws_summary(&mine),
        want,
        "u1: own rows, the events table, no log"
    );
    let note = mine.iter().find(|e| e["table"] == "notes").unwrap();
    assert_eq!(
        note["record"],
        json!({"tenant": "u1", "slug": "a", "body": "x"}),
        "the column privilege hides secret"
    );
    assert_eq!(
        ws_summary(&ws_events(&mut u2_orders).await),
        ["orders:INSERT:2"]
    );
    assert_eq!(
        ws_summary(&ws_events(&mut u2_app).await),
        ["notes:INSERT:u2/b"]
    );
    assert_eq!(
        ws_summary(&ws_events(&mut anon).await),
        ["orders:INSERT:3"],
        "anon: the public order; no events row (no policy), no notes, no log"
    );

    // A replay from before those rows applies the same tables and policies.
    let first = svc
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().to_owned())
        .min()
        .unwrap();
    // Just before that commit (the retention window starts right there).
    let before = format!(
        "{:016x}ffffffff",
        u64::from_str_radix(&first[..16], 16).unwrap() - 1
    );
    let mut again = ws(&w, &user("authenticated", "u1")).await;
    again
        .subscribe("o", json!({"table": ["orders", "app.notes"]}))
        .await;
    let (replayed, _) = again.resume(&before, WAIT).await;
    assert_eq!(
        ws_summary(&replayed),
        ["notes:INSERT:u1/a", "orders:INSERT:1"]
    );
}

/// A table added to the publication while walcast runs is served within seconds, on both
/// endpoints, to new subscriptions and to a wildcard binding joined before it existed.
#[tokio::test]
async fn a_table_added_while_running_is_served_within_seconds() {
    let db = support::fresh_db().await;
    let w = walcast(&db).await;
    create_tables(&db).await;
    // Before the table is published: a wildcard binding, a /ws client with no table filter.
    let mut early = Rt::connect(&w, &user("authenticated", "u1"), true).await;
    join_ok(&mut early, "realtime:public", json!([{"schema": "public"}])).await;
    let mut ws_u1 = ws(&w, &user("authenticated", "u1")).await;
    ws_u1.subscribe("all", json!({})).await;
    // Named before it is published: refused like Supabase.
    let mut late = Rt::connect(&w, &user("authenticated", "u1"), true).await;
    late.join(
        "realtime:orders",
        pg_join(json!([{"schema": "public", "table": "orders"}])),
    )
    .await;
    let sys = subscribed(&mut late, "realtime:orders").await;
    assert_eq!(sys.payload["status"], "error");

    let started = Instant::now();
    publish(&db, "public.orders").await;
    join_ok(
        &mut late,
        "realtime:orders2",
        json!([{"schema": "public", "table": "orders"}]),
    )
    .await;
    sql(
        &db,
        "insert into public.orders values (7, 'u1', 1), (8, 'u2', 1)",
    )
    .await;
    let f = late
        .wait_for("the new table's row", |f| {
            f.event == "postgres_changes" && f.payload["data"]["table"] == "orders"
        })
        .await;
    let served = started.elapsed();
    assert_eq!(f.payload["data"]["record"]["id"], 7);
    assert!(served < Duration::from_secs(5), "served after {served:?}");
    let f = early
        .wait_for("the new table's row on a binding joined before", |f| {
            f.event == "postgres_changes" && f.payload["data"]["table"] == "orders"
        })
        .await;
    assert_eq!(f.payload["data"]["record"]["id"], 7);
    let e = ws_u1.events(1, WAIT).await;
    assert_eq!(ws_summary(&e), ["orders:INSERT:7"]);
    // Only the user's own row, on every path.
    late.expect_none("another user's row", |f| {
        f.event == "postgres_changes" && f.payload["data"]["record"]["id"] == 8
    })
    .await;
    ws_u1.expect_no_event(QUIET).await;
}

/// The check function on its own: pairs run in one go, and a pair that fails (a role without
/// the privilege, an unknown role, a key that does not parse) is answered with its SQLSTATE
/// while every pair before and after it keeps its right answer; a table without a primary key
/// is named; the session's role and claims are reset afterwards.
#[tokio::test]
async fn a_failing_pair_is_answered_alone_and_the_others_stay_right() {
    let db = support::fresh_db().await;
    create_tables(&db).await;
    let c = db.client().await;
    c.batch_execute(&format!(
        "create role no_orders_{0} nologin; grant no_orders_{0} to current_user;
         insert into public.orders values (1, 'u1', 1), (2, 'u2', 2), (3, 'u1', 3);",
        db.name
    ))
    .await
    .unwrap();
    let event: String = c
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('e', 't')
             returning jsonb_build_object('id', id)::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let no_orders = format!("no_orders_{}", db.name);
    let rows = c
        .query(
            "select grp, tbl::regclass::text, visible, cardinality(visible_ids), problem
               from walcast.realtime_visible_sets(
                 '{}',
                 array['public.orders', 'public.orders', 'public.orders',
                       'public.monitoring_events', 'public.monitoring_events',
                       'public.log']::regclass[]::oid[],
                 array['{\"id\":1}', '{\"id\":2}', '{\"id\":3}', $1::text,
                       '{\"id\":\"not a uuid\"}', '{}']::jsonb[],
                 array['authenticated', $2::text, 'authenticated', 'no_such_role'],
                 array['{\"sub\":\"u1\"}', '{\"sub\":\"u1\"}', '{\"sub\":\"u2\"}', '{}'],
                 array[1, 2, 3, 4, 1, 2, 3, 4, 1],
                 array['public.orders', 'public.orders', 'public.orders', 'public.orders',
                       'public.monitoring_events', 'public.monitoring_events',
                       'public.monitoring_events', 'public.monitoring_events',
                       'public.log']::regclass[]::oid[],
                 0)",
            &[&event, &no_orders],
        )
        .await
        .unwrap();
    /// Group, table, visible row numbers, count of visible ids, problem.
    type Answer = (i32, String, Option<Vec<i32>>, Option<i32>, Option<String>);
    let got: Vec<Answer> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let denied = Some("42501".to_owned());
    let expected = vec![
        (1, "orders".to_owned(), Some(vec![1, 3]), None, None),
        (2, "orders".to_owned(), None, None, denied.clone()),
        (3, "orders".to_owned(), Some(vec![2]), None, None),
        (4, "orders".to_owned(), None, None, Some("22023".to_owned())),
        // The events table answers with ids; its second key is not a uuid: every pair of
        // that table fails with the cast error.
        (
            1,
            "monitoring_events".to_owned(),
            None,
            None,
            Some("22P02".to_owned()),
        ),
        (
            2,
            "monitoring_events".to_owned(),
            None,
            None,
            Some("22P02".to_owned()),
        ),
        (
            3,
            "monitoring_events".to_owned(),
            None,
            None,
            Some("22P02".to_owned()),
        ),
        (
            4,
            "monitoring_events".to_owned(),
            None,
            None,
            Some("22P02".to_owned()),
        ),
        (
            1,
            "log".to_owned(),
            None,
            None,
            Some("no_primary_key".to_owned()),
        ),
    ];
    assert_eq!(got, expected);
    // With good keys the events table answers each group by id.
    let rows = c
        .query(
            "select grp, cardinality(visible_ids), problem
               from walcast.realtime_visible_sets('{}',
                 array['public.monitoring_events']::regclass[]::oid[], array[$1::text]::jsonb[],
                 array['authenticated', $2::text, 'anon'], array['{}', '{}', '{}'],
                 array[1, 2, 3],
                 array['public.monitoring_events', 'public.monitoring_events',
                       'public.monitoring_events']::regclass[]::oid[],
                 0)",
            &[&event, &no_orders],
        )
        .await
        .unwrap();
    let got: Vec<(i32, Option<i32>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![(1, Some(1), None), (2, None, denied), (3, Some(0), None)]
    );
    let settings = c
        .query_one(
            "select current_setting('role'), current_setting('request.jwt.claims', true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(settings.get::<_, String>(0), "none");
    assert_eq!(settings.get::<_, Option<String>>(1).unwrap_or_default(), "");
}

/// The events table is answered by id: a row of another table with the same uuid key, hidden
/// from the user, stays hidden (and the visible events row stays visible), in either order.
#[tokio::test]
async fn a_uuid_shared_with_the_events_table_does_not_cross_tables() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let (xid, id): (i64, uuid::Uuid) = {
        let r = c
            .query_one(
                "with e as (insert into public.monitoring_events (event_type, source)
                              values ('e', 't') returning id)
                 select txid_current(), id from e",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    c.execute(
        "create table public.profiles (id uuid primary key, owner text not null)",
        &[],
    )
    .await
    .unwrap();
    c.batch_execute(
        "alter table public.profiles enable row level security;
         grant select on public.profiles to authenticated;
         create policy own on public.profiles for select to authenticated
           using (owner = nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub');
         alter publication walcast_events add table public.profiles",
    )
    .await
    .unwrap();
    c.execute(
        "insert into public.profiles values ($1, 'someone-else')",
        &[&id],
    )
    .await
    .unwrap();
    let xid = u32::try_from(xid & 0xFFFF_FFFF).unwrap();
    let pool = walcast::db::pool(&db.url, 4, "test").unwrap();
    let gate = walcast::access::RlsGate::new(pool, "walcast_events");
    let tables = gate.tables().await.unwrap();
    let oid = |name: &str| tables.named("public", name).unwrap().oid;
    let key = |table: u32| walcast::access::RowKey {
        table,
        key: json!({ "id": id }).to_string().into(),
    };
    let group = walcast::realtime::verify_token(
        &walcast::auth::Verifier::new(support::SECRET),
        &user("authenticated", "u1"),
        now(),
    )
    .unwrap()
    .group;
    for (n, rows) in [
        vec![key(oid("monitoring_events")), key(oid("profiles"))],
        vec![key(oid("profiles")), key(oid("monitoring_events"))],
    ]
    .into_iter()
    .enumerate()
    {
        let lsn = walcast::decode::Lsn(0x100 + n as u64);
        let ask = walcast::access::Ask {
            group: &group,
            lsn,
            xid,
            ids: &rows,
        };
        let seen = gate.visible_all(&[ask]).await.pop().unwrap().unwrap();
        let events_first = n == 0;
        assert_eq!(
            seen,
            vec![events_first, !events_first],
            "only the events row is visible (events row first: {events_first})"
        );
    }
}

/// The gate on its own: one call answers rows of two tables for two users, each under its
/// table's policy; asking again costs nothing.
#[tokio::test]
async fn one_gate_call_for_several_tables_and_users() {
    let db = support::fresh_db().await;
    create_tables(&db).await;
    publish(&db, "public.orders, app.notes").await;
    let c = db.client().await;
    let xid: i64 = c
        .query_one(
            "with o as (insert into public.orders values (1, 'u1', 1), (2, 'u2', 2) returning 1),
                  n as (insert into app.notes values ('u1', 'a', '', ''), ('u2', 'a', '', '')
                        returning 1)
             select txid_current() from o, n limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let xid = u32::try_from(xid & 0xFFFF_FFFF).unwrap();
    let pool = walcast::db::pool(&db.url, 4, "test").unwrap();
    let gate = walcast::access::RlsGate::new(pool, "walcast_events");
    let tables = gate.tables().await.unwrap();
    let oid = |schema: &str, name: &str| tables.named(schema, name).unwrap().oid;
    let key = |table: u32, k: Value| walcast::access::RowKey {
        table,
        key: k.to_string().into(),
    };
    let rows = vec![
        key(oid("public", "orders"), json!({"id": 1})),
        key(oid("public", "orders"), json!({"id": 2})),
        key(oid("app", "notes"), json!({"slug": "a", "tenant": "u1"})),
        key(oid("app", "notes"), json!({"slug": "a", "tenant": "u2"})),
    ];
    let group = |sub: &str| {
        walcast::realtime::verify_token(
            &walcast::auth::Verifier::new(support::SECRET),
            &user("authenticated", sub),
            now(),
        )
        .unwrap()
        .group
    };
    let (g1, g2) = (group("u1"), group("u2"));
    let lsn = walcast::decode::Lsn(0x42);
    let asks = [
        walcast::access::Ask {
            group: &g1,
            lsn,
            xid,
            ids: &rows,
        },
        walcast::access::Ask {
            group: &g2,
            lsn,
            xid,
            ids: &rows,
        },
    ];
    let answers = gate.visible_all(&asks).await;
    assert_eq!(gate.queries(), 1, "one call for two users and two tables");
    let seen = |i: usize| -> BTreeSet<usize> {
        let seen = answers[i].as_ref().unwrap();
        assert_eq!(seen.len(), rows.len(), "one answer per row asked");
        (0..rows.len()).filter(|j| seen[*j]).collect()
    };
    assert_eq!(seen(0), BTreeSet::from([0, 2]));
    assert_eq!(seen(1), BTreeSet::from([1, 3]));
    gate.visible_all(&asks).await;
    assert_eq!(gate.queries(), 1, "answered from the cache");
    // What each role may read, per table.
    let u = gate.role_tables("authenticated").await.unwrap();
    assert_eq!(u.get(oid("public", "orders")).unwrap().columns, None);
    assert_eq!(
        u.get(oid("app", "notes")).unwrap().columns.as_deref(),
        Some(&["tenant".to_owned(), "slug".to_owned(), "body".to_owned()][..])
    );
    let a = gate.role_tables("anon").await.unwrap();
    assert!(a.get(oid("public", "orders")).is_some());
    assert!(
        a.get(oid("app", "notes")).is_none(),
        "no USAGE on schema app"
    );
}
