//! `/api/keys`: API keys of both origins — `config` (listed in
//! `security.auth.keys`, given as digests) and `generated` (created here or
//! by `flexgate keys create`; digests in the key store). The plaintext of a
//! generated key is in the creation answer and nowhere else, ever.
//! Deleting a key revokes it (the record stays, `revoked: true`, refused
//! from then on); usage counters are this node's since start.

use super::api::{ApiError, ApiJson};
use super::resources::with_version;
use super::write::{apply, Actor, Change};
use super::AdminState;
use crate::clock::unix_now;
use crate::keys::store::StoredKey;
use crate::keys::{from_hex, to_hex};
use crate::snapshot::Snapshot;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Usage of one key on this node.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsageView {
    /// Accepted requests since this node started.
    pub requests: u64,
    /// Unix time of the last accepted request.
    pub last_used: Option<u64>,
}

/// A key as the API shows it (never its secret or digest).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// `generated` or `config`.
    pub source: String,
    pub scopes: Vec<String>,
    /// Route ids the key may call (empty = all).
    pub routes: Vec<String>,
    /// Unix time after which the key is refused.
    pub expires_at: Option<u64>,
    pub expired: bool,
    pub revoked: bool,
    /// Unix time of creation (generated keys).
    pub created_at: Option<u64>,
    pub usage: KeyUsageView,
}

/// `POST /api/keys`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    /// Consumer name, unique among active keys: printable, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
    )]
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Route ids the key may call (default: all).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Unix time after which the key is refused (in the future).
    pub expires_at: Option<i64>,
    /// Lifetime instead of `expiresAt`: `30d`, `12h`, `90m`, `45s`.
    #[schema(pattern = "^[1-9][0-9]{0,5}[dhms]$")]
    pub expires_in: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub version: u64,
    pub keys: Vec<KeyView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyOne {
    pub version: u64,
    pub key: KeyView,
}

/// The answer to a creation: the only time the secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyCreated {
    pub version: u64,
    pub key: KeyView,
    /// The plaintext key. Store it now: it is not kept anywhere.
    pub secret: String,
}

fn usage(snap: &Snapshot, digest_hex: &str) -> KeyUsageView {
    let u = from_hex(digest_hex).and_then(|d| snap.keys.usage(&d).cloned());
    KeyUsageView {
        requests: u.as_ref().map_or(0, |u| u.requests.load(Ordering::Relaxed)),
        last_used: u
            .map(|u| u.last_used.load(Ordering::Relaxed))
            .filter(|t| *t > 0),
    }
}

fn all_keys(snap: &Snapshot) -> Vec<KeyView> {
    let now = unix_now();
    let mut out = Vec::new();
    if let Some(auth) = &snap.source.security.auth {
        for (i, k) in auth.keys.iter().enumerate() {
            out.push(KeyView {
                id: k.id.clone().unwrap_or_else(|| format!("config-{i}")),
                name: k.name.clone().unwrap_or_else(|| format!("config-{i}")),
                source: "config".into(),
                scopes: k.scopes.clone(),
                routes: k.routes.clone(),
                expires_at: k.expires_at,
                expired: k.expires_at.is_some_and(|t| t <= now),
                revoked: k.revoked == Some(true),
                created_at: None,
                usage: usage(snap, k.key.as_deref().unwrap_or_default()),
            });
        }
    }
    for k in &snap.key_file.keys {
        out.push(view(snap, k, now));
    }
    out
}

fn view(snap: &Snapshot, k: &StoredKey, now: u64) -> KeyView {
    KeyView {
        id: k.id.clone(),
        name: k.name.clone(),
        source: "generated".into(),
        scopes: k.scopes.clone(),
        routes: k.routes.clone(),
        expires_at: k.expires_at,
        expired: k.expires_at.is_some_and(|t| t <= now),
        revoked: k.revoked,
        created_at: Some(k.created_at),
        usage: usage(snap, &k.digest),
    }
}

/// `30d`, `12h`, `90m`, `45s` → seconds. Unlike the CLI, the API wants
/// the unit written out.
fn lifetime(text: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::invalid("expiresIn", "expected e.g. 30d, 12h, 90m or 45s");
    if !text.trim().ends_with(['d', 'h', 'm', 's']) {
        return Err(bad());
    }
    crate::keys::lifetime::parse(text).map_err(|_| bad())
}

#[utoipa::path(get, path = "/api/keys", tag = "keys",
    responses(
        (status = 200, description = "Every key (config and generated), without secrets", body = KeyList),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_keys(State(st): State<AdminState>) -> Response {
    let snap = st.config.current();
    let keys = all_keys(&snap);
    with_version(
        StatusCode::OK,
        snap.version,
        KeyList {
            version: snap.version,
            keys,
        },
    )
}

#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, without its secret", body = KeyOne),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 404, description = "No such key", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn get_key(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snap = st.config.current();
    let key = all_keys(&snap)
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no key {id:?}")))?;
    Ok(with_version(
        StatusCode::OK,
        snap.version,
        KeyOne {
            version: snap.version,
            key,
        },
    ))
}

#[utoipa::path(post, path = "/api/keys", tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created and usable on this node; the secret is shown this once", body = KeyCreated),
        (status = 400, description = "Malformed JSON", body = super::api::ErrorBody),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
        (status = 409, description = "An active key has this name", body = super::api::ErrorBody),
        (status = 413, description = "Body too large", body = super::api::ErrorBody),
        (status = 415, description = "Not application/json", body = super::api::ErrorBody),
        (status = 422, description = "Invalid field", body = super::api::ErrorBody),
        (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn create_key(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must be 1 to 128 printable characters",
        ));
    }
    let now = unix_now();
    let expires_at = match (req.expires_at, req.expires_in.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expiresIn",
                "give expiresAt or expiresIn, not both",
            ))
        }
        (Some(t), None) if t <= now as i64 => {
            return Err(ApiError::invalid("expiresAt", "is in the past"))
        }
        (Some(t), None) => Some(t as u64),
        (None, Some(l)) => Some(now.saturating_add(lifetime(l)?)),
        (None, None) => None,
    };
    for (i, s) in req.scopes.iter().enumerate() {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiError::invalid(
                format!("scopes[{i}]"),
                "must be a non-empty word",
            ));
        }
    }
    let (plain, id) = crate::keys::store::generate();
    let entry = StoredKey {
        id,
        name,
        digest: to_hex(&crate::keys::digest(plain.as_bytes())),
        scopes: req.scopes,
        routes: req.routes,
        expires_at,
        revoked: false,
        created_at: now,
    };
    let (version, ()) = apply(&st, &actor, &headers, |state| {
        let taken_by_config = state.config.security.auth.as_ref().is_some_and(|a| {
            a.keys
                .iter()
                .any(|k| k.name.as_deref() == Some(&entry.name) && k.revoked != Some(true))
        });
        if taken_by_config
            || state
                .keys
                .keys
                .iter()
                .any(|k| k.name == entry.name && !k.revoked)
        {
            return Err(ApiError::conflict(format!(
                "an active key named {:?} exists (revoke it first or pick another name)",
                entry.name
            )));
        }
        state.keys.keys.push(entry.clone());
        let mut shown = serde_json::to_value(&entry).unwrap_or_default();
        if let Some(o) = shown.as_object_mut() {
            o.remove("digest");
        }
        Ok((
            (),
            vec![Change::new(
                "create",
                format!("key/{}", entry.id),
                None,
                Some(shown),
            )],
        ))
    })
    .await?;
    let snap = st.config.current();
    Ok(with_version(
        StatusCode::CREATED,
        version,
        KeyCreated {
            version,
            key: view(&snap, &entry, now),
            secret: plain,
        },
    ))
}

#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Revoked (refused from now on); the record stays", body = KeyOne),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
        (status = 403, description = "Writes disabled or cross-site request", body = super::api::ErrorBody),
        (status = 404, description = "No such key", body = super::api::ErrorBody),
        (status = 409, description = "Already revoked", body = super::api::ErrorBody),
        (status = 503, description = "Config store unavailable; nothing changed", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn revoke_key(
    State(st): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (version, ()) = apply(&st, &actor, &headers, |state| {
        let already = || ApiError::conflict(format!("key {id:?} is already revoked"));
        let change = |before: bool| {
            Change::new(
                "revoke",
                format!("key/{id}"),
                Some(serde_json::json!({"revoked": before})),
                Some(serde_json::json!({"revoked": true})),
            )
        };
        if let Some(k) = state.keys.keys.iter_mut().find(|k| k.id == id) {
            if k.revoked {
                return Err(already());
            }
            k.revoked = true;
            return Ok(((), vec![change(false)]));
        }
        if let Some(auth) = state.config.security.auth.as_mut() {
            for (i, k) in auth.keys.iter_mut().enumerate() {
                if k.id.clone().unwrap_or_else(|| format!("config-{i}")) == id {
                    if k.revoked == Some(true) {
                        return Err(already());
                    }
                    k.revoked = Some(true);
                    return Ok(((), vec![change(false)]));
                }
            }
        }
        Err(ApiError::not_found(format!("no key {id:?}")))
    })
    .await?;
    let snap = st.config.current();
    let key = all_keys(&snap)
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no key {id:?}")))?;
    Ok(with_version(
        StatusCode::OK,
        version,
        KeyOne { version, key },
    ))
}
