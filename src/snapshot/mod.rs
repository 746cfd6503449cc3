//! The compiled, immutable view of the dynamic config that requests run on.
//!
//! `compile(config, previous)` turns a validated [`FileConfig`] into a
//! [`Snapshot`]: route table, upstream runtimes (resolved targets, selectors,
//! health state), API-key index, IP rules, limits. Everything a request needs
//! is precomputed here (header names/values, peers, `Allow` values), so the
//! request path only reads. Target health state is carried over from the
//! previous snapshot when an upstream keeps its name and a target its address.
//!
//! The config's values arrive parsed (`config::text`): nothing here reads
//! a string of the config again, and nothing falls back to a default when
//! a value is wrong — what compiling can still find wrong (a host that does
//! not resolve, a route naming no upstream) is an error with its path.
//!
//! Compiling resolves host names (blocking DNS): callers run it off the
//! request path (start-up, the reload task).

pub mod breaker;
mod clock;
pub mod router;
pub mod upstream;

use crate::config::model::{EscapedSlashesMode, PathParametersMode};
use crate::config::{
    Cidr, ConfigError, ConfigErrors, Criticality, DynamicConfig, HeaderRules, HostHeader, LimitBy,
    LimitConfig, RouteAuth, SsrfPolicy, TargetUrl, UpstreamConfig, UpstreamRef, Written,
};
use crate::jwt::JwtVerifier;
use crate::keys::store::KeyFile;
use crate::keys::{from_hex, ApiKey, KeyIndex};
use crate::limit::{LimitRule, LimitSet};
use breaker::{Breaker, BreakerSettings};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::Backend;
use router::{MethodSet, RouteRule, Router};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use upstream::{build_selector, HashKey, HealthSpec, Target, TargetState, Upstream};

/// Allow/deny CIDR lists for client addresses.
#[derive(Clone, Debug, Default)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// The networks of a CIDR list.
fn nets(list: &[Cidr]) -> Vec<IpNet> {
    list.iter().map(|c| *c.value()).collect()
}

impl IpRules {
    fn from_lists(allow: &[Cidr], deny: &[Cidr]) -> Option<IpRules> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        Some(IpRules {
            allow: nets(allow),
            deny: nets(deny),
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
                .map(|(k, v)| (k.value().clone(), v.value().clone()))
                .collect(),
            remove: r.remove.iter().map(|k| k.value().clone()).collect(),
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

/// Webhook URLs, like upstream targets, meet the SSRF policy when the
/// config is compiled: every address a host name resolves to must pass
/// (and again before every delivery attempt, where a refused address fails
/// the attempt). A name that does not resolve now is only logged: its
/// deliveries wait and retry, while an upstream's target is needed at once.
fn check_webhook_addresses(cfg: &DynamicConfig, errors: &mut Vec<ConfigError>) {
    let policy = SsrfPolicy::from_security(&cfg.security);
    for (i, w) in cfg.webhooks.iter().enumerate() {
        let Ok((t, _)) = crate::config::parse_endpoint_url(&w.url) else {
            continue;
        };
        if t.host.parse::<IpAddr>().is_ok() {
            continue; // checked with the config (validate)
        }
        match (t.host.as_str(), t.port).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    if let Err(m) = policy.check_ip(a.ip()) {
                        errors.push(ConfigError::new(
                            format!("webhooks[{i}].url"),
                            format!("{:?} resolves to {}: {m}", t.host, a.ip()),
                        ));
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(webhook = %w.effective_id(), host = %t.host, "webhook host does not resolve now ({e}); its deliveries will retry")
            }
        }
    }
}

/// One target as the config gives it: where it is written, its URL (as
/// written and parsed) and its weight.
struct TargetSpec<'a> {
    path: String,
    text: &'a str,
    url: &'a TargetUrl,
    weight: u32,
}

/// The targets of a named upstream (`url`, or `targets`).
fn target_specs<'a>(
    path: &str,
    u: &'a UpstreamConfig,
    errors: &mut Vec<ConfigError>,
) -> Vec<TargetSpec<'a>> {
    let spec = |path: String, url: &'a Written<TargetUrl>, weight: u32| TargetSpec {
        path,
        text: url.as_str(),
        url: url.value(),
        weight,
    };
    match &u.url {
        Some(url) => vec![spec(format!("{path}.url"), url, 1)],
        None => u
            .targets
            .iter()
            .enumerate()
            .filter_map(|(j, t)| {
                let tpath = format!("{path}.targets[{j}].url");
                match &t.url {
                    Some(url) => Some(spec(tpath, url, t.weight.unwrap_or(1))),
                    None => {
                        errors.push(ConfigError::new(tpath, "is required"));
                        None
                    }
                }
            })
            .collect(),
    }
}

/// An upstream runtime named `name` over `specs`, with the settings of
/// `u`. `None` when no target could be used (the reasons are in `errors`).
fn compile_upstream(
    name: &str,
    specs: Vec<TargetSpec<'_>>,
    u: &UpstreamConfig,
    cfg: &DynamicConfig,
    previous: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> Option<Upstream> {
    let p = &cfg.defaults;
    let policy = SsrfPolicy::from_security(&cfg.security);
    let prev = previous.and_then(|s| s.upstreams.iter().find(|x| *x.name == *name));
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
    // Pingora closes a pooled connection idle this long (the peer's option).
    let idle_timeout = u
        .idle_timeout
        .map_or(Duration::from_secs(60), |m| m.duration());
    let mut targets = Vec::new();
    let mut tls = false;
    for TargetSpec {
        path: tpath,
        text,
        url: t,
        weight,
    } in specs
    {
        tls = t.tls;
        let addr = match resolve(t) {
            Ok(a) => a,
            Err(m) => {
                errors.push(ConfigError::new(tpath, m));
                continue;
            }
        };
        if let Err(m) = policy.check_ip(addr.ip()) {
            tracing::warn!(target = %text, "outbound target refused: {m}");
            errors.push(ConfigError::new(
                tpath,
                format!("{:?} resolves to {}: {m}", t.host, addr.ip()),
            ));
            continue;
        }
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
            url: text.to_string(),
            addr,
            host: t.host.clone(),
            weight,
            host_header: t.host_header(),
            peer,
            backend,
            state,
        });
    }
    if targets.is_empty() {
        return None;
    }
    let selector = build_selector(u.load_balancing.unwrap_or_default(), &targets);
    let hash_key = u
        .hash_key
        .as_ref()
        .map_or(HashKey::ClientIp, |h| h.value().clone());
    let health = u
        .health_check
        .as_ref()
        .filter(|h| h.enabled != Some(false))
        .map(|h| {
            let first = &targets[0];
            let mut check = HttpHealthCheck::new(&first.host, tls);
            check.req = probe_request(h.path.as_ref().map(|p| &p.value().0), &first.host_header);
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
        name: Arc::from(name),
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
        retries: u.retries.unwrap_or(0),
        retry_backoff: u
            .retry_backoff
            .map_or(Duration::from_millis(25), |m| m.duration()),
        passive_max_failures: passive.max_failures.unwrap_or(3),
        passive_eject: passive
            .eject_duration
            .map_or(Duration::from_secs(10), |m| m.duration()),
        host_from_client: u.host_header == Some(HostHeader::Client),
        health,
        breaker: compile_breaker(u, prev),
    })
}

/// The request of an active health check: `GET <path>` (default
/// `/health`) with the target's `Host`.
fn probe_request(path: Option<&http::Uri>, host: &HeaderValue) -> pingora_http::RequestHeader {
    let mut req = pingora_http::RequestHeader::build("GET", b"/health", None)
        .expect("GET /health is a request");
    if let Some(uri) = path {
        req.set_uri(uri.clone());
    }
    req.insert_header("Host", host.clone())
        .expect("a static name and a header value");
    req.insert_header("User-Agent", "flexgate-health-check")
        .expect("a static name and value");
    req
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
fn compile_keys(
    cfg: &DynamicConfig,
    key_file: &KeyFile,
    previous: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> KeyIndex {
    let auth = cfg.security.auth.as_ref();
    let header = auth
        .and_then(|a| a.header.as_ref())
        .map_or(HeaderName::from_static("x-api-key"), |h| h.value().clone());
    let mut keys = KeyIndex::new(Some(header));
    let prev = previous.map(|p| &p.keys);
    for (i, k) in auth
        .map(|a| a.keys.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(digest) = &k.key else {
            errors.push(ConfigError::new(
                format!("security.auth.keys[{i}].key"),
                "is required",
            ));
            continue;
        };
        let id = k.id.clone().unwrap_or_else(|| format!("config-{i}"));
        let key = ApiKey {
            name: Arc::from(k.name.clone().unwrap_or_else(|| id.clone()).as_str()),
            id,
            digest: digest.value().0,
            scopes: k.scopes.clone(),
            routes: k.routes.clone(),
            expires_at: k.expires_at,
            revoked: k.revoked.unwrap_or(false),
            usage: Default::default(),
        };
        keys.insert(key, prev);
    }
    for (i, k) in key_file.keys.iter().enumerate() {
        let Some(digest) = from_hex(&k.digest) else {
            errors.push(ConfigError::new(
                "security.auth.keyStore",
                format!("keys[{i}].digest is not a SHA-256 hex digest"),
            ));
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

/// A limit rule, kept from the previous snapshot (counters and all) when
/// its settings are unchanged.
fn limit_rule(
    id: String,
    max: u64,
    window: Duration,
    by: LimitBy,
    message: Option<String>,
    previous: Option<&Snapshot>,
) -> Arc<LimitRule> {
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
        l.by.unwrap_or_default(),
        l.message.clone(),
        previous,
    )
}

/// The upstream a route sends to, and whether it is the route's own (a
/// URL) rather than a named one. `None` when there is none (the reason is
/// in `errors`).
fn route_upstream(
    i: usize,
    r: &crate::config::RouteConfig,
    named: &HashMap<&str, Option<Arc<Upstream>>>,
    cfg: &DynamicConfig,
    previous: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> Option<(Arc<Upstream>, bool)> {
    let path = format!("routes[{i}].upstream");
    let (text, url) = match (&r.target_url, &r.upstream) {
        (Some(url), _) => (url.as_str(), url.value()),
        (None, Some(up)) => match up.value() {
            UpstreamRef::Url(url) => (up.as_str(), url),
            UpstreamRef::Name(name) => {
                return match named.get(name.as_str()) {
                    // None: the upstream's own errors are reported.
                    Some(compiled) => compiled.clone().map(|u| (u, false)),
                    None => {
                        errors.push(ConfigError::new(path, format!("unknown upstream {name:?}")));
                        None
                    }
                };
            }
        },
        (None, None) => {
            errors.push(ConfigError::new(path, "is required"));
            return None;
        }
    };
    let id = r.id.clone().unwrap_or_else(|| format!("route-{i}"));
    let spec = TargetSpec {
        path,
        text,
        url,
        weight: 1,
    };
    let own = UpstreamConfig::default();
    compile_upstream(
        &format!("route:{id}"),
        vec![spec],
        &own,
        cfg,
        previous,
        errors,
    )
    .map(|u| (Arc::new(u), true))
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
    let mut named: HashMap<&str, Option<Arc<Upstream>>> = HashMap::new();
    check_webhook_addresses(cfg, &mut errors);
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let specs = target_specs(&format!("upstreams[{i}]"), u, &mut errors);
        let up = compile_upstream(&u.name, specs, u, cfg, previous, &mut errors).map(Arc::new);
        upstreams.extend(up.clone());
        named.insert(&u.name, up);
    }
    let default_body = cfg.defaults.max_body_size.map_or(10 << 20, |s| s.0);
    let mut rules = Vec::new();
    let mut routes_by_id: HashMap<Arc<str>, Arc<Route>> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        if r.enabled == Some(false) {
            continue;
        }
        let id: Arc<str> = Arc::from(r.id.clone().unwrap_or_else(|| format!("route-{i}")));
        let up = route_upstream(i, r, &named, cfg, previous, &mut errors);
        let Some(pattern) = r.path.as_ref().map(|p| p.value().clone()) else {
            errors.push(ConfigError::new(format!("routes[{i}].path"), "is required"));
            continue;
        };
        let Some((up, own)) = up else {
            continue;
        };
        if own {
            upstreams.push(up.clone());
        }
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
            metrics: {
                let methods = MethodSet::of(r.methods.iter().map(|m| m.value()));
                crate::metrics::RouteMetrics::new(&id, &up.name, |name| {
                    http::Method::from_bytes(name.as_bytes()).is_ok_and(|m| methods.contains(&m))
                })
            },
            scopes: r.scopes.clone(),
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|l| limit_from(l, format!("route:{id}"), previous)),
            inflight: prev_route.map(|p| p.inflight.clone()).unwrap_or_default(),
            max_in_flight: r.max_in_flight,
            shed_at_percent: match r.criticality.unwrap_or_default() {
                Criticality::Low => 70,
                Criticality::Normal => 90,
                Criticality::High => 100,
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
            host: r.host.as_ref().map(|h| h.value().clone()),
            methods: MethodSet::of(r.methods.iter().map(|m| m.value())),
            priority: r.priority.unwrap_or(0),
        };
        let route = Arc::new(route);
        routes_by_id.insert(id, route.clone());
        rules.push((rule, route));
    }
    let keys = compile_keys(cfg, key_file, previous, &mut errors);
    let per_path = cfg
        .rate_limit
        .per_route
        .iter()
        .enumerate()
        .filter_map(|(i, pr)| {
            let Some(pattern) = &pr.path else {
                errors.push(ConfigError::new(
                    format!("rateLimit.perRoute[{i}].path"),
                    "is required",
                ));
                return None;
            };
            let window = pr
                .window_ms
                .map_or(Duration::from_secs(60), |m| m.duration());
            let rule = limit_rule(
                format!("perRoute[{i}]"),
                pr.max,
                window,
                pr.by.unwrap_or_default(),
                pr.message.clone(),
                previous,
            );
            Some((pattern.value().clone(), rule))
        })
        .collect();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

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
        .as_ref()
        .map_or_else(default_via_name, |v| v.to_string());
    let sampling = cfg.logging.sampling.clone().unwrap_or_default();
    Ok(Snapshot {
        version,
        router: Router::new(rules),
        upstreams,
        keys,
        trusted_proxies: nets(&cfg.defaults.trusted_proxies),
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
        via_entry: HeaderValue::try_from(format!("1.1 {via_name}"))
            .expect("a token (viaName, or the host name kept to letters, digits, '-', '.') is a header value"),
        via_name,
        health_endpoints: cfg.defaults.health_endpoints.unwrap_or(true),
        rate_limits: LimitSet {
            global: cfg
                .rate_limit
                .global
                .as_ref()
                .map(|l| limit_from(l, "global".into(), previous)),
            per_path,
            redis: cfg.rate_limit.backend == Some(crate::config::RateLimitBackend::Redis),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(yaml: &str) -> Result<Snapshot, ConfigErrors> {
        let cfg = crate::config::parse(yaml).expect("every value parses");
        compile(&cfg.dynamic(), &KeyFile::default(), None, 1)
    }

    #[test]
    fn typed_values_reach_the_snapshot() {
        let snap = compiled(
            "upstreams:\n  - name: app\n    targets: [{url: \"http://127.0.0.1:9\"}, {url: \"http://127.0.0.2:9\"}]\n    \
             loadBalancing: consistentHash\n    hashKey: \"header:X-User\"\n\
             routes:\n  - path: /a/*\n    upstream: app\n    methods: [get]\n    host: \"*.Example.com\"\n    \
             criticality: low\n    allowIps: [10.1.2.3/8]\n    \
             requestHeaders: {add: {X-A: b}, remove: [X-B]}\n\
             proxy:\n  trustedProxies: [192.168.0.1]\n",
        )
        .expect("compiles");
        let route = snap.routes_by_id.get("route-0").expect("the route");
        assert_eq!(route.shed_at_percent, 70);
        assert_eq!(route.request_headers.set[0].0, "x-a");
        assert_eq!(route.request_headers.remove[0], "x-b");
        assert!(route
            .ip_rules
            .as_ref()
            .unwrap()
            .permits(&"10.9.9.9".parse().unwrap()));
        assert!(matches!(
            route.upstream.selector,
            upstream::Selector::Consistent(_)
        ));
        assert_eq!(
            route.upstream.hash_key,
            HashKey::Header(HeaderName::from_static("x-user"))
        );
        assert!(snap.is_trusted(&"192.168.0.1".parse().unwrap()));
        assert!(matches!(
            snap.router
                .find("a.example.com", &http::Method::HEAD, "/a/1"),
            router::Match::Found(_)
        ));
    }

    #[test]
    fn what_validation_would_refuse_is_an_error_not_a_skip() {
        let err = compiled(
            "upstreams:\n  - name: app\n    url: \"http://127.0.0.1:9\"\n\
             routes:\n  - path: /a\n    upstream: nowhere\n  - upstream: app\n\
             rateLimit:\n  perRoute:\n    - max: 1\n",
        )
        .err()
        .expect("refused");
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].upstream",
                "routes[1].path",
                "rateLimit.perRoute[0].path"
            ]
        );
    }
}
