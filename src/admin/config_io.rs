//! `/api/config` (export and import of the whole dynamic config) and
//! `/api/logs` (the audit log).
//!
//! Export is YAML (default) or JSON (`?format=json`) holding the dynamic
//! sections only — `proxy` defaults, `security`, `rateLimit`, `upstreams`,
//! `routes`, `logging`, `webhooks` — which `flexgate check` accepts as a
//! file. Generated keys are not part of it (they live in the key store or
//! the database). Import takes the same document (YAML or JSON), validates
//! it like `flexgate check`, and replaces the dynamic config; boot settings
//! in it (`proxy.port`, `admin`, …) are listed as `ignored`. `?dryRun=true`
//! answers with the changes it would make and changes nothing.
//!
//! Secrets are exported as [`config::redact::MARKER`]; an imported marker
//! keeps the stored value. An imported document is data: `${NAME}` is not
//! expanded, `…File` fields are refused, and YAML anchors/aliases are
//! refused (a few bytes of aliases can expand to billions of nodes).

use super::api::{media_type, read_body, ApiError};
use super::resources::{json_of, with_version};
use super::write::{apply, materialize_ids, Actor, Change};
use super::AdminState;
use crate::config::{self, DynamicConfig};
use crate::store::{AuditPage, AuditQuery};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `yaml` (default) or `json`.
    #[param(inline)]
    pub format: Option<ExportFormat>,
}

/// Export formats.
#[derive(Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Yaml,
    Json,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// Validate and answer with the changes, without applying them.
    pub dry_run: Option<bool>,
}

/// One change an import makes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportChange {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `route/<id>`, `upstream/<name>`, `webhook/<id>` or `settings/<section>`.
    pub resource: String,
}

/// The answer to an import.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    /// The config version now (unchanged by a dry run or an import without changes).
    pub version: u64,
    pub dry_run: bool,
    /// Whether the import was applied.
    pub applied: bool,
    pub changes: Vec<ImportChange>,
    /// Boot settings present in the document and not applied (they need a restart with a changed file).
    pub ignored: Vec<String>,
}

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
}

#[utoipa::path(get, path = "/api/config", tag = "config",
    params(ExportParams),
    responses(
        (status = 200, description = "The dynamic config as a file `flexgate check` accepts",
            content((config::FileConfig = "application/yaml"), (config::FileConfig = "application/json"))),
        (status = 400, description = "Unknown format", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn export(
    State(st): State<AdminState>,
    params: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let (version, mut state) = st.config.current_state();
    materialize_ids(&mut state);
    let file = state.config.to_file_config();
    // Secrets never leave: importing the export back keeps them.
    let mut v = config::redact::json_of(&file);
    let mut resp = match params.format.unwrap_or(ExportFormat::Yaml) {
        ExportFormat::Yaml => {
            let text = format!(
                "# FlexGate dynamic config, version {version}, exported {}\n\
                 # Secrets show as {:?}; importing this document keeps them.\n{}",
                crate::clock::now_rfc3339(),
                config::redact::MARKER,
                config::clean_yaml_of(v)
            );
            ([(header::CONTENT_TYPE, "application/yaml")], text).into_response()
        }
        ExportFormat::Json => {
            config::prune(&mut v);
            axum::Json(v).into_response()
        }
    };
    resp.headers_mut()
        .insert("x-config-version", header::HeaderValue::from(version));
    Ok(resp)
}

/// Paths (`proxy.port`) of the boot settings a document sets.
fn boot_settings(file: &config::FileConfig) -> Vec<String> {
    let mut all = serde_json::to_value(file).unwrap_or_default();
    let mut dynamic = serde_json::to_value(file.dynamic().to_file_config()).unwrap_or_default();
    config::prune(&mut all);
    config::prune(&mut dynamic);
    let mut out = Vec::new();
    fn walk(a: &Value, d: &Value, path: &str, out: &mut Vec<String>) {
        match (a, d) {
            (Value::Object(am), Value::Object(dm)) => {
                for (k, v) in am {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match dm.get(k) {
                        Some(dv) => walk(v, dv, &p, out),
                        None => {
                            if !(v.is_object() && v.as_object().is_some_and(|o| o.is_empty())) {
                                out.push(p)
                            }
                        }
                    }
                }
            }
            _ if a != d => out.push(path.to_string()),
            _ => {}
        }
    }
    walk(&all, &dynamic, "", &mut out);
    out
}

fn diff_list<T: Serialize + PartialEq>(
    kind: &str,
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> String,
    out: &mut Vec<Change>,
) {
    for n in new {
        match old.iter().find(|o| key(o) == key(n)) {
            None => out.push(Change::new(
                "create",
                format!("{kind}/{}", key(n)),
                None,
                Some(json_of(n)),
            )),
            Some(o) if o != n => out.push(Change::new(
                "update",
                format!("{kind}/{}", key(n)),
                Some(json_of(o)),
                Some(json_of(n)),
            )),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| key(n) == key(o)) {
            out.push(Change::new(
                "delete",
                format!("{kind}/{}", key(o)),
                Some(json_of(o)),
                None,
            ));
        }
    }
}

/// What replacing `old` by `new` changes, resource by resource.
pub fn diff(old: &DynamicConfig, new: &DynamicConfig) -> Vec<Change> {
    let mut out = Vec::new();
    let settings: [(&str, Value, Value); 4] = [
        ("proxy", json_of(&old.defaults), json_of(&new.defaults)),
        ("security", json_of(&old.security), json_of(&new.security)),
        (
            "rateLimit",
            json_of(&old.rate_limit),
            json_of(&new.rate_limit),
        ),
        ("logging", json_of(&old.logging), json_of(&new.logging)),
    ];
    for (name, o, n) in settings {
        if o != n {
            out.push(Change::new(
                "update",
                format!("settings/{name}"),
                Some(o),
                Some(n),
            ));
        }
    }
    diff_list(
        "upstream",
        &old.upstreams,
        &new.upstreams,
        |u| u.name.clone(),
        &mut out,
    );
    diff_list(
        "route",
        &old.routes,
        &new.routes,
        |r| r.id.clone().unwrap_or_default(),
        &mut out,
    );
    diff_list(
        "webhook",
        &old.webhooks,
        &new.webhooks,
        |w| w.id.clone().unwrap_or_default(),
        &mut out,
    );
    out
}

#[utoipa::path(post, path = "/api/config", tag = "config",
    params(ImportParams,
        ("If-Match" = Option<String>, Header, description = "Config version the import is based on; 409 if it moved (also for a dry run). `\"7\"`, `7`, `W/\"7\"`; `*` or empty: any", nullable = false, pattern = r#"^\s*(\*|(W/)?"?[0-9]{1,19}"?)?\s*$"#)),
    request_body(content((config::FileConfig = "application/yaml"), (config::FileConfig = "application/json")),
        description = "A config document (the shape of GET /api/config)"),
    responses(
        (status = 200, description = "Applied (or, with dryRun, what would change)", body = ImportResult),
        (status = 400, description = "Malformed YAML/JSON or query; YAML anchors/aliases", body = super::api::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
        (status = 409, description = "Stale If-Match", body = super::api::ErrorBody),
        (status = 413, description = "Body too large", body = super::api::ErrorBody),
        (status = 415, description = "Not YAML or JSON", body = super::api::ErrorBody),
        (status = 422, description = "Invalid config (every problem with its path in details)", body = super::api::ErrorBody),
        (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn import(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<ImportParams>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let headers = req.headers().clone();
    match media_type(&headers).as_deref() {
        Some(
            "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
            | "text/x-yaml",
        ) => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected Content-Type: application/yaml or application/json, got {}",
                    other.unwrap_or("none")
                ),
            ))
        }
    }
    let body = read_body(req).await?;
    let is_json = media_type(&headers).as_deref() == Some("application/json");
    // Parsing and checking a document is CPU work: off the admin thread.
    let (ignored, mut incoming) =
        tokio::task::spawn_blocking(move || parse_document(&body, is_json)).await??;
    let (_, current_state) = st.config.current_state();
    let mut current_state = current_state;
    materialize_ids(&mut current_state);
    let errs = config::redact::keep_unchanged(&mut incoming, &current_state.config);
    if !errs.is_empty() {
        return Err(config::ConfigErrors(errs).into());
    }
    incoming.validate()?;
    let dry_run = params.dry_run.unwrap_or(false);
    let summarize = |changes: &[Change]| -> Vec<ImportChange> {
        changes
            .iter()
            .map(|c| ImportChange {
                action: c.action.to_string(),
                resource: c.resource.clone(),
            })
            .collect()
    };
    let (version, mut current) = st.config.current_state();
    super::write::check_pinned(&headers, version)?;
    materialize_ids(&mut current);
    let preview = diff(&current.config, &incoming);
    if dry_run || preview.is_empty() {
        // A dry run still compiles, so it finds what only compiling finds.
        if dry_run {
            let handle = st.config.clone();
            let candidate = crate::store::State {
                config: incoming.clone(),
                keys: current.keys.clone(),
            };
            tokio::task::spawn_blocking(move || handle.prepare(&candidate).map(|_| ())).await??;
        }
        let result = ImportResult {
            version,
            dry_run,
            applied: false,
            changes: summarize(&preview),
            ignored,
        };
        return Ok(with_version(StatusCode::OK, version, result));
    }
    let (version, changes) = apply(&st, &actor, &headers, |state| {
        let changes = diff(&state.config, &incoming);
        state.config = incoming.clone();
        let summary = summarize(&changes);
        Ok((summary, changes))
    })
    .await?;
    let applied = !changes.is_empty();
    Ok(with_version(
        StatusCode::OK,
        version,
        ImportResult {
            version,
            dry_run: false,
            applied,
            changes,
            ignored,
        },
    ))
}

/// An imported document → (boot settings it sets, its dynamic config with
/// explicit ids). YAML anchors and aliases are refused before parsing.
fn parse_document(body: &[u8], is_json: bool) -> Result<(Vec<String>, DynamicConfig), ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_yaml",
            "the body is not UTF-8",
        )
    })?;
    // JSON is read as JSON (YAML parsers differ on escapes such as surrogate
    // pairs), then checked through the same path as YAML.
    let converted;
    let text = if is_json {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        converted = serde_yaml::to_string(&v).unwrap_or_default();
        converted.as_str()
    } else {
        config::yaml_guard::refuse_anchors(text)
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_yaml", m))?;
        text
    };
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_yaml",
            format!("the body is not YAML or JSON: {e}"),
        ));
    }
    let file = config::parse(text)?;
    let ignored = boot_settings(&file);
    let mut tmp = crate::store::State {
        config: file.dynamic(),
        keys: Default::default(),
    };
    materialize_ids(&mut tmp);
    Ok((ignored, tmp.config))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only entries older than this id (the `next` of the previous page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// `create`, `update`, `delete`, `revoke`, `import`.
    pub action: Option<String>,
    /// `route/<id>` or a kind: `route`, `upstream`, `key`, `webhook`, `settings`.
    pub resource: Option<String>,
    /// `admin-token` or `session`.
    pub actor: Option<String>,
    /// Lower bound: a UTC time `2026-11-25T10:00:00Z` or a date `2026-11-25`.
    #[param(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?$")]
    pub since: Option<String>,
    /// Upper bound, in the same forms.
    #[param(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?$")]
    pub until: Option<String>,
}

#[utoipa::path(get, path = "/api/logs", tag = "audit",
    params(LogParams),
    responses(
        (status = 200, description = "Audit entries, newest first", body = crate::store::AuditPage),
        (status = 400, description = "Malformed query", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 503, description = "Config store unavailable", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn logs(
    State(st): State<AdminState>,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(bad_query)?;
    for (name, v) in [("since", &p.since), ("until", &p.until)] {
        if v.as_deref().is_some_and(|t| !is_utc_time(t)) {
            return Err(bad_query(format!(
                "{name}: expected a UTC time like 2026-11-25T10:00:00Z or a date like 2026-11-25"
            )));
        }
    }
    if p.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(bad_query("limit: must be between 1 and 500"));
    }
    if p.before.is_some_and(|b| b < 1) {
        return Err(bad_query("before: must be at least 1"));
    }
    let q = AuditQuery {
        limit: p.limit.map(|l| l as usize),
        before: p.before.map(|b| b as u64),
        action: p.action,
        resource: p.resource,
        actor: p.actor,
        since: p.since,
        until: p.until,
    };
    let mut page: AuditPage = st.store.audit(&q).await?;
    // Entries are stored redacted; entries written by an older version
    // (or another node) are redacted here too.
    for e in &mut page.entries {
        for v in [&mut e.before, &mut e.after].into_iter().flatten() {
            config::redact::value(v);
        }
    }
    Ok(axum::Json(page).into_response())
}

/// `2026-11-25` or `2026-11-25T10:00:00Z` (what audit times compare with).
fn is_utc_time(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let date = b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10);
    match b.len() {
        10 => date,
        20 => {
            date && b[10] == b'T'
                && digits(11..13)
                && b[13] == b':'
                && digits(14..16)
                && b[16] == b':'
                && digits(17..19)
                && b[19] == b'Z'
        }
        _ => false,
    }
}
