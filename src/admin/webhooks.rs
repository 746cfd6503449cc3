//! Webhook deliveries: `GET /api/webhooks/{id}/deliveries` (the delivery
//! log, newest first, filterable by status), one delivery, its replay
//! (`POST …/deliveries/{deliveryId}/retry`), and `POST
//! /api/webhooks/{id}/test` (a `webhook.test` event sent now, its attempt's
//! result in the answer). The subscriptions themselves are CRUD resources
//! (`resources.rs`). Also the audited write that disables a subscription
//! (410 Gone, or failing too long), which the delivery service calls.

use super::api::ApiError;
use super::write::{apply, Actor, Change};
use super::AdminState;
use crate::webhooks::delivery::{Delivery, DeliveryQuery, DeliveryStatus};
use crate::webhooks::Webhooks;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// A delivery as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    /// The payload's `id` and `webhook-id` header (the receiver's idempotency key).
    pub event_id: String,
    /// The payload's `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// HTTP status of the last attempt.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    /// The start of the last answer's body (at most 1 KiB).
    pub response_snippet: Option<String>,
    /// The JSON body sent: `{id, type, time, node, data}`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> DeliveryView {
        let time = crate::clock::rfc3339_ms;
        DeliveryView {
            payload: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            created_at: time(d.created_ms),
            updated_at: time(d.updated_ms),
            next_attempt_at: d.next_attempt_ms.map(time),
            last_status: d.last_status,
            last_error: d.last_error,
            last_latency_ms: d.last_latency_ms,
            response_snippet: d.response_snippet,
        }
    }
}

/// A page of the delivery log.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    /// Cursor for the next (older) page: pass as `before`.
    pub next: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryOne {
    pub delivery: DeliveryView,
}

/// The delivery service, and the subscription `id` known to the live config.
fn service(st: &AdminState, id: &str) -> Result<Arc<Webhooks>, ApiError> {
    let hooks = st.webhooks.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_unavailable",
            "webhook delivery is not running in this process",
        )
    })?;
    if hooks.subscriptions().get(id).is_none() {
        return Err(ApiError::not_found(format!("no webhook {id:?}")));
    }
    Ok(hooks)
}

fn json<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/api/webhooks/{key}/deliveries", tag = "webhooks",
    params(("key" = String, Path, description = "Webhook id"), DeliveryQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = DeliveryList),
        (status = 400, description = "Bad filter or cursor", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 404, description = "No such webhook", body = super::api::ErrorBody),
        (status = 503, description = "Delivery store unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_deliveries(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    query: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit: must be between 1 and 500",
        ));
    }
    let hooks = service(&st, &id)?;
    let page = hooks.store.list(&id, &q).await?;
    Ok(json(
        StatusCode::OK,
        DeliveryList {
            deliveries: page.deliveries.into_iter().map(Into::into).collect(),
            next: page.next,
        },
    ))
}

#[utoipa::path(get, path = "/api/webhooks/{key}/deliveries/{delivery}", tag = "webhooks",
    params(("key" = String, Path, description = "Webhook id"), ("delivery" = String, Path, description = "Delivery id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryOne),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 404, description = "No such webhook or delivery", body = super::api::ErrorBody),
        (status = 503, description = "Delivery store unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn get_delivery(
    State(st): State<AdminState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hooks = service(&st, &id)?;
    let d = hooks.store.get(&id, &delivery).await?.ok_or_else(|| {
        ApiError::not_found(format!("no delivery {delivery:?} of webhook {id:?}"))
    })?;
    Ok(json(StatusCode::OK, DeliveryOne { delivery: d.into() }))
}

#[utoipa::path(post, path = "/api/webhooks/{key}/deliveries/{delivery}/retry", tag = "webhooks",
    params(("key" = String, Path, description = "Webhook id"), ("delivery" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Pending again, due now (attempts counted from 0); a pending delivery is returned as it is", body = DeliveryOne),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 403, description = "Cross-site request", body = super::api::ErrorBody),
        (status = 404, description = "No such webhook or delivery", body = super::api::ErrorBody),
        (status = 503, description = "Delivery store unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn retry_delivery(
    State(st): State<AdminState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hooks = service(&st, &id)?;
    let d = hooks.replay(&id, &delivery).await?.ok_or_else(|| {
        ApiError::not_found(format!("no delivery {delivery:?} of webhook {id:?}"))
    })?;
    Ok(json(
        StatusCode::ACCEPTED,
        DeliveryOne { delivery: d.into() },
    ))
}

#[utoipa::path(post, path = "/api/webhooks/{key}/test", tag = "webhooks",
    params(("key" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "A webhook.test event was sent once (no retries); the delivery says how it went", body = DeliveryOne),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 403, description = "Cross-site request", body = super::api::ErrorBody),
        (status = 404, description = "No such webhook", body = super::api::ErrorBody),
        (status = 503, description = "Delivery store unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn test_webhook(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let hooks = service(&st, &id)?;
    let d = hooks
        .send_test(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id:?}")))?;
    Ok(json(StatusCode::OK, DeliveryOne { delivery: d.into() }))
}

/// Disables subscription `id` with an audit entry (actor `webhooks`,
/// action `disable`); `Ok(false)` when it is gone or already disabled.
pub async fn disable(st: &AdminState, id: &str, reason: &str) -> Result<bool, String> {
    let snap = st.config.current();
    let enabled_now = snap
        .source
        .webhooks
        .iter()
        .any(|w| w.effective_id() == id && w.enabled != Some(false));
    if !enabled_now {
        return Ok(false);
    }
    let actor = Actor("webhooks".into());
    let result = apply(st, &actor, &HeaderMap::new(), |state| {
        let Some(w) = state
            .config
            .webhooks
            .iter_mut()
            .find(|w| w.id.as_deref() == Some(id))
        else {
            return Ok((false, Vec::new()));
        };
        if w.enabled == Some(false) {
            return Ok((false, Vec::new()));
        }
        let before = serde_json::to_value(&*w).ok();
        w.enabled = Some(false);
        let mut after = serde_json::to_value(&*w).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut after {
            m.insert("disabledBecause".into(), reason.into());
        }
        Ok((
            true,
            vec![Change::new(
                "disable",
                format!("webhook/{id}"),
                before,
                Some(after),
            )],
        ))
    })
    .await;
    match result {
        Ok((_, changed)) => Ok(changed),
        Err(e) => Err(e.message),
    }
}
