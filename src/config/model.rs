//! The YAML model: the public contract of `flexgate.yaml` (and, later, of the
//! admin API). Keys are camelCase, compatible with the original project's
//! `proxy.yml`. Every field is documented here; the README's config reference
//! mirrors these docs.
//!
//! Every value is typed: a value that does not parse is refused when the
//! config is read, with its path (each type parses itself: `text.rs`,
//! `pattern.rs`, `upstream.rs`, `credentials.rs`, `units.rs`). Checks that
//! look at more than one value live in `validate/`; defaults live in
//! `Default` impls and in the snapshot compiler.

use super::credentials::{JwtAlgorithm, KeyAlgorithm, KeyDigest, PublicKeyPem};
use super::pattern::{HostPattern, PathPattern};
use super::text::{keyed_map, text_enum, Cidr, Token, Written};
use super::units::{ByteSize, Millis};
use super::upstream::{HashKey, ProbePath, TargetUrl, UpstreamRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use super::text::OneOrMany;

/// A whole config file: boot settings (`proxy`, `admin`) plus the dynamic part.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct FileConfig {
    pub proxy: ProxySection,
    pub admin: AdminSection,
    pub security: SecuritySection,
    pub rate_limit: RateLimitSection,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub logging: LoggingSection,
    pub webhooks: Vec<WebhookConfig>,
    pub database: Option<UrlSection>,
    pub redis: Option<UrlSection>,
    pub nats: Option<UrlSection>,
    /// Request history in PostgreSQL (database mode; boot setting).
    pub history: Option<HistorySection>,
}

/// `proxy:` — the data-plane listener and process settings (boot settings:
/// a change needs a restart or a binary upgrade, not a reload).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxySection {
    /// Port on all interfaces (original key). Default 3000. Overridden by `PORT`.
    pub port: Option<u16>,
    /// Explicit listen address(es), e.g. `"127.0.0.1:8080"`; wins over `port`.
    #[schema(value_type = Option<OneOrMany>)]
    pub listen: Option<OneOrMany<Written<SocketAddr>>>,
    /// Worker threads of the proxy service. Default: number of CPUs.
    pub threads: Option<usize>,
    /// Default total upstream timeout (ms) for every upstream and route.
    pub timeout: Option<Millis>,
    /// Default connect timeout to upstreams. Default 5 s.
    pub connect_timeout: Option<Millis>,
    /// Default read (idle between bytes) timeout from upstreams. Default 15 s.
    pub read_timeout: Option<Millis>,
    /// Default write timeout to upstreams. Default 15 s.
    pub write_timeout: Option<Millis>,
    /// Default request body limit, e.g. `"10mb"`. Default 10 MiB.
    pub max_body_size: Option<ByteSize>,
    /// CIDRs of proxies whose `X-Forwarded-*` headers are trusted.
    #[schema(value_type = Vec<String>)]
    pub trusted_proxies: Vec<Cidr>,
    /// Unix socket used for the zero-downtime listener hand-off.
    pub upgrade_sock: Option<String>,
    /// Pid file of the running process.
    pub pid_file: Option<String>,
    /// Time to drain in-flight requests on shutdown/upgrade. Default 30 s.
    pub grace_period: Option<Millis>,
    /// Optional TLS listener.
    pub tls: Option<TlsSection>,
    /// Edge limits (header sizes, deadlines, connection caps).
    pub limits: LimitsSection,
    /// Also answer `/health/live` and `/health/ready` on the proxy port. Default true.
    pub health_endpoints: Option<bool>,
    /// Name put in `Via` headers (loop detection). Default `flexgate-<hostname>`.
    #[schema(value_type = Option<String>)]
    pub via_name: Option<Written<Token>>,
    /// Requests in flight over all routes before shedding (503). Default 10000.
    pub max_in_flight: Option<usize>,
    /// How request paths are canonicalised before routing (reloadable).
    pub paths: PathsSection,
}

/// `proxy.paths:` — the canonical request path (see the README's "Security
/// model"). The defaults refuse every ambiguous spelling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PathsSection {
    /// Merge repeated slashes (`//a` → `/a`). Default true.
    pub merge_slashes: Option<bool>,
    /// `%2F` in a path: `refuse` (400, default) or `keep` (forwarded as is;
    /// an upstream that decodes it sees segments the router did not).
    pub escaped_slashes: Option<EscapedSlashesMode>,
    /// `;` parameters in path segments: `refuse` (400, default) or
    /// `ignoreForMatching` (forwarded; routes match the path without them).
    pub path_parameters: Option<PathParametersMode>,
}

text_enum! {
    /// `proxy.paths.escapedSlashes`.
    #[derive(Default)]
    pub enum EscapedSlashesMode {
        #[default]
        Refuse = "refuse",
        Keep = "keep",
    }
}

text_enum! {
    /// `proxy.paths.pathParameters`.
    #[derive(Default)]
    pub enum PathParametersMode {
        #[default]
        Refuse = "refuse",
        IgnoreForMatching = "ignoreForMatching",
    }
}

/// `proxy.tls:` — a TLS listener with one certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsSection {
    /// Listen address, e.g. `"0.0.0.0:3443"`.
    pub listen: String,
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// `proxy.limits:` — edge hardening limits. Every value has an edge-safe default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsSection {
    /// Total size of request headers (431 beyond). Default 60 KiB.
    pub max_header_bytes: Option<ByteSize>,
    /// Number of request header fields (431 beyond). Default 100.
    pub max_headers: Option<usize>,
    /// Length of the request target (414 beyond). Default 8 KiB.
    pub max_uri_bytes: Option<ByteSize>,
    /// Deadline to receive a complete request head, then the connection is closed. Default 10 s.
    pub header_timeout: Option<Millis>,
    /// Idle keep-alive time between requests. Default 75 s.
    pub keepalive_timeout: Option<Millis>,
    /// Requests per downstream connection. Default 1000.
    pub keepalive_requests: Option<u32>,
    /// Open downstream connections in total (503 and close beyond). Default 10000.
    pub max_connections: Option<usize>,
    /// Open downstream connections per client IP. Default 256.
    pub max_connections_per_ip: Option<usize>,
}

/// `admin:` — the admin service (REST API, probes, metrics).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AdminSection {
    /// Listen address. Default `127.0.0.1:9180`.
    #[schema(value_type = Option<String>)]
    pub listen: Option<Written<SocketAddr>>,
    /// Bearer token for `/api/*` (at least 16 bytes; a weaker one leaves
    /// the API disabled). Overridden by `FLEXGATE_ADMIN_TOKEN`.
    pub token: Option<String>,
    /// File holding the token (read at start; trailing newline trimmed).
    /// Instead of `token`.
    pub token_file: Option<String>,
    /// Open admin connections at most; beyond, new ones are closed at once. Default 64.
    pub max_connections: Option<usize>,
    /// Host names (port ignored) the admin service answers to; requests
    /// for another `Host` get 421. Empty (default): any host.
    pub allowed_hosts: Vec<String>,
    /// `/health*` and `/metrics` answer without credentials. Default true;
    /// `false` makes them need the token (or a session) like `/api/*`.
    pub public_endpoints: Option<bool>,
}

/// `security:` — SSRF policy and authentication.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SecuritySection {
    /// Host names upstreams may point to (`api.example.com`, `*.internal.corp`).
    /// Empty means no host restriction.
    pub allowed_hosts: Vec<String>,
    /// IPs/CIDRs upstreams must never resolve to (cloud metadata, private ranges).
    #[serde(rename = "blockedIPs")]
    #[schema(value_type = Vec<String>)]
    pub blocked_ips: Vec<Cidr>,
    /// API-key authentication.
    pub auth: Option<AuthSection>,
    /// Client IP allow list (CIDRs); when non-empty, other clients get 403.
    #[schema(value_type = Vec<String>)]
    pub allow_ips: Vec<Cidr>,
    /// Client IP deny list (CIDRs) → 403.
    #[schema(value_type = Vec<String>)]
    pub deny_ips: Vec<Cidr>,
    /// Addresses exempted from the built-in cloud-metadata block
    /// (169.254.0.0/16, fd00:ec2::254) — only if you really proxy to them.
    #[serde(rename = "allowedIPs")]
    #[schema(value_type = Vec<String>)]
    pub allowed_ips: Vec<Cidr>,
    /// JWT bearer authentication for routes with `auth: jwt`.
    pub jwt: Option<JwtSection>,
}

/// `security.jwt:` — how bearer tokens are verified.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtSection {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences must match one of these).
    pub audience: Option<OneOrMany>,
    /// Accepted algorithms: `HS256`, `RS256`, `ES256`. Default: those the keys allow.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Shared secret for HS256.
    pub secret: Option<String>,
    /// File holding the HS256 secret (read at load; trailing newline
    /// trimmed). Instead of `secret`; config file only.
    pub secret_file: Option<String>,
    /// Inline public keys (PEM) for RS256/ES256, optionally with a `kid`.
    pub public_keys: Vec<JwtPublicKey>,
    /// JWKS URL fetched in the background (passes the SSRF policy).
    pub jwks_url: Option<String>,
    /// JWKS refresh period. Default 5 minutes.
    pub jwks_refresh: Option<Millis>,
    /// Clock-skew leeway for `exp`/`nbf`. Default 60 s.
    pub leeway: Option<Millis>,
    /// Claims forwarded upstream as headers: `{sub: X-User-Id}`.
    #[schema(value_type = BTreeMap<String, String>)]
    pub forward_claims: BTreeMap<String, Written<http::HeaderName>>,
}

/// One inline JWT verification key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtPublicKey {
    pub kid: Option<String>,
    /// `RS256` or `ES256`.
    #[schema(required = true)]
    pub algorithm: Option<KeyAlgorithm>,
    /// PEM text of the public key (an RSA key for `RS256`, EC for `ES256`).
    #[schema(required = true, value_type = String)]
    pub pem: Option<Written<PublicKeyPem>>,
}

/// `security.auth:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthSection {
    /// `apiKey` (the only type configured here; JWT is per route).
    #[serde(rename = "type")]
    pub kind: Option<AuthType>,
    /// Header carrying the key. Default `X-API-Key`.
    #[schema(value_type = Option<String>)]
    pub header: Option<Written<http::HeaderName>>,
    /// Accepted keys, each given as the lowercase hex SHA-256 of the key.
    pub keys: Vec<ApiKeyConfig>,
    /// File of generated keys (`flexgate keys create`); relative to the
    /// config file's folder. Default `flexgate-keys.json`.
    pub key_store: Option<String>,
    /// Failed authentications (API key or JWT) allowed per client address
    /// and window before that address gets 429 on every authenticated
    /// route until the window ends. Default `{max: 20, windowMs: 60000}`;
    /// `max: 0` turns the budget off.
    pub failure_limit: Option<LimitConfig>,
}

text_enum! {
    /// `security.auth.type`.
    pub enum AuthType {
        ApiKey = "apiKey",
    }
}

/// One API key of `security.auth.keys`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiKeyConfig {
    /// Lowercase hex SHA-256 of the key (`flexgate keys hash KEY` prints it).
    #[schema(required = true, value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub key: Option<Written<KeyDigest>>,
    /// Consumer name, logged and forwarded.
    pub name: Option<String>,
    /// Stable id (default `config-<index>`).
    pub id: Option<String>,
    /// Scopes the key carries (routes may require them).
    pub scopes: Vec<String>,
    /// Route ids the key may call (empty = all).
    pub routes: Vec<String>,
    /// Unix time (seconds) after which the key is refused.
    pub expires_at: Option<u64>,
    /// A revoked key is refused.
    pub revoked: Option<bool>,
}

/// `rateLimit:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSection {
    /// `memory` (default) or `redis`.
    pub backend: Option<RateLimitBackend>,
    /// Redis connection for the `redis` backend.
    pub redis: Option<UrlSection>,
    /// One limit over all traffic.
    pub global: Option<LimitConfig>,
    /// Limits by path pattern, with an optional custom message.
    pub per_route: Vec<PerRouteLimit>,
    /// IPv6 clients are counted by this prefix length in address-keyed
    /// limits, the failed-authentication budget and the per-address
    /// connection cap (read at start for the latter). Default 64: one
    /// subscriber's /64 is one client. 128 keys every address apart.
    pub ipv6_prefix: Option<u8>,
}

text_enum! {
    /// `rateLimit.backend`.
    pub enum RateLimitBackend {
        Memory = "memory",
        Redis = "redis",
    }
}

text_enum! {
    /// What a limit counts by (`by`).
    #[derive(Default)]
    pub enum LimitBy {
        /// The client address (trusted proxies honoured; IPv6 by `rateLimit.ipv6Prefix`).
        #[default]
        Ip = "ip",
        /// The API-key name (the address when anonymous).
        Consumer = "consumer",
        /// One bucket for everyone.
        All = "all",
    }
}

/// `{max, windowMs}` — at most `max` requests per window.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitConfig {
    pub max: u64,
    pub window_ms: Option<Millis>,
    /// Admin-API spelling: `requests` (same as `max`).
    pub requests: Option<u64>,
    /// Admin-API spelling: `window: "60s"` (same as `windowMs`).
    pub window: Option<Millis>,
    /// What is counted: `ip` (default), `consumer` (API-key name), `all`.
    pub by: Option<LimitBy>,
    /// Message of the 429 body.
    pub message: Option<String>,
}

/// One entry of `rateLimit.perRoute`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PerRouteLimit {
    /// Requests whose path matches this pattern (see `routes[].path`).
    #[schema(required = true, value_type = String, pattern = "^/")]
    pub path: Option<Written<PathPattern>>,
    pub max: u64,
    pub window_ms: Option<Millis>,
    pub message: Option<String>,
    /// `ip` (default), `consumer`, `all`.
    pub by: Option<LimitBy>,
}

/// `{url}` of an external service (`database`, `redis`, `nats`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlSection {
    pub url: Option<String>,
    /// File holding the URL (read at load; trailing newline trimmed).
    /// Instead of `url`; config file only.
    pub url_file: Option<String>,

    /// PEM file of the CA that signed the server's certificate (TLS:
    /// `sslmode=verify-ca`/`verify-full`, `rediss://`, `tls://`). Without
    /// it `rediss://` and `tls://` verify against the system trust store.
    pub ca_file: Option<String>,
}

/// `history:` — every proxied request recorded in PostgreSQL, with hourly
/// and daily roll-ups (database mode only; a boot setting, read at start).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HistorySection {
    /// Record requests. Default true in database mode (`DATABASE_URL` or
    /// `database.url`); without a database there is nowhere to record.
    pub enabled: Option<bool>,
    /// Records waiting for the writer; when full, new records are dropped
    /// and counted (`flexgate_history_dropped_total`). Default 50000.
    pub queue_size: Option<usize>,
    /// Rows per binary COPY. Default 1000.
    pub batch_size: Option<usize>,
    /// Longest time a record waits for its batch to fill. Default 500 ms.
    pub flush_interval: Option<Millis>,
    /// Days of raw rows kept (older day partitions are dropped). Default 7.
    pub retention_days: Option<u32>,
    /// Days of hourly and daily roll-ups kept. Default 90.
    pub rollup_retention_days: Option<u32>,
    /// Time between maintenance runs (partitions, roll-ups, retention). Default 60 s.
    pub maintenance_interval: Option<Millis>,
    /// This node's name in the rows. Default: the host name.
    pub node_id: Option<String>,
}

/// One entry of `upstreams:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamConfig {
    /// Unique name, referenced by routes.
    #[schema(required = true, min_length = 1)]
    pub name: String,
    /// Single target, e.g. `http://10.0.0.5:8080` or `https://api.example.com`.
    #[schema(value_type = Option<String>)]
    pub url: Option<Written<TargetUrl>>,
    /// Several targets with weights (instead of `url`).
    pub targets: Vec<TargetConfig>,
    /// `roundRobin` (default; weighted when weights differ), `consistentHash`,
    /// `leastConnections` (power of two choices), `random`.
    pub load_balancing: Option<Balancer>,
    /// For `consistentHash`: `clientIp` (default) or `header:<Name>`.
    #[schema(value_type = Option<String>, pattern = "^(clientIp|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")]
    pub hash_key: Option<Written<HashKey>>,
    /// Total time for one upstream attempt (ms).
    pub timeout: Option<Millis>,
    pub connect_timeout: Option<Millis>,
    pub read_timeout: Option<Millis>,
    pub write_timeout: Option<Millis>,
    /// Extra attempts after a failure (connect failures always; other failures
    /// for idempotent methods only). Default 0, at most 10.
    pub retries: Option<u32>,
    /// First backoff step between attempts (full jitter, doubling). Default 25 ms.
    pub retry_backoff: Option<Millis>,
    /// Circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Active HTTP health check.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection after consecutive connect failures.
    pub passive: Option<PassiveConfig>,
    /// Host header sent upstream: `upstream` (default, the target's host) or `client`.
    pub host_header: Option<HostHeader>,
    /// Idle upstream keep-alive connections expire after this. Default 60 s.
    pub idle_timeout: Option<Millis>,
}

text_enum! {
    /// How an upstream picks a target (`loadBalancing`).
    #[derive(Default)]
    pub enum Balancer {
        /// Weighted when weights differ (the default).
        #[default]
        RoundRobin = "roundRobin",
        /// Same as `roundRobin`.
        Weighted = "weighted",
        /// By `hashKey`.
        ConsistentHash = "consistentHash",
        /// Power of two choices over in-flight requests.
        LeastConnections = "leastConnections",
        /// Same as `leastConnections`.
        P2c = "p2c",
        Random = "random",
    }
}

text_enum! {
    /// The `Host` an upstream is sent (`hostHeader`).
    #[derive(Default)]
    pub enum HostHeader {
        /// The target's host (the default).
        #[default]
        Upstream = "upstream",
        /// The client's `Host`.
        Client = "client",
    }
}

/// One weighted target.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetConfig {
    #[schema(required = true, value_type = String)]
    pub url: Option<Written<TargetUrl>>,
    /// Relative weight, default 1.
    pub weight: Option<u32>,
}

/// `circuitBreaker:` (original keys).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitBreakerConfig {
    pub enabled: Option<bool>,
    /// Failure percentage that opens the breaker.
    pub failure_threshold: Option<u32>,
    /// How long the breaker stays open (ms).
    pub open_duration: Option<Millis>,
    /// Minimum requests in the window before the percentage counts.
    pub minimum_requests: Option<u32>,
    /// Consecutive failures that open the breaker regardless of percentage.
    pub consecutive_failures: Option<u32>,
}

/// `healthCheck:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheckConfig {
    pub enabled: Option<bool>,
    /// Path probed with GET. Default `/health`.
    #[schema(value_type = Option<String>, pattern = "^/")]
    pub path: Option<Written<ProbePath>>,
    /// Time between probes. Default 10 s.
    pub interval: Option<Millis>,
    /// Probe timeout. Default 2 s.
    pub timeout: Option<Millis>,
    /// Consecutive successes to mark a target up. Default 1.
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures to mark a target down. Default 3.
    pub unhealthy_threshold: Option<u32>,
}

/// `passive:` — eject a target after consecutive connect failures.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PassiveConfig {
    /// Consecutive connect failures before ejection. Default 3.
    pub max_failures: Option<u32>,
    /// Ejection time. Default 10 s.
    pub eject_duration: Option<Millis>,
}

text_enum! {
    /// `auth:` of a route.
    #[derive(Default)]
    pub enum RouteAuth {
        /// A valid API key is required.
        Required = "required",
        /// A key is checked when present; requests without one pass.
        Optional = "optional",
        /// No authentication (default).
        #[default]
        None = "none",
        /// A valid JWT bearer token is required (`security.jwt`).
        Jwt = "jwt",
    }
}

text_enum! {
    /// Shedding class of a route under global overload (`criticality`).
    #[derive(Default)]
    pub enum Criticality {
        /// Shed first, above 70 % of `proxy.maxInFlight`.
        Low = "low",
        /// Shed above 90 % (the default).
        #[default]
        Normal = "normal",
        /// Shed only at 100 %.
        High = "high",
    }
}

/// Header add/remove lists.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderRules {
    /// Headers set (replacing any existing value).
    #[serde(deserialize_with = "keyed_map")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub add: BTreeMap<Written<http::HeaderName>, Written<http::HeaderValue>>,
    /// Header names removed.
    #[schema(value_type = Vec<String>)]
    pub remove: Vec<Written<http::HeaderName>>,
}

/// One entry of `routes:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteConfig {
    /// Stable id used in logs and metrics. Default `route-<index>`.
    pub id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// `/exact`, `/prefix/*` (glob: `*` matches one segment in the middle,
    /// anything at the end), or `/a/*/b`.
    #[schema(required = true, value_type = String, pattern = "^/")]
    pub path: Option<Written<PathPattern>>,
    /// Allowed methods; empty = all.
    #[schema(value_type = Vec<String>)]
    pub methods: Vec<Written<http::Method>>,
    /// Host match: `api.example.com` or `*.example.com`; empty = any host.
    #[schema(value_type = Option<String>)]
    pub host: Option<Written<HostPattern>>,
    /// Upstream name (or, admin-API style, a URL).
    #[schema(value_type = Option<String>)]
    pub upstream: Option<Written<UpstreamRef>>,
    /// Admin-API alias of a URL upstream.
    #[schema(value_type = Option<String>)]
    pub target_url: Option<Written<TargetUrl>>,
    pub auth: Option<RouteAuth>,
    /// Total upstream time for this route (ms), overriding the upstream's.
    pub timeout: Option<Millis>,
    pub rate_limit: Option<LimitConfig>,
    /// Disabled routes are ignored by the matcher. Default true.
    pub enabled: Option<bool>,
    /// Explicit priority: higher wins before specificity is considered.
    pub priority: Option<i32>,
    /// Remove the route's literal prefix before forwarding.
    pub strip_prefix: Option<bool>,
    /// Replace the matched prefix with this path before forwarding.
    pub rewrite: Option<String>,
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    /// Body limit for this route.
    pub max_body_size: Option<ByteSize>,
    /// Allow retrying non-idempotent requests whose body fits the retry buffer.
    pub retry_non_idempotent: Option<bool>,
    /// Allow WebSocket upgrade through this route.
    pub websocket: Option<bool>,
    /// Client IP allow/deny for this route (CIDRs).
    #[schema(value_type = Vec<String>)]
    pub allow_ips: Vec<Cidr>,
    #[schema(value_type = Vec<String>)]
    pub deny_ips: Vec<Cidr>,
    /// Requests in flight on this route before 503.
    pub max_in_flight: Option<usize>,
    /// Scopes a key must carry to call this route (403 otherwise).
    pub scopes: Vec<String>,
    /// Shedding class under global overload: `low` (shed first, above 70 %
    /// of `proxy.maxInFlight`), `normal` (above 90 %, default), `high` (only at 100 %).
    pub criticality: Option<Criticality>,
}

/// `logging:`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LoggingSection {
    /// `error`, `warn`, `info` (default), `debug`, `trace`.
    pub level: Option<LogLevel>,
    /// `json` (default) or `text`.
    pub format: Option<LogFormat>,
    pub sampling: Option<SamplingConfig>,
    /// Write an access log line per request. Default true.
    pub access_log: Option<bool>,
}

text_enum! {
    /// `logging.level`.
    pub enum LogLevel {
        Error = "error",
        Warn = "warn",
        Info = "info",
        Debug = "debug",
        Trace = "trace",
    }
}

text_enum! {
    /// `logging.format`.
    pub enum LogFormat {
        Json = "json",
        Text = "text",
    }
}

/// `logging.sampling:` — fraction of requests written to the access log.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SamplingConfig {
    /// For status < 400. Default 1.0.
    pub success_rate: Option<f64>,
    /// For status ≥ 400 and failures. Default 1.0.
    pub error_rate: Option<f64>,
}

impl WebhookConfig {
    /// The subscription's id: its `id`, else `webhook-` and the start of the
    /// SHA-256 of its URL — stable when other subscriptions are added,
    /// removed or reordered, so deliveries, dead letters and failure
    /// streaks never pass to another receiver.
    pub fn effective_id(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => {
                let digest = ring::digest::digest(&ring::digest::SHA256, self.url.as_bytes());
                let hex: String = digest.as_ref()[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("webhook-{hex}")
            }
        }
    }
}

/// One entry of `webhooks:`: a subscription that receives events as signed
/// POSTs (delivery, retries, coalescing and durability: [`crate::webhooks`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct WebhookConfig {
    pub id: Option<String>,
    /// Where events are POSTed (`http://` or `https://`). The host passes
    /// `security.allowedHosts`, and every address it resolves to passes the
    /// SSRF policy, at config time and before every connection.
    #[schema(required = true, pattern = r"^https?://[^/?#\s]+")]
    pub url: String,
    /// Event names or patterns (`*`, `circuit_breaker.*`); empty = every event.
    pub events: Vec<String>,
    /// Default true. A subscription answered `410 Gone`, or failing for
    /// `autoDisableAfter` straight, is disabled (audited, `webhook.disabled`).
    pub enabled: Option<bool>,
    /// Retries after the first attempt (default 8, at most 20).
    pub max_retries: Option<u32>,
    /// Delay before the first retry (default 1s); retry n waits a random time
    /// up to `initialDelay × backoffMultiplier^(n-1)`, capped at `maxDelay`.
    pub initial_delay: Option<Millis>,
    /// Default 2.0 (1.0–10.0).
    pub backoff_multiplier: Option<f64>,
    /// Longest wait between two attempts (default 1h).
    pub max_delay: Option<Millis>,
    /// Connect timeout of one attempt (default 5s).
    pub connect_timeout: Option<Millis>,
    /// Whole-attempt timeout: connect, send, answer (default 15s).
    pub timeout: Option<Millis>,
    /// High-rate events (`request.error`, `rate_limit.exceeded`,
    /// `auth.failure`) are aggregated over this window into one delivery
    /// (default 10s, 1s–1h).
    pub coalesce_window: Option<Millis>,
    /// A subscription whose deliveries fail for this long without one
    /// success is disabled (default 24h, at least 1s).
    pub auto_disable_after: Option<Millis>,
    /// Extra request headers (not `webhook-*`, `content-type`,
    /// `content-length`, `transfer-encoding`, `host`, `connection`,
    /// `user-agent`: the gateway sets those).
    pub headers: BTreeMap<String, String>,
    /// Secret the deliveries are signed with (`whsec_<base64>`, or any
    /// other text used as bytes; at least 16 bytes).
    pub secret: Option<String>,
    /// File holding `secret` (read at load; trailing newline trimmed).
    /// Instead of `secret`; config file only.
    pub secret_file: Option<String>,
    /// The secret being rotated out: while set, each delivery carries a
    /// signature with both secrets.
    pub previous_secret: Option<String>,
}
