//! Semantic validation of a parsed [`FileConfig`]: every problem, each with
//! its path. Pure: no DNS, no sockets (resolution happens when a snapshot is
//! compiled at start or reload).

use super::model::*;
use super::units::Millis;
use super::ConfigError;
use crate::snapshot::router::PathPattern;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

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

/// Parses a CIDR or a single address (`10.0.0.0/8`, `169.254.169.254`, `fd00:ec2::254`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

/// The outbound-address policy (SSRF): `security.blockedIPs` plus the
/// built-in cloud-metadata set, minus `security.allowedIPs`.
#[derive(Clone, Debug, Default)]
pub struct SsrfPolicy {
    pub blocked: Vec<IpNet>,
    pub exempt: Vec<IpNet>,
}

/// Always blocked unless exempted: cloud metadata endpoints and link-local.
pub const METADATA_BLOCK: [&str; 3] = ["169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10"];

impl SsrfPolicy {
    pub fn from_security(s: &SecuritySection) -> SsrfPolicy {
        let mut blocked: Vec<IpNet> = METADATA_BLOCK
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect();
        blocked.extend(s.blocked_ips.iter().filter_map(|c| parse_cidr(c).ok()));
        SsrfPolicy {
            blocked,
            exempt: s
                .allowed_ips
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
        }
    }

    /// `Err` names the block that refuses `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match self.blocked.iter().find(|n| n.contains(&ip)) {
            Some(net) => Err(format!("address {ip} is blocked by the SSRF policy ({net}; see security.blockedIPs / security.allowedIPs)")),
            None => Ok(()),
        }
    }
}

/// True when `host` matches an `allowedHosts` pattern (`api.example.com`, `*.internal.corp`).
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => p == host,
        }
    })
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(&b))
}

fn check_millis(errs: &mut Vec<ConfigError>, path: String, v: Option<Millis>) {
    if let Some(m) = v {
        if m.0 == 0 {
            errs.push(ConfigError::new(path, "must be greater than 0"));
        } else if m.0 > 24 * 3_600_000 {
            errs.push(ConfigError::new(path, "must be at most 24h"));
        }
    }
}

/// `history:` bounds (each error names its field).
fn check_history(errs: &mut Vec<ConfigError>, h: &HistorySection) {
    let mut range = |field: &str, value: Option<u64>, min: u64, max: u64, unit: &str| {
        if let Some(v) = value {
            if v < min || v > max {
                errs.push(ConfigError::new(
                    format!("history.{field}"),
                    format!("must be {min}{unit}-{max}{unit} (got {v}{unit})"),
                ));
            }
        }
    };
    range(
        "queueSize",
        h.queue_size.map(|v| v as u64),
        1,
        10_000_000,
        "",
    );
    range("batchSize", h.batch_size.map(|v| v as u64), 1, 100_000, "");
    range(
        "flushInterval",
        h.flush_interval.map(|m| m.0),
        1,
        60_000,
        " ms",
    );
    range(
        "retentionDays",
        h.retention_days.map(u64::from),
        1,
        3_650,
        "",
    );
    range(
        "rollupRetentionDays",
        h.rollup_retention_days.map(u64::from),
        1,
        36_500,
        "",
    );
    range(
        "maintenanceInterval",
        h.maintenance_interval.map(|m| m.0),
        100,
        24 * 3_600_000,
        " ms",
    );
    if let Some(id) = &h.node_id {
        if id.trim().is_empty() || id.len() > 128 {
            errs.push(ConfigError::new(
                "history.nodeId",
                "must be 1-128 characters, not blank",
            ));
        }
    }
}

fn check_cidrs(errs: &mut Vec<ConfigError>, path: &str, list: &[String]) {
    for (i, c) in list.iter().enumerate() {
        if let Err(m) = parse_cidr(c) {
            errs.push(ConfigError::new(format!("{path}[{i}]"), m));
        }
    }
}

fn check_headers(errs: &mut Vec<ConfigError>, path: &str, rules: &Option<HeaderRules>) {
    let Some(r) = rules else { return };
    for (name, value) in &r.add {
        if !is_token(name) || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(ConfigError::new(
                format!("{path}.add.{name}"),
                "invalid header name",
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            errs.push(ConfigError::new(
                format!("{path}.add.{name}"),
                "invalid header value (control characters are not allowed)",
            ));
        }
    }
    for (i, name) in r.remove.iter().enumerate() {
        if !is_token(name) {
            errs.push(ConfigError::new(
                format!("{path}.remove[{i}]"),
                "invalid header name",
            ));
        }
    }
}

fn check_limit(errs: &mut Vec<ConfigError>, path: &str, l: &LimitConfig) {
    let max = l.requests.unwrap_or(l.max);
    if max == 0 {
        errs.push(ConfigError::new(
            format!("{path}.max"),
            "must be greater than 0",
        ));
    }
    check_millis(errs, format!("{path}.windowMs"), l.window_ms.or(l.window));
    if crate::limit::LimitBy::parse(l.by.as_deref()).is_none() {
        errs.push(ConfigError::new(
            format!("{path}.by"),
            "must be \"ip\", \"consumer\" or \"all\"",
        ));
    }
}

/// Every listen address of the proxy (for loop detection), from the model.
fn own_listeners(cfg: &FileConfig) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = match &cfg.proxy.listen {
        Some(l) => l.to_vec().iter().filter_map(|s| s.parse().ok()).collect(),
        None => vec![SocketAddr::from((
            [0, 0, 0, 0],
            cfg.proxy.port.unwrap_or(super::DEFAULT_PORT),
        ))],
    };
    if let Some(t) = &cfg.proxy.tls {
        if let Ok(a) = t.listen.parse() {
            v.push(a);
        }
    }
    v
}

/// True when a target `host:port` is one of our own listeners (a loop).
fn is_own_listener(listeners: &[SocketAddr], host: &str, port: u16) -> bool {
    let local = host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback() || ip.is_unspecified())
            .unwrap_or(false);
    listeners.iter().any(|l| {
        l.port() == port
            && (l.ip().is_unspecified() && local
                || l.ip().to_string() == host
                || (l.ip().is_loopback() && local))
    })
}

/// Checks a whole file; returns every problem found.
pub fn validate(cfg: &FileConfig) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let e = &mut errs;
    let p = &cfg.proxy;

    // proxy
    if let Some(l) = &p.listen {
        for (i, a) in l.to_vec().iter().enumerate() {
            if a.parse::<SocketAddr>().is_err() {
                let path = match l {
                    OneOrMany::One(_) => "proxy.listen".to_string(),
                    OneOrMany::Many(_) => format!("proxy.listen[{i}]"),
                };
                e.push(ConfigError::new(
                    path,
                    format!("{a:?} is not an address like \"0.0.0.0:3000\" or \"[::]:3000\""),
                ));
            }
        }
    }
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
    check_cidrs(e, "proxy.trustedProxies", &p.trusted_proxies);
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
    if l.max_connections == Some(0) {
        e.push(ConfigError::new(
            "proxy.limits.maxConnections",
            "must be greater than 0",
        ));
    }
    if l.max_connections_per_ip == Some(0) {
        e.push(ConfigError::new(
            "proxy.limits.maxConnectionsPerIp",
            "must be greater than 0",
        ));
    }
    if l.keepalive_requests == Some(0) {
        e.push(ConfigError::new(
            "proxy.limits.keepaliveRequests",
            "must be greater than 0",
        ));
    }
    if p.max_in_flight == Some(0) {
        e.push(ConfigError::new(
            "proxy.maxInFlight",
            "must be greater than 0",
        ));
    }
    if let Some(v) = &p.via_name {
        if !is_token(v) {
            e.push(ConfigError::new(
                "proxy.viaName",
                "must be a token (letters, digits, -._)",
            ));
        }
    }

    // admin
    if let Some(a) = &cfg.admin.listen {
        if a.parse::<SocketAddr>().is_err() {
            e.push(ConfigError::new(
                "admin.listen",
                format!("{a:?} is not an address like \"127.0.0.1:9180\""),
            ));
        }
    }
    if let Some(n) = cfg.admin.max_connections {
        if n == 0 || n > 100_000 {
            e.push(ConfigError::new("admin.maxConnections", "must be 1-100000"));
        }
    }
    for (i, h) in cfg.admin.allowed_hosts.iter().enumerate() {
        if h.trim().is_empty() || h.contains(['*', '/', ' ', '@']) {
            e.push(ConfigError::new(
                format!("admin.allowedHosts[{i}]"),
                format!("{h:?} must be a host name or address, without a port"),
            ));
        }
    }
    e.extend(super::secrets::unresolved_files(cfg));
    if let Some(ks) = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.key_store.as_deref())
    {
        if ks.trim().is_empty() || ks.contains('\0') {
            e.push(ConfigError::new(
                "security.auth.keyStore",
                "must be a file name (relative to the config file's folder)",
            ));
        }
    }

    // security
    let s = &cfg.security;
    for (i, h) in s.allowed_hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
            e.push(ConfigError::new(
                format!("security.allowedHosts[{i}]"),
                format!("{h:?} must be a host name or \"*.domain\""),
            ));
        }
    }
    check_cidrs(e, "security.blockedIPs", &s.blocked_ips);
    check_cidrs(e, "security.allowIps", &s.allow_ips);
    check_cidrs(e, "security.denyIps", &s.deny_ips);
    check_cidrs(e, "security.allowedIPs", &s.allowed_ips);
    let policy = SsrfPolicy::from_security(s);
    if let Some(a) = &s.auth {
        if let Some(k) = &a.kind {
            if k != "apiKey" {
                e.push(ConfigError::new(
                    "security.auth.type",
                    format!("{k:?} is not supported; use \"apiKey\""),
                ));
            }
        }
        if let Some(h) = &a.header {
            if !is_token(h) {
                e.push(ConfigError::new(
                    "security.auth.header",
                    "invalid header name",
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, k) in a.keys.iter().enumerate() {
            let ok = k.key.len() == 64
                && k.key
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                e.push(ConfigError::new(
                    format!("security.auth.keys[{i}].key"),
                    // The value is not repeated: it may be a key pasted
                    // in by mistake, and this message is logged.
                    "is not a SHA-256 digest: give the lowercase hex SHA-256 of the key (64 characters; `flexgate keys hash KEY` prints it)",
                ));
            } else if !seen.insert(&k.key) {
                e.push(ConfigError::new(
                    format!("security.auth.keys[{i}].key"),
                    "duplicate key",
                ));
            }
        }
    }

    if let Some(j) = &s.jwt {
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
        for (i, a) in j.algorithms.iter().enumerate() {
            if !["HS256", "RS256", "ES256"].contains(&a.as_str()) {
                e.push(ConfigError::new(
                    format!("security.jwt.algorithms[{i}]"),
                    format!("{a:?} is not HS256, RS256 or ES256"),
                ));
            }
        }
        if let Err(m) = crate::jwt::inline_keys(j) {
            let (path, msg) = m
                .split_once(": ")
                .unwrap_or(("security.jwt.publicKeys", &m));
            e.push(ConfigError::new(path, msg));
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
        for (claim, header) in &j.forward_claims {
            if !is_token(header) {
                e.push(ConfigError::new(
                    format!("security.jwt.forwardClaims.{claim}"),
                    "invalid header name",
                ));
            }
        }
    }

    // rateLimit
    let r = &cfg.rate_limit;
    match r.backend.as_deref() {
        None | Some("memory") => {}
        Some("redis") => {
            let has_url = r.redis.as_ref().and_then(|x| x.url.as_ref()).is_some()
                || cfg.redis.as_ref().and_then(|x| x.url.as_ref()).is_some()
                || std::env::var("REDIS_URL").is_ok();
            if !has_url {
                e.push(ConfigError::new(
                    "rateLimit.redis.url",
                    "is required for backend \"redis\" (or set REDIS_URL)",
                ));
            }
        }
        Some(o) => e.push(ConfigError::new(
            "rateLimit.backend",
            format!("{o:?} is not \"memory\" or \"redis\""),
        )),
    }
    if let Some(g) = &r.global {
        check_limit(e, "rateLimit.global", g);
    }
    if r.ipv6_prefix.is_some_and(|p| !(1..=128).contains(&p)) {
        e.push(ConfigError::new(
            "rateLimit.ipv6Prefix",
            "must be a prefix length from 1 to 128",
        ));
    }
    if let Some(f) = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.failure_limit.as_ref())
    {
        let path = "security.auth.failureLimit";
        check_millis(e, format!("{path}.windowMs"), f.window_ms.or(f.window));
        if !matches!(f.by.as_deref(), None | Some("ip")) {
            e.push(ConfigError::new(
                format!("{path}.by"),
                "failed authentications are counted per client address: only \"ip\"",
            ));
        }
        if f.message.is_some() {
            e.push(ConfigError::new(
                format!("{path}.message"),
                "is not used here: the 429 says the address has too many failed authentications",
            ));
        }
    }
    for (i, pr) in r.per_route.iter().enumerate() {
        if let Err(m) = PathPattern::parse(&pr.path) {
            e.push(ConfigError::new(format!("rateLimit.perRoute[{i}].path"), m));
        }
        if pr.max == 0 {
            e.push(ConfigError::new(
                format!("rateLimit.perRoute[{i}].max"),
                "must be greater than 0",
            ));
        }
        check_millis(e, format!("rateLimit.perRoute[{i}].windowMs"), pr.window_ms);
        if crate::limit::LimitBy::parse(pr.by.as_deref()).is_none() {
            e.push(ConfigError::new(
                format!("rateLimit.perRoute[{i}].by"),
                "must be \"ip\", \"consumer\" or \"all\"",
            ));
        }
    }
    for (key, sec) in [
        ("database", &cfg.database),
        ("redis", &cfg.redis),
        ("nats", &cfg.nats),
    ] {
        if let Some(u) = sec.as_ref().and_then(|s| s.url.as_ref()) {
            let scheme_ok = match key {
                "database" => u.starts_with("postgres://") || u.starts_with("postgresql://"),
                "redis" => u.starts_with("redis://") || u.starts_with("rediss://"),
                _ => u.starts_with("nats://") || u.starts_with("tls://"),
            };
            if !scheme_ok {
                e.push(ConfigError::new(
                    format!("{key}.url"),
                    format!("{:?} has the wrong scheme for {key}", super::redact::url(u)),
                ));
            }
        }
    }

    if let Some(h) = &cfg.history {
        check_history(e, h);
    }

    // upstreams
    let listeners = own_listeners(cfg);
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let up = format!("upstreams[{i}]");
        if u.name.is_empty() {
            e.push(ConfigError::new(format!("{up}.name"), "is required"));
        } else if let Some(j) = names.insert(&u.name, i) {
            e.push(ConfigError::new(
                format!("{up}.name"),
                format!("duplicate upstream name {:?} (also upstreams[{j}])", u.name),
            ));
        }
        let mut urls: Vec<(String, &str)> = Vec::new();
        match (&u.url, u.targets.is_empty()) {
            (Some(url), true) => urls.push((format!("{up}.url"), url)),
            (None, false) => {
                for (j, t) in u.targets.iter().enumerate() {
                    urls.push((format!("{up}.targets[{j}].url"), &t.url));
                    if t.weight == Some(0) || t.weight.is_some_and(|w| w > 10_000) {
                        e.push(ConfigError::new(
                            format!("{up}.targets[{j}].weight"),
                            "must be 1-10000",
                        ));
                    }
                }
            }
            (Some(_), false) => e.push(ConfigError::new(
                up.clone(),
                "give either url or targets, not both",
            )),
            (None, true) => e.push(ConfigError::new(
                format!("{up}.url"),
                "is required (or give targets)",
            )),
        }
        let mut seen_targets = HashSet::new();
        let mut schemes = HashSet::new();
        for (path, url) in urls {
            match parse_target_url(url) {
                Err(m) => e.push(ConfigError::new(path, m)),
                Ok(t) => {
                    schemes.insert(t.tls);
                    if !seen_targets.insert((t.host.clone(), t.port)) {
                        e.push(ConfigError::new(path.clone(), "duplicate target"));
                    }
                    if !s.allowed_hosts.is_empty() && !host_allowed(&s.allowed_hosts, &t.host) {
                        e.push(ConfigError::new(
                            path.clone(),
                            format!("host {:?} is not in security.allowedHosts (add it there, or fix the URL)", t.host),
                        ));
                    }
                    if let Ok(ip) = t.host.parse::<IpAddr>() {
                        if let Err(m) = policy.check_ip(ip) {
                            e.push(ConfigError::new(path.clone(), m));
                        }
                    }
                    if is_own_listener(&listeners, &t.host, t.port) {
                        e.push(ConfigError::new(
                            path,
                            format!("{url:?} is FlexGate's own listener: requests would loop"),
                        ));
                    }
                }
            }
        }
        if schemes.len() > 1 {
            e.push(ConfigError::new(
                format!("{up}.targets"),
                "all targets must use the same scheme",
            ));
        }
        match u.load_balancing.as_deref() {
            None | Some("roundRobin") | Some("weighted") | Some("consistentHash") | Some("leastConnections") | Some("p2c") | Some("random") => {}
            Some(o) => e.push(ConfigError::new(
                format!("{up}.loadBalancing"),
                format!("{o:?} is not one of roundRobin, weighted, consistentHash, leastConnections, p2c, random"),
            )),
        }
        if let Some(h) = &u.hash_key {
            let ok = h == "clientIp" || h.strip_prefix("header:").is_some_and(is_token);
            if !ok {
                e.push(ConfigError::new(
                    format!("{up}.hashKey"),
                    format!("{h:?} is not \"clientIp\" or \"header:<Name>\""),
                ));
            }
        }
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
            if let Some(path) = &hc.path {
                if !path.starts_with('/') || path.contains(char::is_whitespace) {
                    e.push(ConfigError::new(
                        format!("{up}.healthCheck.path"),
                        "must start with / and contain no spaces",
                    ));
                }
            }
            if hc.interval.is_some_and(|m| m.0 < 100) {
                e.push(ConfigError::new(
                    format!("{up}.healthCheck.interval"),
                    "must be at least 100ms",
                ));
            }
            check_millis(e, format!("{up}.healthCheck.timeout"), hc.timeout);
            if hc.healthy_threshold == Some(0) {
                e.push(ConfigError::new(
                    format!("{up}.healthCheck.healthyThreshold"),
                    "must be greater than 0",
                ));
            }
            if hc.unhealthy_threshold == Some(0) {
                e.push(ConfigError::new(
                    format!("{up}.healthCheck.unhealthyThreshold"),
                    "must be greater than 0",
                ));
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
        match u.host_header.as_deref() {
            None | Some("upstream") | Some("client") => {}
            Some(o) => e.push(ConfigError::new(
                format!("{up}.hostHeader"),
                format!("{o:?} is not \"upstream\" or \"client\""),
            )),
        }
    }

    // routes
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut shapes: HashMap<(String, Option<String>, Vec<String>), usize> = HashMap::new();
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
        if r.path.is_empty() {
            e.push(ConfigError::new(format!("{rp}.path"), "is required"));
        } else if let Err(m) = PathPattern::parse(&r.path) {
            e.push(ConfigError::new(format!("{rp}.path"), m));
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            let up = m.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                e.push(ConfigError::new(
                    format!("{rp}.methods[{j}]"),
                    format!("{m:?} is not an HTTP method ({})", METHODS.join(", ")),
                ));
            }
            methods.push(up);
        }
        methods.sort();
        methods.dedup();
        if let Some(h) = &r.host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                e.push(ConfigError::new(
                    format!("{rp}.host"),
                    format!("{h:?} must be a host name or \"*.domain\""),
                ));
            }
        }
        match (&r.upstream, &r.target_url) {
            (Some(name), None) if name.contains("://") => {
                if let Err(m) = parse_target_url(name) {
                    e.push(ConfigError::new(format!("{rp}.upstream"), m));
                }
            }
            (Some(name), None) => {
                if !names.contains_key(name.as_str()) {
                    e.push(ConfigError::new(
                        format!("{rp}.upstream"),
                        format!("unknown upstream {name:?}"),
                    ));
                }
            }
            (None, Some(url)) => {
                if let Err(m) = parse_target_url(url) {
                    e.push(ConfigError::new(format!("{rp}.targetUrl"), m));
                }
            }
            (Some(_), Some(_)) => e.push(ConfigError::new(
                rp.clone(),
                "give either upstream or targetUrl, not both",
            )),
            (None, None) => e.push(ConfigError::new(format!("{rp}.upstream"), "is required")),
        }
        if let Some(url) = r
            .target_url
            .as_ref()
            .or(r.upstream.as_ref().filter(|u| u.contains("://")))
        {
            if let Ok(t) = parse_target_url(url) {
                if !s.allowed_hosts.is_empty() && !host_allowed(&s.allowed_hosts, &t.host) {
                    e.push(ConfigError::new(
                        format!("{rp}.upstream"),
                        format!("host {:?} is not in security.allowedHosts", t.host),
                    ));
                }
                if is_own_listener(&listeners, &t.host, t.port) {
                    e.push(ConfigError::new(
                        format!("{rp}.upstream"),
                        format!("{url:?} is FlexGate's own listener: requests would loop"),
                    ));
                }
            }
        }
        if r.auth == Some(RouteAuth::Jwt) && s.jwt.is_none() {
            e.push(ConfigError::new(
                format!("{rp}.auth"),
                "\"jwt\" needs a security.jwt section",
            ));
        }
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
        check_headers(e, &format!("{rp}.requestHeaders"), &r.request_headers);
        check_headers(e, &format!("{rp}.responseHeaders"), &r.response_headers);
        if r.max_in_flight == Some(0) {
            e.push(ConfigError::new(
                format!("{rp}.maxInFlight"),
                "must be greater than 0",
            ));
        }
        if let Some(c) = &r.criticality {
            if !["low", "normal", "high"].contains(&c.as_str()) {
                e.push(ConfigError::new(
                    format!("{rp}.criticality"),
                    format!("{c:?} is not \"low\", \"normal\" or \"high\""),
                ));
            }
        }
        if r.max_body_size.is_some_and(|s| s.0 == 0) {
            e.push(ConfigError::new(
                format!("{rp}.maxBodySize"),
                "must be greater than 0",
            ));
        }
        check_cidrs(e, &format!("{rp}.allowIps"), &r.allow_ips);
        check_cidrs(e, &format!("{rp}.denyIps"), &r.deny_ips);
        if r.enabled != Some(false) {
            let key = (r.path.clone(), r.host.clone(), methods);
            if let Some(j) = shapes.insert(key, i) {
                e.push(ConfigError::new(
                    format!("{rp}.path"),
                    format!(
                        "same path, host and methods as routes[{j}]: one of them can never match"
                    ),
                ));
            }
        }
    }

    // logging
    let lg = &cfg.logging;
    if let Some(l) = &lg.level {
        if !["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
            e.push(ConfigError::new(
                "logging.level",
                format!("{l:?} is not one of error, warn, info, debug, trace"),
            ));
        }
    }
    if let Some(f) = &lg.format {
        if f != "json" && f != "text" {
            e.push(ConfigError::new(
                "logging.format",
                format!("{f:?} is not \"json\" or \"text\""),
            ));
        }
    }
    if let Some(sm) = &lg.sampling {
        for (k, v) in [
            ("successRate", sm.success_rate),
            ("errorRate", sm.error_rate),
        ] {
            if v.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                e.push(ConfigError::new(
                    format!("logging.sampling.{k}"),
                    "must be between 0.0 and 1.0",
                ));
            }
        }
    }

    // webhooks
    let mut webhook_ids: std::collections::HashMap<&str, usize> = Default::default();
    for (i, w) in cfg.webhooks.iter().enumerate() {
        let wp = format!("webhooks[{i}]");
        if let Some(id) = w.id.as_deref() {
            if let Some(j) = webhook_ids.insert(id, i) {
                e.push(ConfigError::new(
                    format!("{wp}.id"),
                    format!("duplicate webhook id {id:?} (also webhooks[{j}])"),
                ));
            }
        }
        let host = w
            .url
            .strip_prefix("http://")
            .or_else(|| w.url.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace))
            || w.url.parse::<http::Uri>().is_err()
        {
            e.push(ConfigError::new(
                format!("{wp}.url"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        for (j, ev) in w.events.iter().enumerate() {
            if !crate::events::Event::is_known_filter(ev) {
                let known: Vec<&str> = crate::events::Event::ALL.iter().map(|e| e.name()).collect();
                e.push(ConfigError::new(
                    format!("{wp}.events[{j}]"),
                    format!("unknown event {ev:?} (*, {})", known.join(", ")),
                ));
            }
        }
        if w.max_retries.is_some_and(|r| r > 20) {
            e.push(ConfigError::new(
                format!("{wp}.maxRetries"),
                "must be at most 20",
            ));
        }
        if w.backoff_multiplier
            .is_some_and(|m| !(1.0..=10.0).contains(&m))
        {
            e.push(ConfigError::new(
                format!("{wp}.backoffMultiplier"),
                "must be between 1.0 and 10.0",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_bounds_name_their_field() {
        let cfg = crate::config::parse(
            "history:\n  queueSize: 0\n  batchSize: 100\n  flushInterval: 2m\n  \
             retentionDays: 0\n  maintenanceInterval: 50ms\n  nodeId: \"  \"\n",
        )
        .expect("parses");
        let paths: Vec<String> = validate(&cfg).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "history.queueSize",
                "history.flushInterval",
                "history.retentionDays",
                "history.maintenanceInterval",
                "history.nodeId"
            ]
        );
        let ok = crate::config::parse("history:\n  enabled: false\n  flushInterval: 1s\n")
            .expect("parses");
        assert!(validate(&ok).is_empty());
    }

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
    fn allowed_host_patterns() {
        let p = vec!["api.example.com".to_string(), "*.internal.corp".to_string()];
        assert!(host_allowed(&p, "api.example.com"));
        assert!(host_allowed(&p, "billing.internal.corp"));
        assert!(!host_allowed(&p, "internal.corp"));
        assert!(!host_allowed(&p, "evil-internal.corp"));
        assert!(!host_allowed(&p, "api.primary.com"));
    }

    #[test]
    fn cidrs_accept_plain_addresses() {
        assert!(parse_cidr("169.254.169.254")
            .unwrap()
            .contains(&"169.254.169.254".parse::<IpAddr>().unwrap()));
        assert!(parse_cidr("fd00:ec2::254").is_ok());
        assert!(parse_cidr("10.0.0.0/8")
            .unwrap()
            .contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }
}
