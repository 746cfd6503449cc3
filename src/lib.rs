//! FlexGate: an edge API gateway on Pingora.
//!
//! Parts (one module each):
//! - [`config`] — the YAML model with typed values, parsed once, and its
//!   validation (every error with its path);
//! - [`snapshot`] — compiles config into the immutable request-time view
//!   (route table, upstream runtimes, key index);
//! - [`reload`] — the single writer of the live snapshot (SIGHUP, file change);
//! - [`proxy`] — the Pingora data plane (hygiene, routing, auth, upstreams, errors);
//! - [`health`] — active health checks;
//! - [`history`] — request history in PostgreSQL (queue, writer, roll-ups);
//! - [`accesslog`] / [`logging`] — structured access log and log set-up;
//! - [`runtime_dir`] — the private directory of the upgrade socket and pid file;
//! - [`deps_tls`] — TLS to PostgreSQL, Redis and NATS;
//! - [`pg`] — connections to PostgreSQL (TLS connector, bounded pool, error text),
//!   shared by the config store, the migrations and the request history;
//! - [`clock`] — wall-clock seconds and RFC 3339 text;
//! - [`atomic_file`] — files replaced whole (temp file, fsync, rename);
//! - [`webhooks`] — signed, retried, coalesced, durable delivery of events;
//! - [`server`] — process assembly; [`cli`] — the command line; [`remote`] —
//!   `flexgate config dump | diff | apply` against a running gateway;
//!   [`upgrade`] — `flexgate upgrade`, the whole zero-downtime binary upgrade.

pub mod accesslog;
pub mod admin;
pub mod atomic_file;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deps_tls;
pub mod events;
pub mod health;
pub mod history;
pub mod jwt;
pub mod keys;
pub mod limit;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod proxy;
pub mod reload;
pub mod remote;
pub mod runtime_dir;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod upgrade;
pub mod webhooks;
