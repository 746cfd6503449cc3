//! `database:`, `redis:`, `nats:` — the services a node connects to.

use crate::config::model::FileConfig;
use crate::config::ConfigError;

pub(super) fn check(e: &mut Vec<ConfigError>, cfg: &FileConfig) {
    for (key, sec, schemes) in [
        (
            "database",
            &cfg.database,
            &["postgres://", "postgresql://"][..],
        ),
        ("redis", &cfg.redis, &["redis://", "rediss://"][..]),
        ("nats", &cfg.nats, &["nats://", "tls://"][..]),
    ] {
        if let Some(u) = sec.as_ref().and_then(|s| s.url.as_ref()) {
            if !schemes.iter().any(|s| u.starts_with(s)) {
                e.push(ConfigError::new(
                    format!("{key}.url"),
                    format!(
                        "{:?} has the wrong scheme for {key}",
                        crate::config::redact::url(u)
                    ),
                ));
            }
        }
    }
}
