//! `proxy:` — listeners, default timeouts and edge limits.

use super::check_millis;
use crate::config::model::ProxySection;
use crate::config::ConfigError;
use std::net::SocketAddr;

pub(super) fn check(e: &mut Vec<ConfigError>, p: &ProxySection) {
    if p.port == Some(0) {
        e.push(ConfigError::new("proxy.port", "must be 1-65535"));
    }
    if let Some(t) = p.threads {
        if t == 0 || t > 256 {
            e.push(ConfigError::new("proxy.threads", "must be 1-256"));
        }
    }
    for (k, v) in [
        ("timeout", p.timeout),
        ("connectTimeout", p.connect_timeout),
        ("readTimeout", p.read_timeout),
        ("writeTimeout", p.write_timeout),
        ("gracePeriod", p.grace_period),
        ("limits.headerTimeout", p.limits.header_timeout),
        ("limits.keepaliveTimeout", p.limits.keepalive_timeout),
    ] {
        check_millis(e, format!("proxy.{k}"), v);
    }
    if p.max_body_size.is_some_and(|s| s.0 == 0) {
        e.push(ConfigError::new(
            "proxy.maxBodySize",
            "must be greater than 0",
        ));
    }
    if let Some(t) = &p.tls {
        if t.listen.parse::<SocketAddr>().is_err() {
            e.push(ConfigError::new(
                "proxy.tls.listen",
                "must be an address like \"0.0.0.0:3443\"",
            ));
        }
        for (k, f) in [("cert", &t.cert), ("key", &t.key)] {
            if f.is_empty() {
                e.push(ConfigError::new(format!("proxy.tls.{k}"), "is required"));
            }
        }
    }
    let l = &p.limits;
    if l.max_header_bytes
        .is_some_and(|b| b.0 < 1024 || b.0 > 1 << 20)
    {
        e.push(ConfigError::new(
            "proxy.limits.maxHeaderBytes",
            "must be 1kb-1mb",
        ));
    }
    if l.max_headers.is_some_and(|n| n == 0 || n > 256) {
        e.push(ConfigError::new("proxy.limits.maxHeaders", "must be 1-256"));
    }
    if l.max_uri_bytes.is_some_and(|b| b.0 < 256 || b.0 > 1 << 20) {
        e.push(ConfigError::new(
            "proxy.limits.maxUriBytes",
            "must be 256b-1mb",
        ));
    }
    for (k, v) in [
        ("limits.maxConnections", l.max_connections),
        ("limits.maxConnectionsPerIp", l.max_connections_per_ip),
        (
            "limits.keepaliveRequests",
            l.keepalive_requests.map(|n| n as usize),
        ),
        ("maxInFlight", p.max_in_flight),
    ] {
        if v == Some(0) {
            e.push(ConfigError::new(
                format!("proxy.{k}"),
                "must be greater than 0",
            ));
        }
    }
}

/// Every listen address of the proxy (for loop detection).
pub(super) fn listeners(p: &ProxySection) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = match &p.listen {
        Some(l) => l.to_vec().iter().map(|a| *a.value()).collect(),
        None => vec![SocketAddr::from((
            [0, 0, 0, 0],
            p.port.unwrap_or(crate::config::DEFAULT_PORT),
        ))],
    };
    if let Some(a) = p.tls.as_ref().and_then(|t| t.listen.parse().ok()) {
        v.push(a);
    }
    v
}
