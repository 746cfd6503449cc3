//! The admin service: an axum app inside the gateway process, on
//! `admin.listen` (loopback by default).
//!
//! Served from a Pingora *listening* service (`serve.rs`) rather than a
//! background task, so its socket joins the zero-downtime listener hand-off
//! (`start -u`) and graceful shutdown exactly like the proxy's: the admin
//! port never refuses a connection during an upgrade.
//!
//! Access: `/health*` and `/metrics` answer without a token (probes and
//! scrapers; the port is loopback by default) unless
//! `admin.publicEndpoints: false`. Every `/api/*` call needs
//! `Authorization: Bearer <token>` (`admin.token` or
//! `FLEXGATE_ADMIN_TOKEN`, compared in constant time) or a session cookie
//! from `POST /api/session` (`session.rs`); without a configured token, or
//! with a weak one (under 16 bytes), `/api/*` and `POST /api/session`
//! answer 403 and say why (also logged at start).
//!
//! Defences: failed sign-ins are limited per client address
//! (`auth_limit.rs`, 429); bodies are capped and read with a deadline
//! (`api.rs`); connections are capped (`serve.rs`); with
//! `admin.allowedHosts`, other `Host`s get 421 (DNS rebinding). Secrets
//! never appear in answers or audit entries (`config::redact`).
//!
//! Parts: `api.rs` (error shape, body rules), `write.rs` (the path of every
//! write: validate, dry-run compile, commit to the store with audit
//! entries, install), `resources.rs` (routes, upstreams, webhooks),
//! `keys.rs`, `webhooks.rs` (delivery log, replay, test events), `config_io.rs` (export/import, audit log), `live_metrics.rs` (live
//! summary and the SSE streams), `session.rs`,
//! `openapi.rs` (`GET /api/openapi.json`, generated from these handlers),
//! `ui.rs` (the web UI at `/admin`, no credentials: its data comes from `/api/*`).

pub mod api;
pub mod auth_limit;
pub mod config_io;
pub mod history;
pub mod keys;
pub mod live_metrics;
pub mod openapi;
pub mod resources;
pub mod serve;
pub mod session;
pub mod ui;
pub mod webhooks;
pub mod write;

use crate::metrics::{BreakerGauge, UpstreamGauges};
use crate::reload::ConfigHandle;
use crate::store::Store;
use api::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use write::Actor;

/// Called after every committed write with the new version (database
/// mode: tells the other nodes).
pub type OnCommit = Arc<dyn Fn(u64) + Send + Sync>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<ConfigHandle>,
    pub token: Option<Arc<str>>,
    /// Why the configured token cannot be used (too short, empty): the
    /// admin API then stays disabled.
    pub token_weak: Option<Arc<str>>,
    /// Whether the admin listener is TLS (the session cookie's `Secure`).
    pub listener_tls: bool,
    /// `admin.allowedHosts`, lower-case (empty: any host).
    pub allowed_hosts: Arc<[String]>,
    /// Failed sign-ins per client address.
    pub failures: Arc<auth_limit::Failures>,
    /// The Redis rate-limit backend, when configured (for `/metrics`).
    pub redis: Option<Arc<crate::limit::redis::RedisLimiter>>,
    /// Where writes are persisted.
    pub store: Arc<dyn Store>,
    /// The request-history roll-ups (database mode; `None`: no database).
    pub history: Option<crate::history::rollups::RollupReader>,
    pub sessions: Arc<session::Sessions>,
    /// `/health*` and `/metrics` without credentials (default true).
    pub public_endpoints: bool,
    pub on_commit: Option<OnCommit>,
    /// The cluster feed over NATS, when configured (SSE of every node;
    /// the `jetstream` readiness check).
    pub cluster: Option<Arc<crate::live::cluster::ClusterFeed>>,
    /// Webhook delivery (the delivery log, replays, test events).
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

impl AdminState {
    /// The admin state of a config file with the embedded store, as
    /// `flexgate start` builds it (also used by in-process tests).
    pub fn for_file(path: &std::path::Path) -> Result<AdminState, crate::config::ConfigErrors> {
        let (handle, boot, file) = ConfigHandle::load(path, None, None)?;
        let handle = Arc::new(handle);
        Ok(AdminState {
            store: crate::store::embedded::FileStore::for_handle(&handle, &file),
            history: None,
            config: handle,
            token: boot.admin_token.as_deref().map(Arc::from),
            token_weak: crate::config::admin_token_warning(&file).map(Arc::from),
            listener_tls: false,
            allowed_hosts: boot.admin_allowed_hosts.clone().into(),
            failures: Arc::default(),
            redis: None,
            sessions: Arc::default(),
            public_endpoints: boot.admin_public_endpoints,
            on_commit: None,
            cluster: None,
            webhooks: None,
        })
    }
}

/// One JSON error shape everywhere (the proxy's).
pub fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// 403 while the admin API is disabled (no token, or a weak one).
fn disabled(st: &AdminState) -> Option<ApiError> {
    if let Some(why) = &st.token_weak {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            format!("the admin API is disabled because the admin token is weak: {why}"),
        ));
    }
    st.token.is_none().then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured (set admin.token or FLEXGATE_ADMIN_TOKEN)",
        )
    })
}

/// 429 while the client is over the failed sign-in limit.
fn throttled(st: &AdminState, peer: Option<serve::PeerAddr>) -> Option<Response> {
    let serve::PeerAddr(ip) = peer?;
    match st.failures.blocked(ip) {
        None => None,
        Some(wait) => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!(
                    "too many failed sign-ins from {ip} ({} within {} s); try again in {wait} s",
                    auth_limit::MAX_FAILURES,
                    auth_limit::WINDOW.as_secs()
                ),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
            Some(resp)
        }
    }
}

/// Counts a failed sign-in of the request's client.
fn failed(st: &AdminState, peer: Option<serve::PeerAddr>) {
    if let Some(serve::PeerAddr(ip)) = peer {
        st.failures.fail(ip);
    }
}

/// Who a request is, or why it is refused.
fn authenticate(st: &AdminState, req: &Request) -> Result<Actor, ApiError> {
    if let Some(e) = disabled(st) {
        return Err(e);
    }
    let Some(token) = &st.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token",
        ));
    };
    let unauthorized =
        |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg.to_string());
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        return match auth.as_bytes().strip_prefix(b"Bearer ") {
            Some(p) if constant_time_eq(p, token.as_bytes()) => Ok(Actor("admin-token".into())),
            _ => Err(unauthorized("the admin token is not valid")),
        };
    }
    if let Some(c) = session::cookie(req.headers()) {
        if st.sessions.check(&c) {
            session::csrf_check(req.method(), req.headers())?;
            return Ok(Actor("session".into()));
        }
        return Err(unauthorized(
            "the session has ended; sign in again (POST /api/session)",
        ));
    }
    Err(unauthorized(
        "Authorization: Bearer <admin token> (or a session cookie) is required",
    ))
}

/// Whether a request presented credentials (a wrong one counts as a
/// failed sign-in; no credentials at all does not).
fn presents_credentials(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION) || session::cookie(req.headers()).is_some()
}

async fn require_auth(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<serve::PeerAddr>().copied();
    if disabled(&st).is_none() {
        if let Some(resp) = throttled(&st, peer) {
            return resp;
        }
    }
    match authenticate(&st, &req) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED && presents_credentials(&req) {
                failed(&st, peer);
            }
            let mut resp = e.into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"flexgate-admin\""),
                );
            }
            resp
        }
    }
}

/// `admin.allowedHosts`: 421 for a request to another host name
/// (DNS-rebinding defence). The port is ignored, names are compared
/// lower-case.
async fn check_host(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if st.allowed_hosts.is_empty() {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .map(host_without_port);
    match host {
        Some(h) if st.allowed_hosts.iter().any(|a| host_without_port(a) == h) => {
            next.run(req).await
        }
        other => error(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            &format!(
                "the admin service does not answer for host {:?} (admin.allowedHosts)",
                other.unwrap_or_default()
            ),
        ),
    }
}

/// `Example.COM:9180` → `example.com`; `[::1]:9180` → `::1`.
fn host_without_port(h: &str) -> String {
    let h = h.trim();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    bare.trim_end_matches('.').to_ascii_lowercase()
}

async fn require_auth_if_private(
    State(st): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    if st.public_endpoints {
        next.run(req).await
    } else {
        require_auth(State(st), req, next).await
    }
}

/// Database mode: reads the store and installs what it holds (used after
/// a write conflict, and by the sync service).
pub async fn sync_from_store(st: &AdminState) -> Result<(), ApiError> {
    if !st.config.is_managed() {
        return Ok(());
    }
    if let Some(v) = st.store.load().await? {
        let handle = st.config.clone();
        tokio::task::spawn_blocking(move || handle.apply_managed(v)).await??;
    }
    Ok(())
}

/// `GET /health`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// `UP`.
    pub status: String,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// FlexGate version.
    pub version: String,
    /// Live config version.
    pub config_version: u64,
}

/// Status of one readiness check.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckStatus {
    /// `UP` or `DOWN`.
    pub status: String,
    /// Details (config version, store kind, error).
    #[serde(flatten)]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// `GET /health/ready`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadyBody {
    /// `UP` when every check is up, else `DOWN` (503).
    pub status: String,
    pub checks: BTreeMap<String, CheckStatus>,
}

/// `GET /health/live`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LiveBody {
    /// `UP` while the process serves.
    pub status: String,
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is up", body = HealthBody)))]
async fn health(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    Json(HealthBody {
        status: "UP".into(),
        timestamp: crate::clock::now_rfc3339(),
        version: env!("CARGO_PKG_VERSION").into(),
        config_version: snap.version,
    })
    .into_response()
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process is alive", body = LiveBody)))]
async fn live() -> Response {
    Json(LiveBody {
        status: "UP".into(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready: every check is up", body = ReadyBody),
        (status = 503, description = "Not ready: a check is down", body = ReadyBody),
    ))]
async fn ready(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    let mut checks = BTreeMap::new();
    let mut details = BTreeMap::new();
    details.insert("version".to_string(), serde_json::json!(snap.version));
    details.insert("store".to_string(), serde_json::json!(state.store.kind()));
    checks.insert(
        "config".to_string(),
        CheckStatus {
            status: "UP".into(),
            details,
        },
    );
    if state.store.kind() == "postgres" {
        let ping =
            tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping()).await;
        let mut details = BTreeMap::new();
        let up = match ping {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                details.insert("error".to_string(), serde_json::json!(e.to_string()));
                false
            }
            Err(_) => {
                details.insert(
                    "error".to_string(),
                    serde_json::json!("no answer within 3 s"),
                );
                false
            }
        };
        checks.insert(
            "database".to_string(),
            CheckStatus {
                status: if up { "UP" } else { "DOWN" }.into(),
                details,
            },
        );
    }
    if let Some(redis) = &state.redis {
        checks.insert("redis".to_string(), dependency_check(redis.is_up()));
    }
    if let Some(cluster) = &state.cluster {
        checks.insert("jetstream".to_string(), dependency_check(cluster.is_up()));
    }
    let up = checks.values().all(|c| c.status == "UP");
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadyBody {
            status: if up { "UP" } else { "DOWN" }.into(),
            checks,
        }),
    )
        .into_response()
}

/// A dependency watched by a background task: its last known state.
fn dependency_check(up: bool) -> CheckStatus {
    CheckStatus {
        status: if up { "UP" } else { "DOWN" }.into(),
        details: BTreeMap::new(),
    }
}

/// The live config's upstreams as `/metrics` reports them: breaker states
/// and which targets are available now.
fn upstream_gauges(snap: &crate::snapshot::Snapshot) -> Vec<UpstreamGauges<'_>> {
    use crate::snapshot::breaker::BreakerState;
    let now = crate::snapshot::upstream::now_ms();
    snap.upstreams
        .iter()
        .map(|up| UpstreamGauges {
            name: &up.name,
            breaker: up.breaker.as_ref().map(|b| match b.state() {
                BreakerState::Closed => BreakerGauge::Closed,
                BreakerState::Open => BreakerGauge::Open,
                BreakerState::HalfOpen => BreakerGauge::HalfOpen,
            }),
            targets: up
                .targets
                .iter()
                .map(|t| (t.url.as_str(), t.state.available(now)))
                .collect(),
        })
        .collect()
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn prometheus(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    use std::sync::atomic::Ordering::Relaxed;
    let mut dependencies = Vec::new();
    if state.store.kind() == "postgres" {
        dependencies.push(("postgres", crate::store::sync::database_up()));
    }
    if let Some(redis) = &state.redis {
        dependencies.push(("redis", redis.is_up()));
    }
    if let Some(cluster) = &state.cluster {
        dependencies.push(("nats", cluster.is_up()));
    }
    let upstreams = upstream_gauges(&snap);
    let text = crate::metrics::render(&crate::metrics::ScrapeState {
        config_version: snap.version,
        upstreams: &upstreams,
        reloads: state.config.reloads.load(Relaxed),
        rejected: state.config.rejected_reloads.load(Relaxed),
        dependencies: &dependencies,
        nats_dropped: state
            .cluster
            .as_ref()
            .map_or(0, |c| c.dropped.load(Relaxed)),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[utoipa::path(post, path = "/api/session", tag = "session",
    request_body(content = Option<session::SessionRequest>, description = "The token; or send it as Authorization: Bearer with no body"),
    responses(
        (status = 200, description = "Signed in: Set-Cookie flexgate_session (HttpOnly, SameSite=Strict)", body = session::SessionCreated),
        (status = 400, description = "Malformed JSON", body = api::ErrorBody),
        (status = 401, description = "Wrong token", body = api::ErrorBody),
        (status = 403, description = "The admin API is disabled: no admin token, or a weak one (under 16 bytes)", body = api::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = api::ErrorBody),
        (status = 413, description = "Body over 1 KiB", body = api::ErrorBody),
        (status = 421, description = "Host not in admin.allowedHosts", body = api::ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this address (Retry-After)", body = api::ErrorBody),
        (status = 415, description = "Not application/json", body = api::ErrorBody),
        (status = 422, description = "Invalid field", body = api::ErrorBody),
    ))]
async fn create_session(State(st): State<AdminState>, req: Request) -> Result<Response, Response> {
    if let Some(e) = disabled(&st) {
        return Err(e.into_response());
    }
    let Some(token) = st.token.clone() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token",
        ));
    };
    let peer = req.extensions().get::<serve::PeerAddr>().copied();
    if let Some(resp) = throttled(&st, peer) {
        return Err(resp);
    }
    let presented = session::presented_token(req)
        .await
        .map_err(IntoResponse::into_response)?;
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        failed(&st, peer);
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not valid",
        ));
    }
    let (value, expires_at) = st.sessions.create();
    let mut resp = Json(session::SessionCreated { expires_at }).into_response();
    // `Secure` follows the admin listener itself, never a client header.
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(Some(&value), st.listener_tls),
    );
    Ok(resp)
}

#[utoipa::path(delete, path = "/api/session", tag = "session",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared"),
        (status = 401, description = "No or wrong credentials", body = api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
async fn end_session(State(st): State<AdminState>, req: Request) -> Response {
    if let Some(c) = session::cookie(req.headers()) {
        st.sessions.remove(&c);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(None, st.listener_tls),
    );
    resp
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this admin endpoint does not take this method",
    )
}

/// The admin app (also used in-process by tests with `oneshot`).
pub fn app(state: AdminState) -> Router {
    use resources::*;
    let api = Router::new()
        .route("/api/routes", get(list_routes).post(create_route))
        .route(
            "/api/routes/{key}",
            get(get_route).put(replace_route).delete(delete_route),
        )
        .route("/api/upstreams", get(list_upstreams).post(create_upstream))
        .route(
            "/api/upstreams/{key}",
            get(get_upstream)
                .put(replace_upstream)
                .delete(delete_upstream),
        )
        .route("/api/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/api/webhooks/{key}",
            get(get_webhook).put(replace_webhook).delete(delete_webhook),
        )
        .route(
            "/api/webhooks/{key}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/api/webhooks/{key}/deliveries/{delivery}",
            get(webhooks::get_delivery),
        )
        .route(
            "/api/webhooks/{key}/deliveries/{delivery}/retry",
            post(webhooks::retry_delivery),
        )
        .route("/api/webhooks/{key}/test", post(webhooks::test_webhook))
        .route("/api/keys", get(keys::list_keys).post(keys::create_key))
        .route(
            "/api/keys/{id}",
            get(keys::get_key).delete(keys::revoke_key),
        )
        .route(
            "/api/config",
            get(config_io::export).post(config_io::import),
        )
        .route("/api/logs", get(config_io::logs))
        .route("/api/metrics", get(live_metrics::summary))
        .route("/api/stream/metrics", get(live_metrics::stream_metrics))
        .route("/api/stream/alerts", get(live_metrics::stream_alerts))
        .route("/api/metrics/history", get(history::metrics_history))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/session", axum::routing::delete(end_session))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let probes = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_auth_if_private,
        ));
    Router::new()
        .route("/api/session", post(create_session))
        .merge(api)
        .merge(probes)
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}
