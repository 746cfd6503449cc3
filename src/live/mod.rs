//! Live traffic summary and the cluster feed behind `GET /api/metrics` and
//! the SSE streams.
//!
//! [`LiveStats`] keeps the recent past in memory, never by scanning logs:
//!
//! - since start: requests, errors and exact counts per status code, overall,
//!   per route and per upstream;
//! - latency over a sliding window of [`WINDOW_MINUTES`] one-minute
//!   generations, in HDR histograms (1 µs resolution, 2 significant digits,
//!   up to one hour), overall, per route and per upstream;
//! - a request-rate series in [`SLOT_SECONDS`]-second slots over the last
//!   [`SERIES_SLOTS`] slots (15 minutes).
//!
//! Recording is on the request path, so the state is split into shards, one
//! per proxy worker thread in practice (a thread takes a shard on first use):
//! a record is an uncontended lock, a hash lookup by route id and a few
//! additions. Histograms are allocated when a route first sees traffic in a
//! minute; routes and upstreams are capped per shard (beyond the cap they
//! count under `(other)`), so memory stays bounded whatever reloads do.
//!
//! An *error* is a 5xx answer or no answer at all (status 0): the gateway or
//! its upstream failed the client. 4xx answers are the client's doing and
//! count as available. `availability` is `100 − errorRate`, in percent.

pub mod cluster;

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Width of one request-rate point.
pub const SLOT_SECONDS: u64 = 10;
/// Points in the request-rate series (15 minutes).
pub const SERIES_SLOTS: usize = 90;
/// The latency window, in one-minute generations.
pub const WINDOW_MINUTES: usize = 5;
const GENERATION_SECONDS: u64 = 60;
const SHARDS: usize = 8;
/// Highest recordable latency (1 h, in µs); longer requests count as 1 h.
const MAX_MICROS: u64 = 3_600_000_000;
/// Distinct routes (or upstreams) tracked per shard; the rest count as `(other)`.
const MAX_KEYS: usize = 4096;
const OTHER: &str = "(other)";
/// Status codes counted exactly; anything else counts as 0 (no answer).
const STATUS_CODES: usize = 600;

/// The process-wide live statistics.
pub fn stats() -> &'static LiveStats {
    static STATS: OnceLock<LiveStats> = OnceLock::new();
    STATS.get_or_init(LiveStats::new)
}

/// This node's name in summaries, alerts and NATS subjects: host and pid,
/// so two gateways on one host are two nodes.
pub fn node_name() -> &'static str {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Latency of one key in one generation.
struct Latency {
    hist: Histogram<u64>,
    errors: u64,
}

impl Latency {
    fn new() -> Box<Latency> {
        Box::new(Latency {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("static histogram bounds"),
            errors: 0,
        })
    }
}

/// One key (overall, a route or an upstream) in one shard.
struct Track {
    requests: u64,
    errors: u64,
    /// Indexed by generation number modulo [`WINDOW_MINUTES`]; tagged with it.
    window: [(u64, Option<Box<Latency>>); WINDOW_MINUTES],
}

impl Track {
    fn new() -> Track {
        Track {
            requests: 0,
            errors: 0,
            window: std::array::from_fn(|_| (u64::MAX, None)),
        }
    }

    fn record(&mut self, generation: u64, micros: u64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        let (tag, slot) = &mut self.window[(generation % WINDOW_MINUTES as u64) as usize];
        if *tag != generation {
            *tag = generation;
            if let Some(l) = slot.as_mut() {
                l.hist.reset();
                l.errors = 0;
            }
        }
        let l = slot.get_or_insert_with(Latency::new);
        l.hist.saturating_record(micros.clamp(1, MAX_MICROS));
        l.errors += u64::from(error);
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u64,
    requests: u64,
    errors: u64,
}

struct Shard {
    overall: Track,
    routes: Tracks,
    upstreams: Tracks,
    status: Box<[u64; STATUS_CODES]>,
    series: [Slot; SERIES_SLOTS],
}

impl Shard {
    fn new() -> Shard {
        Shard {
            overall: Track::new(),
            routes: Tracks::default(),
            upstreams: Tracks::default(),
            status: Box::new([0; STATUS_CODES]),
            series: [Slot {
                tag: u64::MAX,
                ..Slot::default()
            }; SERIES_SLOTS],
        }
    }
}

/// FNV-1a: route and upstream names are short and chosen by the operator,
/// not by clients, so a fast non-keyed hash is safe here (this lookup runs
/// on every request).
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Tracks by route or upstream name.
type Tracks = HashMap<Arc<str>, Track, std::hash::BuildHasherDefault<Fnv>>;

fn track_of<'a>(map: &'a mut Tracks, key: &Arc<str>) -> &'a mut Track {
    if !map.contains_key(&**key) {
        let key = if map.len() >= MAX_KEYS {
            Arc::from(OTHER)
        } else {
            key.clone()
        };
        return map.entry(key).or_insert_with(Track::new);
    }
    map.get_mut(&**key).expect("present")
}

/// In-memory live statistics (see the module docs).
pub struct LiveStats {
    shards: Box<[Mutex<Shard>]>,
    started: Instant,
    /// Unix time of `started`, in seconds.
    started_unix: u64,
    next_shard: AtomicUsize,
}

impl LiveStats {
    fn new() -> LiveStats {
        LiveStats {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            started: Instant::now(),
            started_unix: crate::clock::unix_now(),
            next_shard: AtomicUsize::new(0),
        }
    }

    fn shard(&self) -> &Mutex<Shard> {
        thread_local! {
            static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
        }
        let i = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            s.get()
        });
        &self.shards[i]
    }

    /// Seconds since the Unix epoch, on the monotonic clock.
    fn now_secs(&self) -> u64 {
        self.started_unix + self.started.elapsed().as_secs()
    }

    /// Records one finished request.
    pub fn record(
        &self,
        route: Option<&Arc<str>>,
        upstream: Option<&Arc<str>>,
        status: u16,
        elapsed: Duration,
    ) {
        let now = self.now_secs();
        let generation = now / GENERATION_SECONDS;
        let micros = elapsed.as_micros().min(u128::from(MAX_MICROS)) as u64;
        let error = status >= 500 || status == 0;
        let mut shard = self.shard().lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        shard.overall.record(generation, micros, error);
        if let Some(route) = route {
            track_of(&mut shard.routes, route).record(generation, micros, error);
        }
        if let Some(upstream) = upstream {
            track_of(&mut shard.upstreams, upstream).record(generation, micros, error);
        }
        let code = usize::from(status);
        shard.status[if code < STATUS_CODES { code } else { 0 }] += 1;
        let tag = now / SLOT_SECONDS;
        let slot = &mut shard.series[(tag % SERIES_SLOTS as u64) as usize];
        if slot.tag != tag {
            *slot = Slot {
                tag,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(error);
    }

    /// The summary of this node, now.
    pub fn summary(&self) -> Summary {
        let now = self.now_secs();
        let generation = now / GENERATION_SECONDS;
        let oldest_generation = generation.saturating_sub(WINDOW_MINUTES as u64 - 1);
        let slot_now = now / SLOT_SECONDS;
        let first_slot = (slot_now + 1)
            .saturating_sub(SERIES_SLOTS as u64)
            .max(self.started_unix / SLOT_SECONDS);
        let mut overall = Merged::default();
        let mut routes: BTreeMap<String, Merged> = BTreeMap::new();
        let mut upstreams: BTreeMap<String, Merged> = BTreeMap::new();
        let mut status = vec![0u64; STATUS_CODES];
        let mut series: BTreeMap<u64, (u64, u64)> =
            (first_slot..=slot_now).map(|t| (t, (0, 0))).collect();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            overall.add(&shard.overall, oldest_generation);
            for (k, t) in &shard.routes {
                routes
                    .entry(k.to_string())
                    .or_default()
                    .add(t, oldest_generation);
            }
            for (k, t) in &shard.upstreams {
                upstreams
                    .entry(k.to_string())
                    .or_default()
                    .add(t, oldest_generation);
            }
            for (code, n) in shard.status.iter().enumerate() {
                status[code] += n;
            }
            for slot in &shard.series {
                if let Some(point) = series.get_mut(&slot.tag) {
                    point.0 += slot.requests;
                    point.1 += slot.errors;
                }
            }
        }
        // The window reaches back to the start of its oldest generation, or
        // to the start of the process when that is later.
        let window_start = (oldest_generation * GENERATION_SECONDS).max(self.started_unix);
        let overall = overall.finish();
        Summary {
            node: node_name().to_string(),
            timestamp: crate::clock::now_rfc3339(),
            uptime_seconds: self.started.elapsed().as_secs(),
            window_seconds: now.saturating_sub(window_start).max(1),
            total_requests: overall.total_requests,
            total_errors: overall.total_errors,
            requests: overall.requests,
            error_rate: overall.error_rate,
            availability: overall.availability,
            latency: overall.latency,
            request_rate: RequestRate {
                interval_seconds: SLOT_SECONDS,
                points: series
                    .into_iter()
                    .map(|(tag, (requests, errors))| {
                        let start = tag * SLOT_SECONDS;
                        // The current slot is partial: its rate is over the seconds so far.
                        let seconds = (now + 1).saturating_sub(start).clamp(1, SLOT_SECONDS);
                        RatePoint {
                            time: crate::clock::rfc3339(start),
                            requests,
                            errors,
                            per_second: requests as f64 / seconds as f64,
                        }
                    })
                    .collect(),
            },
            status_codes: status
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            routes: routes.into_iter().map(|(k, m)| (k, m.finish())).collect(),
            upstreams: upstreams
                .into_iter()
                .map(|(k, m)| (k, m.finish()))
                .collect(),
        }
    }
}

/// A key's figures merged over shards.
struct Merged {
    total_requests: u64,
    total_errors: u64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Default for Merged {
    fn default() -> Merged {
        Merged {
            total_requests: 0,
            total_errors: 0,
            errors: 0,
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("static histogram bounds"),
        }
    }
}

impl Merged {
    fn add(&mut self, t: &Track, oldest_generation: u64) {
        self.total_requests += t.requests;
        self.total_errors += t.errors;
        for (tag, latency) in &t.window {
            if let (true, Some(l)) = (*tag >= oldest_generation && *tag != u64::MAX, latency) {
                // Same bounds on both sides: adding cannot fail.
                let _ = self.hist.add(&l.hist);
                self.errors += l.errors;
            }
        }
    }

    fn finish(&self) -> KeySummary {
        let requests = self.hist.len();
        let ms = |micros: u64| micros as f64 / 1000.0;
        let error_rate = if requests == 0 {
            0.0
        } else {
            (self.errors as f64 * 100.0 / requests as f64 * 1000.0).round() / 1000.0
        };
        KeySummary {
            total_requests: self.total_requests,
            total_errors: self.total_errors,
            requests,
            error_rate,
            availability: ((100.0 - error_rate) * 1000.0).round() / 1000.0,
            latency: LatencySummary {
                avg_ms: if requests == 0 {
                    0.0
                } else {
                    self.hist.mean().round() / 1000.0
                },
                p50_ms: ms(self.hist.value_at_quantile(0.50)),
                p95_ms: ms(self.hist.value_at_quantile(0.95)),
                p99_ms: ms(self.hist.value_at_quantile(0.99)),
                max_ms: ms(self.hist.max()),
            },
        }
    }
}

/// Latency over the window, in milliseconds (µs precision, 2 significant
/// digits from the HDR histogram).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One route's or upstream's figures.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    /// Requests since start.
    pub total_requests: u64,
    /// Errors (5xx or no answer) since start.
    pub total_errors: u64,
    /// Requests in the window.
    pub requests: u64,
    /// Errors in the window, percent of `requests`.
    pub error_rate: f64,
    /// `100 − errorRate`.
    pub availability: f64,
    pub latency: LatencySummary,
}

/// One point of the request-rate series.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatePoint {
    /// Start of the slot (RFC 3339, UTC).
    pub time: String,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the slot (the current slot: over its seconds so far).
    pub per_second: f64,
}

/// The request-rate series, oldest point first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRate {
    pub interval_seconds: u64,
    pub points: Vec<RatePoint>,
}

/// `GET /api/metrics`: this node's live summary.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node (host and process id).
    pub node: String,
    pub timestamp: String,
    pub uptime_seconds: u64,
    /// Length of the latency and error-rate window (up to 5 minutes).
    pub window_seconds: u64,
    /// Requests since start (every proxied request, any status).
    pub total_requests: u64,
    /// Errors (5xx or no answer) since start.
    pub total_errors: u64,
    /// Requests in the window.
    pub requests: u64,
    /// Errors in the window, percent of `requests`.
    pub error_rate: f64,
    /// `100 − errorRate`.
    pub availability: f64,
    pub latency: LatencySummary,
    pub request_rate: RequestRate,
    /// Answers per status code since start (`"0"`: no answer).
    pub status_codes: BTreeMap<String, u64>,
    /// Per route id (requests that matched no route count only overall).
    pub routes: BTreeMap<String, KeySummary>,
    /// Per upstream name.
    pub upstreams: BTreeMap<String, KeySummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_exactly_and_ranks_latencies() {
        let stats = LiveStats::new();
        let a: Arc<str> = Arc::from("a");
        let up: Arc<str> = Arc::from("app");
        for i in 1..=100u64 {
            stats.record(Some(&a), Some(&up), 200, Duration::from_millis(i));
        }
        stats.record(Some(&a), Some(&up), 502, Duration::from_millis(1));
        stats.record(None, None, 404, Duration::from_micros(50));
        let s = stats.summary();
        assert_eq!(s.total_requests, 102);
        assert_eq!(s.total_errors, 1);
        assert_eq!(s.status_codes["200"], 100);
        assert_eq!(s.status_codes["502"], 1);
        assert_eq!(s.status_codes["404"], 1);
        let route = &s.routes["a"];
        assert_eq!((route.total_requests, route.requests), (101, 101));
        assert_eq!(s.upstreams["app"].total_errors, 1);
        // 2 significant digits: within 1 %.
        assert!((route.latency.p50_ms - 50.0).abs() <= 0.5, "{route:?}");
        assert!((route.latency.p99_ms - 99.0).abs() <= 1.0, "{route:?}");
        assert!(
            (route.error_rate - 100.0 / 101.0).abs() < 0.001,
            "{route:?}"
        );
        let last = s.request_rate.points.last().unwrap();
        assert_eq!(last.requests, 102);
    }

    #[test]
    fn routes_beyond_the_cap_count_as_other() {
        let stats = LiveStats::new();
        for i in 0..MAX_KEYS + 10 {
            let id: Arc<str> = Arc::from(format!("r{i}"));
            stats.record(Some(&id), None, 200, Duration::from_millis(1));
        }
        let s = stats.summary();
        assert_eq!(s.routes.len(), MAX_KEYS + 1);
        assert_eq!(s.routes[OTHER].total_requests, 10);
    }
}
