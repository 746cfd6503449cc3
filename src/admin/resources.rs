//! `/api/routes`, `/api/upstreams`, `/api/webhooks`: list, read, create,
//! replace, delete. Bodies are the config file's entries in JSON (the
//! original project's route body — `path`, `upstream` or `targetUrl`,
//! `methods`, `enabled`, `rateLimit {requests, window}` — included).
//!
//! Keys: a route's `id` (generated as `route-<hex>` when absent), an
//! upstream's `name`, a webhook's `id` (generated as `webhook-<hex>`).
//! Answers show secrets (webhook `secret` and header values, URL
//! passwords) as the redaction marker; a body carrying the marker back
//! keeps the stored value.
//!
//! Conflicts (409): an id or name already used; a route with the same
//! path, host and an overlapping method set; deleting an upstream that
//! routes still use.

use super::api::{ApiError, ApiJson};
use super::write::{apply, Actor, Change};
use super::AdminState;
use crate::config::{DynamicConfig, RouteConfig, UpstreamConfig, WebhookConfig};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A kind of listed resource.
pub trait Resource:
    Clone + Serialize + DeserializeOwned + PartialEq + Send + Sync + 'static
{
    /// `route`, `upstream`, `webhook` (audit resource prefix, messages).
    const KIND: &'static str;
    /// Name of the key field (`id` or `name`).
    const KEY_FIELD: &'static str;
    fn key(&self) -> Option<&str>;
    fn set_key(&mut self, key: String);
    fn list(c: &DynamicConfig) -> &Vec<Self>;
    fn list_mut(c: &mut DynamicConfig) -> &mut Vec<Self>;
    /// A key for a new entry that has none (`None`: the key is required).
    fn new_key() -> Option<String>;
    /// Why `self` cannot sit beside `other` (beyond key equality).
    fn clashes_with(&self, _other: &Self) -> Option<String> {
        None
    }
    /// Why the entry `key` cannot be deleted from `c`.
    fn check_delete(_key: &str, _c: &DynamicConfig) -> Result<(), ApiError> {
        Ok(())
    }
    /// Replaces the redaction marker by the stored secrets of `old` (the
    /// entry being replaced; `None` for a new entry).
    fn keep_secrets(&mut self, _old: Option<&Self>) -> Result<(), ApiError> {
        Ok(())
    }
}

fn random_suffix() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    crate::keys::to_hex(&b)
}

impl Resource for RouteConfig {
    const KIND: &'static str = "route";
    const KEY_FIELD: &'static str = "id";
    fn key(&self) -> Option<&str> {
        self.id.as_deref()
    }
    fn set_key(&mut self, key: String) {
        self.id = Some(key);
    }
    fn list(c: &DynamicConfig) -> &Vec<Self> {
        &c.routes
    }
    fn list_mut(c: &mut DynamicConfig) -> &mut Vec<Self> {
        &mut c.routes
    }
    fn new_key() -> Option<String> {
        Some(format!("route-{}", random_suffix()))
    }
    fn clashes_with(&self, other: &Self) -> Option<String> {
        let enabled = |r: &RouteConfig| r.enabled != Some(false);
        let norm = |m: &Vec<crate::config::Written<http::Method>>| -> Vec<String> {
            m.iter().map(|x| x.to_ascii_uppercase()).collect()
        };
        let (a, b) = (norm(&self.methods), norm(&other.methods));
        let overlap = a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m));
        (enabled(self)
            && enabled(other)
            && self.path == other.path
            && self.host == other.host
            && overlap)
            .then(|| {
                format!(
                    "route {:?} already serves path {:?}{} for these methods",
                    other.id.as_deref().unwrap_or_default(),
                    self.path.as_deref().unwrap_or_default(),
                    self.host
                        .as_deref()
                        .map(|h| format!(" on host {h:?}"))
                        .unwrap_or_default()
                )
            })
    }
}

impl Resource for UpstreamConfig {
    const KIND: &'static str = "upstream";
    const KEY_FIELD: &'static str = "name";
    fn key(&self) -> Option<&str> {
        Some(self.name.as_str()).filter(|n| !n.is_empty())
    }
    fn set_key(&mut self, key: String) {
        self.name = key;
    }
    fn list(c: &DynamicConfig) -> &Vec<Self> {
        &c.upstreams
    }
    fn list_mut(c: &mut DynamicConfig) -> &mut Vec<Self> {
        &mut c.upstreams
    }
    fn new_key() -> Option<String> {
        None
    }
    fn check_delete(key: &str, c: &DynamicConfig) -> Result<(), ApiError> {
        let users: Vec<&str> = c
            .routes
            .iter()
            .filter(|r| r.upstream.as_deref() == Some(key))
            .map(|r| r.id.as_deref().unwrap_or_default())
            .collect();
        if users.is_empty() {
            Ok(())
        } else {
            Err(ApiError::conflict(format!(
                "upstream {key:?} is used by route(s) {}; change or delete them first",
                users.join(", ")
            )))
        }
    }
}

impl Resource for WebhookConfig {
    const KIND: &'static str = "webhook";
    const KEY_FIELD: &'static str = "id";
    fn key(&self) -> Option<&str> {
        self.id.as_deref()
    }
    fn set_key(&mut self, key: String) {
        self.id = Some(key);
    }
    fn list(c: &DynamicConfig) -> &Vec<Self> {
        &c.webhooks
    }
    fn list_mut(c: &mut DynamicConfig) -> &mut Vec<Self> {
        &mut c.webhooks
    }
    fn new_key() -> Option<String> {
        Some(format!("webhook-{}", random_suffix()))
    }
    fn keep_secrets(&mut self, old: Option<&Self>) -> Result<(), ApiError> {
        crate::config::redact::keep_webhook(self, old)
            .map_err(|e| ApiError::invalid(e.path, e.message))
    }
}

/// A value as JSON (audit entries, diffs).
pub fn json_of<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Every entry, ids made explicit (as a write would store them).
pub fn list_all<R: Resource>(st: &AdminState) -> (u64, Vec<R>) {
    let (version, mut state) = st.config.current_state();
    super::write::materialize_ids(&mut state);
    (version, R::list(&state.config).clone())
}

pub fn find<R: Resource>(st: &AdminState, key: &str) -> Result<(u64, R), ApiError> {
    let (version, all) = list_all::<R>(st);
    all.into_iter()
        .find(|r| r.key() == Some(key))
        .map(|r| (version, r))
        .ok_or_else(|| ApiError::not_found(format!("no {} {key:?}", R::KIND)))
}

fn check_clashes<R: Resource>(item: &R, others: &[R]) -> Result<(), ApiError> {
    for other in others {
        if other.key() == item.key() {
            return Err(ApiError::conflict(format!(
                "a {} with {} {:?} already exists",
                R::KIND,
                R::KEY_FIELD,
                item.key().unwrap_or_default()
            )));
        }
        if let Some(why) = item.clashes_with(other) {
            return Err(ApiError::conflict(why));
        }
    }
    Ok(())
}

pub async fn create<R: Resource>(
    st: &AdminState,
    actor: &Actor,
    headers: &HeaderMap,
    item: R,
) -> Result<(u64, R), ApiError> {
    let mut item = item;
    if item.key().is_none() {
        match R::new_key() {
            Some(k) => item.set_key(k),
            None => return Err(ApiError::invalid(R::KEY_FIELD, "is required")),
        }
    }
    item.keep_secrets(None)?;
    apply(st, actor, headers, |state| {
        let list = R::list_mut(&mut state.config);
        check_clashes(&item, list)?;
        list.push(item.clone());
        let key = item.key().unwrap_or_default();
        let change = Change::new(
            "create",
            format!("{}/{key}", R::KIND),
            None,
            Some(json_of(&item)),
        );
        Ok((item.clone(), vec![change]))
    })
    .await
}

pub async fn replace<R: Resource>(
    st: &AdminState,
    actor: &Actor,
    headers: &HeaderMap,
    key: &str,
    item: R,
) -> Result<(u64, R), ApiError> {
    let mut item = item;
    match item.key() {
        None => item.set_key(key.to_string()),
        Some(k) if k != key => {
            return Err(ApiError::invalid(
                R::KEY_FIELD,
                format!(
                    "{k:?} differs from the {} in the URL ({key:?}); create a new {} to rename",
                    R::KEY_FIELD,
                    R::KIND
                ),
            ))
        }
        Some(_) => {}
    }
    apply(st, actor, headers, |state| {
        let list = R::list_mut(&mut state.config);
        let pos = list
            .iter()
            .position(|r| r.key() == Some(key))
            .ok_or_else(|| ApiError::not_found(format!("no {} {key:?}", R::KIND)))?;
        let others: Vec<R> = list
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, r)| r.clone())
            .collect();
        let mut item = item.clone();
        item.keep_secrets(Some(&list[pos]))?;
        check_clashes(&item, &others)?;
        let before = std::mem::replace(&mut list[pos], item.clone());
        let change = Change::new(
            "update",
            format!("{}/{key}", R::KIND),
            Some(json_of(&before)),
            Some(json_of(&item)),
        );
        Ok((item.clone(), vec![change]))
    })
    .await
}

pub async fn delete<R: Resource>(
    st: &AdminState,
    actor: &Actor,
    headers: &HeaderMap,
    key: &str,
) -> Result<u64, ApiError> {
    apply(st, actor, headers, |state| {
        R::check_delete(key, &state.config)?;
        let list = R::list_mut(&mut state.config);
        let pos = list
            .iter()
            .position(|r| r.key() == Some(key))
            .ok_or_else(|| ApiError::not_found(format!("no {} {key:?}", R::KIND)))?;
        let before = list.remove(pos);
        let change = Change::new(
            "delete",
            format!("{}/{key}", R::KIND),
            Some(json_of(&before)),
            None,
        );
        Ok(((), vec![change]))
    })
    .await
    .map(|(v, ())| v)
}

/// Adds `X-Config-Version` to a JSON answer.
/// `null` values are left out: an absent optional field means "default".
pub fn with_version<T: Serialize>(status: StatusCode, version: u64, body: T) -> Response {
    let mut v = serde_json::to_value(&body).unwrap_or_default();
    drop_nulls(&mut v);
    let mut resp = (status, Json(v)).into_response();
    resp.headers_mut()
        .insert("x-config-version", axum::http::HeaderValue::from(version));
    resp
}

/// [`with_version`] with secrets (webhook secrets and headers, URL
/// passwords) replaced by the redaction marker.
pub fn with_version_redacted<T: Serialize>(status: StatusCode, version: u64, body: T) -> Response {
    with_version(status, version, crate::config::redact::json_of(&body))
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `{"version": 3, "deleted": "route-1"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub version: u64,
    pub deleted: String,
}

macro_rules! resource_endpoints {
    (
        $ty:ty, $tag:literal, $base:literal, $item_path:literal, $key_desc:literal,
        $list_ty:ident, $one_ty:ident, $plural:ident, $single:ident,
        $list_fn:ident, $get_fn:ident, $create_fn:ident, $replace_fn:ident, $delete_fn:ident
    ) => {
        #[derive(Serialize, utoipa::ToSchema)]
        pub struct $list_ty {
            /// Config version these entries belong to.
            pub version: u64,
            pub $plural: Vec<$ty>,
        }

        #[derive(Serialize, utoipa::ToSchema)]
        pub struct $one_ty {
            /// Config version (after the write, for writes).
            pub version: u64,
            pub $single: $ty,
        }

        #[utoipa::path(get, path = $base, tag = $tag,
            responses(
                (status = 200, description = "Every entry", body = $list_ty),
                (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
            ),
            security(("bearer" = []), ("session" = [])))]
        pub async fn $list_fn(State(st): State<AdminState>) -> Response {
            let (version, $plural) = list_all::<$ty>(&st);
            with_version_redacted(StatusCode::OK, version, $list_ty { version, $plural })
        }

        #[utoipa::path(get, path = $item_path, tag = $tag,
            params(("key" = String, Path, description = $key_desc)),
            responses(
                (status = 200, description = "The entry", body = $one_ty),
                (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
                (status = 404, description = "No such entry", body = super::api::ErrorBody),
            ),
            security(("bearer" = []), ("session" = [])))]
        pub async fn $get_fn(
            State(st): State<AdminState>,
            Path(key): Path<String>,
        ) -> Result<Response, ApiError> {
            let (version, $single) = find::<$ty>(&st, &key)?;
            Ok(with_version_redacted(StatusCode::OK, version, $one_ty { version, $single }))
        }

        #[utoipa::path(post, path = $base, tag = $tag,
            request_body = $ty,
            params(("If-Match" = Option<String>, Header, description = "Config version the change is based on; 409 if it moved. `\"7\"`, `7`, `W/\"7\"`; `*` or empty: any", nullable = false, pattern = r#"^\s*(\*|(W/)?"?[0-9]{1,19}"?)?\s*$"#)),
            responses(
                (status = 201, description = "Created and live on this node", body = $one_ty),
                (status = 400, description = "Malformed JSON or If-Match", body = super::api::ErrorBody),
                (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
                (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
                (status = 409, description = "Key or path already used, or stale If-Match", body = super::api::ErrorBody),
                (status = 413, description = "Body too large", body = super::api::ErrorBody),
                (status = 415, description = "Not application/json", body = super::api::ErrorBody),
                (status = 422, description = "Invalid entry (field paths in details)", body = super::api::ErrorBody),
                (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
            ),
            security(("bearer" = []), ("session" = [])))]
        pub async fn $create_fn(
            State(st): State<AdminState>,
            Extension(actor): Extension<Actor>,
            headers: HeaderMap,
            ApiJson(item): ApiJson<$ty>,
        ) -> Result<Response, ApiError> {
            let (version, $single) = create::<$ty>(&st, &actor, &headers, item).await?;
            Ok(with_version_redacted(StatusCode::CREATED, version, $one_ty { version, $single }))
        }

        #[utoipa::path(put, path = $item_path, tag = $tag,
            request_body = $ty,
            params(
                ("key" = String, Path, description = $key_desc),
                ("If-Match" = Option<String>, Header, description = "Config version the change is based on; 409 if it moved. `\"7\"`, `7`, `W/\"7\"`; `*` or empty: any", nullable = false, pattern = r#"^\s*(\*|(W/)?"?[0-9]{1,19}"?)?\s*$"#),
            ),
            responses(
                (status = 200, description = "Replaced and live on this node", body = $one_ty),
                (status = 400, description = "Malformed JSON or If-Match", body = super::api::ErrorBody),
                (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
                (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
                (status = 404, description = "No such entry", body = super::api::ErrorBody),
                (status = 409, description = "Clash with another entry, or stale If-Match", body = super::api::ErrorBody),
                (status = 413, description = "Body too large", body = super::api::ErrorBody),
                (status = 415, description = "Not application/json", body = super::api::ErrorBody),
                (status = 422, description = "Invalid entry (field paths in details)", body = super::api::ErrorBody),
                (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
            ),
            security(("bearer" = []), ("session" = [])))]
        pub async fn $replace_fn(
            State(st): State<AdminState>,
            Extension(actor): Extension<Actor>,
            Path(key): Path<String>,
            headers: HeaderMap,
            ApiJson(item): ApiJson<$ty>,
        ) -> Result<Response, ApiError> {
            let (version, $single) = replace::<$ty>(&st, &actor, &headers, &key, item).await?;
            Ok(with_version_redacted(StatusCode::OK, version, $one_ty { version, $single }))
        }

        #[utoipa::path(delete, path = $item_path, tag = $tag,
            params(
                ("key" = String, Path, description = $key_desc),
                ("If-Match" = Option<String>, Header, description = "Config version the change is based on; 409 if it moved. `\"7\"`, `7`, `W/\"7\"`; `*` or empty: any", nullable = false, pattern = r#"^\s*(\*|(W/)?"?[0-9]{1,19}"?)?\s*$"#),
            ),
            responses(
                (status = 200, description = "Deleted; live on this node", body = Deleted),
                (status = 400, description = "Malformed If-Match", body = super::api::ErrorBody),
                (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
                (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
                (status = 404, description = "No such entry", body = super::api::ErrorBody),
                (status = 409, description = "Still in use, or stale If-Match", body = super::api::ErrorBody),
                (status = 422, description = "The config would become invalid", body = super::api::ErrorBody),
                (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
            ),
            security(("bearer" = []), ("session" = [])))]
        pub async fn $delete_fn(
            State(st): State<AdminState>,
            Extension(actor): Extension<Actor>,
            Path(key): Path<String>,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            let version = delete::<$ty>(&st, &actor, &headers, &key).await?;
            Ok(with_version(StatusCode::OK, version, Deleted { version, deleted: key }))
        }
    };
}

resource_endpoints!(
    RouteConfig,
    "routes",
    "/api/routes",
    "/api/routes/{key}",
    "Route id",
    RouteList,
    RouteOne,
    routes,
    route,
    list_routes,
    get_route,
    create_route,
    replace_route,
    delete_route
);
resource_endpoints!(
    UpstreamConfig,
    "upstreams",
    "/api/upstreams",
    "/api/upstreams/{key}",
    "Upstream name",
    UpstreamList,
    UpstreamOne,
    upstreams,
    upstream,
    list_upstreams,
    get_upstream,
    create_upstream,
    replace_upstream,
    delete_upstream
);
resource_endpoints!(
    WebhookConfig,
    "webhooks",
    "/api/webhooks",
    "/api/webhooks/{key}",
    "Webhook id",
    WebhookList,
    WebhookOne,
    webhooks,
    webhook,
    list_webhooks,
    get_webhook,
    create_webhook,
    replace_webhook,
    delete_webhook
);
