//! The private cluster: binaries, versions, users, quoting, ports, errors.

use super::*;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A scratch directory under /tmp removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    /// Creates a fresh, uniquely named directory.
    fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/tmp/walcast-cl-{tag}-{}-{nanos}-{n}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Cluster options with fsync off and a data directory inside the scratch dir.
    fn options(&self) -> ClusterOptions {
        let mut opts = ClusterOptions::new(self.0.join("data"));
        opts.fsync = false;
        opts
    }
}

impl Drop for Scratch {
    /// Removes the directory and everything in it.
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {error}", self.0.display());
        }
    }
}

/// Reads one `SHOW` setting.
async fn show(client: &Client, name: &str) -> String {
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("show setting");
    row.get(0)
}

/// `pg_ctl --version` output yields the major version.
#[test]
fn parses_versions() {
    assert_eq!(
        parse_major_version("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
        Some(15)
    );
    assert_eq!(parse_major_version("pg_ctl (PostgreSQL) 17beta1"), Some(17));
    assert_eq!(parse_major_version("pg_ctl 9.6"), None);
}

/// passwd lines yield uid and gid for the right user only.
#[test]
fn parses_passwd_lines() {
    let line = "postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash";
    assert_eq!(parse_passwd_line(line, "postgres"), Some((101, 104)));
    assert_eq!(parse_passwd_line(line, "root"), None);
}

/// Configuration values, identifiers and setting names are quoted or rejected.
#[test]
fn quotes_values_and_identifiers() {
    assert_eq!(quote_conf_value(r"it's a\b"), r"'it''s a\\b'");
    assert_eq!(quote_ident(r#"my "db""#), r#""my ""db""""#);
    assert!(render_extra_settings(&[("bad name".into(), "1".into())]).is_err());
    assert!(render_extra_settings(&[("work_mem".into(), "1\n2".into())]).is_err());
    assert_eq!(
        render_extra_settings(&[("auto_explain.log_min_duration".into(), "10ms".into())])
            .expect("valid setting"),
        "auto_explain.log_min_duration = '10ms'\n"
    );
}

/// Log lines about a taken port are recognized.
#[test]
fn detects_port_conflicts() {
    assert!(is_port_conflict(
        "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
    ));
    assert!(is_port_conflict(
        "FATAL:  lock file \"/tmp/.s.PGSQL.5432.lock\" already exists"
    ));
    assert!(!is_port_conflict(
        "FATAL:  data directory has wrong ownership"
    ));
}

/// This machine has PostgreSQL >= 15 binaries that the search finds.
#[test]
fn finds_binaries() {
    let dir = Cluster::find_bin_dir().expect("postgres binaries");
    assert!(check_bin_dir(&dir).expect("usable bin dir") >= MIN_MAJOR);
}

/// Error messages tell the user what to do.
#[test]
fn error_messages_say_how_to_fix() {
    let error = ClusterError::BinariesNotFound {
        searched: "x".into(),
    };
    assert!(error.to_string().contains("set WALCAST_PG_BIN"));
}

/// Start, write, crash-stop, restart on the same port, stop, reuse the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle() {
    let scratch = Scratch::new("life");
    let cluster = Cluster::start(scratch.options())
        .await
        .expect("start cluster");
    assert!(cluster.is_running());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    let port = cluster.port();
    assert_eq!(
        cluster.url("db"),
        format!("postgres://postgres@127.0.0.1:{port}/db")
    );

    let db = "walcast \"test\"";
    cluster.create_database(db).await.expect("create database");
    cluster
        .create_database(db)
        .await
        .expect("create database again");
    let client = cluster.connect(db).await.expect("connect");
    assert_eq!(show(&client, "wal_level").await, "logical");
    assert_eq!(show(&client, "fsync").await, "off");
    assert_eq!(show(&client, "synchronous_commit").await, "on");
    assert_eq!(show(&client, "max_replication_slots").await, "64");
    client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept');")
        .await
        .expect("insert row");
    drop(client);

    cluster
        .stop(StopMode::Immediate)
        .await
        .expect("stop immediate");
    assert!(!cluster.is_running());
    cluster.restart().await.expect("restart");
    assert_eq!(cluster.port(), port);
    let client = cluster.connect(db).await.expect("reconnect");
    let row = client
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "kept");
    drop(client);
    cluster.stop(StopMode::Fast).await.expect("stop fast");
    assert!(!cluster.is_running());
    drop(cluster);

    // Second run reuses the data directory.
    let cluster = Cluster::start(scratch.options())
        .await
        .expect("start again");
    let client = cluster.connect(db).await.expect("connect after reuse");
    let row = client
        .query_one("SELECT v FROM t", &[])
        .await
        .expect("select");
    assert_eq!(row.get::<_, String>(0), "kept");
    assert_eq!(show(&client, "wal_level").await, "logical");
    drop(client);
    let data_dir = cluster.data_dir().to_path_buf();
    drop(cluster);
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "drop stops the server"
    );
}

/// A server left running in the data directory is stopped and started with new options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaces_a_cluster_left_running() {
    let scratch = Scratch::new("left");
    let mut first = Cluster::start(scratch.options())
        .await
        .expect("start cluster");
    first.keep_running();
    let old_port = first.port();
    drop(first);

    let mut opts = scratch.options();
    opts.extra_settings.push(("work_mem".into(), "7MB".into()));
    let second = Cluster::start(opts)
        .await
        .expect("start over a running cluster");
    assert!(second.is_running());
    let client = second.connect("postgres").await.expect("connect");
    assert_eq!(show(&client, "wal_level").await, "logical");
    assert_eq!(show(&client, "work_mem").await, "7MB");
    drop(client);
    if second.port() != old_port {
        assert!(
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, old_port)).is_err(),
            "the old server was stopped"
        );
    }
}

/// A fixed port that is already bound gives `PortInUse`, without retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_a_taken_fixed_port() {
    let scratch = Scratch::new("port");
    let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind blocker");
    let port = blocker.local_addr().expect("blocker address").port();
    let mut opts = scratch.options();
    opts.port = Some(port);
    match Cluster::start(opts).await {
        Err(ClusterError::PortInUse { port: taken, .. }) => assert_eq!(taken, port),
        Err(other) => panic!("expected PortInUse, got {other}"),
        Ok(cluster) => panic!("started on a taken port {}", cluster.port()),
    }
    drop(blocker);
}
