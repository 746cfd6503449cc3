//! `upstreams:` — unique names, targets that are reachable and allowed,
//! settings in range.

use super::{check_millis, Outbound};
use crate::config::model::UpstreamConfig;
use crate::config::text::Written;
use crate::config::upstream::TargetUrl;
use crate::config::ConfigError;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

pub(super) fn check(e: &mut Vec<ConfigError>, upstreams: &[UpstreamConfig], out: &Outbound) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, u) in upstreams.iter().enumerate() {
        let up = format!("upstreams[{i}]");
        if u.name.is_empty() {
            e.push(ConfigError::new(format!("{up}.name"), "is required"));
        } else if let Some(j) = names.insert(&u.name, i) {
            e.push(ConfigError::new(
                format!("{up}.name"),
                format!("duplicate upstream name {:?} (also upstreams[{j}])", u.name),
            ));
        }
        check_targets(e, &up, u, out);
        check_settings(e, &up, u);
    }
}

/// `url` or `targets`: each target allowed, not ours, given once; one scheme.
fn check_targets(e: &mut Vec<ConfigError>, up: &str, u: &UpstreamConfig, out: &Outbound) {
    let mut urls: Vec<(String, &Written<TargetUrl>)> = Vec::new();
    match (&u.url, u.targets.is_empty()) {
        (Some(url), true) => urls.push((format!("{up}.url"), url)),
        (None, false) => {
            for (j, t) in u.targets.iter().enumerate() {
                let path = format!("{up}.targets[{j}].url");
                match &t.url {
                    Some(url) => urls.push((path, url)),
                    None => e.push(ConfigError::new(path, "is required")),
                }
                if t.weight == Some(0) || t.weight.is_some_and(|w| w > 10_000) {
                    e.push(ConfigError::new(
                        format!("{up}.targets[{j}].weight"),
                        "must be 1-10000",
                    ));
                }
            }
        }
        (Some(_), false) => e.push(ConfigError::new(up, "give either url or targets, not both")),
        (None, true) => e.push(ConfigError::new(
            format!("{up}.url"),
            "is required (or give targets)",
        )),
    }
    let mut seen = HashSet::new();
    let mut schemes = HashSet::new();
    for (path, url) in urls {
        let t = url.value();
        schemes.insert(t.tls);
        if !seen.insert((t.host.as_str(), t.port)) {
            e.push(ConfigError::new(path.clone(), "duplicate target"));
        }
        if !out.host_allowed(t) {
            e.push(ConfigError::new(
                path.clone(),
                format!(
                    "host {:?} is not in security.allowedHosts (add it there, or fix the URL)",
                    t.host
                ),
            ));
        }
        if let Ok(ip) = t.host.parse::<IpAddr>() {
            if let Err(m) = out.policy.check_ip(ip) {
                e.push(ConfigError::new(path.clone(), m));
            }
        }
        if out.loops(t) {
            e.push(ConfigError::new(
                path,
                format!(
                    "{:?} is FlexGate's own listener: requests would loop",
                    url.as_str()
                ),
            ));
        }
    }
    if schemes.len() > 1 {
        e.push(ConfigError::new(
            format!("{up}.targets"),
            "all targets must use the same scheme",
        ));
    }
}

/// Timeouts, retries, breaker, health check and ejection in range.
fn check_settings(e: &mut Vec<ConfigError>, up: &str, u: &UpstreamConfig) {
    for (k, v) in [
        ("timeout", u.timeout),
        ("connectTimeout", u.connect_timeout),
        ("readTimeout", u.read_timeout),
        ("writeTimeout", u.write_timeout),
        ("retryBackoff", u.retry_backoff),
        ("idleTimeout", u.idle_timeout),
    ] {
        check_millis(e, format!("{up}.{k}"), v);
    }
    if u.retries.is_some_and(|r| r > 10) {
        e.push(ConfigError::new(
            format!("{up}.retries"),
            "must be at most 10",
        ));
    }
    if let Some(cb) = &u.circuit_breaker {
        if cb.failure_threshold.is_some_and(|t| t == 0 || t > 100) {
            e.push(ConfigError::new(
                format!("{up}.circuitBreaker.failureThreshold"),
                "must be a percentage 1-100",
            ));
        }
        check_millis(
            e,
            format!("{up}.circuitBreaker.openDuration"),
            cb.open_duration,
        );
    }
    if let Some(hc) = &u.health_check {
        if hc.interval.is_some_and(|m| m.0 < 100) {
            e.push(ConfigError::new(
                format!("{up}.healthCheck.interval"),
                "must be at least 100ms",
            ));
        }
        check_millis(e, format!("{up}.healthCheck.timeout"), hc.timeout);
        for (k, v) in [
            ("healthyThreshold", hc.healthy_threshold),
            ("unhealthyThreshold", hc.unhealthy_threshold),
        ] {
            if v == Some(0) {
                e.push(ConfigError::new(
                    format!("{up}.healthCheck.{k}"),
                    "must be greater than 0",
                ));
            }
        }
    }
    if let Some(pv) = &u.passive {
        if pv.max_failures == Some(0) {
            e.push(ConfigError::new(
                format!("{up}.passive.maxFailures"),
                "must be greater than 0",
            ));
        }
        check_millis(e, format!("{up}.passive.ejectDuration"), pv.eject_duration);
    }
}
