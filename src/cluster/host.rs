//! The host side of the private cluster: which user runs PostgreSQL's programs (root switches
//! to `postgres`), where the binaries are, files and directories owned by that user, the log,
//! free ports, and quoting for the configuration.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tracing::{debug, warn};

use super::*;
#[derive(Debug, Clone)]
pub(super) enum RunAs {
    /// walcast is not root: run them directly (uid if known).
    CurrentUser {
        /// Effective uid of this process, when it could be determined.
        uid: Option<u32>,
    },
    /// walcast is root: switch to the `postgres` system user.
    SystemUser {
        /// uid of the `postgres` user.
        uid: u32,
        /// Primary gid of the `postgres` user.
        gid: u32,
        /// Program used to switch users.
        switch: UserSwitch,
    },
}

/// Program that runs a command as another user.
#[derive(Debug, Clone)]
pub(super) enum UserSwitch {
    /// `runuser -u postgres -- ...`.
    Runuser(PathBuf),
    /// `setpriv --reuid=postgres --regid=postgres --init-groups -- ...`.
    Setpriv(PathBuf),
}

impl RunAs {
    /// Decides from the effective uid whether to switch to the `postgres` user.
    pub(super) fn detect() -> Result<Self, ClusterError> {
        let euid = effective_uid();
        if euid != Some(0) {
            return Ok(RunAs::CurrentUser { uid: euid });
        }
        let (uid, gid) = lookup_user(SYSTEM_USER).ok_or(ClusterError::NoPostgresUser)?;
        let switch = if let Some(path) = find_program("runuser") {
            UserSwitch::Runuser(path)
        } else if let Some(path) = find_program("setpriv") {
            UserSwitch::Setpriv(path)
        } else {
            return Err(ClusterError::NoUserSwitch);
        };
        debug!(
            uid,
            gid,
            ?switch,
            "running postgres programs as the postgres user"
        );
        Ok(RunAs::SystemUser { uid, gid, switch })
    }

    /// uid that owns the server's files, when known.
    pub(super) fn uid(&self) -> Option<u32> {
        match self {
            RunAs::CurrentUser { uid } => *uid,
            RunAs::SystemUser { uid, .. } => Some(*uid),
        }
    }

    /// Name of the server user, for messages.
    pub(super) fn user_name(&self) -> String {
        match self {
            RunAs::CurrentUser { uid: Some(uid) } => format!("uid {uid}"),
            RunAs::CurrentUser { uid: None } => "current".to_owned(),
            RunAs::SystemUser { .. } => SYSTEM_USER.to_owned(),
        }
    }

    /// A command running `program` as the server user, from `/`, with a C locale and no
    /// `PG*` variables that could point it elsewhere.
    pub(super) fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser { .. } => Command::new(program),
            RunAs::SystemUser {
                switch: UserSwitch::Runuser(runuser),
                ..
            } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", SYSTEM_USER, "--"]).arg(program);
                cmd
            }
            RunAs::SystemUser {
                switch: UserSwitch::Setpriv(setpriv),
                ..
            } => {
                let mut cmd = Command::new(setpriv);
                cmd.arg(format!("--reuid={SYSTEM_USER}"))
                    .arg(format!("--regid={SYSTEM_USER}"))
                    .args(["--init-groups", "--"])
                    .arg(program);
                cmd
            }
        };
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env("LANG", "C");
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Checks that `dir` holds `pg_ctl`, `initdb` and `postgres` of version >= 15; returns
/// the major version.
pub(super) fn check_bin_dir(dir: &Path) -> Result<u32, ClusterError> {
    for program in ["pg_ctl", "initdb", "postgres"] {
        if !is_executable(&dir.join(program)) {
            return Err(ClusterError::BadBinDir {
                path: dir.to_path_buf(),
                reason: format!("`{program}` is missing or not executable"),
            });
        }
    }
    let pg_ctl = dir.join("pg_ctl");
    let output = Command::new(&pg_ctl)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: pg_ctl.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_major_version(&text).ok_or_else(|| ClusterError::BadBinDir {
        path: dir.to_path_buf(),
        reason: format!(
            "cannot read the version from `pg_ctl --version`: {}",
            text.trim()
        ),
    })?;
    if version < MIN_MAJOR {
        return Err(ClusterError::TooOld {
            path: dir.to_path_buf(),
            version,
        });
    }
    Ok(version)
}

/// Extracts the major version from `pg_ctl (PostgreSQL) 15.18 (Debian ...)`.
pub(super) fn parse_major_version(text: &str) -> Option<u32> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether `path` is a regular file with an execute bit.
pub(super) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Finds `name` in the directories of `PATH`.
pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Finds a system program on `PATH` or in the usual sbin/bin directories.
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| is_executable(candidate))
    })
}

/// Effective uid of this process, from `/proc/self/status` or `id -u`.
pub(super) fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok());
        if euid.is_some() {
            return euid;
        }
    }
    let output = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// uid and gid of user `name`, from `getent passwd` or `/etc/passwd`.
pub(super) fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let from_getent = Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    let text = match from_getent {
        Some(text) => text,
        None => fs::read_to_string("/etc/passwd").ok()?,
    };
    text.lines().find_map(|line| parse_passwd_line(line, name))
}

/// Parses `name:x:uid:gid:...` when the line is about `name`.
pub(super) fn parse_passwd_line(line: &str, name: &str) -> Option<(u32, u32)> {
    let mut fields = line.split(':');
    if fields.next()? != name {
        return None;
    }
    fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some((uid, gid))
}

/// Whether process `pid` exists and is not a zombie.
pub(super) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Makes `path` absolute relative to the current directory.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(path).map_err(io_error("resolve", path))
}

/// Builds a `map_err` closure producing [`ClusterError::Io`].
pub(super) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> ClusterError + use<> {
    let path = path.to_path_buf();
    move |source| ClusterError::Io {
        action,
        path,
        source,
    }
}

/// Hands `path` to the server user when that is another user.
pub(super) fn chown_to(run_as: &RunAs, path: &Path) -> Result<(), ClusterError> {
    if let RunAs::SystemUser { uid, gid, .. } = run_as {
        std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
            .map_err(io_error("change the owner of", path))?;
    }
    Ok(())
}

/// Sets the permission bits of `path`.
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_error("change the permissions of", path))
}

/// Creates `dir` and its missing parents, handing the created ones to the server user.
pub(super) fn create_owned_dir_all(dir: &Path, run_as: &RunAs) -> Result<(), ClusterError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|path| !path.exists()).collect();
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    for path in missing.iter().rev() {
        chown_to(run_as, path)?;
    }
    Ok(())
}

/// Fails unless `dir` is empty.
pub(super) fn ensure_empty(dir: &Path) -> Result<(), ClusterError> {
    let mut entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    if entries.next().is_some() {
        return Err(ClusterError::DataDirNotEmpty {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Creates the log file (and its directory) so the server user can append to it.
pub(super) fn prepare_log_file(path: &Path, run_as: &RunAs) -> Result<(), ClusterError> {
    if let Some(dir) = path.parent() {
        create_owned_dir_all(dir, run_as)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error("create log file", path))?;
    chown_to(run_as, path)
}

/// Returns `parent/sock` owned by the server user, or `/tmp` when that path is too long
/// for a Unix socket or cannot be prepared.
pub(super) fn prepare_socket_dir(parent: &Path, run_as: &RunAs) -> PathBuf {
    let dir = parent.join("sock");
    if dir.as_os_str().len() > SOCKET_DIR_MAX_LEN {
        debug!(dir = %dir.display(), "socket directory path too long, using {FALLBACK_SOCKET_DIR}");
        return PathBuf::from(FALLBACK_SOCKET_DIR);
    }
    let prepared = create_owned_dir_all(&dir, run_as).and_then(|()| chown_to(run_as, &dir));
    match prepared {
        Ok(()) => dir,
        Err(error) => {
            warn!(%error, "could not prepare the socket directory, using {FALLBACK_SOCKET_DIR}");
            PathBuf::from(FALLBACK_SOCKET_DIR)
        }
    }
}

/// Verifies that the server user can write to `path` (checks every parent directory).
pub(super) async fn check_access(run_as: &RunAs, path: &Path) -> Result<(), ClusterError> {
    if matches!(run_as, RunAs::CurrentUser { .. }) {
        return Ok(());
    }
    let mut cmd = run_as.command(Path::new("test"));
    cmd.arg("-w").arg(path);
    let output = run(cmd, "test").await?;
    if output.status.success() {
        return Ok(());
    }
    Err(ClusterError::NotAccessible {
        path: path.to_path_buf(),
        user: run_as.user_name(),
    })
}

/// Writes `path` with `text`, mode 0600, owned by the server user.
pub(super) fn write_owned_file(
    path: &Path,
    text: &str,
    run_as: &RunAs,
) -> Result<(), ClusterError> {
    fs::write(path, text).map_err(io_error("write", path))?;
    chown_to(run_as, path)?;
    set_mode(path, 0o600)
}

/// Appends `text` to `path`, creating it if needed.
pub(super) fn append_to_file(path: &Path, text: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Runs `cmd` to completion, capturing its output.
pub(super) async fn run(cmd: Command, what: &str) -> Result<Output, ClusterError> {
    tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(|source| ClusterError::Spawn {
            program: what.to_owned(),
            source,
        })
}

/// stdout followed by stderr, lossily decoded.
pub(super) fn combined_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

/// What the log gained after byte `offset` (at most the last [`MAX_LOG_READ`] bytes; the
/// whole tail when the file shrank).
pub(super) fn read_log_since(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = if len < offset {
            len.saturating_sub(MAX_LOG_READ)
        } else {
            offset.max(len.saturating_sub(MAX_LOG_READ))
        };
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| format!("(could not read {}: {error})", path.display()))
}

/// The last `count` lines of `text`, or a placeholder when there are none.
pub(super) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(no output)".to_owned();
    }
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Whether a server log says the port (TCP or its Unix socket) was taken.
pub(super) fn is_port_conflict(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("already in use")
        || log.contains("could not bind")
        || log.contains("could not create any tcp/ip sockets")
        || (log.contains(".s.pgsql.") && log.contains("already exists"))
}

/// Reserves a free port on 127.0.0.1 by binding port 0, then releases it.
pub(super) fn pick_free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| ClusterError::NoFreePort { source })?;
    let port = listener
        .local_addr()
        .map_err(|source| ClusterError::NoFreePort { source })?
        .port();
    Ok(port)
}

/// Quotes a value for `postgresql.conf` (single quotes, backslashes escaped).
pub(super) fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes an SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Validates and renders `extra_settings` as configuration lines.
pub(super) fn render_extra_settings(settings: &[(String, String)]) -> Result<String, ClusterError> {
    let mut text = String::new();
    for (name, value) in settings {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(ClusterError::InvalidSetting {
                name: name.clone(),
                reason: "names may only contain letters, digits, `_` and `.`",
            });
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(ClusterError::InvalidSetting {
                name: name.clone(),
                reason: "values may not contain line breaks or NUL",
            });
        }
        text.push_str(&format!("{name} = {}\n", quote_conf_value(value)));
    }
    Ok(text)
}
