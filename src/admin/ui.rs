//! The admin web UI at `/admin`: static files from `admin/ui/`, embedded
//! in the binary at build time (no Node needed to build; see
//! `admin/README.md`).
//!
//! - `GET /admin`, `/admin/` and any other `/admin/*` path that is not an
//!   asset: `index.html` (the UI routes in the browser), `no-cache`.
//! - `GET /admin/assets/<hash>/<file>`: the files, where `<hash>` is a
//!   SHA-256 prefix over every embedded file (computed once), so a new
//!   build gets new URLs while relative ES-module imports keep working;
//!   cached for a year, `immutable`. Another hash answers 404.
//!
//! The pages hold no data: they need no credentials. Everything they show
//! comes from `/api/*` with the session cookie. Every answer carries a
//! strict Content-Security-Policy (scripts and styles from this origin
//! only, no inline code), `nosniff`, `no-referrer`, and may not be framed.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

#[derive(rust_embed::Embed)]
#[folder = "admin/ui/"]
#[exclude = "*.d.ts"]
#[exclude = "*.md"]
struct Assets;

/// The UI answers' Content-Security-Policy.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

/// Where the UI lives.
pub const BASE: &str = "/admin";

/// Cache-Control of the hashed assets.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The placeholder in `index.html` replaced by the hashed asset base
/// (`/admin/assets/<hash>`).
const ASSETS_PLACEHOLDER: &str = "%ASSETS%";

/// The content hash of every embedded file (16 hex digits), computed once.
pub fn assets_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut names: Vec<_> = Assets::iter().collect();
        names.sort();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for name in names {
            if let Some(f) = Assets::get(&name) {
                ctx.update(name.as_bytes());
                ctx.update(&[0]);
                ctx.update(&(f.data.len() as u64).to_le_bytes());
                ctx.update(&f.data);
            }
        }
        crate::keys::to_hex(&ctx.finish().as_ref()[..8])
    })
}

/// The URL prefix of the assets of this build.
pub fn assets_base() -> String {
    format!("{BASE}/assets/{}", assets_hash())
}

/// `index.html` with the asset base filled in, built once.
fn index_html() -> &'static str {
    static INDEX: OnceLock<String> = OnceLock::new();
    INDEX.get_or_init(|| {
        let raw = Assets::get("index.html").map(|f| f.data.into_owned());
        let text = String::from_utf8(raw.unwrap_or_default()).unwrap_or_default();
        text.replace(ASSETS_PLACEHOLDER, &assets_base())
    })
}

/// The content type of a file name.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The headers every UI answer carries.
fn secure(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn index() -> Response {
    secure(
        (
            [(header::CONTENT_TYPE, content_type("index.html"))],
            index_html(),
        )
            .into_response(),
        "no-cache",
    )
}

async fn index_any(Path(_): Path<String>) -> Response {
    index().await
}

async fn asset(Path((hash, name)): Path<(String, String)>) -> Response {
    let found = (hash == assets_hash())
        .then(|| Assets::get(&name))
        .flatten()
        .filter(|_| name != "index.html");
    match found {
        Some(f) => secure(
            (
                [(header::CONTENT_TYPE, content_type(&name))],
                f.data.into_owned(),
            )
                .into_response(),
            IMMUTABLE,
        ),
        None => secure(
            super::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin UI file (the UI was updated: reload the page)",
            ),
            "no-store",
        ),
    }
}

/// The UI's routes (no credentials needed; merged into the admin app).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(BASE, get(index))
        .route("/admin/", get(index))
        .route("/admin/assets/{hash}/{*name}", get(asset))
        .route("/admin/{*rest}", get(index_any))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_the_hashed_assets() {
        let html = index_html();
        assert!(!html.contains(ASSETS_PLACEHOLDER));
        assert!(html.contains(&format!("{}/app.js", assets_base())));
        assert_eq!(assets_hash().len(), 16);
    }

    #[test]
    fn no_inline_scripts_or_styles_in_index() {
        let html = index_html();
        for bad in ["<script>", "style=", "onload=", "onclick="] {
            assert!(!html.contains(bad), "index.html has {bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x.svg"), "image/svg+xml");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }
}
