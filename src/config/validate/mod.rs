//! Semantic validation of a read [`FileConfig`]: every problem, each with
//! its path. Values arrive parsed (a value that does not parse never gets
//! here); what is checked here are ranges, and what one value means for
//! another (a route's upstream exists, a target is not our own listener).
//! Pure: no DNS, no sockets (resolution happens when a snapshot is
//! compiled at start or reload).
//!
//! One file per section of the config, in the order of the file.

mod admin;
mod history;
mod logging;
mod proxy;
mod rate_limit;
mod routes;
mod security;
mod services;
mod upstreams;
mod webhooks;

use super::model::*;
use super::ssrf::{host_allowed, SsrfPolicy};
use super::units::Millis;
use super::upstream::TargetUrl;
use super::ConfigError;
use std::net::{IpAddr, SocketAddr};

/// Checks a whole file; returns every problem found.
pub fn validate(cfg: &FileConfig) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let e = &mut errs;
    proxy::check(e, &cfg.proxy);
    admin::check(e, cfg);
    security::check(e, &cfg.security);
    rate_limit::check(e, cfg);
    services::check(e, cfg);
    if let Some(h) = &cfg.history {
        history::check(e, h);
    }
    let outbound = Outbound::of(cfg);
    upstreams::check(e, &cfg.upstreams, &outbound);
    routes::check(e, cfg, &outbound);
    logging::check(e, &cfg.logging);
    webhooks::check(e, &cfg.webhooks, &outbound);
    errs
}

/// A duration given in the config: more than 0, at most a day.
fn check_millis(errs: &mut Vec<ConfigError>, path: String, v: Option<Millis>) {
    if let Some(m) = v {
        if m.0 == 0 {
            errs.push(ConfigError::new(path, "must be greater than 0"));
        } else if m.0 > 24 * 3_600_000 {
            errs.push(ConfigError::new(path, "must be at most 24h"));
        }
    }
}

/// A `{max, windowMs}` limit (`rateLimit.global`, a route's `rateLimit`).
fn check_limit(errs: &mut Vec<ConfigError>, path: &str, l: &LimitConfig) {
    let max = l.requests.unwrap_or(l.max);
    if max == 0 {
        errs.push(ConfigError::new(
            format!("{path}.max"),
            "must be greater than 0",
        ));
    }
    check_millis(errs, format!("{path}.windowMs"), l.window_ms.or(l.window));
}

/// What an outbound URL (an upstream's target, a route's URL) is checked
/// against: `security.allowedHosts`, the SSRF policy and the proxy's own
/// listeners (a target that is one would loop).
struct Outbound<'a> {
    allowed_hosts: &'a [String],
    policy: SsrfPolicy,
    listeners: Vec<SocketAddr>,
}

impl<'a> Outbound<'a> {
    fn of(cfg: &'a FileConfig) -> Outbound<'a> {
        Outbound {
            allowed_hosts: &cfg.security.allowed_hosts,
            policy: SsrfPolicy::from_security(&cfg.security),
            listeners: proxy::listeners(&cfg.proxy),
        }
    }

    /// False when `security.allowedHosts` is set and does not list the host.
    fn host_allowed(&self, t: &TargetUrl) -> bool {
        self.allowed_hosts.is_empty() || host_allowed(self.allowed_hosts, &t.host)
    }

    /// True when the target is one of our own listeners.
    fn loops(&self, t: &TargetUrl) -> bool {
        let local = t.host == "localhost"
            || t.host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        self.listeners.iter().any(|l| {
            l.port() == t.port
                && (l.ip().is_unspecified() && local
                    || l.ip().to_string() == t.host
                    || (l.ip().is_loopback() && local))
        })
    }
}
