//! `security:` — outbound host list, API keys, JWT settings.

use crate::config::credentials::verification_key;
use crate::config::model::{AuthSection, JwtSection, SecuritySection};
use crate::config::ssrf::{host_allowed, SsrfPolicy};
use crate::config::upstream::parse_target_url;
use crate::config::ConfigError;
use std::collections::HashSet;
use std::net::IpAddr;

pub(super) fn check(e: &mut Vec<ConfigError>, s: &SecuritySection) {
    for (i, h) in s.allowed_hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
            e.push(ConfigError::new(
                format!("security.allowedHosts[{i}]"),
                format!("{h:?} must be a host name or \"*.domain\""),
            ));
        }
    }
    if let Some(a) = &s.auth {
        check_keys(e, a);
    }
    if let Some(j) = &s.jwt {
        check_jwt(e, j, s);
    }
}

/// `security.auth.keys`: each given once.
fn check_keys(e: &mut Vec<ConfigError>, a: &AuthSection) {
    let mut seen = HashSet::new();
    for (i, k) in a.keys.iter().enumerate() {
        let path = format!("security.auth.keys[{i}].key");
        match &k.key {
            None => e.push(ConfigError::new(
                path,
                "is required: the lowercase hex SHA-256 of the key (`flexgate keys hash KEY` prints it)",
            )),
            Some(d) if !seen.insert(d.value().0) => {
                e.push(ConfigError::new(path, "duplicate key"))
            }
            Some(_) => {}
        }
    }
}

/// `security.jwt`: something to verify with, keys of their algorithm's
/// kind, a JWKS URL the SSRF policy lets through.
fn check_jwt(e: &mut Vec<ConfigError>, j: &JwtSection, s: &SecuritySection) {
    if j.secret.is_none() && j.public_keys.is_empty() && j.jwks_url.is_none() {
        e.push(ConfigError::new(
            "security.jwt",
            "give a secret (HS256), publicKeys or a jwksUrl",
        ));
    }
    if j.secret.as_ref().is_some_and(|x| x.len() < 16) {
        e.push(ConfigError::new(
            "security.jwt.secret",
            "must be at least 16 bytes (32 or more recommended)",
        ));
    }
    for (i, k) in j.public_keys.iter().enumerate() {
        if let Err((field, m)) = verification_key(k.algorithm, k.pem.as_ref()) {
            e.push(ConfigError::new(
                format!("security.jwt.publicKeys[{i}].{field}"),
                m,
            ));
        }
    }
    if let Some(url) = &j.jwks_url {
        let base = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| &url[..i + 3 + j]))
            .unwrap_or(url);
        match parse_target_url(base) {
            Err(m) => e.push(ConfigError::new("security.jwt.jwksUrl", m)),
            Ok(t) => {
                if !s.allowed_hosts.is_empty() && !host_allowed(&s.allowed_hosts, &t.host) {
                    e.push(ConfigError::new(
                        "security.jwt.jwksUrl",
                        format!("host {:?} is not in security.allowedHosts", t.host),
                    ));
                }
                if let Ok(ip) = t.host.parse::<IpAddr>() {
                    if let Err(m) = SsrfPolicy::from_security(s).check_ip(ip) {
                        e.push(ConfigError::new("security.jwt.jwksUrl", m));
                    }
                }
            }
        }
    }
}
