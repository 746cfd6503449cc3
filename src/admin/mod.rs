//! The admin service: an axum app inside the gateway process, on
//! `admin.listen` (loopback by default).
//!
//! Served from a Pingora *listening* service (`serve.rs`) rather than a
//! background task, so its socket joins the zero-downtime listener hand-off
//! (`start -u`) and graceful shutdown exactly like the proxy's: the admin
//! port never refuses a connection during an upgrade.
//!
//! Access: `/health*` answer without a token (probes; the port is loopback
//! by default). Every `/api/*` call needs `Authorization: Bearer <token>`
//! (`admin.token` or `FLEXGATE_ADMIN_TOKEN`), compared in constant time;
//! without a configured token `/api/*` answers 403 and says why (also logged
//! at start). Errors use the gateway's JSON error shape.

pub mod serve;

use crate::proxy::ProxyStats;
use crate::reload::ConfigHandle;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<ConfigHandle>,
    pub stats: Arc<ProxyStats>,
    pub token: Option<Arc<str>>,
    /// The Redis rate-limit backend, when configured (for `/metrics`).
    pub redis: Option<Arc<crate::limit::redis::RedisLimiter>>,
}

/// One JSON error shape everywhere (the proxy's).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": code, "message": message, "status": status.as_u16()});
    (status, Json(body)).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured (set admin.token or FLEXGATE_ADMIN_TOKEN)",
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(p) if constant_time_eq(p, token.as_bytes()) => next.run(req).await,
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not valid",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <admin token> is required",
        ),
    }
}

use crate::store::now_rfc3339;

async fn health(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    Json(json!({
        "status": "UP",
        "timestamp": now_rfc3339(),
        "version": env!("CARGO_PKG_VERSION"),
        "configVersion": snap.version,
    }))
    .into_response()
}

async fn live() -> Response {
    Json(json!({"status": "UP"})).into_response()
}

async fn ready(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    Json(json!({"status": "UP", "checks": {"config": {"status": "UP", "version": snap.version}}}))
        .into_response()
}

async fn list_routes(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    Json(json!({"version": snap.version, "routes": snap.source.routes})).into_response()
}

async fn list_upstreams(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    Json(json!({"version": snap.version, "upstreams": snap.source.upstreams})).into_response()
}

async fn prometheus(State(state): State<AdminState>) -> Response {
    let snap = state.config.current();
    let text = crate::metrics::render(
        &snap,
        state
            .config
            .reloads
            .load(std::sync::atomic::Ordering::Relaxed),
        state
            .config
            .rejected_reloads
            .load(std::sync::atomic::Ordering::Relaxed),
        state.redis.as_ref().map(|r| r.is_up()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}

/// The admin app (also used in-process by tests with `oneshot`).
pub fn app(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/routes", get(list_routes))
        .route("/api/upstreams", get(list_upstreams))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(prometheus))
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}
