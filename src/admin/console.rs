//! The admin console: a read-only Postgres-protocol server, so `psql` and any Postgres driver can
//! ask walcast about itself (`SHOW CLIENTS`, `SELECT * FROM stats`, ...; see [`super::tables`]).
//!
//! Off unless `--admin-listen` is set. Every connection authenticates with the console password
//! by SCRAM-SHA-256 (any user name), as Postgres does by default since version 14: the password
//! never crosses the wire, and walcast keeps only a SCRAM verifier of it (salted, 4096
//! iterations, computed once at start), so a login costs no key derivation on the server. A
//! wrong password is refused the way Postgres refuses it (`FATAL` `28P01`, "password
//! authentication failed"). Failed logins are counted per client address ([`super::login`]):
//! after `--admin-max-failures` the address is refused (`FATAL` `28000`, "too many failed
//! login attempts") for `--admin-lockout`, the right password too; failures and refusals are
//! logged and counted. No TLS (so no SCRAM channel binding): a client asking for TLS is told no
//! and continues in plain text (`sslmode=prefer`, the default), so keep the console on a
//! loopback or private address. Both the simple and the extended query protocol work.
//!
//! The console runs on its own tasks: an accept loop and one task per connection, at most
//! [`MAX_CONNECTIONS`] at a time; it reads in-memory state and, for `slot` and `dlq`, the
//! database through the pool.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{
    SCRAM_ITERATIONS, ScramAuth, ScramSecret, gen_salted_password,
};
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::NodeView;
use super::error::AdminError;
use super::login::{LockedOut, LoginGuard};
use super::tables::{self, Resource, Table};
use crate::config::AdminConfig;

/// Most console connections at once; more wait for a free slot.
pub const MAX_CONNECTIONS: usize = 16;

/// Binds the console's address and starts its accept loop; the loop ends when `token` is
/// cancelled. Returns the bound address and the task.
pub async fn spawn_console(
    state: std::sync::Arc<NodeView>,
    config: &AdminConfig,
    token: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), AdminError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AdminError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind {
        addr: config.listen,
        source,
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin console listens on a non-loopback address without TLS; prefer 127.0.0.1");
    }
    let handlers = Arc::new(Handlers::new(state, config));
    let task = tokio::spawn(accept_loop(listener, handlers, token));
    tracing::info!(%addr, "admin console listening (Postgres protocol)");
    Ok((addr, task))
}

/// Accepts connections until `token` is cancelled, then waits for open ones to end.
async fn accept_loop(listener: TcpListener, handlers: Arc<Handlers>, token: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            biased;
            // PRIORITY 1: shutdown.
            _ = token.cancelled() => break,
            // PRIORITY 2: a free connection slot.
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (socket, peer) = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin console: accept failed");
                    continue;
                }
            },
        };
        let handlers = Arc::clone(&handlers);
        let token = token.clone();
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = token.cancelled() => {}
                r = pgwire::tokio::process_socket(socket, None, handlers) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "admin console: connection ended with an error");
                    }
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// The console's handlers: authentication and both query protocols.
struct Handlers {
    /// Authentication.
    startup: Arc<Startup>,
    /// Queries.
    queries: Arc<Queries>,
}

impl Handlers {
    /// Handlers answering from `state`, accepting `config`'s password.
    fn new(state: std::sync::Arc<NodeView>, config: &AdminConfig) -> Self {
        let mut scram = ScramAuth::new(Arc::new(ConsoleVerifier::new(&config.password)));
        scram.set_iterations(SCRAM_ITERATIONS);
        Handlers {
            startup: Arc::new(Startup {
                driver: AuthDriver::new(DefaultServerParameterProvider::default()),
                scram,
                guard: LoginGuard::new(config.throttle),
                metrics: Arc::clone(&state.metrics),
            }),
            queries: Arc::new(Queries {
                state,
                parser: Arc::new(Parser),
            }),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}

/// The console password as a SCRAM-SHA-256 verifier (`StoredKey`, `ServerKey` and salt, as
/// Postgres stores it in `pg_authid`), for any user name. The password itself is not kept.
struct ConsoleVerifier {
    /// Random per process.
    salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    server_key: Vec<u8>,
}

impl ConsoleVerifier {
    /// Derives the verifier of `password` once (PBKDF2 with [`SCRAM_ITERATIONS`] rounds).
    fn new(password: &str) -> Self {
        let salt = rand::random::<[u8; 16]>().to_vec();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        match ScramSecret::verifier_from_salted_password(salt, salted, SCRAM_ITERATIONS) {
            ScramSecret::Verifier {
                salt,
                stored_key,
                server_key,
                ..
            } => ConsoleVerifier {
                salt,
                stored_key,
                server_key,
            },
            // `verifier_from_salted_password` always builds a verifier.
            ScramSecret::SaltedPassword { .. } => unreachable!("a salted password"),
        }
    }
}

impl Debug for ConsoleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleVerifier(<redacted>)")
    }
}

#[async_trait]
impl AuthSource for ConsoleVerifier {
    /// Not used: SCRAM asks [`AuthSource::get_scram_secret`], and no other mechanism is offered.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn get_scram_secret(
        &self,
        _login: &LoginInfo,
    ) -> PgWireResult<(ScramSecret, Option<()>)> {
        Ok((
            ScramSecret::Verifier {
                salt: self.salt.clone(),
                iterations: SCRAM_ITERATIONS,
                stored_key: self.stored_key.clone(),
                server_key: self.server_key.clone(),
            },
            None,
        ))
    }
}

/// Startup: SCRAM-SHA-256 authentication behind the failed-login throttle, failures reported
/// as Postgres reports them.
struct Startup {
    /// Runs the handshake.
    driver: AuthDriver<DefaultServerParameterProvider>,
    /// The SCRAM-SHA-256 mechanism.
    scram: ScramAuth,
    /// Failed logins by client address.
    guard: LoginGuard,
    /// Failure and lockout counters.
    metrics: Arc<crate::metrics::Metrics>,
}

/// The error Postgres sends for a wrong password.
fn password_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        "28P01".to_owned(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

/// The error for a login from an address that is locked out.
fn locked_out(ip: std::net::IpAddr, LockedOut(left): LockedOut) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        "28000".to_owned(),
        format!(
            "too many failed login attempts from {ip}: the admin console refuses this address \
             for another {} s (--admin-max-failures, --admin-lockout)",
            left.as_secs().max(1)
        ),
    )))
}

impl Startup {
    /// Refuses `client` if its address is locked out.
    fn admit<C: ClientInfo>(&self, client: &C) -> PgWireResult<()> {
        let ip = client.socket_addr().ip();
        self.guard
            .check(ip, std::time::Instant::now())
            .map_err(|left| {
                self.metrics.admin_logins_throttled.inc();
                tracing::debug!(peer = %client.socket_addr(), "admin console: login refused, address locked out");
                locked_out(ip, left)
            })
    }

    /// Counts a failed login of `client` (and logs the start of a lockout).
    fn failed<C: ClientInfo>(&self, client: &C) {
        self.metrics.admin_login_failures.inc();
        let peer = client.socket_addr();
        if self.guard.failed(peer.ip(), std::time::Instant::now()) {
            tracing::warn!(%peer, lockout_secs = self.guard.config().lockout.as_secs(),
                "admin console: too many failed logins; this address is locked out");
        } else {
            tracing::warn!(%peer, "admin console: failed login");
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // A locked-out address gets no password exchange at all.
                self.admit(client)?;
                self.driver
                    .begin_authentication(client, self.scram.create())
                    .await
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await
            }
            _ => return Ok(()),
        };
        match outcome {
            Ok(AuthOutcome::InProgress) => Ok(()),
            Ok(AuthOutcome::Authenticated { final_message, .. }) => {
                // Other connections from this address may have failed meanwhile.
                self.admit(client)?;
                self.guard.succeeded(client.socket_addr().ip());
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
            // A wrong proof, or a broken exchange (a malformed proof, a channel binding the
            // console cannot offer): a failed login either way, so that nothing can be guessed
            // without being counted. The user named is the startup's, as Postgres names it
            // (libpq leaves the SCRAM user name empty).
            Err(
                e @ (PgWireError::InvalidPassword(_)
                | PgWireError::InvalidScramMessage(_)
                | PgWireError::InvalidSASLState),
            ) => {
                self.failed(client);
                tracing::debug!(error = %e, "admin console: authentication failed");
                let user = client
                    .metadata()
                    .get(pgwire::api::METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                Err(password_failed(&user))
            }
            Err(e) => Err(e),
        }
    }
}

/// Parses console statements for the extended protocol.
#[derive(Debug)]
struct Parser;

/// A `StatementError` as a Postgres error.
fn statement_error(e: tables::StatementError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        e.code.to_owned(),
        e.message,
    )))
}

/// An `AdminError` as a Postgres error (the chain, without row data).
fn admin_error(e: AdminError) -> PgWireError {
    tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "admin console: a command failed");
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        "58000".to_owned(),
        crate::error::error_chain(&e),
    )))
}

/// Field descriptions of a resource: every column is `text`.
fn fields(resource: Resource, format: Option<&Format>) -> Vec<FieldInfo> {
    resource
        .columns()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let f = format.map_or(FieldFormat::Text, |f| f.format_for(i));
            FieldInfo::new((*name).to_owned(), None, None, Type::TEXT, f)
        })
        .collect()
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Resource;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Resource>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        tables::parse_statement(sql)
            .map(Some)
            .map_err(statement_error)
    }

    fn get_parameter_types(&self, _stmt: &Resource) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        stmt: &Resource,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(fields(*stmt, column_format))
    }
}

/// Answers queries from the server state.
struct Queries {
    /// The server state.
    state: std::sync::Arc<NodeView>,
    /// The statement parser.
    parser: Arc<Parser>,
}

impl Queries {
    /// Reads a resource into a query response.
    async fn respond(&self, resource: Resource, format: Option<&Format>) -> PgWireResult<Response> {
        let Table { rows, .. } = tables::build(resource, &self.state)
            .await
            .map_err(admin_error)?;
        let schema = Arc::new(fields(resource, format));
        let mut encoder = DataRowEncoder::new(Arc::clone(&schema));
        let mut encoded = Vec::with_capacity(rows.len());
        for row in rows {
            for cell in row {
                encoder.encode_field(&cell)?;
            }
            encoded.push(Ok(encoder.take_row()));
        }
        Ok(Response::Query(QueryResponse::new(
            schema,
            futures::stream::iter(encoded),
        )))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut out = Vec::new();
        for statement in tables::split_statements(query) {
            let resource = tables::parse_statement(statement).map_err(statement_error)?;
            out.push(self.respond(resource, None).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Resource;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Resource>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Resource>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.respond(
            portal.statement.statement,
            Some(&portal.result_column_format),
        )
        .await
    }
}
