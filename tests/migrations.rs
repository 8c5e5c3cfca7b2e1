//! Tests: migrations (`walcast migrate` on an empty database, idempotence, the schema it builds,
//! UUIDv7 defaults, row level security) and the Supabase copy of the migrations.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support;

/// Creates an empty (unmigrated) database on the shared cluster; returns its URL.
async fn empty_db() -> String {
    // fresh_db() starts the shared cluster and tells us where it is.
    let probe = support::fresh_db().await;
    let name = format!("e_{:016x}", rand::random::<u64>());
    let admin = format!("postgres://postgres@{}:{}/postgres", probe.host, probe.port);
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect admin");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create database");
    format!("postgres://postgres@{}:{}/{name}", probe.host, probe.port)
}

/// A SQL connection to `url`.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Names returned by a one-column text query, sorted.
async fn names(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// The migration files of a directory: name → content.
fn sql_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, std::fs::read_to_string(&path).expect("read sql"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_empty_database_then_up_to_date() {
    let url = empty_db().await;
    let expected = sql_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"));
    assert!(!expected.is_empty(), "no migrations found");

    // First run: applies every migration and names each.
    let (code, out, err) = support::run_cli(&["migrate", "--database-url", &url], &[]);
    assert_eq!(
        code, 0,
        "first migrate failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    for file in expected.keys() {
        let stem = file.trim_end_matches(".sql");
        assert!(
            out.lines().any(|l| l.trim() == format!("applied {stem}")),
            "first migrate did not report `applied {stem}`\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
    assert!(
        out.contains(&format!("{} migration(s) applied", expected.len())),
        "stdout:\n{out}"
    );

    // Second run: nothing to do.
    let (code, out2, err2) = support::run_cli(&["migrate", "--database-url", &url], &[]);
    assert_eq!(
        code, 0,
        "second migrate failed\nstdout:\n{out2}\nstderr:\n{err2}"
    );
    assert!(out2.contains("up to date"), "stdout:\n{out2}");
    assert!(
        !out2.contains("applied"),
        "second migrate applied something\nstdout:\n{out2}"
    );
    let c = connect(&url).await;
    let history: i64 = c
        .query_one("select count(*) from refinery_schema_history", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(
        history as usize,
        expected.len(),
        "refinery_schema_history rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_objects_exist() {
    let db = support::fresh_db().await;
    let c = db.client().await;

    let table: Option<String> = c
        .query_one("select to_regclass('public.monitoring_events')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(table.as_deref(), Some("monitoring_events"));

    let columns = names(
        &c,
        "select column_name::text from information_schema.columns \
         where table_schema = 'public' and table_name = 'monitoring_events'",
    )
    .await;
    assert_eq!(
        columns,
        [
            "created_at",
            "data",
            "event_type",
            "id",
            "metadata",
            "source",
            "timestamp"
        ]
    );

    let indexes = names(
        &c,
        "select indexname::text from pg_indexes \
         where schemaname = 'public' and tablename = 'monitoring_events' \
           and indexname <> 'monitoring_events_pkey'",
    )
    .await;
    assert_eq!(
        indexes,
        [
            "monitoring_events_created_at_idx",
            "monitoring_events_event_type_idx",
            "monitoring_events_source_idx",
            "monitoring_events_timestamp_idx",
        ]
    );

    let checks = names(
        &c,
        "select conname::text from pg_constraint \
         where conrelid = 'public.monitoring_events'::regclass and contype = 'c'",
    )
    .await;
    assert_eq!(
        checks,
        [
            "monitoring_events_data_is_object",
            "monitoring_events_data_size",
            "monitoring_events_event_type_length",
            "monitoring_events_metadata_is_object",
            "monitoring_events_metadata_size",
            "monitoring_events_source_length",
        ]
    );

    let rls: bool = c
        .query_one(
            "select relrowsecurity from pg_class where oid = 'public.monitoring_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rls, "row level security is not enabled");

    let policies: Vec<(String, String, String)> = c
        .query(
            "select policyname::text, cmd::text, array_to_string(roles, ',') from pg_policies \
             where schemaname = 'public' and tablename = 'monitoring_events' order by policyname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        policies,
        [
            (
                "monitoring_events_authenticated_read".to_owned(),
                "SELECT".to_owned(),
                "authenticated".to_owned()
            ),
            (
                "monitoring_events_service_role_all".to_owned(),
                "ALL".to_owned(),
                "service_role".to_owned()
            ),
        ]
    );

    let published = names(
        &c,
        "select schemaname::text || '.' || tablename::text from pg_publication_tables \
         where pubname = 'walcast_events'",
    )
    .await;
    assert_eq!(published, ["public.monitoring_events"]);

    let roles: Vec<(String, bool, bool)> = c
        .query(
            "select rolname::text, rolcanlogin, rolbypassrls from pg_roles \
             where rolname in ('anon', 'authenticated', 'service_role') order by rolname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        roles,
        [
            ("anon".to_owned(), false, false),
            ("authenticated".to_owned(), false, false),
            ("service_role".to_owned(), false, true),
        ],
        "(name, can login, bypasses RLS)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_insert_gets_uuid_v7() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let before_ms = chrono::Utc::now().timestamp_millis();
    let row = c
        .query_one(
            "insert into public.monitoring_events (event_type, source) values ('cpu', 'psql') \
             returning id, data::text, metadata::text",
            &[],
        )
        .await
        .expect("insert without id");
    let after_ms = chrono::Utc::now().timestamp_millis();
    let id: uuid::Uuid = row.get(0);
    assert_eq!(id.get_version_num(), 7, "id {id} is not a UUIDv7");
    assert_eq!(
        id.get_variant(),
        uuid::Variant::RFC4122,
        "id {id} has the wrong variant"
    );
    // The first 48 bits are the Unix time in milliseconds.
    let ms = (id.as_u128() >> 80) as i64;
    assert!(
        ms >= before_ms - 2_000 && ms <= after_ms + 2_000,
        "id {id} carries time {ms}, expected about {before_ms}..{after_ms}"
    );
    assert_eq!(row.get::<_, String>(1), "{}");
    assert_eq!(row.get::<_, String>(2), "{}");

    // The function itself, called directly: time-ordered over successive calls.
    let rows = c
        .query("select walcast.uuid_v7() from generate_series(1, 20)", &[])
        .await
        .expect("uuid_v7()");
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    for id in &ids {
        assert_eq!(id.get_version_num(), 7, "{id}");
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "duplicate ids: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_applies_to_api_roles() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(
        "insert into public.monitoring_events (event_type, source) \
         values ('cpu', 'h1'), ('mem', 'h2')",
    )
    .await
    .expect("insert as owner");

    let count_as = |role: &'static str| {
        let url = db.url.clone();
        async move {
            let c = connect(&url).await;
            c.batch_execute(&format!("set role {role}"))
                .await
                .unwrap_or_else(|e| panic!("set role {role}: {e}"));
            let n: i64 = c
                .query_one("select count(*) from public.monitoring_events", &[])
                .await
                .unwrap_or_else(|e| panic!("select as {role}: {e}"))
                .get(0);
            n
        }
    };
    assert_eq!(count_as("anon").await, 0, "anon must see no rows");
    assert_eq!(
        count_as("authenticated").await,
        2,
        "authenticated reads all rows"
    );
    assert_eq!(
        count_as("service_role").await,
        2,
        "service_role reads all rows"
    );

    // anon and authenticated may not write (RLS has no insert policy for them).
    for role in ["anon", "authenticated"] {
        let c = connect(&db.url).await;
        c.batch_execute(&format!("set role {role}")).await.unwrap();
        let err = c
            .execute(
                "insert into public.monitoring_events (id, event_type, source) \
                 values (gen_random_uuid(), 'x', 'y')",
                &[],
            )
            .await
            .expect_err(&format!("{role} could insert"));
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(
            db_err.code(),
            &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
            "{role}: {db_err}"
        );
        assert!(
            db_err.message().contains("row-level security"),
            "{role}: expected an RLS violation, got: {db_err}"
        );
    }

    // service_role writes, also relying on the uuid_v7() default.
    let c = connect(&db.url).await;
    c.batch_execute("set role service_role").await.unwrap();
    c.execute(
        "insert into public.monitoring_events (event_type, source) values ('x', 'y')",
        &[],
    )
    .await
    .expect("service_role insert");
    assert_eq!(db.count().await, 3);
}

#[test]
fn supabase_migrations_match() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = sql_files(&root.join("migrations"));
    let supabase = sql_files(&root.join("supabase/migrations"));
    // Refinery names files `U<version>__<name>.sql`; the Supabase CLI `<version>_<name>.sql`.
    let renamed: BTreeMap<String, String> = ours
        .iter()
        .map(|(name, sql)| {
            let (version, rest) = name
                .strip_prefix('U')
                .and_then(|n| n.split_once("__"))
                .unwrap_or_else(|| panic!("migration {name} is not named U<version>__<name>.sql"));
            (format!("{version}_{rest}"), sql.clone())
        })
        .collect();
    assert_eq!(
        renamed.keys().collect::<Vec<_>>(),
        supabase.keys().collect::<Vec<_>>(),
        "supabase/migrations/ must hold one file per file of migrations/"
    );
    for (name, sql) in &renamed {
        assert!(
            supabase[name] == *sql,
            "supabase/migrations/{name} differs from its copy in migrations/"
        );
    }
}

/// The partitions of `realtime.messages`.
const PARTITIONS_SQL: &str = "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid \
     where i.inhparent = 'realtime.messages'::regclass";

/// The columns of `realtime.messages` as (name, type, not null, default), in order.
async fn message_columns(
    c: &tokio_postgres::Client,
) -> Vec<(String, String, bool, Option<String>)> {
    c.query(
        "select a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                pg_get_expr(d.adbin, d.adrelid)
         from pg_attribute a
         left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where a.attrelid = 'realtime.messages'::regclass and a.attnum > 0 and not a.attisdropped
         order by a.attnum",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Broadcast from Database on a plain Postgres: `realtime.messages` has the shape of a
/// Supabase project's (columns, defaults, daily range partitions on `inserted_at`, primary key
/// (id, inserted_at), row level security), `realtime.send`/`send_binary`/`broadcast_changes`/
/// `topic` have Supabase's signatures (`private` defaults to true), the table is streamed from
/// `walcast_messages` (inserts only, as the partitioned table), and walcast keeps its daily
/// partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_messages_have_supabase_shapes() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    let some = |s: &str| Some(s.to_owned());
    let col = |n: &str, t: &str, nn: bool, d: Option<String>| (n.to_owned(), t.to_owned(), nn, d);
    assert_eq!(
        message_columns(&c).await,
        [
            col("topic", "text", true, None),
            col("extension", "text", true, None),
            col("payload", "jsonb", false, None),
            col("event", "text", false, None),
            col("private", "boolean", false, some("false")),
            col(
                "updated_at",
                "timestamp without time zone",
                true,
                some("now()")
            ),
            col(
                "inserted_at",
                "timestamp without time zone",
                true,
                some("now()")
            ),
            col("id", "uuid", true, some("gen_random_uuid()")),
            col("binary_payload", "bytea", false, None),
        ]
    );
    let row = c
        .query_one(
            "select pg_get_partkeydef('realtime.messages'::regclass),
                    pg_get_constraintdef(k.oid), cl.relrowsecurity
             from pg_class cl join pg_constraint k on k.conrelid = cl.oid and k.contype = 'p'
             where cl.oid = 'realtime.messages'::regclass",
            &[],
        )
        .await
        .unwrap();
    let (part, pk, rls): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(part, "RANGE (inserted_at)");
    assert_eq!(pk, "PRIMARY KEY (id, inserted_at)");
    assert!(rls, "row level security on realtime.messages");
    let functions = names(
        &c,
        "select p.oid::regprocedure::text || ' -> ' || format_type(p.prorettype, null)
         from pg_proc p where p.pronamespace = 'realtime'::regnamespace",
    )
    .await;
    assert_eq!(
        functions,
        [
            "realtime.broadcast_changes(text,text,text,text,text,record,record,text) -> void",
            "realtime.send(jsonb,text,text,boolean) -> void",
            "realtime.send_binary(bytea,text,text,boolean) -> void",
            "realtime.topic() -> text",
        ]
    );
    let defaults: String = c
        .query_one(
            "select pg_get_function_arguments('realtime.send(jsonb,text,text,boolean)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        defaults,
        "payload jsonb, event text, topic text, private boolean DEFAULT true"
    );
    let publication = c
        .query_one(
            "select pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot from pg_publication
             where pubname = 'walcast_messages'",
            &[],
        )
        .await
        .unwrap();
    let flags: Vec<bool> = (0..5).map(|i| publication.get(i)).collect();
    assert_eq!(flags, [true, false, false, false, true]);
    assert_eq!(
        names(
            &c,
            "select schemaname::text || '.' || tablename::text from pg_publication_tables
             where pubname = 'walcast_messages'"
        )
        .await,
        ["realtime.messages"]
    );
    // Today's partition exists; one older than the retention is dropped, newer ones stay.
    let today: String = c
        .query_one(
            "select 'messages_' || to_char((now() at time zone 'utc')::date, 'YYYY_MM_DD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(names(&c, PARTITIONS_SQL).await.contains(&today));
    c.batch_execute(
        "create table realtime.messages_2020_01_01 partition of realtime.messages
           for values from ('2020-01-01') to ('2020-01-02')",
    )
    .await
    .unwrap();
    let done: Vec<(String, String)> = c
        .query(
            "select action, partition_name from walcast.maintain_realtime_messages(3, 3)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        done,
        [("dropped".to_owned(), "messages_2020_01_01".to_owned())]
    );
    assert!(names(&c, PARTITIONS_SQL).await.contains(&today));
    // realtime.send stores a private broadcast with its id in the payload; a failure is a
    // warning, not an error.
    c.batch_execute("select realtime.send('{\"a\": 1}', 'e', 'room')")
        .await
        .unwrap();
    let row = c
        .query_one(
            "select private, extension, payload ->> 'id' = id::text from realtime.messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2)
        ),
        (true, "broadcast".to_owned(), true)
    );
    c.batch_execute("select realtime.send('[1]', 'e', 'room')")
        .await
        .expect("a failed send is only a warning");
}

/// On a database that already has Supabase's `realtime.messages` (a Supabase project), the
/// migrations keep the table and its partitions as they are: walcast neither creates nor drops
/// partitions of a table it did not create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_realtime_messages_is_left_alone() {
    let url = empty_db().await;
    let c = connect(&url).await;
    c.batch_execute(
        "create schema realtime;
         create table realtime.messages (
           topic text not null, extension text not null, payload jsonb, event text,
           private boolean default false,
           updated_at timestamp not null default now(),
           inserted_at timestamp not null default now(),
           id uuid not null default gen_random_uuid(),
           primary key (id, inserted_at)) partition by range (inserted_at);
         create table realtime.messages_2020_01_01 partition of realtime.messages
           for values from ('2020-01-01') to ('2020-01-02');",
    )
    .await
    .unwrap();
    let before = message_columns(&c).await;
    let (code, out, err) = support::run_cli(&["migrate", "--database-url", &url], &[]);
    assert_eq!(code, 0, "migrate failed\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(message_columns(&c).await, before, "the table is unchanged");
    let done = c
        .query(
            "select * from walcast.maintain_realtime_messages(3, 3)",
            &[],
        )
        .await
        .unwrap();
    assert!(done.is_empty());
    assert_eq!(
        names(
            &c,
            "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
             where i.inhparent = 'realtime.messages'::regclass"
        )
        .await,
        ["messages_2020_01_01"]
    );
    // The functions it lacked are there, and the publication streams it.
    let send: Option<String> = c
        .query_one(
            "select to_regprocedure('realtime.send(jsonb,text,text,boolean)')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(send.is_some());
}
