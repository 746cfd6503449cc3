//! `webhooks:` — unique ids, URLs that pass the outbound policy, known
//! events, reserved headers, secrets that decode, retry and timing
//! settings in range.

use super::Outbound;
use crate::config::model::WebhookConfig;
use crate::config::units::Millis;
use crate::config::{parse_endpoint_url, ConfigError};
use std::net::IpAddr;

/// Headers a subscription may not set: the signature scheme's and the
/// framing's own.
const RESERVED_HEADERS: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// `90000` → `90s`, `3600000` → `1h`.
fn human(ms: u64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

pub(super) fn check(e: &mut Vec<ConfigError>, webhooks: &[WebhookConfig], out: &Outbound<'_>) {
    let mut webhook_ids: std::collections::HashMap<String, usize> = Default::default();
    for (i, w) in webhooks.iter().enumerate() {
        let wp = format!("webhooks[{i}]");
        let id = w.effective_id();
        if let Some(j) = webhook_ids.insert(id.clone(), i) {
            e.push(match &w.id {
                Some(_) => ConfigError::new(
                    format!("{wp}.id"),
                    format!("duplicate webhook id {id:?} (also webhooks[{j}])"),
                ),
                None => ConfigError::new(
                    format!("{wp}.id"),
                    format!("needed: webhooks[{j}] has the same url (or the id {id:?} this url would get); give them ids"),
                ),
            });
        }
        match parse_endpoint_url(&w.url) {
            Err(m) => e.push(ConfigError::new(format!("{wp}.url"), m)),
            Ok((t, _)) => {
                if !out.host_allowed(&t) {
                    e.push(ConfigError::new(
                        format!("{wp}.url"),
                        format!(
                            "host {:?} is not in security.allowedHosts (add it there, or fix the URL)",
                            t.host
                        ),
                    ));
                }
                if let Ok(ip) = t.host.parse::<IpAddr>() {
                    if let Err(m) = out.policy.check_ip(ip) {
                        e.push(ConfigError::new(format!("{wp}.url"), m));
                    }
                }
            }
        }
        for (j, ev) in w.events.iter().enumerate() {
            if !crate::events::Event::is_known_filter(ev) {
                let known: Vec<&str> = crate::events::Event::ALL.iter().map(|e| e.name()).collect();
                e.push(ConfigError::new(
                    format!("{wp}.events[{j}]"),
                    format!(
                        "unknown event {ev:?} (*, a prefix pattern like circuit_breaker.*, or one of {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if w.max_retries.is_some_and(|r| r > 20) {
            e.push(ConfigError::new(
                format!("{wp}.maxRetries"),
                "must be at most 20",
            ));
        }
        if w.backoff_multiplier
            .is_some_and(|m| !(1.0..=10.0).contains(&m))
        {
            e.push(ConfigError::new(
                format!("{wp}.backoffMultiplier"),
                "must be between 1.0 and 10.0",
            ));
        }
        let hour = 3_600_000;
        let ranges: [(&str, Option<Millis>, u64, u64); 6] = [
            ("initialDelay", w.initial_delay, 1, 24 * hour),
            ("maxDelay", w.max_delay, 1, 24 * hour),
            ("connectTimeout", w.connect_timeout, 1, 60_000),
            ("timeout", w.timeout, 1, 300_000),
            ("coalesceWindow", w.coalesce_window, 1_000, hour),
            (
                "autoDisableAfter",
                w.auto_disable_after,
                1_000,
                30 * 24 * hour,
            ),
        ];
        for (field, v, min, max) in ranges {
            if let Some(m) = v {
                if m.0 < min || m.0 > max {
                    e.push(ConfigError::new(
                        format!("{wp}.{field}"),
                        format!("must be between {} and {}", human(min), human(max)),
                    ));
                }
            }
        }
        for name in w.headers.keys() {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                e.push(ConfigError::new(
                    format!("{wp}.headers.{name}"),
                    "is set by the gateway on every delivery and cannot be overridden",
                ));
            } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                e.push(ConfigError::new(
                    format!("{wp}.headers.{name}"),
                    "is not a valid header name",
                ));
            }
        }
        for (name, v) in &w.headers {
            if http::HeaderValue::from_str(v).is_err() {
                e.push(ConfigError::new(
                    format!("{wp}.headers.{name}"),
                    "value must be visible ASCII text",
                ));
            }
        }
        for (field, secret) in [
            ("secret", &w.secret),
            ("previousSecret", &w.previous_secret),
        ] {
            if let Some(s) = secret {
                if let Err(m) = crate::config::webhook_secret_key(s) {
                    e.push(ConfigError::new(format!("{wp}.{field}"), m));
                }
            }
        }
        if w.previous_secret.is_some() && w.secret.is_none() && w.secret_file.is_none() {
            e.push(ConfigError::new(
                format!("{wp}.previousSecret"),
                "needs a secret: previousSecret only adds a second signature while secret is rotated",
            ));
        }
    }
}
