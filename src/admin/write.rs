//! The one path every admin write takes:
//!
//! 1. take the config's change lock (writes and reloads are serialised);
//! 2. start from the live state; check `If-Match` (the config version the
//!    client read) → 409 when it moved;
//! 3. apply the change to a copy (404/409/422 from the change itself);
//! 4. validate and compile the copy (a dry run: 422 with field paths,
//!    nothing stored);
//! 5. commit it with its audit entries (secrets redacted) to the store (409 when another node
//!    wrote first, 503 when the store is down: nothing changed);
//! 6. install the compiled snapshot: live on this node before the answer,
//!    in-flight requests keep the snapshot they started with;
//! 7. tell other nodes (database mode).
//!
//! Without `If-Match`, a conflict with another node's write is retried
//! (twice) on the fresh state: the change is applied again on top of it.

use super::api::ApiError;
use super::AdminState;
use crate::clock::now_rfc3339;
use crate::store::{AuditEntry, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// One audited change.
pub struct Change {
    pub action: &'static str,
    pub resource: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Change {
    pub fn new(
        action: &'static str,
        resource: impl Into<String>,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Change {
        Change {
            action,
            resource: resource.into(),
            before,
            after,
        }
    }
}

/// Who is writing (from the auth layer).
#[derive(Clone, Debug)]
pub struct Actor(pub String);

/// The version pinned by `If-Match: "7"` (or `7`), if any.
pub fn pinned_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "If-Match must hold a config version, e.g. If-Match: \"7\"",
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    // `*` (any version) and an empty value pin nothing.
    if text.is_empty() || text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| bad())
}

/// Gives every route and webhook an explicit id (a route's implicit
/// default is its position, which a deletion would shift; a webhook's
/// derives from its URL, [`crate::config::WebhookConfig::effective_id`]).
pub fn materialize_ids(state: &mut State) {
    for (i, r) in state.config.routes.iter_mut().enumerate() {
        if r.id.is_none() {
            r.id = Some(format!("route-{i}"));
        }
    }
    for w in state.config.webhooks.iter_mut() {
        if w.id.is_none() {
            w.id = Some(w.effective_id());
        }
    }
}

/// 409 when `If-Match` pins another version than `version`.
pub fn check_pinned(headers: &HeaderMap, version: u64) -> Result<Option<u64>, ApiError> {
    match pinned_version(headers)? {
        Some(p) if p != version => Err(ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("If-Match: the config is at version {version}, not {p}; read it again"),
        )),
        pinned => Ok(pinned),
    }
}

/// Runs one write; returns the new version and what `change` produced.
pub async fn apply<R>(
    st: &AdminState,
    actor: &Actor,
    headers: &HeaderMap,
    change: impl Fn(&mut State) -> Result<(R, Vec<Change>), ApiError>,
) -> Result<(u64, R), ApiError> {
    let pinned = pinned_version(headers)?;
    for attempt in 0.. {
        let guard = st.config.lock().await;
        let (version, mut state) = st.config.current_state();
        check_pinned(headers, version)?;
        materialize_ids(&mut state);
        let (out, changes) = change(&mut state)?;
        // Nothing changed: no new version, no audit entry, no reload.
        if changes.is_empty() {
            return Ok((version, out));
        }
        let handle = st.config.clone();
        let candidate = state.clone();
        let snap = tokio::task::spawn_blocking(move || handle.prepare(&candidate)).await??;
        let time = now_rfc3339();
        let audit: Vec<AuditEntry> = changes
            .into_iter()
            .map(|c| {
                // The audit log never holds a secret.
                let hide = |mut v: Value| {
                    crate::config::redact::value(&mut v);
                    v
                };
                AuditEntry {
                    id: 0,
                    time: time.clone(),
                    actor: actor.0.clone(),
                    action: c.action.to_string(),
                    resource: c.resource,
                    before: c.before.map(hide),
                    after: c.after.map(hide),
                    version: version + 1,
                }
            })
            .collect();
        match st.store.commit(version, &state, &audit).await {
            Ok(new_version) => {
                st.config.install(snap, new_version, state);
                drop(guard);
                if let Some(notify) = &st.on_commit {
                    notify(new_version);
                }
                return Ok((new_version, out));
            }
            Err(crate::store::StoreError::Conflict { current })
                if pinned.is_none() && attempt < 2 =>
            {
                drop(guard);
                tracing::info!(
                    current,
                    "admin write: another node changed the config first; applying on top of it"
                );
                super::sync_from_store(st).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}
