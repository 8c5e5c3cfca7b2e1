//! Starting and stopping a private PostgreSQL cluster built from the installed binaries.
//!
//! `walcast dev` and the integration tests use this module to get a server with logical
//! decoding enabled without any manual setup. It owns the whole life cycle of that cluster:
//! finding the PostgreSQL >= 15 binaries, running `initdb`, writing the configuration,
//! picking a free loopback port, `pg_ctl start`/`stop`, and waiting until the server
//! accepts connections. When walcast runs as root, `initdb` and `pg_ctl` run as the
//! `postgres` system user (PostgreSQL refuses to run as root).
//!
//! It is never used in production against a user's database: the cluster trusts every
//! local connection and is meant to be thrown away.
//!
//! Data directory layout and reuse:
//! - `initdb` runs only when `data_dir/PG_VERSION` is missing; later runs reuse the data.
//! - `pg_hba.conf` is rewritten on every start, and `postgresql.conf` gets one
//!   `include_if_exists = 'walcast.conf'` line; `walcast.conf` is rewritten on every start
//!   with the port and settings of that run, so a reused data directory always gets the
//!   current options.
//! - If a previous run left the cluster running (`pg_ctl status` says so), it is stopped
//!   with `-m fast` and started again with the current options; it is never reused as is.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod error;
mod host;

pub use error::ClusterError;
use host::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

/// Address the cluster listens on; nothing else is ever exposed.
const HOST: &str = "127.0.0.1";
/// Superuser created by `initdb` and used for every connection.
const SUPERUSER: &str = "postgres";
/// System user that runs the server when walcast itself runs as root.
const SYSTEM_USER: &str = "postgres";
/// Oldest PostgreSQL major version walcast supports.
const MIN_MAJOR: u32 = 15;
/// Environment variable that points at the directory holding `pg_ctl`.
const BIN_ENV: &str = "WALCAST_PG_BIN";
/// Where Debian-style packages install one `bin` directory per major version.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// Seconds `pg_ctl` waits for start and stop to finish.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How long to wait for the server to accept connections after `pg_ctl start`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many freshly picked ports to try when another process grabs one first.
const PORT_ATTEMPTS: usize = 5;
/// Number of log lines quoted in error messages.
const LOG_TAIL_LINES: usize = 20;
/// Most bytes of the log read back when building an error message.
const MAX_LOG_READ: u64 = 64 * 1024;
/// Longest socket directory path used; the socket file name adds 16 bytes and the
/// kernel limit is 107.
const SOCKET_DIR_MAX_LEN: usize = 90;
/// Socket directory used when the preferred one is unusable.
const FALLBACK_SOCKET_DIR: &str = "/tmp";
/// File inside the data directory holding the settings of the current run.
const WALCAST_CONF: &str = "walcast.conf";
/// Line appended once to `postgresql.conf` so it reads [`WALCAST_CONF`].
const INCLUDE_LINE: &str = "include_if_exists = 'walcast.conf'";
/// Client authentication rules: trust every local and loopback connection.
const PG_HBA: &str = "\
# written by walcast on every start: private development cluster, trust every local connection
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   ::1/128        trust
";
/// Environment variables that could redirect the PostgreSQL tools to another server.
const SCRUBBED_ENV: &[&str] = &[
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGHOSTADDR",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
    "PGSERVICE",
    "PGSERVICEFILE",
];

/// How `pg_ctl stop` shuts the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions and shut down cleanly (`-m fast`).
    Fast,
    /// Kill the server without a checkpoint, like a crash (`-m immediate`).
    Immediate,
}

impl StopMode {
    /// The value passed to `pg_ctl stop -m`.
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What [`Cluster::start`] needs to know.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Data directory; created if missing, initialized only when `PG_VERSION` is absent.
    pub data_dir: PathBuf,
    /// Port to listen on; `None` (or 0) picks a free one.
    pub port: Option<u16>,
    /// Directory holding `pg_ctl`, `initdb` and `postgres`; `None` uses [`Cluster::find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// `false` turns off fsync and full page writes (fast, unsafe on power loss: tests only).
    pub fsync: bool,
    /// Server log; `None` means `postgres.log` next to the data directory.
    pub log_file: Option<PathBuf>,
    /// Additional `postgresql.conf` settings, written after walcast's own (later wins);
    /// `port` and `listen_addresses` must not be changed here.
    pub extra_settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Options for a cluster in `data_dir`: free port, discovered binaries, fsync on,
    /// default log file, no extra settings.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: None,
            bin_dir: None,
            fsync: true,
            log_file: None,
            extra_settings: Vec::new(),
        }
    }
}

/// A private PostgreSQL cluster started by walcast.
///
/// Dropping it stops the server with `pg_ctl stop -m immediate` unless
/// [`Cluster::keep_running`] was called.
#[derive(Debug)]
pub struct Cluster {
    /// Absolute data directory.
    data_dir: PathBuf,
    /// Directory holding the PostgreSQL programs.
    bin_dir: PathBuf,
    /// Server log written by `pg_ctl -l`.
    log_file: PathBuf,
    /// Directory holding the server's Unix socket.
    socket_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// Which user runs the PostgreSQL programs.
    run_as: RunAs,
    /// When set, dropping the handle leaves the server running.
    keep_running: bool,
}

impl Cluster {
    /// Finds a directory with PostgreSQL >= 15 programs: `WALCAST_PG_BIN`, then the newest
    /// `/usr/lib/postgresql/<N>/bin`, then the directory of `pg_ctl` on `PATH` (symlinks
    /// resolved).
    pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
        if let Some(dir) = std::env::var_os(BIN_ENV).filter(|value| !value.is_empty()) {
            let dir = PathBuf::from(dir);
            check_bin_dir(&dir)?;
            debug!(bin_dir = %dir.display(), "using postgres binaries from {BIN_ENV}");
            return Ok(dir);
        }
        let mut searched = Vec::new();
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_PG_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major: u32 = entry.file_name().to_str()?.parse().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
        if versions.is_empty() {
            searched.push(format!("{DEBIAN_PG_ROOT}/<N>/bin (none)"));
        }
        for (major, dir) in versions {
            if major < MIN_MAJOR {
                searched.push(format!("{} (version {major})", dir.display()));
                continue;
            }
            match check_bin_dir(&dir) {
                Ok(_) => return Ok(dir),
                Err(error) => searched.push(format!("{} ({error})", dir.display())),
            }
        }
        match find_in_path("pg_ctl") {
            Some(pg_ctl) => {
                let real = fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
                if let Some(dir) = real.parent() {
                    match check_bin_dir(dir) {
                        Ok(_) => return Ok(dir.to_path_buf()),
                        Err(error) => searched.push(format!("{} ({error})", real.display())),
                    }
                }
            }
            None => searched.push("pg_ctl on PATH (not found)".to_owned()),
        }
        Err(ClusterError::BinariesNotFound {
            searched: searched.join("; "),
        })
    }

    /// Initializes the data directory if needed, writes the configuration and starts the
    /// server, returning once it accepts connections.
    ///
    /// A cluster left running in `data_dir` by a previous run is stopped (`-m fast`) and
    /// started again with these options. With an automatic port, a port grabbed by another
    /// process between picking and binding is retried with a new one a few times.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = match &opts.bin_dir {
            Some(dir) => dir.clone(),
            None => Cluster::find_bin_dir()?,
        };
        let bin_version = check_bin_dir(&bin_dir)?;
        let settings_text = render_extra_settings(&opts.extra_settings)?;
        let run_as = RunAs::detect()?;

        let data_dir = absolute(&opts.data_dir)?;
        let parent = data_dir
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        create_owned_dir_all(&data_dir, &run_as)?;
        let log_file = match &opts.log_file {
            Some(path) => absolute(path)?,
            None => parent.join("postgres.log"),
        };
        prepare_log_file(&log_file, &run_as)?;
        let socket_dir = prepare_socket_dir(&parent, &run_as);

        let initialized = data_dir.join("PG_VERSION").exists();
        if !initialized {
            ensure_empty(&data_dir)?;
            chown_to(&run_as, &data_dir)?;
            set_mode(&data_dir, 0o700)?;
        }
        check_access(&run_as, &data_dir).await?;
        check_access(&run_as, &log_file).await?;

        // `keep_running` stays set until our own server is up, so an early error never
        // stops a server this call did not start.
        let mut cluster = Cluster {
            data_dir,
            bin_dir,
            log_file,
            socket_dir,
            port: 0,
            run_as,
            keep_running: true,
        };
        if initialized {
            cluster.check_existing(bin_version)?;
        } else {
            cluster.initdb(opts.fsync).await?;
        }
        cluster.write_static_config()?;
        if cluster.data_dir.join("postmaster.pid").exists() && cluster.pg_ctl_status().await? {
            warn!(
                data_dir = %cluster.data_dir.display(),
                "stopping a cluster left running by a previous run"
            );
            cluster.pg_ctl_stop(StopMode::Fast).await?;
        }

        let fixed_port = opts.port.filter(|port| *port != 0);
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            cluster.port = match fixed_port {
                Some(port) => port,
                None => pick_free_port()?,
            };
            cluster.write_run_config(opts.fsync, &settings_text)?;
            match cluster.pg_ctl_start().await {
                Ok(()) => break,
                Err(ClusterError::PortInUse { port, .. }) if attempt < attempts => {
                    warn!(
                        port,
                        attempt, "port was taken before the server bound it, retrying"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
        cluster.keep_running = false;
        cluster.wait_ready().await?;
        info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            log_file = %cluster.log_file.display(),
            "private postgres cluster started"
        );
        Ok(cluster)
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on (always `127.0.0.1`).
    pub fn host(&self) -> &str {
        HOST
    }

    /// Superuser name (always `postgres`, trusted without password).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// Connection URL for `database`, e.g. `postgres://postgres@127.0.0.1:5433/app`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{database}", self.port)
    }

    /// Absolute data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the PostgreSQL programs in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Directory holding the server's Unix socket (for `psql -h`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Leaves the server running when this handle is dropped.
    pub fn keep_running(&mut self) {
        self.keep_running = true;
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate -w`); does nothing when it is not
    /// running.
    pub async fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        if !self.is_running() {
            debug!(port = self.port, "cluster already stopped");
            return Ok(());
        }
        self.pg_ctl_stop(mode).await?;
        info!(
            port = self.port,
            mode = mode.as_arg(),
            "private postgres cluster stopped"
        );
        Ok(())
    }

    /// Starts the server again on the same port and waits until it accepts connections;
    /// a running server is stopped with `-m fast` first.
    pub async fn restart(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            self.pg_ctl_stop(StopMode::Fast).await?;
        }
        self.pg_ctl_start().await?;
        self.wait_ready().await?;
        info!(port = self.port, "private postgres cluster restarted");
        Ok(())
    }

    /// Creates database `name` (quoted as an identifier); does nothing when it exists.
    pub async fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        let client = self.connect("postgres").await?;
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        match client.batch_execute(&sql).await {
            Ok(()) => info!(database = name, "database created"),
            Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => {
                debug!(database = name, "database already exists");
            }
            Err(source) => {
                return Err(self.sql_error(format!("create database `{name}`"), source));
            }
        }
        Ok(())
    }

    /// Opens a superuser connection to `database`; the connection task runs on the current
    /// tokio runtime.
    pub async fn connect(&self, database: &str) -> Result<Client, ClusterError> {
        self.try_connect(database, Duration::from_secs(10))
            .await
            .map_err(|source| self.sql_error(format!("connect to database `{database}`"), source))
    }

    /// Whether the postmaster recorded in `postmaster.pid` is alive.
    pub fn is_running(&self) -> bool {
        let Ok(text) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse::<u32>().ok())
        else {
            return false;
        };
        process_alive(pid)
    }

    /// Checks that an existing data directory matches the binaries and the server user.
    fn check_existing(&self, bin_version: u32) -> Result<(), ClusterError> {
        let version_file = self.data_dir.join("PG_VERSION");
        let data_version = fs::read_to_string(&version_file)
            .map_err(io_error("read", &version_file))?
            .trim()
            .to_owned();
        if data_version != bin_version.to_string() {
            return Err(ClusterError::VersionMismatch {
                path: self.data_dir.clone(),
                bin_dir: self.bin_dir.clone(),
                data_version,
                bin_version,
            });
        }
        if let Some(expected) = self.run_as.uid() {
            let owner = fs::metadata(&self.data_dir)
                .map_err(io_error("inspect", &self.data_dir))?
                .uid();
            if owner != expected {
                return Err(ClusterError::WrongOwner {
                    path: self.data_dir.clone(),
                    owner,
                    expected,
                });
            }
        }
        debug!(data_dir = %self.data_dir.display(), "reusing existing data directory");
        Ok(())
    }

    /// Runs `initdb` (trust auth, superuser `postgres`, UTF8, C locale).
    async fn initdb(&self, fsync: bool) -> Result<(), ClusterError> {
        info!(
            data_dir = %self.data_dir.display(),
            bin_dir = %self.bin_dir.display(),
            "initializing a new postgres cluster"
        );
        let mut cmd = self.run_as.command(&self.bin_dir.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["--auth=trust", "-U", SUPERUSER])
            .args(["--encoding=UTF8", "--locale=C", "--no-instructions"]);
        if !fsync {
            cmd.arg("--no-sync");
        }
        let output = run(cmd, "initdb").await?;
        let text = combined_output(&output);
        if let Err(error) = append_to_file(&self.log_file, &text) {
            debug!(%error, "could not copy initdb output to the log file");
        }
        if !output.status.success() {
            return Err(ClusterError::InitDb {
                path: self.data_dir.clone(),
                status: output.status.to_string(),
                tail: last_lines(&text, LOG_TAIL_LINES),
            });
        }
        Ok(())
    }

    /// Writes `pg_hba.conf` and makes `postgresql.conf` include [`WALCAST_CONF`].
    fn write_static_config(&self) -> Result<(), ClusterError> {
        write_owned_file(&self.data_dir.join("pg_hba.conf"), PG_HBA, &self.run_as)?;
        let conf = self.data_dir.join("postgresql.conf");
        let current = fs::read_to_string(&conf).map_err(io_error("read", &conf))?;
        if !current.lines().any(|line| line.trim() == INCLUDE_LINE) {
            append_to_file(
                &conf,
                &format!("\n# added by walcast: settings of the current run\n{INCLUDE_LINE}\n"),
            )
            .map_err(io_error("append to", &conf))?;
        }
        Ok(())
    }

    /// Writes [`WALCAST_CONF`] for the current port and options.
    fn write_run_config(&self, fsync: bool, extra: &str) -> Result<(), ClusterError> {
        let durability = if fsync { "on" } else { "off" };
        let settings = [
            ("listen_addresses", HOST.to_owned()),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                self.socket_dir.display().to_string(),
            ),
            ("wal_level", "logical".to_owned()),
            ("max_replication_slots", "64".to_owned()),
            ("max_wal_senders", "64".to_owned()),
            ("max_connections", "200".to_owned()),
            ("wal_sender_timeout", "10s".to_owned()),
            ("fsync", durability.to_owned()),
            ("full_page_writes", durability.to_owned()),
            ("synchronous_commit", "on".to_owned()),
            ("shared_buffers", "128MB".to_owned()),
            ("log_min_messages", "warning".to_owned()),
        ];
        let mut text = String::from("# written by walcast on every start; do not edit\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = {}\n", quote_conf_value(&value)));
        }
        text.push_str(extra);
        write_owned_file(&self.data_dir.join(WALCAST_CONF), &text, &self.run_as)
    }

    /// Runs `pg_ctl start -w` on `self.port`.
    async fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let offset = fs::metadata(&self.log_file).map_or(0, |meta| meta.len());
        debug!(port = self.port, data_dir = %self.data_dir.display(), "starting postgres");
        let mut cmd = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        cmd.args(["start", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(format!("-p {}", self.port));
        let output = run(cmd, "pg_ctl start").await?;
        if output.status.success() {
            return Ok(());
        }
        let new_log = read_log_since(&self.log_file, offset);
        let tail = last_lines(&new_log, LOG_TAIL_LINES);
        if self.is_running() {
            // pg_ctl gave up waiting but the postmaster lives on: do not leak it.
            if let Err(error) = self.pg_ctl_stop(StopMode::Immediate).await {
                warn!(%error, "could not stop a server that failed to start");
            }
        }
        if is_port_conflict(&new_log) {
            return Err(ClusterError::PortInUse {
                port: self.port,
                log_file: self.log_file.clone(),
                tail,
            });
        }
        Err(ClusterError::PgCtl {
            action: "start",
            status: output.status.to_string(),
            output: combined_output(&output).trim().to_owned(),
            log_file: self.log_file.clone(),
            tail,
        })
    }

    /// Runs `pg_ctl stop -w -m <mode>`; a server that is gone afterwards counts as success.
    async fn pg_ctl_stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let offset = fs::metadata(&self.log_file).map_or(0, |meta| meta.len());
        let mut cmd = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        cmd.args([
            "stop",
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "-m",
            mode.as_arg(),
            "-D",
        ])
        .arg(&self.data_dir);
        let output = run(cmd, "pg_ctl stop").await?;
        if output.status.success() || !self.is_running() {
            return Ok(());
        }
        Err(ClusterError::PgCtl {
            action: "stop",
            status: output.status.to_string(),
            output: combined_output(&output).trim().to_owned(),
            log_file: self.log_file.clone(),
            tail: last_lines(&read_log_since(&self.log_file, offset), LOG_TAIL_LINES),
        })
    }

    /// Asks `pg_ctl status` whether a server runs in the data directory.
    async fn pg_ctl_status(&self) -> Result<bool, ClusterError> {
        let mut cmd = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        cmd.args(["status", "-D"]).arg(&self.data_dir);
        let output = run(cmd, "pg_ctl status").await?;
        Ok(output.status.success())
    }

    /// Waits until the server accepts connections, failing early if the postmaster died.
    async fn wait_ready(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let last_error = match self.try_connect("postgres", Duration::from_secs(2)).await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => {
                        debug!(
                            port = self.port,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "server is ready"
                        );
                        return Ok(());
                    }
                    Err(error) => error.to_string(),
                },
                Err(error) => error.to_string(),
            };
            let gone = !self.is_running();
            if gone || started.elapsed() >= READY_TIMEOUT {
                let last_error = if gone {
                    format!("the server exited; last error: {last_error}")
                } else {
                    last_error
                };
                return Err(ClusterError::NotReady {
                    port: self.port,
                    waited_secs: started.elapsed().as_secs(),
                    last_error,
                    log_file: self.log_file.clone(),
                    tail: last_lines(&read_log_since(&self.log_file, 0), LOG_TAIL_LINES),
                });
            }
            debug!(port = self.port, error = %last_error, "server not ready yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Connects as the superuser over TCP and spawns the connection task.
    async fn try_connect(
        &self,
        database: &str,
        timeout: Duration,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .application_name("walcast-cluster")
            .connect_timeout(timeout);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "cluster control connection ended with an error");
            }
        });
        Ok(client)
    }

    /// Wraps a SQL error with the cluster's port and log file.
    fn sql_error(&self, action: String, source: tokio_postgres::Error) -> ClusterError {
        ClusterError::Sql {
            action,
            port: self.port,
            log_file: self.log_file.clone(),
            source,
        }
    }
}

impl Drop for Cluster {
    /// Stops the server with `pg_ctl stop -m immediate` (blocking, best effort) unless
    /// [`Cluster::keep_running`] was called or it is already stopped.
    fn drop(&mut self) {
        if self.keep_running || !self.is_running() {
            return;
        }
        let mut cmd = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        cmd.args(["stop", "-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(&self.data_dir);
        match cmd.output() {
            Ok(output) if output.status.success() => {
                info!(port = self.port, "private postgres cluster stopped on drop");
            }
            Ok(output) => warn!(
                port = self.port,
                status = %output.status,
                output = %combined_output(&output).trim(),
                "could not stop the private postgres cluster on drop"
            ),
            Err(error) => warn!(
                port = self.port,
                %error,
                "could not run pg_ctl to stop the private postgres cluster on drop"
            ),
        }
    }
}

/// Which user runs the PostgreSQL programs.
#[cfg(test)]
mod tests;
