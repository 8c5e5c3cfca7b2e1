//! Errors of `walcast validate`.

/// Why a validation run could not complete (a run that completes and finds problems is not an
/// error: its report says so).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A WebSocket connection failed.
    #[error("cannot connect to {path} at {url}")]
    Connect {
        /// `ws` or `realtime`.
        path: &'static str,
        /// The URL (without the token).
        url: String,
        /// Cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A WebSocket connection broke during the window.
    #[error("the {path} connection broke")]
    Socket {
        /// `ws` or `realtime`.
        path: &'static str,
        /// Cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server closed or refused something; the message says what it answered.
    #[error("{path}: {message}")]
    Protocol {
        /// `ws` or `realtime`.
        path: &'static str,
        /// What happened.
        message: String,
    },
    /// The server did not answer in time.
    #[error("{path}: no answer to {what} within {seconds} s")]
    Timeout {
        /// `ws` or `realtime`.
        path: &'static str,
        /// What was awaited.
        what: &'static str,
        /// How long.
        seconds: u64,
    },
    /// The table reference failed.
    #[error("reading the table reference failed")]
    Database(#[source] tokio_postgres::Error),
    /// The subscription options do not parse.
    #[error("invalid filter: {0}")]
    Filter(String),
}
