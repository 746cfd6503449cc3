//! Secrets kept out of answers, audit entries and log lines.
//!
//! One marker, [`MARKER`], stands for every hidden value: the HS256 secret
//! (`security.jwt.secret`), webhook `secret`s and header values, tokens,
//! and the password of a URL (`postgres://app:<redacted>@db/flexgate`).
//! A document sent back to the admin API with the marker in place of a
//! secret means "keep the stored value" ([`keep_unchanged`]).

use super::{ConfigError, DynamicConfig};
use serde_json::Value;

/// What a hidden value is replaced by.
pub const MARKER: &str = "<redacted>";

/// A URL (or PostgreSQL key/value connection string) with its password
/// replaced by [`MARKER`]: the `user:password@` of a URL and a `password=`
/// parameter (URL query or key/value form): `redis://:pw@h` →
/// `redis://:<redacted>@h`.
/// Anything without a password is returned as is.
pub fn url(url: &str) -> String {
    let mut out = url.to_string();
    // scheme://user:password@host
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = rest..rest + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                out.replace_range(rest + colon + 1..rest + at, MARKER);
            }
        }
    }
    // password=… (query parameter or key/value pair)
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password") {
        let (before, after) = rest.split_at(i + "password".len());
        masked.push_str(before);
        let boundary = before.len() == "password".len()
            || before[..before.len() - "password".len()]
                .ends_with(|c: char| c == '?' || c == '&' || c.is_whitespace());
        let trimmed = after.trim_start();
        if boundary && trimmed.starts_with('=') {
            masked.push_str(&after[..after.len() - trimmed.len()]);
            masked.push('=');
            let value = trimmed[1..].trim_start();
            masked.push_str(&trimmed[1..trimmed.len() - value.len()]);
            masked.push_str(MARKER);
            let end = if let Some(quoted) = value.strip_prefix('\'') {
                let mut escaped = false;
                let close = quoted.char_indices().find(|&(_, c)| {
                    let hit = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    hit
                });
                close.map_or(value.len(), |(j, _)| j + 2)
            } else {
                value
                    .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                    .unwrap_or(value.len())
            };
            rest = &value[end..];
        } else {
            rest = after;
        }
    }
    masked.push_str(rest);
    masked
}

/// Keys whose string value is a secret wherever they appear.
fn is_secret_key(k: &str) -> bool {
    matches!(k, "secret" | "previousSecret" | "token" | "password")
}

/// Keys whose string value is a URL that may carry a password.
fn is_url_key(k: &str) -> bool {
    k == "url" || k.ends_with("Url")
}

/// Hides the secrets of a config (or any part of one) serialised as JSON:
/// `secret`/`token`/`password` values, webhook `headers` values, and the
/// password of every `url`/`…Url`.
pub fn value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match x {
                    Value::String(s) if is_secret_key(k) => *s = MARKER.to_string(),
                    Value::String(s) if is_url_key(k) => *s = url(s),
                    // Webhook headers (`Authorization: Bearer …`); a route's
                    // header rules live under `requestHeaders.add`.
                    Value::Object(h) if k == "headers" => {
                        for hv in h.values_mut() {
                            if hv.is_string() {
                                *hv = Value::String(MARKER.to_string());
                            }
                        }
                    }
                    _ => value(x),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(value),
        _ => {}
    }
}

/// A serialisable value as JSON with its secrets hidden.
pub fn json_of<T: serde::Serialize>(v: &T) -> Value {
    let mut out = serde_json::to_value(v).unwrap_or_default();
    value(&mut out);
    out
}

/// Replaces every [`MARKER`] of `incoming` by the stored secret of
/// `current` (matched by field path; webhooks by id). A marker with no
/// stored value behind it is an error naming the field.
pub fn keep_unchanged(incoming: &mut DynamicConfig, current: &DynamicConfig) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let missing = |path: String| {
        ConfigError::new(
            path,
            format!("holds the redaction marker {MARKER:?} but no stored value is there to keep; send the value itself"),
        )
    };
    if let Some(j) = incoming.security.jwt.as_mut() {
        if j.secret.as_deref() == Some(MARKER) {
            match current.security.jwt.as_ref().and_then(|c| c.secret.clone()) {
                Some(s) => j.secret = Some(s),
                None => errs.push(missing("security.jwt.secret".into())),
            }
        }
    }
    if let Some(r) = incoming.rate_limit.redis.as_mut() {
        if let Some(u) = r.url.as_deref().filter(|u| u.contains(MARKER)) {
            match current
                .rate_limit
                .redis
                .as_ref()
                .and_then(|c| c.url.clone())
            {
                Some(cur) if url(&cur) == u => r.url = Some(cur),
                _ => errs.push(missing("rateLimit.redis.url".into())),
            }
        }
    }
    for (i, w) in incoming.webhooks.iter_mut().enumerate() {
        let old = current
            .webhooks
            .iter()
            .enumerate()
            .find(|(j, o)| match (&w.id, &o.id) {
                (Some(a), Some(b)) => a == b,
                (None, None) => *j == i,
                _ => false,
            })
            .map(|(_, o)| o);
        if let Err(e) = keep_webhook(w, old) {
            errs.push(ConfigError::new(
                format!("webhooks[{i}].{}", e.path),
                e.message,
            ));
        }
    }
    errs
}

/// [`keep_unchanged`] for one webhook and its stored version, if any.
/// Errors are relative to the webhook (`secret`, `headers.X`).
pub fn keep_webhook(
    w: &mut super::WebhookConfig,
    old: Option<&super::WebhookConfig>,
) -> Result<(), ConfigError> {
    let missing = |path: String| {
        ConfigError::new(
            path,
            format!("holds the redaction marker {MARKER:?} but no stored value is there to keep; send the value itself"),
        )
    };
    if w.secret.as_deref() == Some(MARKER) {
        match old.and_then(|o| o.secret.clone()) {
            Some(s) => w.secret = Some(s),
            None => return Err(missing("secret".into())),
        }
    }
    if w.previous_secret.as_deref() == Some(MARKER) {
        match old.and_then(|o| o.previous_secret.clone()) {
            Some(s) => w.previous_secret = Some(s),
            None => return Err(missing("previousSecret".into())),
        }
    }
    for (name, v) in w.headers.iter_mut() {
        if v == MARKER {
            match old.and_then(|o| o.headers.get(name)) {
                Some(s) => v.clone_from(s),
                None => return Err(missing(format!("headers.{name}"))),
            }
        }
    }
    if w.url.contains(MARKER) {
        match old {
            Some(o) if url(&o.url) == w.url => w.url.clone_from(&o.url),
            _ => return Err(missing("url".into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_every_url_form() {
        for (given, want) in [
            (
                "postgres://fg:s3cret@db:5432/x?sslmode=verify-full",
                "postgres://fg:<redacted>@db:5432/x?sslmode=verify-full",
            ),
            (
                "rediss://:pw@cache:6380/0",
                "rediss://:<redacted>@cache:6380/0",
            ),
            (
                "rediss://user:p%40ss@cache",
                "rediss://user:<redacted>@cache",
            ),
            ("tls://u:p@nats:4222", "tls://u:<redacted>@nats:4222"),
            ("nats://nats:4222", "nats://nats:4222"),
            ("redis://user@cache", "redis://user@cache"),
            (
                "postgres://db/x?user=fg&password=s3cret&sslmode=require",
                "postgres://db/x?user=fg&password=<redacted>&sslmode=require",
            ),
            (
                "host=db password=s3cret dbname=x",
                "host=db password=<redacted> dbname=x",
            ),
            (
                "host=db password = secret dbname=x",
                "host=db password = <redacted> dbname=x",
            ),
            (
                "host=db password='a b' user=u",
                "host=db password=<redacted> user=u",
            ),
            ("host=db nopassword=x", "host=db nopassword=x"),
        ] {
            assert_eq!(url(given), want, "{given}");
        }
        assert_eq!(
            url("host=db password='x \\' y' user=u"),
            "host=db password=<redacted> user=u"
        );
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            url("postgres://app:pw@db:5432/x"),
            "postgres://app:<redacted>@db:5432/x"
        );
        assert_eq!(url("redis://:p@ss@r:6379"), "redis://:<redacted>@r:6379");
        assert_eq!(url("nats://u:p@n:4222"), "nats://u:<redacted>@n:4222");
        assert_eq!(url("http://h:80/a:b@c"), "http://h:80/a:b@c");
        assert_eq!(url("redis://r:6379"), "redis://r:6379");
        assert_eq!(
            url("host=db password=pw dbname=x"),
            "host=db password=<redacted> dbname=x"
        );
    }

    #[test]
    fn values_are_hidden_by_key() {
        let mut v = serde_json::json!({
            "security": {"jwt": {"secret": "s", "issuer": "i"}},
            "webhooks": [{"url": "https://u:p@h/x", "secret": "w", "headers": {"Authorization": "Bearer x"}}],
            "routes": [{"requestHeaders": {"add": {"X-A": "1"}}}]
        });
        value(&mut v);
        assert_eq!(v["security"]["jwt"]["secret"], MARKER);
        assert_eq!(v["security"]["jwt"]["issuer"], "i");
        assert_eq!(v["webhooks"][0]["secret"], MARKER);
        assert_eq!(v["webhooks"][0]["headers"]["Authorization"], MARKER);
        assert_eq!(v["webhooks"][0]["url"], "https://u:<redacted>@h/x");
        assert_eq!(v["routes"][0]["requestHeaders"]["add"]["X-A"], "1");
    }
}
