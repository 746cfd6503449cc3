//! The Redis rate-limit backend: one `EVALSHA` per decision (INCR, PEXPIRE
//! and PTTL in one atomic script, fixed window starting at the first hit), so
//! every node sharing the Redis counts into the same buckets.
//!
//! Failure handling: each call has [`CALL_TIMEOUT`]; an error or timeout
//! marks Redis down (logged once, counted) and requests decide locally
//! without touching Redis; a background probe (`PING` every 250 ms) marks it
//! up again (logged, counted). Requests never wait on a Redis known to be down.
//!
//! TLS: a `rediss://` URL is verified against the CA file
//! (`rateLimit.redis.caFile`, else `redis.caFile`), else the system trust
//! store. A server that fails verification is a Redis that is down: limits
//! are decided locally and the cause is logged.

use super::{Decision, LimitRule};
use async_trait::async_trait;
use fred::prelude::*;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Longest a request waits for Redis.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(50);

const SCRIPT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"#;

/// Shared Redis limiter state.
pub struct RedisLimiter {
    url: String,
    /// CA file for `rediss://` and the setting it came from (messages).
    ca_file: Option<(String, &'static str)>,
    client: OnceLock<Client>,
    sha: OnceLock<String>,
    down: AtomicBool,
    pub failures: AtomicU64,
    pub fallbacks: AtomicU64,
    pub recoveries: AtomicU64,
}

impl RedisLimiter {
    pub fn new(url: String) -> Arc<RedisLimiter> {
        Self::with_ca(url, None)
    }

    /// As [`RedisLimiter::new`], with the CA file of a `rediss://` server
    /// and the name of its setting (`rateLimit.redis.caFile`,
    /// `redis.caFile`), for messages.
    pub fn with_ca(url: String, ca_file: Option<(String, &'static str)>) -> Arc<RedisLimiter> {
        Arc::new(RedisLimiter {
            url,
            ca_file,
            client: OnceLock::new(),
            sha: OnceLock::new(),
            down: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
        })
    }

    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn mark_down(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = why,
                "redis rate limiter unavailable: deciding limits locally until it answers again"
            );
            crate::events::emit(
                crate::events::Event::RateLimitBackendDown,
                serde_json::json!({ "backend": "redis", "reason": why }),
            );
        }
    }

    /// Decides one rule: Redis when up, else (or on failure) locally.
    pub async fn check(
        &self,
        rule: &LimitRule,
        key: &str,
        ip: std::net::IpAddr,
        consumer: Option<&str>,
    ) -> Decision {
        if self.is_up() {
            if let (Some(client), Some(sha)) = (self.client.get(), self.sha.get()) {
                let redis_key = format!(
                    "flexgate:rl:{}:{}:{}:{}",
                    rule.id,
                    rule.max,
                    rule.window.as_millis(),
                    key
                );
                let call = client.evalsha::<Vec<i64>, _, _, _>(
                    sha.as_str(),
                    redis_key,
                    rule.window.as_millis() as i64,
                );
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(v)) if v.len() == 2 => {
                        return rule.decision(
                            v[0].max(0) as u64,
                            Duration::from_millis(v[1].max(0) as u64),
                        );
                    }
                    Ok(Ok(_)) => self.mark_down("unexpected script reply"),
                    Ok(Err(e)) => self.mark_down(&e.to_string()),
                    Err(_) => self.mark_down("timeout"),
                }
            }
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        rule.check_local(ip, consumer)
    }

    async fn probe(&self, client: &Client) -> bool {
        let ping = async {
            client.ping::<String>(None).await?;
            if self.sha.get().is_none() {
                let sha: String = client.script_load(SCRIPT).await?;
                let _ = self.sha.set(sha);
            } else {
                // The script cache is lost when Redis restarts: load it again (idempotent).
                let _: String = client.script_load(SCRIPT).await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(200), ping).await,
            Ok(Ok(()))
        )
    }
}

/// The client configuration of `url`: `redis://` plain, `rediss://` (and
/// the `-cluster`/`-sentinel` and `valkeys` spellings) TLS
/// verified against `ca` (the CA file and its setting's name), else the
/// system trust store. A CA file with a plain URL is an error: the
/// connection would not be what the config asks for.
fn client_config(url: &str, ca: Option<(&str, &'static str)>) -> Result<Config, String> {
    // The client library would build its own TLS settings for a TLS scheme:
    // parse the plain spelling and put ours in.
    const TLS_SCHEMES: [(&str, &str); 6] = [
        ("rediss://", "redis://"),
        ("rediss-cluster://", "redis-cluster://"),
        ("rediss-sentinel://", "redis-sentinel://"),
        ("valkeys://", "valkey://"),
        ("valkeys-cluster://", "valkey-cluster://"),
        ("valkeys-sentinel://", "valkey-sentinel://"),
    ];
    let tls_scheme = TLS_SCHEMES
        .iter()
        .find_map(|(tls, plain)| url.strip_prefix(tls).map(|rest| format!("{plain}{rest}")));
    let tls = tls_scheme.is_some();
    let plain_url = tls_scheme.unwrap_or_else(|| url.to_string());
    let mut config = Config::from_url(&plain_url).map_err(|e| e.to_string())?;
    match (tls, ca) {
        (true, ca) => {
            let field = ca.map_or("redis.caFile", |(_, f)| f);
            let roots = crate::deps_tls::roots(field, ca.map(|(f, _)| f))?;
            let tls = crate::deps_tls::verify_full(roots);
            config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
        }
        (false, Some((_, field))) => {
            return Err(format!(
                "{field} is set but the URL is not rediss://: use rediss:// for TLS"
            ))
        }
        (false, None) => {}
    }
    Ok(config)
}

/// Background service: connects, then watches Redis and flips it up/down.
pub struct RedisLimiterService {
    pub limiter: Arc<RedisLimiter>,
}

#[async_trait]
impl BackgroundService for RedisLimiterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let l = &self.limiter;
        let target = crate::config::redact::url(&l.url);
        let ca = l.ca_file.as_ref().map(|(f, field)| (f.as_str(), *field));
        let config = match client_config(&l.url, ca) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "rateLimit.redis.url {target:?} is not usable: {e}; limits stay local"
                );
                return;
            }
        };
        let client = match Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(500);
                c.internal_command_timeout = Duration::from_millis(500);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_millis(200);
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot create the redis client: {e}; limits stay local");
                return;
            }
        };
        if let Err(e) = client.init().await {
            let cause = e.to_string();
            let tls = match crate::deps_tls::hint(&cause) {
                "" => String::new(),
                hint => format!(
                    "{hint} [verified against {}]",
                    match ca {
                        Some((file, field)) => crate::deps_tls::trust_source(field, Some(file)),
                        None => crate::deps_tls::trust_source("redis.caFile", None),
                    }
                ),
            };
            tracing::warn!(
                "redis rate limiter cannot connect to {target}: {cause}{tls}; deciding limits \
                 locally and retrying"
            );
        }
        let _ = l.client.set(client.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.changed() => { let _ = client.quit().await; return; }
                _ = tick.tick() => {}
            }
            ticks = ticks.wrapping_add(1);
            // Up: a PING every second, so an idle node notices an outage
            // too (readiness, metrics) rather than at its next request.
            if l.is_up() {
                if ticks % 4 == 0 {
                    let ping = client.ping::<String>(None);
                    if !matches!(
                        tokio::time::timeout(Duration::from_millis(200), ping).await,
                        Ok(Ok(_))
                    ) {
                        l.mark_down("no answer to PING");
                    }
                }
                continue;
            }
            if l.probe(&client).await && l.down.swap(false, Ordering::Relaxed) {
                l.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!("redis rate limiter connected: limits are shared across nodes");
                crate::events::emit(
                    crate::events::Event::RateLimitBackendUp,
                    serde_json::json!({ "backend": "redis" }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_get_our_tls_settings_and_plain_ones_none() {
        let c = client_config("rediss://:pw@127.0.0.1:6380/2", None);
        // Without a CA file, the system trust store (may be empty in a
        // minimal container: then the message says so).
        match c {
            Ok(c) => {
                assert!(c.tls.is_some());
                assert_eq!(c.database, Some(2));
            }
            Err(e) => assert!(e.contains("system CA certificates"), "{e}"),
        }
        assert!(client_config("redis://127.0.0.1:6379", None)
            .unwrap()
            .tls
            .is_none());
        let e = client_config(
            "redis://127.0.0.1:6379",
            Some(("/etc/ca.pem", "rateLimit.redis.caFile")),
        )
        .unwrap_err();
        assert!(
            e.starts_with("rateLimit.redis.caFile is set but the URL is not rediss://"),
            "{e}"
        );
        let e =
            client_config("rediss://h", Some(("/nonexistent.pem", "redis.caFile"))).unwrap_err();
        assert!(
            e.starts_with("redis.caFile: cannot read /nonexistent.pem"),
            "{e}"
        );
    }
}
