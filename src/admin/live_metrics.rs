//! Live metrics: `GET /api/metrics` (this node's summary, see
//! [`crate::live`]; with `from`/`to`, the request history's roll-ups) and
//! two Server-Sent Event streams.
//!
//! - `GET /api/stream/metrics[?interval=N]`: `event: connected` first, then
//!   `event: metrics` with this node's summary every `N` seconds (1–60,
//!   default 5); with NATS, also every other node's summary as it arrives
//!   (each carries its `node`).
//! - `GET /api/stream/alerts`: `event: connected` first, then `event: alert`
//!   for every event of the bus (`{"node","type","time","data"}`) as it
//!   happens; with NATS, the other nodes' events too.
//!
//! Both send a keep-alive comment every 15 s. A client that reads too
//! slowly never holds anything up: it reads from a bounded broadcast
//! channel and, once it has fallen more than its capacity behind, receives
//! `event: lagged` with the number of messages it missed and continues from
//! the oldest one retained. At most [`MAX_STREAMS`] streams are open at
//! once (503 beyond); all end when the gateway shuts down.

use super::api::ApiError;
use super::AdminState;
use crate::live::cluster::{alert_json, Kind, Remote};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Open SSE streams allowed at once.
pub const MAX_STREAMS: usize = 256;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

fn stop_signal() -> &'static watch::Sender<bool> {
    static STOP: OnceLock<watch::Sender<bool>> = OnceLock::new();
    STOP.get_or_init(|| watch::channel(false).0)
}

/// Ends every open stream (graceful shutdown: an endless response would
/// otherwise hold its connection open).
pub fn stop_streams() {
    stop_signal().send_replace(true);
}

/// One open stream, counted while it lives.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Result<StreamSlot, ApiError> {
        let open = OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        if open >= MAX_STREAMS {
            OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("{MAX_STREAMS} event streams are open already; try again later"),
            ));
        }
        Ok(StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer of `GET /api/metrics`: the live summary, or (with a range)
/// the request history. Documentation only: the handler sends either as is.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MetricsAnswer {
    Live(crate::live::Summary),
    History(super::history::HistoryBody),
}

#[utoipa::path(get, path = "/api/metrics", tag = "metrics",
    params(super::history::HistoryParams),
    responses(
        (status = 200, description = "Without parameters: this node's live summary. With `from`, `to` or `granularity`: the request history's roll-ups, as GET /api/metrics/history (database mode)",
            body = MetricsAnswer),
        (status = 400, description = "A malformed or out-of-range parameter (named)", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 409, description = "History asked for, not in database mode", body = super::api::ErrorBody),
        (status = 503, description = "History asked for, the database is unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn summary(
    State(state): State<AdminState>,
    params: Result<Query<super::history::HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    if params.from.is_none() && params.to.is_none() && params.granularity.is_none() {
        return Ok(Json(crate::live::stats().summary()).into_response());
    }
    Ok(Json(super::history::history_range(&state, &params).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Seconds between this node's summaries, 1–60 (default 5).
    pub interval: Option<u64>,
}

fn event(name: &str, body: &serde_json::Value) -> Event {
    Event::default().event(name).data(body.to_string())
}

fn lagged(missed: u64) -> Event {
    event("lagged", &serde_json::json!({ "missed": missed }))
}

/// What a stream waits on next.
enum Next {
    Stop,
    Send(Event),
    Nothing,
}

async fn from_remote(remote: &mut Option<broadcast::Receiver<Arc<Remote>>>, want: Kind) -> Next {
    let Some(rx) = remote.as_mut() else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(m) if m.kind == want => Next::Send(event(
            match want {
                Kind::Metrics => "metrics",
                Kind::Alert => "alert",
            },
            &m.body,
        )),
        Ok(_) => Next::Nothing,
        Err(broadcast::error::RecvError::Lagged(n)) => Next::Send(lagged(n)),
        Err(broadcast::error::RecvError::Closed) => {
            *remote = None;
            Next::Nothing
        }
    }
}

fn connected(state: &AdminState, stream: &str, interval: Option<u64>) -> Event {
    let mut body = serde_json::json!({
        "node": crate::live::node_name(),
        "stream": stream,
        "cluster": state.cluster.is_some(),
    });
    if let Some(i) = interval {
        body["intervalSeconds"] = i.into();
    }
    event("connected", &body)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

#[utoipa::path(get, path = "/api/stream/metrics", tag = "metrics",
    params(StreamParams),
    responses(
        (status = 200, description = "text/event-stream: `connected`, then `metrics` (a summary, as GET /api/metrics) every interval and from every other node; `lagged` when the client fell behind", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad interval", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 503, description = "Too many open streams", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn stream_metrics(
    State(state): State<AdminState>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let interval = params.interval.unwrap_or(5);
    if !(1..=60).contains(&interval) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("interval: must be 1 to 60 seconds, got {interval}"),
        ));
    }
    let slot = StreamSlot::take()?;
    let first = connected(&state, "metrics", Some(interval));
    let mut tick = tokio::time::interval(Duration::from_secs(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick is immediate: the summary follows `connected` at once.
    let remote = state.cluster.as_ref().map(|c| c.subscribe());
    let stop = stop_signal().subscribe();
    let stream = futures::stream::unfold(
        (Some(first), tick, remote, stop, slot),
        |(mut first, mut tick, mut remote, mut stop, slot)| async move {
            if let Some(e) = first.take() {
                return Some((Ok(e), (None, tick, remote, stop, slot)));
            }
            loop {
                if *stop.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    _ = stop.changed() => Next::Stop,
                    _ = tick.tick() => {
                        let summary = crate::live::stats().summary();
                        match serde_json::to_value(&summary) {
                            Ok(v) => Next::Send(event("metrics", &v)),
                            Err(_) => Next::Nothing,
                        }
                    }
                    n = from_remote(&mut remote, Kind::Metrics) => n,
                };
                match next {
                    Next::Stop => return None,
                    Next::Send(e) => return Some((Ok(e), (None, tick, remote, stop, slot))),
                    Next::Nothing => {}
                }
            }
        },
    );
    Ok(sse(stream))
}

#[utoipa::path(get, path = "/api/stream/alerts", tag = "metrics",
    responses(
        (status = 200, description = "text/event-stream: `connected`, then `alert` ({node, type, time, data}) for every gateway event of this node and, with NATS, of every node; `lagged` when the client fell behind", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 503, description = "Too many open streams", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn stream_alerts(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let slot = StreamSlot::take()?;
    let first = connected(&state, "alerts", None);
    let local = crate::events::bus().subscribe();
    let remote = state.cluster.as_ref().map(|c| c.subscribe());
    let stop = stop_signal().subscribe();
    let stream = futures::stream::unfold(
        (Some(first), local, remote, stop, slot),
        |(mut first, mut local, mut remote, mut stop, slot)| async move {
            if let Some(e) = first.take() {
                return Some((Ok(e), (None, local, remote, stop, slot)));
            }
            loop {
                if *stop.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    _ = stop.changed() => Next::Stop,
                    r = local.recv() => match r {
                        Ok(e) => Next::Send(event("alert", &alert_json(crate::live::node_name(), &e))),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            crate::events::bus().dropped.fetch_add(n, Ordering::Relaxed);
                            Next::Send(lagged(n))
                        }
                        Err(broadcast::error::RecvError::Closed) => Next::Stop,
                    },
                    n = from_remote(&mut remote, Kind::Alert) => n,
                };
                match next {
                    Next::Stop => return None,
                    Next::Send(e) => return Some((Ok(e), (None, local, remote, stop, slot))),
                    Next::Nothing => {}
                }
            }
        },
    );
    Ok(sse(stream))
}
