//! The cluster feed over NATS JetStream (`NATS_URL` or `nats.url`).
//!
//! Each node publishes its live summary every [`SUMMARY_INTERVAL`] to
//! `flexgate.metrics.<node>` and every event of its bus to
//! `flexgate.alerts.<node>` and `flexgate.events.<type>` (the webhook
//! payload: `{id, type, time, node, data}`). Two JetStream streams, `METRICS` and `ALERTS`,
//! capture those subjects with bounded retention (one hour, 64 MiB,
//! 100,000 messages each, oldest discarded; created if missing, never
//! altered when present) so late consumers can replay the recent past.
//!
//! Each node also subscribes to both subjects and hands the other nodes'
//! messages to its SSE streams through a bounded broadcast channel: with
//! NATS, `/api/stream/*` on any node shows the whole cluster.
//!
//! NATS down: nothing is published (not even queued in the client), local
//! streams go on, the client reconnects by itself and publishing resumes.
//! The `jetstream` readiness check is up while the connection is up and the
//! `ALERTS` stream answers (checked every [`CHECK_INTERVAL`]).
//!
//! TLS: a `tls://` URL or `nats.caFile` requires it, verified against that
//! CA file or the system trust store ([`crate::deps_tls::nats_options`]);
//! a failed handshake is logged with its cause, like any outage.

use crate::events;
use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often a node publishes its summary.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);
/// How often the connection and the streams are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Messages from other nodes kept for slow SSE clients before they skip ahead.
const FEED_CAPACITY: usize = 1024;
const METRICS_SUBJECT: &str = "flexgate.metrics";
const ALERTS_SUBJECT: &str = "flexgate.alerts";
/// Every event, by type (`flexgate.events.circuit_breaker.opened`), for
/// consumers of one kind of event across the cluster (core NATS, not
/// captured by a stream).
const EVENTS_SUBJECT: &str = "flexgate.events";

/// What kind of message came from another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Metrics,
    Alert,
}

/// A message from another node: its summary or one of its events, as JSON
/// (with a `node` field).
#[derive(Debug)]
pub struct Remote {
    pub kind: Kind,
    pub body: serde_json::Value,
}

/// The feed shared by the NATS service and the SSE handlers.
pub struct ClusterFeed {
    tx: broadcast::Sender<Arc<Remote>>,
    up: AtomicBool,
    /// Messages not published because NATS was down.
    pub dropped: AtomicU64,
}

impl ClusterFeed {
    pub fn new() -> Arc<ClusterFeed> {
        Arc::new(ClusterFeed {
            tx: broadcast::channel(FEED_CAPACITY).0,
            up: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// Other nodes' messages from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Remote>> {
        self.tx.subscribe()
    }

    /// NATS connected and the JetStream streams answering.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("NATS JetStream up: cluster metrics and alerts flow");
                events::emit(
                    crate::events::Event::DependencyUp,
                    serde_json::json!({"dependency": "nats"}),
                );
            } else {
                tracing::warn!(
                    "NATS JetStream down: metrics and alerts stay local until it returns"
                );
                events::emit(
                    crate::events::Event::DependencyDown,
                    serde_json::json!({"dependency": "nats"}),
                );
            }
        }
    }
}

/// A subject token for this node: NATS tokens may not hold `.`, `*`, `>`
/// or white space.
fn subject_token(node: &str) -> String {
    node.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

fn stream_config(name: &str, subject: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{subject}.>")],
        max_age: Duration::from_secs(3600),
        max_bytes: 64 << 20,
        max_messages: 100_000,
        discard: jetstream::stream::DiscardPolicy::Old,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The background service publishing and receiving the cluster feed.
pub struct ClusterService {
    pub feed: Arc<ClusterFeed>,
    pub url: String,
    /// `nats.caFile`.
    pub ca_file: Option<String>,
}

impl ClusterService {
    /// Creates the streams if missing and checks they answer.
    async fn check(&self, client: &async_nats::Client, js: &jetstream::Context) -> bool {
        if client.connection_state() != async_nats::connection::State::Connected {
            return false;
        }
        let ensure = async {
            for (name, subject) in [("METRICS", METRICS_SUBJECT), ("ALERTS", ALERTS_SUBJECT)] {
                if let Err(e) = js.get_or_create_stream(stream_config(name, subject)).await {
                    tracing::warn!("NATS JetStream stream {name}: {e}");
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(CHECK_INTERVAL, ensure)
            .await
            .unwrap_or(false)
    }

    async fn publish(&self, client: &async_nats::Client, subject: String, body: String) {
        if client.connection_state() != async_nats::connection::State::Connected {
            self.feed.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent = tokio::time::timeout(
            Duration::from_millis(500),
            client.publish(subject, body.into()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.feed.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let node = super::node_name();
        let token = subject_token(node);
        let client = crate::deps_tls::nats_connect(
            &self.url,
            self.ca_file.as_deref(),
            format!("flexgate telemetry {node}"),
        )
        .await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let url = crate::config::redact::url(&self.url);
                tracing::error!(url = %url, "NATS: {e}; metrics and alerts stay local");
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let subscribe = |subject: &'static str| {
            let client = client.clone();
            async move {
                match client.subscribe(format!("{subject}.>")).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(
                            "NATS subscribe {subject}.>: {e}; this node shows only itself"
                        );
                        None
                    }
                }
            }
        };
        let (Some(mut metrics_in), Some(mut alerts_in)) = (
            subscribe(METRICS_SUBJECT).await,
            subscribe(ALERTS_SUBJECT).await,
        ) else {
            return;
        };
        let mut events_rx = events::bus().subscribe();
        let mut summary_tick = tokio::time::interval(SUMMARY_INTERVAL);
        summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut check_tick = tokio::time::interval(CHECK_INTERVAL);
        check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let forward = |kind: Kind, payload: &[u8]| {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(payload) else {
                return;
            };
            if body["node"].as_str() != Some(node) {
                let _ = self.feed.tx.send(Arc::new(Remote { kind, body }));
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = check_tick.tick() => {
                    let up = self.check(&client, &js).await;
                    self.feed.set_up(up);
                }
                _ = summary_tick.tick() => {
                    let summary = super::stats().summary();
                    if let Ok(body) = serde_json::to_string(&summary) {
                        self.publish(&client, format!("{METRICS_SUBJECT}.{token}"), body).await;
                    }
                }
                event = events_rx.recv() => match event {
                    Ok(event) => {
                        let body = alert_json(node, &event).to_string();
                        self.publish(&client, format!("{EVENTS_SUBJECT}.{}", event.kind.name()), body.clone()).await;
                        self.publish(&client, format!("{ALERTS_SUBJECT}.{token}"), body).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.feed.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(msg) = metrics_in.next() => forward(Kind::Metrics, &msg.payload),
                Some(msg) = alerts_in.next() => forward(Kind::Alert, &msg.payload),
            }
        }
    }
}

/// An event as the ALERTS stream, `flexgate.events.<type>` and
/// `/api/stream/alerts` carry it: the webhook payload's envelope.
pub fn alert_json(node: &str, event: &events::Emitted) -> serde_json::Value {
    event.envelope(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_single_subject_tokens() {
        assert_eq!(
            subject_token("edge-1.example.com-42"),
            "edge-1_example_com-42"
        );
        assert_eq!(subject_token("a b*>"), "a_b__");
    }
}
