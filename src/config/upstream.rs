//! How upstreams are written: target URLs, a route's upstream reference,
//! the consistent-hash key, the health-check path.

use super::text::{is_token, FromText};
use std::fmt;
use std::net::IpAddr;

/// A parsed upstream target URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `http://host[:port]` / `https://host[:port]` (an optional trailing `/`).
pub fn parse_target_url(url: &str) -> Result<TargetUrl, String> {
    // Messages show the URL without a password (they are logged).
    let shown = super::redact::url(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{shown:?} must start with http:// or https://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(format!("{shown:?} has no host"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{shown:?} must be scheme://host[:port] only (no path, query or credentials; use a route rewrite for paths)"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{shown:?}: unterminated IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("{shown:?}: invalid port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("{shown:?}: unexpected text after IPv6 address")),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("{shown:?}: invalid port {p:?}"))?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if port == 0 {
        return Err(format!("{shown:?}: port 0 is not a valid target"));
    }
    let valid_host = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !valid_host {
        return Err(format!("{shown:?}: invalid host {host:?}"));
    }
    Ok(TargetUrl {
        tls,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// An outbound URL with a path (a webhook, a JWKS document): its target
/// (`scheme://host[:port]`, as [`parse_target_url`]) and the request target
/// sent to it (path and query; `/` when absent). Credentials and fragments
/// are refused.
pub fn parse_endpoint_url(url: &str) -> Result<(TargetUrl, String), String> {
    let shown = super::redact::url(url);
    let scheme_end = url
        .find("://")
        .ok_or_else(|| format!("{shown:?} must start with http:// or https://"))?
        + 3;
    if url.contains('#') {
        return Err(format!("{shown:?} must not hold a fragment (#)"));
    }
    if url.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(format!(
            "{shown:?} must not hold spaces or control characters"
        ));
    }
    let (base, path) = match url[scheme_end..].find(['/', '?']) {
        Some(i) => (&url[..scheme_end + i], &url[scheme_end + i..]),
        None => (url, "/"),
    };
    let target = parse_target_url(base)?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("{shown:?}: invalid path {path:?}"));
    }
    Ok((target, path))
}

impl TargetUrl {
    /// The `Host` header naming this target: the host, with the port when
    /// it is not the scheme's default (an IPv6 address in brackets then).
    pub fn host_header(&self) -> http::HeaderValue {
        let default_port = if self.tls { 443 } else { 80 };
        let text = if self.port == default_port {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        http::HeaderValue::from_str(&text)
            .expect("a parsed target's host is letters, digits, '-', '.' or an IP address")
    }
}

impl FromText for TargetUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_target_url(text)
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a URL like \"http://10.0.0.5:8080\" or \"https://api.example.com\"")
    }
}

/// A route's `upstream`: the name of an upstream, or a URL (an upstream of
/// its own, admin-API style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamRef {
    Name(String),
    Url(TargetUrl),
}

impl UpstreamRef {
    /// The upstream's name, when it is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            UpstreamRef::Name(n) => Some(n),
            UpstreamRef::Url(_) => None,
        }
    }
}

impl FromText for UpstreamRef {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.contains("://") {
            parse_target_url(text).map(UpstreamRef::Url)
        } else {
            Ok(UpstreamRef::Name(text.to_string()))
        }
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an upstream name or a URL")
    }
}

/// What the consistent hash of an upstream is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// `clientIp` (the default).
    ClientIp,
    /// `header:<Name>`.
    Header(http::HeaderName),
}

impl FromText for HashKey {
    fn from_text(text: &str) -> Result<Self, String> {
        if text == "clientIp" {
            return Ok(HashKey::ClientIp);
        }
        text.strip_prefix("header:")
            .filter(|name| is_token(name))
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
            .map(HashKey::Header)
            .ok_or_else(|| format!("{text:?} is not \"clientIp\" or \"header:<Name>\""))
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"clientIp\" or \"header:<Name>\"")
    }
}

/// The path an active health check requests (`/health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePath(pub http::Uri);

impl FromText for ProbePath {
    fn from_text(text: &str) -> Result<Self, String> {
        let refuse = || "must start with / and contain no spaces".to_string();
        if !text.starts_with('/') || text.contains(char::is_whitespace) {
            return Err(refuse());
        }
        text.parse::<http::Uri>()
            .ok()
            .filter(|u| u.scheme().is_none() && u.authority().is_none())
            .map(ProbePath)
            .ok_or_else(|| format!("{text:?} is not a request path"))
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path starting with /")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        assert_eq!(
            parse_target_url("https://api.example.com").unwrap(),
            TargetUrl {
                tls: true,
                host: "api.example.com".into(),
                port: 443
            }
        );
        assert_eq!(parse_target_url("http://[::1]:8080/").unwrap().port, 8080);
        assert!(parse_target_url("ftp://x").is_err());
        assert!(parse_target_url("http://x/path").is_err());
        assert!(parse_target_url("http://user@x").is_err());
        assert!(parse_target_url("http://x:0").is_err());
    }

    #[test]
    fn host_headers_carry_a_port_only_when_not_the_default() {
        let h = |u: &str| parse_target_url(u).unwrap().host_header();
        assert_eq!(h("https://API.example.com"), "api.example.com");
        assert_eq!(h("http://a:8080"), "a:8080");
        assert_eq!(h("http://[::1]:8080"), "[::1]:8080");
    }

    #[test]
    fn hash_keys_and_probe_paths() {
        assert_eq!(HashKey::from_text("clientIp").unwrap(), HashKey::ClientIp);
        assert_eq!(
            HashKey::from_text("header:X-User").unwrap(),
            HashKey::Header(http::HeaderName::from_static("x-user"))
        );
        assert!(HashKey::from_text("header:").is_err());
        assert!(HashKey::from_text("cookie").is_err());
        assert!(ProbePath::from_text("/health?deep=1").is_ok());
        assert!(ProbePath::from_text("health").is_err());
        assert!(ProbePath::from_text("/a b").is_err());
    }
}
