//! `webhooks:` — unique ids, http(s) URLs, known events, retry settings in range.

use crate::config::model::WebhookConfig;
use crate::config::ConfigError;

pub(super) fn check(e: &mut Vec<ConfigError>, webhooks: &[WebhookConfig]) {
    let mut webhook_ids: std::collections::HashMap<&str, usize> = Default::default();
    for (i, w) in webhooks.iter().enumerate() {
        let wp = format!("webhooks[{i}]");
        if let Some(id) = w.id.as_deref() {
            if let Some(j) = webhook_ids.insert(id, i) {
                e.push(ConfigError::new(
                    format!("{wp}.id"),
                    format!("duplicate webhook id {id:?} (also webhooks[{j}])"),
                ));
            }
        }
        let host = w
            .url
            .strip_prefix("http://")
            .or_else(|| w.url.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace))
            || w.url.parse::<http::Uri>().is_err()
        {
            e.push(ConfigError::new(
                format!("{wp}.url"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        for (j, ev) in w.events.iter().enumerate() {
            if !crate::events::Event::is_known_filter(ev) {
                let known: Vec<&str> = crate::events::Event::ALL.iter().map(|e| e.name()).collect();
                e.push(ConfigError::new(
                    format!("{wp}.events[{j}]"),
                    format!("unknown event {ev:?} (*, {})", known.join(", ")),
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
    }
}
