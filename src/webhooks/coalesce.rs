//! Coalescing: the high-rate events of one kind
//! ([`Event::is_high_rate`]: `request.error`, `rate_limit.exceeded`,
//! `auth.failure`) that one subscription receives within its
//! `coalesceWindow` (default 10 s) become one delivery: the total `count`
//! of occurrences, the number of bus events folded in, the window's bounds,
//! the top keys, routes and client addresses, and the first event's data
//! as a sample. A window opens with the first such event and closes
//! `coalesceWindow` later; 10,000 hits in a second are one POST.
//!
//! Counts are exact: each bus event carries the occurrences it stands for
//! (`count`, see [`crate::events::emit_counted`]). The top lists count the
//! events that carried a key, route or address (the bus passes a few per
//! second with their details; the rest arrive as counts only).
//!
//! Per node: each node coalesces what its own bus carries, and the payload
//! names the node. State changes (breakers, config, health) are never
//! coalesced.

use crate::events::{Emitted, Event};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Distinct values tracked per top list; more count under `(other)`.
const MAX_DISTINCT: usize = 256;
/// Entries shown per top list.
const TOP: usize = 10;

/// Occurrences per value, bounded.
#[derive(Debug, Default)]
struct Tally(HashMap<String, u64>);

impl Tally {
    fn add(&mut self, value: Option<String>, n: u64) {
        let Some(value) = value else { return };
        if self.0.len() >= MAX_DISTINCT && !self.0.contains_key(&value) {
            *self.0.entry("(other)".into()).or_default() += n;
        } else {
            *self.0.entry(value).or_default() += n;
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, n) in other.0 {
            self.add(Some(k), n);
        }
    }

    /// The most frequent values: `[{value, count}]`, highest first.
    fn top(&self) -> Value {
        let mut v: Vec<(&String, &u64)> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        Value::Array(
            v.into_iter()
                .take(TOP)
                .map(|(value, count)| json!({"value": value, "count": count}))
                .collect(),
        )
    }
}

/// One open window of one kind for one subscription.
#[derive(Debug)]
pub struct Window {
    /// The delivery's event id, fixed when the window opens: a window that
    /// waits in an outbox (store down) keeps it, so storing it twice stores
    /// it once.
    pub id: String,
    pub kind: Event,
    pub opened_ms: u64,
    pub last_ms: u64,
    /// Occurrences (sum of the events' `count`).
    pub count: u64,
    /// Bus events folded in.
    pub events: u64,
    keys: Tally,
    routes: Tally,
    addresses: Tally,
    sample: Option<Value>,
}

/// The value of `field` as text, when present and not null.
fn text(data: &Value, field: &str) -> Option<String> {
    match &data[field] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Window {
    pub fn open(e: &Emitted) -> Window {
        let mut w = Window {
            id: crate::events::new_id(),
            kind: e.kind,
            opened_ms: e.time_ms,
            last_ms: e.time_ms,
            count: 0,
            events: 0,
            keys: Tally::default(),
            routes: Tally::default(),
            addresses: Tally::default(),
            sample: None,
        };
        w.add(e);
        w
    }

    /// Folds one event in.
    pub fn add(&mut self, e: &Emitted) {
        let n = e.data["count"].as_u64().unwrap_or(1);
        self.count += n;
        self.events += 1;
        self.last_ms = self.last_ms.max(e.time_ms);
        if e.data["folded"] == Value::Bool(true) {
            return;
        }
        // The key: the limit's key, the failure's reason, or the status.
        let key = text(&e.data, "key")
            .or_else(|| text(&e.data, "reason"))
            .or_else(|| text(&e.data, "status"));
        self.keys.add(key, 1);
        self.routes.add(text(&e.data, "route"), 1);
        self.addresses.add(text(&e.data, "clientIp"), 1);
        if self.sample.is_none() {
            self.sample = Some(e.data.clone());
        }
    }

    /// Folds a later window of the same kind in (a full queue merging).
    pub fn merge(&mut self, later: Window) {
        self.count += later.count;
        self.events += later.events;
        self.last_ms = self.last_ms.max(later.last_ms);
        self.keys.merge(later.keys);
        self.routes.merge(later.routes);
        self.addresses.merge(later.addresses);
        if self.sample.is_none() {
            self.sample = later.sample;
        }
    }

    /// The delivery's `data`, closed at `end_ms`.
    pub fn data(&self, end_ms: u64) -> Value {
        json!({
            "coalesced": true,
            "count": self.count,
            "events": self.events,
            "windowStart": crate::clock::rfc3339_ms(self.opened_ms),
            "windowEnd": crate::clock::rfc3339_ms(end_ms.max(self.last_ms)),
            "top": {
                "keys": self.keys.top(),
                "routes": self.routes.top(),
                "addresses": self.addresses.top(),
            },
            "sample": self.sample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(key: &str, ip: &str, count: u64) -> Emitted {
        Emitted {
            id: crate::events::new_id(),
            kind: Event::RateLimitExceeded,
            time_ms: 1_000,
            data: json!({"key": key, "route": "api", "clientIp": ip, "count": count}),
        }
    }

    #[test]
    fn a_window_sums_counts_and_ranks_keys() {
        let mut w = Window::open(&hit("ip:1", "10.0.0.1", 5));
        for _ in 0..3 {
            w.add(&hit("ip:2", "10.0.0.2", 1));
        }
        w.add(&Emitted {
            data: json!({"count": 100, "folded": true}),
            ..hit("", "", 0)
        });
        let d = w.data(11_000);
        assert_eq!(d["count"], 108);
        assert_eq!(d["events"], 5);
        assert_eq!(d["top"]["keys"][0], json!({"value": "ip:2", "count": 3}));
        assert_eq!(d["top"]["routes"][0], json!({"value": "api", "count": 4}));
        assert_eq!(d["sample"]["key"], "ip:1");
        assert_eq!(d["windowEnd"], "1970-01-01T00:00:11.000Z");
    }

    #[test]
    fn top_lists_stay_bounded() {
        let mut w = Window::open(&hit("k0", "10.0.0.1", 1));
        for i in 1..10_000 {
            w.add(&hit(&format!("k{i}"), "10.0.0.1", 1));
        }
        assert!(w.keys.0.len() <= MAX_DISTINCT + 1);
        assert_eq!(w.data(0)["count"], 10_000);
        let other = w.keys.0["(other)"];
        assert_eq!(other, 10_000 - MAX_DISTINCT as u64);
    }
}
