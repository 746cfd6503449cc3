//! The access log: one structured line per request (JSON or text, per
//! `logging.format`), emitted as a `tracing` event with target
//! `flexgate::access`.
//!
//! Lines leave the request path through the bounded, lossy writer set up in
//! `logging.rs` (a full buffer drops lines and never blocks a request).
//! Sampling (`logging.sampling`) is decided by the caller before building the
//! record.

use std::net::IpAddr;
use std::time::Duration;

/// Everything logged about one request.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub client_ip: IpAddr,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub attempts: u32,
    pub consumer: Option<&'a str>,
    pub error: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Emits the record.
pub fn write(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "flexgate::access",
        request_id = r.request_id,
        method = r.method,
        path = r.path,
        host = r.host,
        status = r.status,
        route = r.route.unwrap_or("-"),
        upstream = r.upstream.unwrap_or("-"),
        target_url = r.target.unwrap_or("-"),
        client_ip = %r.client_ip,
        duration_ms = r.duration.as_secs_f64() * 1000.0,
        upstream_ms = r.upstream_duration.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        attempts = r.attempts,
        consumer = r.consumer.unwrap_or("-"),
        error = r.error.unwrap_or("-"),
        user_agent = r.user_agent.unwrap_or("-"),
        "access"
    );
}
