//! The snapshot's clock: milliseconds since the process started, a cheap
//! monotonic time kept in atomics (breaker windows, passive ejection).

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process started.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
