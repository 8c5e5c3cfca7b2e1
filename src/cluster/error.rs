//! Why the private cluster could not be found, initialized, started or stopped; every message
//! ends with what to do about it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors from finding, initializing, starting or stopping the private cluster.
///
/// Every message ends with what to do about it.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// No usable PostgreSQL installation was found.
    #[error(
        "no PostgreSQL >= 15 binaries found (looked at: {searched}): install the `postgresql` \
         package or set WALCAST_PG_BIN to the directory holding pg_ctl"
    )]
    BinariesNotFound {
        /// Where the search looked, with the reason each place was rejected.
        searched: String,
    },
    /// The configured binary directory lacks a required program.
    #[error(
        "PostgreSQL binary directory {} is not usable: {reason}; point WALCAST_PG_BIN at the \
         directory holding pg_ctl, initdb and postgres (e.g. /usr/lib/postgresql/15/bin)",
        path.display()
    )]
    BadBinDir {
        /// The rejected directory.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The binaries are older than PostgreSQL 15.
    #[error(
        "PostgreSQL {version} in {} is too old, walcast needs >= 15: install a newer \
         `postgresql` package or set WALCAST_PG_BIN to its bin directory",
        path.display()
    )]
    TooOld {
        /// The binary directory.
        path: PathBuf,
        /// The major version found.
        version: u32,
    },
    /// Running as root without a `postgres` user to drop privileges to.
    #[error(
        "running as root but there is no `postgres` system user to run the server as: install \
         the `postgresql` package (it creates that user) or run walcast as an unprivileged user"
    )]
    NoPostgresUser,
    /// Running as root without `runuser` or `setpriv`.
    #[error(
        "running as root but neither `runuser` nor `setpriv` is installed to switch to the \
         `postgres` user: install `util-linux` or run walcast as an unprivileged user"
    )]
    NoUserSwitch,
    /// A file system operation failed.
    #[error("could not {action} {}: {source}; check that the path is writable", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A helper program could not be executed at all.
    #[error("could not run `{program}`: {source}; check that it is installed and executable")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// No free loopback port could be reserved.
    #[error(
        "could not find a free TCP port on 127.0.0.1: {source}; check that the loopback interface is up"
    )]
    NoFreePort {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The data directory holds something other than a cluster.
    #[error(
        "{} is not empty but holds no PostgreSQL cluster (PG_VERSION is missing): remove it or \
         choose another data directory",
        path.display()
    )]
    DataDirNotEmpty {
        /// The data directory.
        path: PathBuf,
    },
    /// The server user cannot reach a path it needs.
    #[error(
        "the `{user}` user cannot write to {}: choose a location it can reach (e.g. under /tmp \
         or /var/tmp) or `chmod o+x` the parent directories",
        path.display()
    )]
    NotAccessible {
        /// The unreachable path.
        path: PathBuf,
        /// The user the server runs as.
        user: String,
    },
    /// The data directory belongs to another user than the one running the server.
    #[error(
        "{} is owned by uid {owner} but the server runs as uid {expected}: run `chown -R \
         {expected}: {}` or remove the directory",
        path.display(),
        path.display()
    )]
    WrongOwner {
        /// The data directory.
        path: PathBuf,
        /// Its current owner.
        owner: u32,
        /// The uid the server runs as.
        expected: u32,
    },
    /// The data directory was created by another major version.
    #[error(
        "{} was initialized by PostgreSQL {data_version} but the binaries in {} are version \
         {bin_version}: remove the data directory or set WALCAST_PG_BIN to PostgreSQL \
         {data_version} binaries",
        path.display(),
        bin_dir.display()
    )]
    VersionMismatch {
        /// The data directory.
        path: PathBuf,
        /// The binary directory.
        bin_dir: PathBuf,
        /// Content of `PG_VERSION`.
        data_version: String,
        /// Major version of the binaries.
        bin_version: u32,
    },
    /// An entry of `extra_settings` cannot be written to the configuration.
    #[error("invalid server setting `{name}`: {reason}; fix the setting name or value")]
    InvalidSetting {
        /// The setting name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `initdb` failed.
    #[error(
        "initdb failed ({status}) for {}; last output:\n{tail}\nfix the cause above or remove \
         the data directory and try again",
        path.display()
    )]
    InitDb {
        /// The data directory.
        path: PathBuf,
        /// Exit status of initdb.
        status: String,
        /// Last lines of its output.
        tail: String,
    },
    /// The server could not bind its port.
    #[error(
        "port {port} on 127.0.0.1 is already in use: stop whatever listens there or leave the \
         port unset so a free one is picked; last lines of {}:\n{tail}",
        log_file.display()
    )]
    PortInUse {
        /// The port that was taken.
        port: u16,
        /// The server log.
        log_file: PathBuf,
        /// Last lines of the server log.
        tail: String,
    },
    /// `pg_ctl` failed.
    #[error(
        "`pg_ctl {action}` failed ({status}): {output}; see the last lines of {} below and fix \
         the cause:\n{tail}",
        log_file.display()
    )]
    PgCtl {
        /// The pg_ctl sub-command.
        action: &'static str,
        /// Exit status of pg_ctl.
        status: String,
        /// What pg_ctl printed.
        output: String,
        /// The server log.
        log_file: PathBuf,
        /// Last lines of the server log.
        tail: String,
    },
    /// The server started but never accepted connections.
    #[error(
        "the server on 127.0.0.1:{port} did not accept connections within {waited_secs}s \
         ({last_error}); see the last lines of {} below:\n{tail}",
        log_file.display()
    )]
    NotReady {
        /// The server port.
        port: u16,
        /// How long we waited.
        waited_secs: u64,
        /// The last connection error.
        last_error: String,
        /// The server log.
        log_file: PathBuf,
        /// Last lines of the server log.
        tail: String,
    },
    /// A SQL command against the cluster failed.
    #[error(
        "could not {action} on 127.0.0.1:{port}: {source}; check that the cluster is running \
         (log: {})",
        log_file.display()
    )]
    Sql {
        /// What was being done.
        action: String,
        /// The server port.
        port: u16,
        /// The server log.
        log_file: PathBuf,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
}
