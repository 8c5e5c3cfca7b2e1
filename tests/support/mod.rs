//! Test harness: a shared throwaway cluster, fresh databases, walcast child processes, waits.

#![allow(dead_code)]

pub mod keys;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use walcast::cluster::{Cluster, ClusterOptions};

/// The walcast binary under test.
pub const WALCAST: &str = env!("CARGO_BIN_EXE_walcast");
/// A JWT secret for tests.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The shared cluster (port, data dir), started on first use.
static SHARED: OnceLock<(String, u16, PathBuf)> = OnceLock::new();

/// A fresh temporary directory under /tmp (readable by the postgres user).
pub fn temp_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "walcast-test-{prefix}-{:016x}",
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Starts a cluster whose lifetime ends with this test process (a reaper stops it).
/// Runs on its own thread so it can be called from inside a test's runtime.
pub fn start_cluster_blocking(dir: &Path) -> Cluster {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut opts = ClusterOptions::new(dir.join("pg"));
        opts.fsync = false;
        // Every test runs its own walcast (a slot each, plus replays' temporary slots) at once.
        opts.extra_settings = vec![
            ("max_replication_slots".into(), "160".into()),
            ("max_wal_senders".into(), "160".into()),
            ("max_connections".into(), "400".into()),
        ];
        let mut cluster = rt
            .block_on(Cluster::start(opts))
            .expect("start test cluster");
        spawn_reaper(&cluster, &dir);
        cluster.keep_running();
        cluster
    })
    .join()
    .expect("cluster thread")
}

/// A background shell that stops the cluster and removes `dir` once this process is gone.
fn spawn_reaper(cluster: &Cluster, dir: &Path) {
    let pid = std::process::id();
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let data = cluster.data_dir();
    let as_pg = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {as_pg}{} stop -D {} -m immediate >/dev/null 2>&1; rm -rf {}",
        pg_ctl.display(),
        data.display(),
        dir.display()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// True when running as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The shared cluster's base URL parts.
fn shared() -> &'static (String, u16, PathBuf) {
    SHARED.get_or_init(|| {
        let dir = temp_dir("shared");
        let c = start_cluster_blocking(&dir);
        (c.host().to_owned(), c.port(), c.data_dir().to_owned())
    })
}

/// A fresh, migrated database on the shared cluster.
pub async fn fresh_db() -> TestDb {
    let (host, port, _) = shared().clone();
    fresh_db_on(&host, port).await
}

/// A fresh, migrated database on a given server.
pub async fn fresh_db_on(host: &str, port: u16) -> TestDb {
    let name = format!("t_{:016x}", rand::random::<u64>());
    let admin = format!("postgres://postgres@{host}:{port}/postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect admin");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create database");
    let url = format!("postgres://postgres@{host}:{port}/{name}");
    let pool = walcast::db::pool(&url, 2, "test").expect("pool");
    walcast::db::migrate(&pool).await.expect("migrate");
    TestDb {
        url,
        name,
        host: host.to_owned(),
        port,
    }
}

/// A test database.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Connection URL.
    pub url: String,
    /// Database name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl TestDb {
    /// A new SQL connection.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    /// Rows in monitoring_events.
    pub async fn count(&self) -> i64 {
        self.client()
            .await
            .query_one("select count(*) from public.monitoring_events", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// A slot name unique to this database.
    pub fn node(&self) -> String {
        format!("n{}", &self.name[2..14])
    }
}

/// A running walcast child process.
pub struct Walcast {
    /// The child.
    pub child: Child,
    /// http://127.0.0.1:PORT
    pub base: String,
    /// 127.0.0.1:PORT
    pub addr: String,
    /// stderr log file.
    pub log: PathBuf,
    /// Arguments it was started with (for restarts).
    args: Vec<String>,
    /// Environment.
    env: Vec<(String, String)>,
}

impl Walcast {
    /// `walcast serve` against `db` with extra arguments; waits until it listens and streams.
    pub async fn start(db: &TestDb, extra: &[&str]) -> Walcast {
        Self::start_with_env(db, extra, &[]).await
    }

    /// Like [`Walcast::start`] with extra environment variables. The node is
    /// [`TestDb::node`] unless `extra` names one with `--node` (several nodes on one database).
    pub async fn start_with_env(db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> Walcast {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--database-url".into(),
            db.url.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--spool-dir".into(),
            temp_dir("spool").display().to_string(),
        ];
        if !extra.contains(&"--node") {
            args.extend(["--node".into(), db.node()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let w = Self::spawn(args, env, "127.0.0.1:0");
        w.wait_ready().await;
        w
    }

    /// Spawns the process and reads its listen address from stdout.
    fn spawn(mut args: Vec<String>, env: Vec<(String, String)>, listen: &str) -> Walcast {
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = listen.to_owned();
        }
        let log =
            std::env::temp_dir().join(format!("walcast-test-{:016x}.log", rand::random::<u64>()));
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(WALCAST);
        cmd.args(&args)
            .env_remove("WALCAST_JWT_SECRET")
            .env("WALCAST_LOG", "info")
            // Tests that want metrics snapshots turn them on with --metrics-interval.
            .env("WALCAST_METRICS_INTERVAL", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        // Without a way to verify tokens, a test runs walcast open on purpose (walcast refuses
        // to start otherwise); tests of authentication pass a secret, a JWKS or API keys.
        const WAYS: [(&str, &str); 5] = [
            ("WALCAST_JWT_SECRET", "--jwt-secret"),
            ("WALCAST_JWKS_URL", "--jwks-url"),
            ("WALCAST_JWKS_FILE", "--jwks-file"),
            ("WALCAST_PUBLISHABLE_KEYS", "--publishable-keys"),
            ("WALCAST_SECRET_KEYS", "--secret-keys"),
        ];
        let secret = WAYS.iter().any(|(var, flag)| {
            env.iter().any(|(k, _)| k == var) || args.iter().any(|a| a.starts_with(flag))
        });
        if !secret {
            cmd.env("WALCAST_INSECURE_NO_AUTH", "true");
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn walcast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("walcast listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "walcast did not start listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Walcast {
            child,
            base: format!("http://{addr}"),
            addr,
            log,
            args,
            env,
        }
    }

    /// Waits until /readyz says ready (replication streaming).
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base);
        let client = walcast::cmd::http_client::HttpClient::new();
        let ok = wait_until(Duration::from_secs(30), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .get(&url)
                    .await
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
            }
        })
        .await;
        assert!(ok, "walcast never became ready; log:\n{}", self.log_text());
    }

    /// The stderr log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills walcast and drops its (now inactive) replication slot so tests don't pile up
    /// slots.
    pub async fn stop(mut self, db: &TestDb) {
        self.kill9();
        let c = db.client().await;
        let slot = format!("walcast_{}", db.node());
        let inactive = wait_until(Duration::from_secs(10), || {
            let (c, slot) = (&c, &slot);
            async move {
                c.query_opt(
                    "select 1 from pg_replication_slots where slot_name = $1 and active",
                    &[slot],
                )
                .await
                .map(|r| r.is_none())
                .unwrap_or(false)
            }
        })
        .await;
        if inactive {
            let _ = c
                .execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                     where slot_name = $1 and not active",
                    &[&slot],
                )
                .await;
        }
    }

    /// Sends SIGTERM and waits for exit (up to `timeout`); returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts a new process with the same arguments on the same address.
    pub async fn restart(&mut self) {
        self.kill9();
        let mut last = None;
        for _ in 0..50 {
            // The old socket may linger briefly; retry binding the same address.
            let w = std::panic::catch_unwind(|| {
                Self::spawn(self.args.clone(), self.env.clone(), &self.addr)
            });
            match w {
                Ok(w) => {
                    *self = w;
                    self.wait_ready().await;
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::panic::resume_unwind(last.expect("restart failed"));
    }

    /// RSS high-water mark in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current RSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// URL of an HTTP path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// ws:// URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for Walcast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A field of /proc/PID/status in KiB.
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Replaces the default `authenticated` read policy on `public.monitoring_events` with one that
/// shows a user only the rows whose `source` is their `sub` claim (read from
/// `request.jwt.claims`, as `auth.uid()` does).
pub async fn use_own_rows_policy(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "create function public.auth_sub() returns text language sql stable as $$ \
               select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' $$; \
             drop policy monitoring_events_authenticated_read on public.monitoring_events; \
             create policy monitoring_events_own_source on public.monitoring_events \
               for select to authenticated using (source = public.auth_sub());",
        )
        .await
        .expect("own-rows policy");
}

/// Adds a policy that lets `anon` read the rows whose `source` is `public` (the default policies
/// show anon nothing).
pub async fn use_anon_public_policy(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "create policy monitoring_events_anon_public on public.monitoring_events \
               for select to anon using (source = 'public')",
        )
        .await
        .expect("anon policy");
}

/// Adds policies to the `realtime.messages` the migrations create (shaped as Supabase's), for
/// private channels. `authenticated` may read the topic named by its `sub` claim and `lobby`,
/// and write broadcasts only to its own topic; `anon` has no privileges at all.
pub async fn create_realtime_messages(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "revoke all on realtime.messages from anon;
             grant usage on schema realtime to authenticated;
             grant select, insert on realtime.messages to authenticated;
             grant execute on function realtime.topic() to authenticated;
             create policy read_own on realtime.messages for select to authenticated
                 using (realtime.topic() in
                        (current_setting('request.jwt.claims', true)::jsonb ->> 'sub', 'lobby'));
             create policy write_own on realtime.messages for insert to authenticated
                 with check (realtime.topic() =
                               current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
                             and extension = 'broadcast');",
        )
        .await
        .expect("realtime.messages policies");
}

/// Runs `sql` with the real `psql` against `db` (stops at the first error); returns stdout.
pub async fn psql(db: &TestDb, sql: &str) -> String {
    let (url, sql) = (db.url.clone(), sql.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args([
                url.as_str(),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                &sql,
            ])
            .output()
            .expect("run psql")
    })
    .await
    .expect("psql thread");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the walcast binary with arguments; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(WALCAST);
    cmd.args(args)
        .env_remove("WALCAST_JWT_SECRET")
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run walcast");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POSTs a body to walcast; returns (status, JSON body).
pub async fn post(
    url: &str,
    content_type: &str,
    token: Option<&str>,
    body: impl Into<bytes::Bytes>,
) -> (u16, serde_json::Value) {
    let client = walcast::cmd::http_client::HttpClient::new();
    let r = client
        .post(url, content_type, token, body.into())
        .await
        .expect("post");
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// A response with its headers (see [`post_with_headers`]).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: serde_json::Value,
}

/// Like [`post`], keeping the response headers.
pub async fn post_with_headers(
    url: &str,
    content_type: &str,
    token: Option<&str>,
    body: impl Into<bytes::Bytes>,
) -> Reply {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = hyper::Request::post(url).header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Full::new(body.into()))
        .expect("request");
    let resp = client.request(req).await.expect("post");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

/// The value of one exposition line `series value` in Prometheus text (`series` includes
/// labels, if any).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// GETs a URL; returns (status, body text).
pub async fn get(url: &str) -> (u16, String) {
    get_as(url, None).await
}

/// GETs a URL with a bearer token; returns (status, body text).
pub async fn get_as(url: &str, token: Option<&str>) -> (u16, String) {
    let client = walcast::cmd::http_client::HttpClient::new();
    let r = client.get_with_token(url, token).await.expect("get");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// A token with `claims`, signed with the test secret (HS256).
pub fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A `service_role` key for the test secret, valid for an hour.
pub fn service_key() -> String {
    walcast::auth::mint(SECRET, "service_role", Duration::from_secs(3600)).expect("mint")
}

/// A TCP proxy on a free local port that forwards every connection to `target` and can cut
/// them all at once (both sides reset, as when a network path fails); it keeps accepting new
/// connections after a cut.
pub struct CutProxy {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The forwarding tasks of open connections.
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    /// The accept loop.
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            std::sync::Arc::default();
        let tracked = std::sync::Arc::clone(&open);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        let _ = client.set_zero_linger();
                        return;
                    };
                    // Dropped on a cut with linger 0: each side sees a reset.
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut open = tracked.lock().unwrap();
                open.retain(|t| !t.is_finished());
                open.push(task.abort_handle());
            }
        });
        CutProxy { addr, open, accept }
    }

    /// The proxy's http:// base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        let n = open.iter().filter(|t| !t.is_finished()).count();
        for t in open.drain(..) {
            t.abort();
        }
        n
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
