//! `walcast dev`: a private Postgres cluster, migrated, and the server on top — nothing to set up.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::cli::DevArgs;
use crate::cluster::{Cluster, ClusterOptions, StopMode};
use crate::config::ServerConfig;

/// Database the dev cluster serves.
const DEV_DATABASE: &str = "walcast";

/// Runs the dev stack until Ctrl-C.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Validate the server options before starting anything (the URL is not known yet, and the
    // secret is generated below when none is given, so a stand-in takes its place here).
    let mut probe = args.server.clone();
    if probe.jwt_secret.is_none() && !probe.insecure_no_auth {
        probe.jwt_secret = Some("x".repeat(32));
    }
    ServerConfig::from_args("postgres://postgres@127.0.0.1/walcast", &probe)?;
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    eprintln!(
        "starting a private Postgres cluster in {}",
        data_dir.join("pg").display()
    );
    let mut opts = ClusterOptions::new(data_dir.join("pg"));
    opts.port = args.pg_port;
    let cluster = Cluster::start(opts).await?;
    cluster.create_database(DEV_DATABASE).await?;
    let url = cluster.url(DEV_DATABASE);
    let pool = crate::db::pool(&url, 2, "walcast_migrate")?;
    for m in crate::db::migrate(&pool).await? {
        eprintln!("applied migration U{}__{}", m.version, m.name);
    }
    drop(pool);

    let mut server = args.server.clone();
    let secret = match server.jwt_secret.clone() {
        Some(s) => s,
        None => load_or_create_secret(&data_dir.join("jwt_secret"))?,
    };
    server.jwt_secret = Some(secret.clone());
    // dev always checks tokens: it made the secret and prints the keys.
    server.insecure_no_auth = false;
    if server.spool_dir.is_none() {
        server.spool_dir = Some(data_dir.join("spool"));
    }
    let config = ServerConfig::from_args(&url, &server)?;
    let ten_years = std::time::Duration::from_secs(10 * 365 * 86400);
    let anon = auth::mint(&secret, "anon", ten_years)?;
    let service = auth::mint(&secret, "service_role", ten_years)?;
    // The dashboard's key: `authenticated` reads every row under the default RLS policies and,
    // unlike service_role, may not write, so it is the one to put in a URL.
    let dashboard_key = auth::mint(&secret, "authenticated", ten_years)?;
    write_private(&data_dir.join("service_role.key"), &service)?;

    let psql_host = cluster.host().to_owned();
    let pg_port = cluster.port();
    let result = crate::app::serve(config, shutdown, |addr| {
        println!("walcast dev is running (Ctrl-C stops it and the cluster)");
        println!("  dashboard:        http://{addr}/?apikey={dashboard_key}");
        println!("  ingest:           POST http://{addr}/v1/events");
        println!("  stream:           ws://{addr}/ws?apikey=<anon or service_role key>");
        println!("  realtime:         ws://{addr}/realtime/v1/websocket?apikey=<anon or service_role key>&vsn=2.0.0");
        println!("  metrics:          http://{addr}/metrics");
        println!("  postgres:         {url}");
        println!("  psql:             psql -h {psql_host} -p {pg_port} -U postgres {DEV_DATABASE}");
        println!("  anon key:         {anon}");
        println!("  service_role key: {service}");
        // serve raised the soft limit to the hard one already: this reads what it got.
        let files = crate::http::server::raise_open_files_limit();
        println!(
            "  open files:       {} (about {} connections; raise the hard limit with `ulimit -Hn` \
             as root, systemd LimitNOFILE= or docker --ulimit nofile= for more)",
            files.now,
            files.connections()
        );
        println!(
            "  try:              walcast emit --type cpu --source host-1 --data '{{\"load\":0.5}}'"
        );
    })
    .await;
    eprintln!("stopping the Postgres cluster");
    cluster.stop(StopMode::Fast).await?;
    result?;
    Ok(())
}

/// Reads the dev JWT secret, or creates a random one (kept across runs so keys stay valid).
fn load_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    write_private(path, &secret)?;
    Ok(secret)
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, contents.as_bytes())?;
    Ok(())
}
