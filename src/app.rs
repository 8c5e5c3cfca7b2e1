//! Wiring: builds every part of the server, runs it, and shuts it down in order.
//!
//! Order on SIGTERM/SIGINT (a second signal exits at once): stop accepting HTTP/WebSocket
//! connections → sessions send close frames → the dead-letter retry worker finishes its pass and
//! releases its lock → the batcher writes what is pending → the reader
//! sends its final status (only what was handed off) → exit, all within `shutdown_timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::db;
use crate::dlq;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::ingest::{Batcher, Breaker, Spool, Writer, WriterConfig};
use crate::metrics::Metrics;
use crate::replication::{
    Reader, ReaderConfig, ReaderStatus, ReplicationError, ReplicationSettings,
};
use crate::supervise::Supervisor;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Database setup failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Feature flags could not be read (environment or database).
    #[error("feature flags: {0}")]
    Flags(#[from] crate::flags::FlagsError),
    /// The database is not migrated.
    #[error(
        "the database is not migrated (applied {applied:?}, walcast needs {needed}): run `walcast migrate --database-url ...` first"
    )]
    NotMigrated {
        /// Applied version.
        applied: Option<i64>,
        /// Needed version.
        needed: i64,
    },
    /// Replication cannot run.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The listener could not bind.
    #[error("could not listen on {addr}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] crate::ingest::spool::SpoolError),
    /// The HTTP server failed.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The admin console could not start.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The JWKS (--jwks-file, or the client for --jwks-url) could not be set up.
    #[error(transparent)]
    Jwks(#[from] crate::auth::jwks::JwksError),
    /// A task that must run until shutdown stopped.
    #[error("the {name} stopped ({why}); walcast shut down so that it can be restarted whole")]
    TaskStopped {
        /// The task's name.
        name: &'static str,
        /// Why it stopped.
        why: String,
    },
}

/// The names of the tasks the server watches (in logs, `/readyz` and exit errors).
pub mod task {
    /// The replication reader.
    pub const READER: &str = "replication reader";
    /// The store of undecodable WAL messages in the dead-letter queue.
    pub const DEAD_LETTER_SINK: &str = "dead-letter sink";
    /// The ingest batcher.
    pub const BATCHER: &str = "ingest batcher";
    /// The writer of `walcast.metrics` events.
    pub const METRICS_PERSISTER: &str = "metrics persister";
    /// The replay of spooled events into the table.
    pub const SPOOL_REPLAYER: &str = "spool replayer";
    /// The dead-letter retry worker.
    pub const DLQ_WORKER: &str = "dead-letter retry worker";
    /// The feature flags refresher.
    pub const FLAGS_REFRESHER: &str = "flags refresher";
    /// The JWKS refresher (with --jwks-url or --jwks-file).
    pub const JWKS_REFRESHER: &str = "jwks refresher";
    /// The continuous consistency check.
    pub const CONSISTENCY: &str = "consistency check";
    /// The admin console.
    pub const ADMIN_CONSOLE: &str = "admin console";
    /// The HTTP server.
    pub const HTTP_SERVER: &str = "HTTP server";
    /// The writer of Realtime resume positions.
    pub const RESUME_WRITER: &str = "resume positions writer";
    /// The delivery of `realtime.messages` rows to Realtime channels.
    pub const DB_BROADCASTS: &str = "broadcasts from the database";
    /// The delivery of broadcasts from other nodes (`--cluster-broadcast`).
    pub const RELAY_RECEIVER: &str = "broadcasts from other nodes";
    /// The writing of broadcasts for other nodes (`--cluster-broadcast`).
    pub const RELAY_WRITER: &str = "broadcasts for other nodes";
    /// The daily partitions of walcast's `realtime.messages`.
    pub const MESSAGE_RETENTION: &str = "realtime.messages retention";
}

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process on the second.
pub fn spawn_signal_task(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!("shutting down (send the signal again to exit at once)");
                token.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// Runs the server until `shutdown` is cancelled. `on_listen` gets the bound address.
pub async fn serve(
    config: ServerConfig,
    shutdown: CancellationToken,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<(), AppError> {
    let config = Arc::new(config);
    // Every connection is a file descriptor: take what the hard limit allows, and say so when
    // --max-connections cannot fit.
    let files = crate::http::server::raise_open_files_limit();
    if files.now > files.before {
        tracing::info!(
            from = files.before,
            to = files.now,
            "open files limit raised to the hard limit"
        );
    }
    let wanted = config.http.max_connections as u64;
    if wanted > files.connections() {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = files.now,
            "--max-connections is above what the open-files limit allows (about {} connections \
             beside walcast's own {} files): raise the hard limit (ulimit -Hn, systemd \
             LimitNOFILE=, docker --ulimit nofile=) or lower --max-connections; see \
             docs/scaling.md",
            files.connections(),
            crate::http::server::FILES_BESIDE_CONNECTIONS
        );
    }
    let pool = db::pool(&config.database_url, config.pool_size, "walcast")?;
    {
        let client = pool.get().await.map_err(db::DbError::Connect)?;
        let applied = db::applied_version(&client).await?;
        let needed = db::latest_version();
        if applied.is_none_or(|v| v < needed) {
            return Err(AppError::NotMigrated { applied, needed });
        }
    }
    // Every long-running task is watched: one that stops early shuts the server down.
    let mut sup = Supervisor::default();
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(
        config.client_queue,
        config.client_queue_bytes,
        Arc::clone(&metrics),
    );
    let status = Arc::new(ReaderStatus::default());
    let settings = ReplicationSettings::from_url(
        &config.database_url,
        &config.publication,
        &format!("walcast_{}", config.node),
    )?;

    // The reader: fatal errors stop the whole server.
    let reader_token = CancellationToken::new();
    let (dead_letters, sink_task) = crate::dlq::sink::spawn_deliver_sink(pool.clone());
    // The sink ends when the reader, its only sender, has ended.
    let sink_task = sup.watch(task::DEAD_LETTER_SINK, &reader_token, sink_task);
    // Broadcast from Database: `realtime.messages` rows go from the reader to the bus.
    let bus = Arc::new(crate::realtime::bus::Bus::default());
    let messages = Arc::new(crate::realtime::messages::MessageStore::new(pool.clone()));
    let (db_broadcasts, db_broadcast_rx) =
        tokio::sync::mpsc::channel(crate::realtime::dbcast::DB_BROADCAST_QUEUE);
    // Like the sink, it ends when the reader has ended.
    let db_broadcast_task = sup.watch(
        task::DB_BROADCASTS,
        &reader_token,
        crate::realtime::dbcast::spawn_db_broadcast_task(
            db_broadcast_rx,
            Arc::clone(&bus),
            Arc::clone(&messages),
            Arc::clone(&metrics),
        ),
    );
    // Broadcast across nodes: the other nodes' broadcasts go from the reader to the bus.
    // Presence too: the bus hands local presence changes to the relay; the receive task
    // announces this node's presences through it and gives up silent nodes.
    let relay_origin: u64 = rand::random();
    let relay_token = CancellationToken::new();
    let (relay, relay_rx) = if config.cluster_broadcast {
        let (relay, rx) = crate::realtime::cluster::Relay::on(Arc::clone(&metrics));
        (relay, Some(rx))
    } else {
        (crate::realtime::cluster::Relay::off(), None)
    };
    bus.set_relay(relay.clone());
    let (relay_route, relay_receive_task) = if config.cluster_broadcast {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::realtime::cluster::RECEIVE_QUEUE);
        let run = crate::realtime::cluster::spawn_relay_receive_task(
            rx,
            Arc::clone(&bus),
            relay.clone(),
            relay_origin,
            config.cluster_presence_ttl,
            Arc::clone(&metrics),
        );
        // Like the sink, it ends when the reader has ended.
        let run = sup.watch(task::RELAY_RECEIVER, &reader_token, run);
        let route = crate::replication::RelayRoute {
            prefix: crate::realtime::cluster::RELAY_PREFIX.to_owned(),
            tx,
        };
        (Some(route), Some(run))
    } else {
        (None, None)
    };
    let reader = Reader::new(
        ReaderConfig {
            database_url: config.database_url.clone(),
            settings: settings.clone(),
            slot: config.slot.clone(),
            retention: config.retention,
            retention_bytes: config.retention_bytes,
            node: config.node.clone(),
            dead_letters: Some(dead_letters),
            messages: Some(crate::replication::MessageRoute {
                publication: crate::realtime::dbcast::MESSAGES_PUBLICATION.to_owned(),
                schema: crate::realtime::dbcast::MESSAGES_SCHEMA.to_owned(),
                table: crate::realtime::dbcast::MESSAGES_TABLE.to_owned(),
                tx: db_broadcasts,
            }),
            relay: relay_route,
        },
        hub.clone(),
        Arc::clone(&metrics),
        Arc::clone(&status),
    );
    let mut reader_task = sup.watch(
        task::READER,
        &reader_token,
        tokio::spawn(reader.run(reader_token.clone())),
    );

    // The write path: database, retry, breaker, spool, dead letters.
    let spool = Arc::new(Spool::open(&config.spool_dir, config.spool_max)?);
    if !spool.is_empty() {
        tracing::info!(bytes = spool.len(), path = %spool.path().display(), "the spool holds events from an earlier run; replaying them");
    }
    let writer = Arc::new(Writer::new(
        pool.clone(),
        Arc::clone(&metrics),
        Arc::new(Breaker::new(config.breaker)),
        spool,
        WriterConfig {
            attempts: config.write_attempts,
            ..WriterConfig::default()
        },
        Some(Arc::new(crate::dlq::sink::IngestSink {
            pool: pool.clone(),
            node: config.node.clone(),
        })),
    ));
    let batch_token = CancellationToken::new();
    let (batcher, batcher_task) = Batcher::spawn(
        Arc::clone(&writer),
        config.batch.clone(),
        batch_token.clone(),
    );
    let batcher_task = sup.watch(task::BATCHER, &batch_token, batcher_task);
    let persister_token = CancellationToken::new();
    let persister_task = config.metrics_interval.map(|interval| {
        let run = tokio::spawn(crate::ingest::metrics_events::run(
            Arc::clone(&metrics),
            batcher.clone(),
            Arc::clone(&writer),
            config.node.clone(),
            interval,
            persister_token.clone(),
        ));
        sup.watch(task::METRICS_PERSISTER, &persister_token, run)
    });
    let replay_token = CancellationToken::new();
    let replayer_task = sup.watch(
        task::SPOOL_REPLAYER,
        &replay_token,
        tokio::spawn(Arc::clone(&writer).run_replayer(replay_token.clone())),
    );

    // The dead-letter retry worker: runs here only while this node holds its advisory lock.
    let dlq_token = CancellationToken::new();
    let dlq_task = sup.watch(
        task::DLQ_WORKER,
        &dlq_token,
        dlq::spawn_retry_worker(
            pool.clone(),
            dlq::RetryWorkerConfig::new(&config.node),
            Arc::new(dlq::RetryWorkerStatus::default()),
            dlq_token.clone(),
        ),
    );

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    let sessions_token = CancellationToken::new();

    // Feature flags: environment tier, first snapshot now, then a task that follows changes.
    let flags_env = crate::flags::EnvTier::from_env().map_err(crate::flags::FlagsError::Env)?;
    for ignored in &flags_env.ignored {
        tracing::warn!("{ignored}");
    }
    let flags_snapshot = {
        let client = pool.get().await.map_err(db::DbError::Connect)?;
        crate::flags::store::load(&client).await?
    };
    let flags = crate::flags::Flags::new(config.node.clone(), flags_env, flags_snapshot);
    tracing::info!(mode = flags.mode().mode.as_str(), "broadcaster mode");
    let flags_token = CancellationToken::new();
    let flags_task = sup.watch(
        task::FLAGS_REFRESHER,
        &flags_token,
        crate::flags::spawn_refresh_task(
            flags.clone(),
            config.database_url.clone(),
            flags_token.clone(),
        ),
    );
    // The one verifier: the JWT secret, the JWKS (read now, then kept fresh), the API keys.
    let mut verifier = crate::auth::Verifier::without_keys(config.token_policy.clone())
        .with_api_keys(config.api_keys.clone());
    if let Some(secret) = &config.jwt_secret {
        verifier = verifier.with_secret(secret.expose());
    }
    let jwks_token = CancellationToken::new();
    let jwks_task = match &config.jwks {
        Some(jwks_config) => {
            let jwks = crate::auth::Jwks::load(jwks_config.clone()).await?;
            verifier = verifier.with_jwks(Arc::clone(&jwks));
            Some(sup.watch(
                task::JWKS_REFRESHER,
                &jwks_token,
                crate::auth::jwks::spawn_refresh_task(jwks, jwks_token.clone()),
            ))
        }
        None => None,
    };
    if !verifier.has_keys() {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-no-auth: every endpoint is open to anyone who can reach walcast: POST \
             /v1/events, /ws (every row), /v1/dlq (payloads, purge), /v1/flags (the broadcaster \
             mode), /v1/status; the Realtime endpoint refuses connections without a secret"
        );
    }
    let auth = crate::auth::Auth::with_verifier(verifier);
    let clients = Arc::new(crate::admin::ClientRegistry::default());
    let gate = Arc::new(
        crate::access::RlsGate::new(pool.clone(), &config.publication)
            .with_metrics(Arc::clone(&metrics)),
    );
    let node = Arc::new(crate::admin::NodeView {
        config: Arc::clone(&config),
        pool: pool.clone(),
        writer: Arc::clone(&writer),
        metrics: Arc::clone(&metrics),
        hub: hub.clone(),
        reader: Arc::clone(&status),
        flags: flags.clone(),
        clients: Arc::clone(&clients),
        consistency: Arc::new(crate::validate::Consistency::new(config.validate_interval)),
        status: Arc::new(crate::admin::status::StatusState::default()),
        tasks: sup.states(),
    });
    // Replays from the WAL, for both endpoints under one cap.
    let replays =
        crate::replication::Replays::new(settings, config.slot.clone(), config.max_replays)
            .with_status(Arc::clone(&status));
    // Realtime resume positions: written once a second, after the sessions on shutdown.
    let resumes = Arc::new(crate::realtime::resume::Resumes::new(
        pool.clone(),
        Arc::clone(&metrics),
    ));
    let resume_token = CancellationToken::new();
    let resume_task = sup.watch(
        task::RESUME_WRITER,
        &resume_token,
        tokio::spawn(Arc::clone(&resumes).run(config.retention, resume_token.clone())),
    );
    // Broadcast across nodes: copies of this node's broadcasts are written to the WAL.
    let relay_writer_task = if let (Some(rx), Some(heard_self)) = (relay_rx, relay.heard_self()) {
        let run = crate::realtime::cluster::spawn_relay_writer_task(
            rx,
            config.database_url.clone(),
            relay_origin,
            config.cluster_presence_ttl / 3,
            heard_self,
            Arc::clone(&metrics),
            relay_token.clone(),
        );
        tracing::info!(
            origin = format!("{relay_origin:016x}"),
            "broadcasts and presence reach the other walcast nodes through the WAL"
        );
        Some(sup.watch(task::RELAY_WRITER, &relay_token, run))
    } else {
        None
    };
    let state = AppState {
        auth: auth.clone(),
        node: Arc::clone(&node),
        ingest: crate::ingest::http::IngestState {
            batcher,
            metrics: Arc::clone(&metrics),
            max_body: config.max_body,
            max_events: config.max_events,
        },
        dlq: crate::dlq::http::DlqState {
            pool: pool.clone(),
            metrics: Arc::clone(&metrics),
            node: config.node.clone(),
        },
        flags: crate::flags::http::FlagsState {
            pool: pool.clone(),
            flags: flags.clone(),
        },
        ws: crate::ws::WsState {
            hub: hub.clone(),
            metrics: Arc::clone(&metrics),
            reader: Arc::clone(&status),
            replays: replays.clone(),
            flags: flags.clone(),
            clients: Arc::clone(&clients),
            heartbeat: config.heartbeat,
            role_recheck: config.role_recheck,
            shutdown: sessions_token.clone(),
            auth: auth.clone(),
            gate: Arc::clone(&gate),
        },
        realtime: crate::realtime::RealtimeState {
            gate: Arc::clone(&gate),
            private: Arc::new(crate::realtime::private::PrivateChannels::new(pool.clone())),
            bus,
            relay,
            messages: Arc::clone(&messages),
            hub: hub.clone(),
            metrics: Arc::clone(&metrics),
            flags,
            clients: Arc::clone(&clients),
            auth,
            role_recheck: config.role_recheck,
            max_payload: config.max_payload,
            limits: config.realtime_limits,
            joins: config.realtime_joins,
            shutdown: sessions_token.clone(),
            resumes: Arc::clone(&resumes),
            replays,
            reader: Arc::clone(&status),
        },
    };
    // Operations: the continuous consistency check and the admin console, on their own tasks.
    let ops_token = CancellationToken::new();
    let retention_task = sup.watch(
        task::MESSAGE_RETENTION,
        &ops_token,
        crate::realtime::dbcast::spawn_retention_task(
            messages,
            config.broadcast_retention_days,
            ops_token.clone(),
        ),
    );
    let consistency_task = config.validate_interval.map(|interval| {
        let run = crate::validate::spawn_consistency_task(
            crate::validate::ConsistencyTask {
                hub: hub.clone(),
                metrics: Arc::clone(&metrics),
                clients: Arc::clone(&clients),
                gate,
                consistency: Arc::clone(&node.consistency),
                interval,
            },
            ops_token.clone(),
        );
        sup.watch(task::CONSISTENCY, &ops_token, run)
    });
    let console_task = match &config.admin {
        Some(admin) => {
            let (_, run) =
                crate::admin::console::spawn_console(Arc::clone(&node), admin, ops_token.clone())
                    .await?;
            Some(sup.watch(task::ADMIN_CONSOLE, &ops_token, run))
        }
        None => None,
    };
    let app = http::router(state);
    on_listen(addr);

    let http_token = CancellationToken::new();
    let server = crate::http::server::serve(
        listener,
        app,
        config.http.clone(),
        Arc::clone(&metrics),
        http_token.clone(),
    );
    let mut server_task = sup.watch(task::HTTP_SERVER, &http_token, tokio::spawn(server));

    let mut fatal: Option<AppError> = None;
    let mut reader_done = false;
    let mut server_done = false;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        stop = sup.next_stop() => {
            fatal = Some(match stop.name {
                task::READER => {
                    reader_done = true;
                    match (&mut reader_task).await {
                        Ok(Some(Err(e))) => AppError::Replication(e),
                        _ => AppError::TaskStopped { name: stop.name, why: stop.why },
                    }
                }
                task::HTTP_SERVER => {
                    server_done = true;
                    match (&mut server_task).await {
                        Ok(Some(Err(e))) => AppError::Serve(e),
                        _ => AppError::TaskStopped { name: stop.name, why: stop.why },
                    }
                }
                name => AppError::TaskStopped { name, why: stop.why },
            });
        }
    }

    // Ordered shutdown within the budget.
    let budget = config.shutdown_timeout;
    let started = std::time::Instant::now();
    let ordered = async {
        http_token.cancel();
        sessions_token.cancel();
        if !server_done {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut server_task).await;
        }
        // Broadcasts the sessions accepted, and the leaves of their presences, reach the other
        // nodes.
        relay_token.cancel();
        if let Some(t) = relay_writer_task {
            let _ = t.await;
        }
        // Sessions have noted where their channels stopped: write it.
        resume_token.cancel();
        let _ = resume_task.await;
        ops_token.cancel();
        let _ = retention_task.await;
        if let Some(t) = consistency_task {
            let _ = t.await;
        }
        if let Some(t) = console_task {
            let _ = t.await;
        }
        flags_token.cancel();
        let _ = flags_task.await;
        jwks_token.cancel();
        if let Some(t) = jwks_task {
            let _ = t.await;
        }
        dlq_token.cancel();
        let _ = dlq_task.await;
        persister_token.cancel();
        if let Some(t) = persister_task {
            let _ = t.await;
        }
        batch_token.cancel();
        let _ = batcher_task.await;
        replay_token.cancel();
        let _ = replayer_task.await;
        reader_token.cancel();
        if !reader_done {
            let _ = (&mut reader_task).await;
        }
        let _ = sink_task.await;
        let _ = db_broadcast_task.await;
        if let Some(t) = relay_receive_task {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(budget, ordered).await.is_err() {
        tracing::warn!(
            budget_s = budget.as_secs_f64(),
            "shutdown took longer than the budget; exiting with work pending"
        );
    } else {
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shut down cleanly"
        );
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
