//! Process logging set-up: level and format from `logging:` (or `RUST_LOG`),
//! written to stdout through a bounded, lossy, non-blocking writer so a slow
//! log consumer can never stall the proxy.

use crate::config::LoggingSection;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines buffered before new lines are dropped.
const BUFFERED_LINES: usize = 64 * 1024;

/// Access-log and other lines dropped because the writer fell behind.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Installs the global subscriber; keep the guard alive for the process.
/// In daemon mode the process forks after this point and a writer thread
/// would not survive the fork, so lines are written directly instead.
pub fn init(cfg: &LoggingSection, daemon: bool) -> Option<WorkerGuard> {
    let level = cfg.level.map_or("info", |l| l.as_str());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},pingora_core=warn,pingora_proxy=warn"))
    });
    let text = cfg.format == Some(crate::config::LogFormat::Text);
    if daemon {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout);
        let _ = if text {
            builder.try_init()
        } else {
            builder.json().flatten_event(true).try_init()
        };
        return None;
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if text {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    result.ok().map(|_| guard)
}
