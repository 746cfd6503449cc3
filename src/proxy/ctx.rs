//! The per-request context every phase reads and writes, in sub-structs
//! by concern: who the client is, what it proved, what admission granted,
//! the upstream attempts, the clock, and how the exchange ended.

use crate::jwt::Verified;
use crate::limit::{Decision, LimitRule};
use crate::snapshot::{Route, Snapshot};
use http::HeaderValue;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request state.
pub struct RequestCtx {
    /// The config this request is served with, taken once when it starts.
    pub snap: Arc<Snapshot>,
    pub route: Option<Arc<Route>>,
    /// Correlation id (the client's when valid, else a new one): a header
    /// value, so that it is copied into both heads without allocating.
    pub request_id: HeaderValue,
    pub client: Client,
    pub identity: Identity,
    pub admission: Admitted,
    pub upstream: Attempts,
    pub timing: Timing,
    pub outcome: Outcome,
    /// The path routes match when it differs from the canonical path
    /// (`proxy.paths.pathParameters: ignoreForMatching`).
    pub match_path: Option<String>,
    /// A WebSocket upgrade on a route that allows it.
    pub websocket: bool,
}

/// Who is asking.
pub struct Client {
    /// The client's address (the peer, or taken from a trusted proxy's
    /// `X-Forwarded-For`).
    pub ip: IpAddr,
    /// The address limits count this client by (`limit::address_key`).
    pub limit_ip: IpAddr,
    /// Arrived on the TLS listener.
    pub tls: bool,
}

/// What the client proved (`auth.rs`).
#[derive(Debug, Default)]
pub struct Identity {
    /// The API key's or the token's subject.
    pub consumer: Option<Arc<str>>,
    /// Verified JWT (claims to forward).
    pub jwt: Option<Verified>,
}

/// What admission granted (`admission.rs`).
#[derive(Default)]
pub struct Admitted {
    /// Counted in the in-flight gauges (global and route).
    pub in_flight: bool,
    /// The most restrictive rate-limit decision (for `RateLimit` headers).
    pub rate: Option<(Decision, Arc<LimitRule>)>,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
}

/// The upstream attempts (`upstream.rs`).
#[derive(Default)]
pub struct Attempts {
    /// Attempts so far.
    pub count: u32,
    /// Targets tried, in order.
    pub tried: Vec<usize>,
    /// Target of the current attempt (released when it ends).
    pub current: Option<usize>,
    /// This request is the breaker's half-open probe.
    pub breaker_probe: bool,
}

/// The clock.
pub struct Timing {
    pub start: Instant,
    /// The route's total deadline.
    pub deadline: Option<Instant>,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<Duration>,
}

/// How the exchange ended, as far as the gateway decided it.
#[derive(Default)]
pub struct Outcome {
    /// Status the gateway answered with itself (0 = the upstream's).
    pub status: u16,
    /// The refusal's code, when the gateway refused.
    pub code: Option<&'static str>,
    /// The refusal was the upstream's fault (`respond::Reject::blames_upstream`).
    pub upstream_fault: bool,
}

impl RequestCtx {
    pub fn new(snap: Arc<Snapshot>, tls: bool) -> RequestCtx {
        RequestCtx {
            snap,
            route: None,
            request_id: HeaderValue::from_static(""),
            client: Client {
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                limit_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                tls,
            },
            identity: Identity::default(),
            admission: Admitted::default(),
            upstream: Attempts::default(),
            timing: Timing {
                start: Instant::now(),
                deadline: None,
                upstream_started: None,
                upstream_elapsed: None,
            },
            outcome: Outcome::default(),
            match_path: None,
            websocket: false,
        }
    }

    /// The correlation id as text (it is always plain ASCII).
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// True once the route's total deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.timing.deadline.is_some_and(|d| Instant::now() > d)
    }

    /// Last target tried (kept for the access log after release).
    pub fn target_logged(&self) -> Option<usize> {
        self.upstream.tried.last().copied()
    }
}
