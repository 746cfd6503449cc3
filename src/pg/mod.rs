//! Connections to PostgreSQL (database mode), shared by everything that
//! talks to the database: the config store (`store::postgres`), the schema
//! migrations (`store::migrate`) and the request history (`history`).
//!
//! Owns:
//!
//! - the TLS connector, `sslmode` read as libpq reads it ([`tls`]);
//! - the bounded connection pool ([`PgPool`]): connections are made lazily
//!   (none by [`PgPool::new`]) on the current tokio runtime, pooled, and
//!   recycled after a cheap liveness check. Every call is bounded:
//!   connecting 2 s (TCP connect and, through the pool's create timeout,
//!   the whole handshake), waiting for a pooled connection 2 s, each
//!   statement 5 s (`statement_timeout`, set per connection), and the whole
//!   operation [`OP_TIMEOUT`] on the client side (so a frozen server cannot
//!   hang a caller either). A transaction left idle by a vanished client is
//!   ended by the server after 10 s (`idle_in_transaction_session_timeout`).
//!   A connection that failed or timed out is discarded, not returned to
//!   the pool;
//! - how a failure reads ([`PgError`], [`message`]): failures to reach or
//!   use the database are [`PgError::Unavailable`] with the cause; data and
//!   schema errors are [`PgError::Invalid`].
//!
//! Knows nothing of what is stored: the config store's tables, the
//! migrations and the history's queries live with their owners.

pub mod tls;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::config::Host;

/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Waiting for a pooled connection, creating one (handshake included),
/// recycling one.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// Server-side limit of one statement (milliseconds).
const STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// Server-side limit of a transaction left idle (milliseconds).
const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 10_000;
/// Client-side limit of a whole operation (after a connection was obtained).
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);
/// Connections per process.
const POOL_SIZE: usize = 8;

/// Why a database call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgError {
    /// The database cannot be reached or used (down, slow, out of
    /// connections, a server-side failure).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The URL, the schema or the data is wrong (a malformed URL, a missing
    /// table, a constraint violation).
    #[error("database content is invalid: {0}")]
    Invalid(String),
}

/// A bounded pool of connections to one database (cheap to clone: clones
/// share the connections).
#[derive(Clone)]
pub struct PgPool {
    pool: Pool,
    /// `host:port/dbname`, for messages (never the password).
    target: String,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PgPool {
    /// A pool for `url` (`postgres://user:pass@host:5432/db` or
    /// `host=… dbname=…`), with `database.caFile` for `sslmode=verify-ca` /
    /// `verify-full` (see [`tls`]; a `sslrootcert=` in the URL wins).
    /// Connects nothing: connections are made on first use. A malformed URL
    /// or an unreadable CA file is [`PgError::Invalid`].
    pub fn new(url: &str, ca_file: Option<&str>) -> Result<PgPool, PgError> {
        let (mut cfg, tls) = tls::resolve(url, ca_file).map_err(PgError::Invalid)?;
        if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
            return Err(PgError::Invalid(
                "invalid database URL: it names no host (e.g. postgres://user@127.0.0.1:5432/flexgate)"
                    .into(),
            ));
        }
        let target = describe(&cfg);
        cfg.connect_timeout(CONNECT_TIMEOUT);
        // Ours first: settings given in the URL win.
        let ours = format!(
            "-c statement_timeout={STATEMENT_TIMEOUT_MS} \
             -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        );
        let options = match cfg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{ours} {o}"),
            _ => ours,
        };
        cfg.options(options);
        if cfg.get_application_name().is_none() {
            cfg.application_name("flexgate");
        }
        let manager = Manager::from_config(
            cfg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Invalid(format!("database pool: {e}")))?;
        Ok(PgPool { pool, target })
    }

    /// `host:port/dbname` of the database (no credentials).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A pooled connection (bounded by the pool timeouts).
    pub async fn client(&self) -> Result<Object, PgError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Wait) => PgError::Unavailable(format!(
                "no free PostgreSQL connection to {} within {}s (all {POOL_SIZE} busy)",
                self.target,
                POOL_TIMEOUT.as_secs()
            )),
            PoolError::Timeout(TimeoutType::Create) => PgError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: no answer within {}s",
                self.target,
                POOL_TIMEOUT.as_secs()
            )),
            PoolError::Timeout(TimeoutType::Recycle) => PgError::Unavailable(format!(
                "PostgreSQL at {} did not answer a liveness check within {}s",
                self.target,
                POOL_TIMEOUT.as_secs()
            )),
            PoolError::Backend(e) => PgError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.target,
                message(&e)
            )),
            other => PgError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {other}",
                self.target
            )),
        })
    }

    /// Runs `op` with a client-side time limit; running out of it is
    /// [`PgError::Unavailable`].
    pub async fn bounded<T, E: From<PgError>>(
        &self,
        limit: Duration,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
            Err(PgError::Unavailable(format!(
                "PostgreSQL at {} did not answer within {}s",
                self.target,
                limit.as_secs()
            ))
            .into())
        })
    }

    /// Returns the connection to the pool, or discards it when the
    /// operation failed for want of the database (`unavailable`: it may be
    /// broken or hung mid-query) or the connection is closed.
    pub fn release(&self, c: Object, unavailable: bool) {
        if unavailable || c.is_closed() {
            drop(Object::take(c));
        }
    }

    /// Maps a driver error of the step `what`: data and constraint errors
    /// are `Invalid`, everything else (connection, timeout, server state)
    /// `Unavailable`.
    pub fn error(&self, what: &str, e: tokio_postgres::Error) -> PgError {
        let Some(db) = e.as_db_error() else {
            return PgError::Unavailable(format!(
                "{what}: PostgreSQL at {}: {}",
                self.target,
                message(&e)
            ));
        };
        let code = db.code().code();
        // Only a duplicate key's detail: others (a check violation's
        // "failing row") could echo values that belong in no log.
        let detail = match (code, db.detail()) {
            ("23505", Some(d)) => format!(" ({d})"),
            _ => String::new(),
        };
        let msg = format!("{what}: {}{detail} [SQLSTATE {code}]", db.message());
        match code {
            "42P01" => PgError::Invalid(format!(
                "{what}: the config store schema is missing in {} ({}); run `flexgate migrate`",
                self.target,
                db.message()
            )),
            "57014" => PgError::Unavailable(format!(
                "{what}: statement cancelled by PostgreSQL at {} (timeout {}s)",
                self.target,
                STATEMENT_TIMEOUT_MS / 1000
            )),
            c if c.starts_with("22") || c.starts_with("23") || c.starts_with("42") => {
                PgError::Invalid(msg)
            }
            _ => PgError::Unavailable(format!("{msg} at {}", self.target)),
        }
    }
}

/// `host:port/dbname` of a config, for messages.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let port = |i: usize| {
        cfg.get_ports()
            .get(i)
            .or(cfg.get_ports().first())
            .copied()
            .unwrap_or(5432)
    };
    let hosts: Vec<String> = if cfg.get_hosts().is_empty() {
        cfg.get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{a}:{}", port(i)))
            .collect()
    } else {
        cfg.get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
            })
            .collect()
    };
    format!(
        "{}/{}",
        hosts.join(","),
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("postgres")
    )
}

/// A driver error's message (the database's own words when it has them,
/// else the error and its causes: `error connecting to server: Connection
/// refused (os error 111)`).
pub(crate) fn message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} [SQLSTATE {}]", db.message(), db.code().code());
    }
    crate::deps_tls::error_chain(e)
}
