//! `routes:` — unique ids, an upstream that exists (or an allowed URL),
//! options that agree, and no route hidden behind another.

use super::{check_limit, check_millis, Outbound};
use crate::config::model::{FileConfig, RouteAuth, RouteConfig};
use crate::config::upstream::{TargetUrl, UpstreamRef};
use crate::config::ConfigError;
use std::collections::{HashMap, HashSet};

pub(super) fn check(e: &mut Vec<ConfigError>, cfg: &FileConfig, out: &Outbound) {
    let upstreams: HashSet<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
    let mut ids: HashMap<String, usize> = HashMap::new();
    // (path, host, methods) of the enabled routes: a second one never matches.
    let mut shapes: HashMap<(&str, Option<&str>, Vec<&str>), usize> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let rp = format!("routes[{i}]");
        if let Some(id) = &r.id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                e.push(ConfigError::new(
                    format!("{rp}.id"),
                    "must be 1-64 letters, digits, '-', '_' or '.'",
                ));
            }
        }
        let id = r.id.clone().unwrap_or_else(|| format!("route-{i}"));
        if let Some(j) = ids.insert(id.clone(), i) {
            e.push(ConfigError::new(
                format!("{rp}.id"),
                format!("duplicate route id {id:?} (also routes[{j}])"),
            ));
        }
        if r.path.is_none() {
            e.push(ConfigError::new(format!("{rp}.path"), "is required"));
        }
        check_upstream(e, &rp, r, &upstreams, out);
        if r.auth == Some(RouteAuth::Jwt) && cfg.security.jwt.is_none() {
            e.push(ConfigError::new(
                format!("{rp}.auth"),
                "\"jwt\" needs a security.jwt section",
            ));
        }
        check_options(e, &rp, r);
        if let (Some(path), true) = (&r.path, r.enabled != Some(false)) {
            let mut methods: Vec<&str> = r.methods.iter().map(|m| m.value().as_str()).collect();
            methods.sort_unstable();
            methods.dedup();
            let host = r.host.as_ref().map(|h| h.as_str());
            if let Some(j) = shapes.insert((path.as_str(), host, methods), i) {
                e.push(ConfigError::new(
                    format!("{rp}.path"),
                    format!(
                        "same path, host and methods as routes[{j}]: one of them can never match"
                    ),
                ));
            }
        }
    }
}

/// `upstream` (a known name or a URL) or `targetUrl`; a URL must be an
/// allowed host and not our own listener.
fn check_upstream(
    e: &mut Vec<ConfigError>,
    rp: &str,
    r: &RouteConfig,
    upstreams: &HashSet<&str>,
    out: &Outbound,
) {
    let url: Option<(&TargetUrl, &str)> = match (&r.upstream, &r.target_url) {
        (Some(up), None) => match up.value() {
            UpstreamRef::Url(t) => Some((t, up.as_str())),
            UpstreamRef::Name(name) => {
                if !upstreams.contains(name.as_str()) {
                    e.push(ConfigError::new(
                        format!("{rp}.upstream"),
                        format!("unknown upstream {name:?}"),
                    ));
                }
                None
            }
        },
        (None, Some(url)) => Some((url.value(), url.as_str())),
        (Some(_), Some(_)) => {
            e.push(ConfigError::new(
                rp,
                "give either upstream or targetUrl, not both",
            ));
            None
        }
        (None, None) => {
            e.push(ConfigError::new(format!("{rp}.upstream"), "is required"));
            None
        }
    };
    if let Some((t, text)) = url {
        if !out.host_allowed(t) {
            e.push(ConfigError::new(
                format!("{rp}.upstream"),
                format!("host {:?} is not in security.allowedHosts", t.host),
            ));
        }
        if out.loops(t) {
            e.push(ConfigError::new(
                format!("{rp}.upstream"),
                format!("{text:?} is FlexGate's own listener: requests would loop"),
            ));
        }
    }
}

/// Timeout, limit, rewrite and caps in range and in agreement.
fn check_options(e: &mut Vec<ConfigError>, rp: &str, r: &RouteConfig) {
    check_millis(e, format!("{rp}.timeout"), r.timeout);
    if let Some(l) = &r.rate_limit {
        check_limit(e, &format!("{rp}.rateLimit"), l);
    }
    if r.strip_prefix == Some(true) && r.rewrite.is_some() {
        e.push(ConfigError::new(
            format!("{rp}.rewrite"),
            "give either stripPrefix or rewrite, not both",
        ));
    }
    if let Some(rw) = &r.rewrite {
        if !rw.starts_with('/') || rw.contains(char::is_whitespace) {
            e.push(ConfigError::new(
                format!("{rp}.rewrite"),
                "must be a path starting with /",
            ));
        }
    }
    if r.max_in_flight == Some(0) {
        e.push(ConfigError::new(
            format!("{rp}.maxInFlight"),
            "must be greater than 0",
        ));
    }
    if r.max_body_size.is_some_and(|s| s.0 == 0) {
        e.push(ConfigError::new(
            format!("{rp}.maxBodySize"),
            "must be greater than 0",
        ));
    }
}
