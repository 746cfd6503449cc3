//! The compiled, immutable view of the dynamic config that requests run on.
//!
//! `compile(config, previous)` turns a validated [`FileConfig`] into a
//! [`Snapshot`]: route table, upstream runtimes (resolved targets, selectors,
//! health state), API-key index, IP rules, limits. Everything a request needs
//! is precomputed here (header names/values, peers, `Allow` values), so the
//! request path only reads. Target health state is carried over from the
//! previous snapshot when an upstream keeps its name and a target its address.
//!
//! Compiling resolves host names (blocking DNS): callers run it off the
//! request path (start-up, the reload task).

pub mod breaker;
mod clock;
pub mod router;
pub mod upstream;

use crate::config::model::{EscapedSlashesMode, PathParametersMode};
use crate::config::{LimitConfig, SsrfPolicy};
use crate::jwt::JwtVerifier;
use crate::keys::store::KeyFile;
use crate::keys::{from_hex, ApiKey, KeyIndex};
use crate::limit::{LimitBy, LimitRule, LimitSet};
use breaker::{Breaker, BreakerSettings};
use std::sync::atomic::AtomicUsize;

use crate::config::{parse_cidr, parse_target_url, TargetUrl};
use crate::config::{
    ConfigError, ConfigErrors, DynamicConfig, HeaderRules, RouteAuth, UpstreamConfig,
};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::Backend;
use router::{HostPattern, MethodSet, PathPattern, RouteRule, Router};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use upstream::{build_selector, HashKey, HealthSpec, Target, TargetState, Upstream};

/// Allow/deny CIDR lists for client addresses.
#[derive(Clone, Debug, Default)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpRules {
    fn from_lists(allow: &[String], deny: &[String]) -> Option<IpRules> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        Some(IpRules {
            allow: allow.iter().filter_map(|c| parse_cidr(c).ok()).collect(),
            deny: deny.iter().filter_map(|c| parse_cidr(c).ok()).collect(),
        })
    }

    /// True when `ip` may pass: not denied, and allowed when an allow list exists.
    pub fn permits(&self, ip: &IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }
}

/// Header rules, precompiled.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(rules: &Option<HeaderRules>) -> HeaderOps {
        let Some(r) = rules else {
            return HeaderOps::default();
        };
        HeaderOps {
            set: r
                .add
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            remove: r
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// How the forwarded path is derived from the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    None,
    /// Replace this literal prefix with the given text (`""` = strip).
    ReplacePrefix {
        prefix: String,
        with: String,
    },
}

/// A compiled route.
pub struct Route {
    pub id: Arc<str>,
    /// Metric handles of this route.
    pub metrics: crate::metrics::RouteMetrics,
    /// Scopes an API key needs for this route.
    pub scopes: Vec<String>,
    pub rate_limit: Option<Arc<LimitRule>>,
    /// Requests in flight on this route (kept across reloads by route id).
    pub inflight: Arc<AtomicUsize>,
    pub max_in_flight: Option<usize>,
    /// Share of `proxy.maxInFlight` this route may use (70/90/100 %).
    pub shed_at_percent: usize,
    pub upstream: Arc<Upstream>,
    pub auth: RouteAuth,
    /// Total time for the upstream exchange (all attempts).
    pub total_timeout: Duration,
    pub rewrite: PathRewrite,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub max_body: u64,
    pub retry_non_idempotent: bool,
    pub websocket: bool,
    pub ip_rules: Option<IpRules>,
}

/// Edge limits read per request.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

/// Everything a request needs, immutable; swapped whole on reload.
pub struct Snapshot {
    /// Monotonic config version (1 = first load).
    pub version: u64,
    pub router: Router<Arc<Route>>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub keys: KeyIndex,
    pub trusted_proxies: Vec<IpNet>,
    pub ip_rules: Option<IpRules>,
    pub limits: EdgeLimits,
    /// How request paths are canonicalised (`proxy.paths`).
    pub paths: PathPolicy,
    pub access_log: bool,
    pub success_sample: f64,
    pub error_sample: f64,
    /// Our pseudonym in `Via` (loop detection).
    pub via_name: String,
    /// `1.1 <via_name>` precomputed.
    pub via_entry: HeaderValue,
    pub health_endpoints: bool,
    pub rate_limits: LimitSet,
    /// Failed authentications allowed per address and window (`None` = off).
    pub auth_failures: Option<Arc<LimitRule>>,
    /// IPv6 prefix length address-keyed limits count by.
    pub ipv6_prefix: u8,
    pub max_in_flight: usize,
    /// Compiled routes by id (for state carried across reloads).
    pub routes_by_id: HashMap<Arc<str>, Arc<Route>>,
    /// JWT verifier for `auth: jwt` routes.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Outbound-address policy (upstreams, JWKS).
    pub ssrf: SsrfPolicy,
    pub allowed_hosts: Vec<String>,
    /// The config this snapshot was compiled from (admin reads, export).
    pub source: Arc<DynamicConfig>,
    /// The generated keys it was compiled from (admin reads and writes).
    pub key_file: Arc<KeyFile>,
}

impl Snapshot {
    /// Every route rate-limit rule of this snapshot.
    fn router_rules(&self) -> impl Iterator<Item = &Arc<LimitRule>> {
        self.routes_by_id
            .values()
            .filter_map(|r| r.rate_limit.as_ref())
    }

    /// True when `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

/// How request paths are canonicalised (`proxy.paths`), read by the
/// data plane's canonicaliser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// Repeated slashes are merged (the default); false keeps them.
    pub keep_repeated_slashes: bool,
    pub escaped_slashes: EscapedSlashesMode,
    pub path_parameters: PathParametersMode,
}

/// The failed-authentication budget (`security.auth.failureLimit`),
/// counters kept across reloads while its settings are unchanged.
fn auth_failure_budget(cfg: &DynamicConfig, previous: Option<&Snapshot>) -> Option<Arc<LimitRule>> {
    let configured = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.failure_limit.as_ref());
    let (max, window) = configured.map_or((20, Duration::from_secs(60)), limit_settings);
    if max == 0 {
        return None;
    }
    match previous.and_then(|p| p.auth_failures.as_ref()) {
        Some(r) if r.same_settings(max, window, LimitBy::Ip, &None) => Some(r.clone()),
        _ => Some(Arc::new(LimitRule::new(
            "auth-failures".into(),
            max,
            window,
            LimitBy::Ip,
            None,
        ))),
    }
}

fn path_policy(p: &crate::config::model::PathsSection) -> PathPolicy {
    PathPolicy {
        keep_repeated_slashes: p.merge_slashes == Some(false),
        escaped_slashes: p.escaped_slashes.unwrap_or_default(),
        path_parameters: p.path_parameters.unwrap_or_default(),
    }
}

/// Default via pseudonym: `flexgate-<hostname>`, so chained gateways on
/// different hosts do not mistake each other for a loop.
pub fn default_via_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "local".into());
    format!("flexgate-{host}")
}

fn hash_of<T: serde::Serialize>(v: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn resolve(t: &TargetUrl) -> Result<SocketAddr, String> {
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, t.port));
    }
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {:?}: {e}", t.host))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("host {:?} resolved to no address", t.host))
}

fn compile_upstream(
    path: &str,
    u: &UpstreamConfig,
    cfg: &DynamicConfig,
    previous: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> Option<Upstream> {
    let p = &cfg.defaults;
    let policy = SsrfPolicy::from_security(&cfg.security);
    let urls: Vec<(String, &str, u32)> = match &u.url {
        Some(url) => vec![(format!("{path}.url"), url.as_str(), 1)],
        None => u
            .targets
            .iter()
            .enumerate()
            .map(|(j, t)| {
                (
                    format!("{path}.targets[{j}].url"),
                    t.url.as_str(),
                    t.weight.unwrap_or(1),
                )
            })
            .collect(),
    };
    let prev = previous.and_then(|s| s.upstreams.iter().find(|x| *x.name == *u.name));
    let connect_timeout = u
        .connect_timeout
        .or(p.connect_timeout)
        .map_or(Duration::from_secs(5), |m| m.duration());
    let read_timeout = u
        .read_timeout
        .or(p.read_timeout)
        .map_or(Duration::from_secs(15), |m| m.duration());
    let write_timeout = u
        .write_timeout
        .or(p.write_timeout)
        .map_or(Duration::from_secs(15), |m| m.duration());
    let idle_timeout = u
        .idle_timeout
        .map_or(Duration::from_secs(60), |m| m.duration());
    let mut targets = Vec::new();
    let mut tls = false;
    for (tpath, url, weight) in urls {
        let t = match parse_target_url(url) {
            Ok(t) => t,
            Err(m) => {
                errors.push(ConfigError::new(tpath, m));
                continue;
            }
        };
        let addr = match resolve(&t) {
            Ok(a) => a,
            Err(m) => {
                errors.push(ConfigError::new(tpath, m));
                continue;
            }
        };
        if let Err(m) = policy.check_ip(addr.ip()) {
            tracing::warn!(target = %url, "outbound target refused: {m}");
            errors.push(ConfigError::new(
                tpath,
                format!("{:?} resolves to {}: {m}", t.host, addr.ip()),
            ));
            continue;
        }
        tls = t.tls;
        let default_port = if t.tls { 443 } else { 80 };
        let host_header = if t.port == default_port {
            t.host.clone()
        } else if t.host.contains(':') {
            format!("[{}]:{}", t.host, t.port)
        } else {
            format!("{}:{}", t.host, t.port)
        };
        let mut peer = HttpPeer::new(
            addr,
            t.tls,
            if t.tls { t.host.clone() } else { String::new() },
        );
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(write_timeout);
        peer.options.idle_timeout = Some(idle_timeout);
        let state = prev
            .and_then(|pu| pu.targets.iter().find(|x| x.addr == addr))
            .map(|x| x.state.clone())
            .unwrap_or_else(|| Arc::new(TargetState::default()));
        let backend = Backend {
            addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
            weight: weight as usize,
            ext: http::Extensions::new(),
        };
        targets.push(Target {
            url: url.to_string(),
            addr,
            host: t.host.clone(),
            weight,
            host_header: HeaderValue::from_str(&host_header).ok()?,
            peer,
            backend,
            state,
        });
    }
    if targets.is_empty() {
        return None;
    }
    let lb = u.load_balancing.as_deref().unwrap_or("roundRobin");
    let selector = build_selector(lb, &targets);
    let hash_key = match u
        .hash_key
        .as_deref()
        .and_then(|h| h.strip_prefix("header:"))
    {
        Some(name) => HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .unwrap_or(HashKey::ClientIp),
        None => HashKey::ClientIp,
    };
    let health = u
        .health_check
        .as_ref()
        .filter(|h| h.enabled != Some(false))
        .map(|h| {
            let mut check = HttpHealthCheck::new(&targets[0].host, tls);
            let probe_path = h.path.clone().unwrap_or_else(|| "/health".into());
            if let Ok(req) = pingora_http::RequestHeader::build("GET", probe_path.as_bytes(), None)
            {
                check.req = req;
                let _ = check
                    .req
                    .insert_header("Host", targets[0].host_header.clone());
                let _ = check
                    .req
                    .insert_header("User-Agent", "flexgate-health-check");
            }
            let timeout = h.timeout.map_or(Duration::from_secs(2), |m| m.duration());
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.read_timeout = Some(timeout);
            check.validator = Some(Box::new(|resp: &pingora_http::ResponseHeader| {
                if resp.status.is_success() || resp.status.is_redirection() {
                    Ok(())
                } else {
                    pingora_error::Error::e_explain(
                        pingora_error::ErrorType::InternalError,
                        format!("health check answered {}", resp.status),
                    )
                }
            }));
            HealthSpec {
                interval: h.interval.map_or(Duration::from_secs(10), |m| m.duration()),
                healthy_threshold: h.healthy_threshold.unwrap_or(1),
                unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
                check,
            }
        });
    let passive = u.passive.clone().unwrap_or_default();
    Some(Upstream {
        name: Arc::from(u.name.as_str()),
        tls,
        targets,
        selector,
        hash_key,
        connect_timeout,
        read_timeout,
        write_timeout,
        total_timeout: u
            .timeout
            .or(p.timeout)
            .map_or(Duration::from_secs(30), |m| m.duration()),
        idle_timeout,
        retries: u.retries.unwrap_or(0).min(10),
        retry_backoff: u
            .retry_backoff
            .map_or(Duration::from_millis(25), |m| m.duration()),
        passive_max_failures: passive.max_failures.unwrap_or(3),
        passive_eject: passive
            .eject_duration
            .map_or(Duration::from_secs(10), |m| m.duration()),
        host_from_client: u.host_header.as_deref() == Some("client"),
        health,
        breaker: compile_breaker(u, prev),
        config_hash: hash_of(u),
    })
}

/// The upstream's breaker, kept from the previous snapshot when its settings are unchanged.
fn compile_breaker(u: &UpstreamConfig, prev: Option<&Arc<Upstream>>) -> Option<Arc<Breaker>> {
    let cb = u
        .circuit_breaker
        .as_ref()
        .filter(|c| c.enabled != Some(false))?;
    let settings = BreakerSettings {
        failure_percent: cb.failure_threshold.unwrap_or(50),
        minimum_requests: cb.minimum_requests.unwrap_or(20),
        consecutive_failures: cb.consecutive_failures.unwrap_or(0),
        open_duration: cb
            .open_duration
            .map_or(Duration::from_secs(30), |m| m.duration()),
    };
    match prev.and_then(|p| p.breaker.as_ref()) {
        Some(b) if b.settings == settings => Some(b.clone()),
        _ => Some(Arc::new(Breaker::new(settings))),
    }
}

/// Config-file keys and stored (generated) keys, side by side.
fn compile_keys(cfg: &DynamicConfig, key_file: &KeyFile, previous: Option<&Snapshot>) -> KeyIndex {
    let auth = cfg.security.auth.as_ref();
    let header = HeaderName::from_bytes(
        auth.and_then(|a| a.header.as_deref())
            .unwrap_or("x-api-key")
            .as_bytes(),
    )
    .ok();
    let mut keys = KeyIndex::new(header);
    let prev = previous.map(|p| &p.keys);
    for (i, k) in auth
        .map(|a| a.keys.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(digest) = from_hex(&k.key) else {
            continue;
        };
        let id = k.id.clone().unwrap_or_else(|| format!("config-{i}"));
        let key = ApiKey {
            name: Arc::from(k.name.clone().unwrap_or_else(|| id.clone()).as_str()),
            id,
            digest,
            scopes: k.scopes.clone(),
            routes: k.routes.clone(),
            expires_at: k.expires_at,
            revoked: k.revoked.unwrap_or(false),
            usage: Default::default(),
        };
        keys.insert(key, prev);
    }
    for k in &key_file.keys {
        let Some(digest) = from_hex(&k.digest) else {
            continue;
        };
        let key = ApiKey {
            id: k.id.clone(),
            name: Arc::from(k.name.as_str()),
            digest,
            scopes: k.scopes.clone(),
            routes: k.routes.clone(),
            expires_at: k.expires_at,
            revoked: k.revoked,
            usage: Default::default(),
        };
        keys.insert(key, prev);
    }
    keys
}

fn limit_rule(
    id: String,
    max: u64,
    window: Duration,
    by: Option<&str>,
    message: Option<String>,
    previous: Option<&Snapshot>,
) -> Arc<LimitRule> {
    let by = LimitBy::parse(by).unwrap_or(LimitBy::Ip);
    let kept = previous.and_then(|p| {
        p.rate_limits
            .find(&id)
            .cloned()
            .or_else(|| p.router_rules().find(|r| r.id == id).cloned())
    });
    match kept {
        Some(r) if r.same_settings(max, window, by, &message) => r,
        _ => Arc::new(LimitRule::new(id, max, window, by, message)),
    }
}

/// `{max, windowMs}` (or the API's `{requests, window}`) of a limit; the
/// window defaults to a minute.
fn limit_settings(l: &LimitConfig) -> (u64, Duration) {
    let window = l
        .window_ms
        .or(l.window)
        .map_or(Duration::from_secs(60), |m| m.duration());
    (l.requests.unwrap_or(l.max), window)
}

fn limit_from(l: &LimitConfig, id: String, previous: Option<&Snapshot>) -> Arc<LimitRule> {
    let (max, window) = limit_settings(l);
    limit_rule(
        id,
        max,
        window,
        l.by.as_deref(),
        l.message.clone(),
        previous,
    )
}

/// Compiles a validated config into a snapshot. `version` is the number the
/// new snapshot carries. Errors (e.g. unresolvable hosts) carry paths.
pub fn compile(
    cfg: &DynamicConfig,
    key_file: &KeyFile,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
    let mut by_name: HashMap<String, Arc<Upstream>> = HashMap::new();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        if let Some(up) =
            compile_upstream(&format!("upstreams[{i}]"), u, cfg, previous, &mut errors)
        {
            let up = Arc::new(up);
            by_name.insert(u.name.clone(), up.clone());
            upstreams.push(up);
        }
    }
    let default_body = cfg.defaults.max_body_size.map_or(10 << 20, |s| s.0);
    let mut rules = Vec::new();
    let mut routes_by_id: HashMap<Arc<str>, Arc<Route>> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        if r.enabled == Some(false) {
            continue;
        }
        let id: Arc<str> = Arc::from(r.id.clone().unwrap_or_else(|| format!("route-{i}")));
        let url = r
            .target_url
            .clone()
            .or(r.upstream.clone().filter(|u| u.contains("://")));
        let up = match url {
            Some(url) => {
                let inline = UpstreamConfig {
                    name: format!("route:{id}"),
                    url: Some(url),
                    ..Default::default()
                };
                match compile_upstream(
                    &format!("routes[{i}].upstream"),
                    &inline,
                    cfg,
                    previous,
                    &mut errors,
                ) {
                    Some(u) => {
                        let u = Arc::new(u);
                        upstreams.push(u.clone());
                        u
                    }
                    None => continue,
                }
            }
            None => match r.upstream.as_ref().and_then(|n| by_name.get(n)) {
                Some(u) => u.clone(),
                None => continue, // reported by validation or by the upstream's own error
            },
        };
        let pattern = match PathPattern::parse(&r.path) {
            Ok(p) => p,
            Err(m) => {
                errors.push(ConfigError::new(format!("routes[{i}].path"), m));
                continue;
            }
        };
        let rewrite = match (&r.rewrite, r.strip_prefix) {
            (Some(with), _) => PathRewrite::ReplacePrefix {
                prefix: pattern.literal_prefix().to_string(),
                with: with.clone(),
            },
            (None, Some(true)) => PathRewrite::ReplacePrefix {
                prefix: pattern.literal_prefix().to_string(),
                with: String::new(),
            },
            _ => PathRewrite::None,
        };
        let prev_route = previous.and_then(|p| p.routes_by_id.get(&id));
        let route = Route {
            metrics: crate::metrics::RouteMetrics::new(&id, &up.name),
            scopes: r.scopes.clone(),
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|l| limit_from(l, format!("route:{id}"), previous)),
            inflight: prev_route.map(|p| p.inflight.clone()).unwrap_or_default(),
            max_in_flight: r.max_in_flight,
            shed_at_percent: match r.criticality.as_deref() {
                Some("low") => 70,
                Some("high") => 100,
                _ => 90,
            },
            id: id.clone(),
            total_timeout: r.timeout.map_or(up.total_timeout, |m| m.duration()),
            upstream: up,
            auth: r.auth.unwrap_or_default(),
            rewrite,
            request_headers: HeaderOps::compile(&r.request_headers),
            response_headers: HeaderOps::compile(&r.response_headers),
            max_body: r.max_body_size.map_or(default_body, |s| s.0),
            retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
            websocket: r.websocket.unwrap_or(false),
            ip_rules: IpRules::from_lists(&r.allow_ips, &r.deny_ips),
        };
        let rule = RouteRule {
            pattern,
            host: r.host.as_deref().map(HostPattern::parse),
            methods: MethodSet::from_names(&r.methods),
            priority: r.priority.unwrap_or(0),
        };
        let route = Arc::new(route);
        routes_by_id.insert(id, route.clone());
        rules.push((rule, route));
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let keys = compile_keys(cfg, key_file, previous);
    let jwt = match &cfg.security.jwt {
        None => None,
        Some(settings) => match previous
            .and_then(|p| p.jwt.as_ref())
            .filter(|v| &v.settings == settings)
        {
            Some(v) => Some(v.clone()),
            None => match JwtVerifier::new(settings) {
                Ok(v) => Some(Arc::new(v)),
                Err(m) => return Err(ConfigErrors(vec![ConfigError::new("security.jwt", m)])),
            },
        },
    };
    let l = &cfg.defaults;
    let via_name = cfg
        .defaults
        .via_name
        .clone()
        .unwrap_or_else(default_via_name);
    let sampling = cfg.logging.sampling.clone().unwrap_or_default();
    Ok(Snapshot {
        version,
        router: Router::new(rules),
        upstreams,
        keys,
        trusted_proxies: cfg
            .defaults
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect(),
        ip_rules: IpRules::from_lists(&cfg.security.allow_ips, &cfg.security.deny_ips),
        limits: EdgeLimits {
            max_header_bytes: l.max_header_bytes.map_or(60 << 10, |b| b.0 as usize),
            max_headers: l.max_headers.unwrap_or(100),
            max_uri_bytes: l.max_uri_bytes.map_or(8 << 10, |b| b.0 as usize),
        },
        paths: path_policy(&cfg.defaults.paths),
        auth_failures: auth_failure_budget(cfg, previous),
        ipv6_prefix: cfg.rate_limit.ipv6_prefix.unwrap_or(64),
        access_log: cfg.logging.access_log.unwrap_or(true),
        success_sample: sampling.success_rate.unwrap_or(1.0),
        error_sample: sampling.error_rate.unwrap_or(1.0),
        via_entry: HeaderValue::from_str(&format!("1.1 {via_name}"))
            .unwrap_or(HeaderValue::from_static("1.1 flexgate")),
        via_name,
        health_endpoints: cfg.defaults.health_endpoints.unwrap_or(true),
        rate_limits: LimitSet {
            global: cfg
                .rate_limit
                .global
                .as_ref()
                .map(|l| limit_from(l, "global".into(), previous)),
            per_path: cfg
                .rate_limit
                .per_route
                .iter()
                .enumerate()
                .filter_map(|(i, pr)| {
                    let window = pr
                        .window_ms
                        .map_or(Duration::from_secs(60), |m| m.duration());
                    let rule = limit_rule(
                        format!("perRoute[{i}]"),
                        pr.max,
                        window,
                        pr.by.as_deref(),
                        pr.message.clone(),
                        previous,
                    );
                    Some((PathPattern::parse(&pr.path).ok()?, rule))
                })
                .collect(),
            redis: cfg.rate_limit.backend.as_deref() == Some("redis"),
        },
        max_in_flight: cfg.defaults.max_in_flight.unwrap_or(10_000),
        routes_by_id,
        jwt,
        ssrf: SsrfPolicy::from_security(&cfg.security),
        allowed_hosts: cfg.security.allowed_hosts.clone(),
        source: Arc::new(cfg.clone()),
        key_file: Arc::new(key_file.clone()),
    })
}
