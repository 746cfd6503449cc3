//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the admin service,
//! generated from the handlers' annotations and the config model's types
//! (their doc comments are the descriptions), so it cannot drift from the
//! code.

use super::{config_io, history, keys, live_metrics, resources, webhooks};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (admin.token, admin.tokenFile or FLEXGATE_ADMIN_TOKEN; at least 16 bytes)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::session::COOKIE,
                "Session cookie from POST /api/session",
            ))),
        );
    }
}

/// The server refuses unknown fields in every body it reads (422 naming
/// them) and never sends fields it does not declare: say so in the schemas.
struct ClosedObjects;

impl Modify for ClosedObjects {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for (name, schema) in components.schemas.iter_mut() {
            // `CheckStatus` carries its details as extra fields.
            if name == "CheckStatus" {
                continue;
            }
            if let RefOr::T(Schema::Object(obj)) = schema {
                if !obj.properties.is_empty() && obj.additional_properties.is_none() {
                    obj.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// Answers every admin endpoint may give besides its own: 421 outside
/// `admin.allowedHosts`; with credentials, 403 while the admin API is
/// disabled and 429 after too many failed sign-ins; with a body, 408.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses.entry("421".into()).or_insert_with(|| {
                    error("The Host is not in admin.allowedHosts (DNS-rebinding defence)").into()
                });
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    responses.entry("403".into()).or_insert_with(|| {
                        error("The admin API is disabled: no admin token, or one under 16 bytes")
                            .into()
                    });
                    responses.entry("429".into()).or_insert_with(|| {
                        error("Too many failed sign-ins from this address; see Retry-After").into()
                    });
                }
                if op.request_body.is_some() {
                    responses.entry("408".into()).or_insert_with(|| {
                        error("The request body did not arrive within 5 s").into()
                    });
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FlexGate admin API",
        description = "Manage routes, upstreams, API keys, webhooks and the whole config of a FlexGate node (or cluster, in database mode). Every write is validated, stored with an audit entry and live on this node before the answer; the answer carries the new config version (also in X-Config-Version).",
        license(name = "Apache-2.0")
    ),
    paths(
        super::health, super::live, super::ready, super::prometheus,
        super::create_session, super::end_session,
        resources::list_routes, resources::get_route, resources::create_route,
        resources::replace_route, resources::delete_route,
        resources::list_upstreams, resources::get_upstream, resources::create_upstream,
        resources::replace_upstream, resources::delete_upstream,
        resources::list_webhooks, resources::get_webhook, resources::create_webhook,
        resources::replace_webhook, resources::delete_webhook,
        webhooks::list_deliveries, webhooks::get_delivery, webhooks::retry_delivery,
        webhooks::test_webhook,
        keys::list_keys, keys::get_key, keys::create_key, keys::revoke_key,
        config_io::export, config_io::import, config_io::logs,
        live_metrics::summary, live_metrics::stream_metrics, live_metrics::stream_alerts,
        history::metrics_history,
        serve,
    ),
    modifiers(&Security, &ClosedObjects, &CommonResponses),
    tags(
        (name = "routes", description = "Routing rules"),
        (name = "upstreams", description = "Backends and their targets"),
        (name = "keys", description = "API keys (secrets shown once)"),
        (name = "webhooks", description = "Event subscriptions"),
        (name = "config", description = "Export and import of the whole dynamic config"),
        (name = "audit", description = "Who changed what"),
        (name = "metrics", description = "Request history roll-ups (database mode)"),
        (name = "session", description = "Browser sign-in"),
        (name = "metrics", description = "Live summary and event streams (Server-Sent Events)"),
        (name = "health", description = "Probes and metrics (no credentials by default)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON text.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "config",
    responses(
        (status = 200, description = "This document", body = Object, content_type = "application/json"),
        (status = 401, description = "No or wrong credentials", body = super::api::ErrorBody),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn serve() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(document).clone(),
    )
        .into_response()
}
