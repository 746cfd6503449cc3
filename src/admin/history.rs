//! `GET /api/metrics/history`: the request-history roll-ups (database mode)
//! for a time range, overall and per route.
//!
//! Owns the query parameters (RFC 3339 `from`/`to`, `granularity`), their
//! checks (400 naming the parameter) and the answer's shape; the rows come
//! from PostgreSQL through the admin state's roll-up reader
//! (`history::rollups`, present in database mode). Nothing is computed
//! here: the maintenance task wrote the roll-ups.

use super::api::{ApiError, FieldError};
use super::AdminState;
use crate::history::rollups::{Granularity, RollupRow};
use crate::store::StoreError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest range of an hourly query.
const MAX_HOURLY_RANGE_DAYS: i64 = 31;
/// Longest range of a daily query.
const MAX_DAILY_RANGE_DAYS: i64 = 3_660;

/// Query of `GET /api/metrics/history`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Start (RFC 3339, e.g. `2026-11-26T00:00:00Z`; write `+` as `%2B`).
    /// Default: `to` minus 24 hours (hourly) or 30 days (daily).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End, exclusive (RFC 3339). Default: now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `hour` (default; at most 31 days) or `day` (at most 3660 days).
    #[param(pattern = "^(hour|day)$")]
    pub granularity: Option<String>,
}

/// One roll-up bucket.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryBucket {
    /// Start of the UTC hour or day (RFC 3339).
    pub bucket: String,
    pub requests: i64,
    /// Status >= 500, or no response at all (status 0).
    pub errors: i64,
    /// Status 400-499.
    pub client_errors: i64,
    /// Errors in percent of `requests` (as in the live summary).
    pub error_rate: f64,
    /// Mean duration (ms).
    pub avg_ms: f64,
    /// Median duration (ms, `percentile_cont`).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Request body bytes received.
    pub bytes_in: i64,
    /// Response body bytes sent.
    pub bytes_out: i64,
}

/// The answer of `GET /api/metrics/history`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryBody {
    /// `hour` or `day`.
    pub granularity: String,
    /// The range asked for (RFC 3339, UTC).
    pub from: String,
    pub to: String,
    /// Whether this node records request history (`history.enabled`).
    pub recording: bool,
    /// All routes together, oldest bucket first.
    pub overall: Vec<HistoryBucket>,
    /// Per route id (`-`: requests that matched no route).
    pub routes: BTreeMap<String, Vec<HistoryBucket>>,
}

#[utoipa::path(get, path = "/api/metrics/history", tag = "metrics",
    params(HistoryParams),
    responses(
        (status = 200, description = "Roll-ups overlapping the range, overall and per route", body = HistoryBody),
        (status = 400, description = "A malformed or out-of-range parameter (named)", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 409, description = "Not in database mode: no history is recorded", body = super::api::ErrorBody),
        (status = 503, description = "The database is unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn metrics_history(
    State(st): State<AdminState>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    Ok(axum::Json(history_range(&st, &params).await?).into_response())
}

/// The roll-ups of a range as the JSON of [`HistoryBody`] (also the answer
/// of `GET /api/metrics?from=&to=`).
pub(crate) async fn history_range(
    st: &AdminState,
    params: &HistoryParams,
) -> Result<serde_json::Value, ApiError> {
    let (granularity, from, to) = parse_range(params, Utc::now())?;
    let Some(reader) = &st.history else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_database_mode",
            "request history is recorded in database mode only (set DATABASE_URL or database.url)",
        ));
    };
    // Database failures answer as the store's do (503 unavailable, 500 invalid).
    let rows = reader
        .read(granularity, from, to)
        .await
        .map_err(StoreError::from)?;
    let body = group(granularity, from, to, rows);
    serde_json::to_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot serialise the history: {e}"),
        )
    })
}

/// 400 naming `parameter`.
fn bad_parameter(parameter: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message: format!("{parameter}: {message}"),
        details: vec![FieldError {
            path: parameter.to_string(),
            message,
        }],
    }
}

fn parse_time(parameter: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            bad_parameter(
                parameter,
                format!(
                    "{text:?} is not an RFC 3339 time like 2026-11-26T10:00:00Z ({e}; \
                     write a + offset as %2B)"
                ),
            )
        })
}

/// Granularity and range of a query (defaults applied, bounds checked).
fn parse_range(
    params: &HistoryParams,
    now: DateTime<Utc>,
) -> Result<(Granularity, DateTime<Utc>, DateTime<Utc>), ApiError> {
    let granularity = match params.granularity.as_deref() {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g).ok_or_else(|| {
            bad_parameter("granularity", format!("{g:?} is not \"hour\" or \"day\""))
        })?,
    };
    let to = match &params.to {
        Some(t) => parse_time("to", t)?,
        None => now,
    };
    let (default_span, max_days) = match granularity {
        Granularity::Hour => (TimeDelta::hours(24), MAX_HOURLY_RANGE_DAYS),
        Granularity::Day => (TimeDelta::days(30), MAX_DAILY_RANGE_DAYS),
    };
    let from = match &params.from {
        Some(f) => parse_time("from", f)?,
        None => to - default_span,
    };
    if from >= to {
        return Err(bad_parameter("from", "must be before to"));
    }
    if to - from > TimeDelta::days(max_days) {
        return Err(bad_parameter(
            "from",
            format!(
                "the range is longer than {max_days} days (the most for granularity={})",
                granularity.as_str()
            ),
        ));
    }
    Ok((granularity, from, to))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Splits the rows into the overall series and one series per route.
fn group(
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    rows: Vec<RollupRow>,
) -> HistoryBody {
    let mut overall = Vec::new();
    let mut routes: BTreeMap<String, Vec<HistoryBucket>> = BTreeMap::new();
    for row in rows {
        let bucket = HistoryBucket {
            bucket: rfc3339(row.bucket),
            requests: row.requests,
            errors: row.errors,
            client_errors: row.client_errors,
            error_rate: if row.requests > 0 {
                row.errors as f64 * 100.0 / row.requests as f64
            } else {
                0.0
            },
            avg_ms: row.avg_ms,
            p50_ms: row.p50_ms,
            p95_ms: row.p95_ms,
            p99_ms: row.p99_ms,
            bytes_in: row.bytes_in,
            bytes_out: row.bytes_out,
        };
        if row.route_id == "*" {
            overall.push(bucket);
        } else {
            routes.entry(row.route_id).or_default().push(bucket);
        }
    }
    HistoryBody {
        granularity: granularity.as_str().to_string(),
        from: rfc3339(from),
        to: rfc3339(to),
        recording: crate::history::recording(),
        overall,
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>, g: Option<&str>) -> HistoryParams {
        HistoryParams {
            from: from.map(Into::into),
            to: to.map(Into::into),
            granularity: g.map(Into::into),
        }
    }

    fn now() -> DateTime<Utc> {
        parse_time("now", "2026-11-26T12:00:00Z").expect("a time")
    }

    #[test]
    fn defaults_are_the_last_day_by_hour() {
        let (g, from, to) = parse_range(&params(None, None, None), now()).expect("valid");
        assert_eq!(g, Granularity::Hour);
        assert_eq!(to, now());
        assert_eq!(rfc3339(from), "2026-11-25T12:00:00Z");
        let (g, from, _) = parse_range(&params(None, None, Some("day")), now()).expect("valid");
        assert_eq!(g, Granularity::Day);
        assert_eq!(rfc3339(from), "2026-10-27T12:00:00Z");
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let p = params(Some("2026-11-26T01:00:00+01:00"), None, None);
        let (_, from, _) = parse_range(&p, now()).expect("valid");
        assert_eq!(rfc3339(from), "2026-11-26T00:00:00Z");
    }

    #[test]
    fn bad_input_names_the_parameter() {
        for (p, name) in [
            (params(Some("yesterday"), None, None), "from"),
            (params(None, Some("2026-13-01T00:00:00Z"), None), "to"),
            (params(None, None, Some("minute")), "granularity"),
            (
                params(
                    Some("2026-11-26T12:00:00Z"),
                    Some("2026-11-26T11:00:00Z"),
                    None,
                ),
                "from",
            ),
            (
                params(Some("2026-01-01T00:00:00Z"), None, Some("hour")),
                "from",
            ),
        ] {
            let e = parse_range(&p, now()).expect_err("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.details[0].path, name, "{}", e.message);
            assert!(e.message.starts_with(&format!("{name}: ")), "{}", e.message);
        }
    }

    #[test]
    fn rows_split_into_overall_and_per_route_series() {
        let row = |route: &str, requests: i64, errors: i64| RollupRow {
            route_id: route.into(),
            bucket: now(),
            requests,
            errors,
            client_errors: 0,
            avg_ms: 1.0,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            bytes_in: 0,
            bytes_out: 10,
        };
        let body = group(
            Granularity::Hour,
            now(),
            now(),
            vec![row("*", 4, 1), row("a", 3, 1), row("b", 1, 0)],
        );
        assert_eq!(body.overall.len(), 1);
        assert_eq!(body.overall[0].error_rate, 25.0);
        assert_eq!(body.routes["a"][0].requests, 3);
        assert_eq!(body.routes["b"][0].bucket, "2026-11-26T12:00:00Z");
    }
}
