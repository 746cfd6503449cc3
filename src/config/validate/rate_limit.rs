//! `rateLimit:`, and the failed-authentication budget (`security.auth.failureLimit`).

use super::{check_limit, check_millis};
use crate::config::model::{FileConfig, LimitBy, RateLimitBackend};
use crate::config::ConfigError;

pub(super) fn check(e: &mut Vec<ConfigError>, cfg: &FileConfig) {
    let r = &cfg.rate_limit;
    if r.backend == Some(RateLimitBackend::Redis) {
        let has_url = r.redis.as_ref().and_then(|x| x.url.as_ref()).is_some()
            || cfg.redis.as_ref().and_then(|x| x.url.as_ref()).is_some()
            || std::env::var("REDIS_URL").is_ok();
        if !has_url {
            e.push(ConfigError::new(
                "rateLimit.redis.url",
                "is required for backend \"redis\" (or set REDIS_URL)",
            ));
        }
    }
    if let Some(g) = &r.global {
        check_limit(e, "rateLimit.global", g);
    }
    if r.ipv6_prefix.is_some_and(|p| !(1..=128).contains(&p)) {
        e.push(ConfigError::new(
            "rateLimit.ipv6Prefix",
            "must be a prefix length from 1 to 128",
        ));
    }
    if let Some(f) = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.failure_limit.as_ref())
    {
        let path = "security.auth.failureLimit";
        check_millis(e, format!("{path}.windowMs"), f.window_ms.or(f.window));
        if !matches!(f.by, None | Some(LimitBy::Ip)) {
            e.push(ConfigError::new(
                format!("{path}.by"),
                "failed authentications are counted per client address: only \"ip\"",
            ));
        }
        if f.message.is_some() {
            e.push(ConfigError::new(
                format!("{path}.message"),
                "is not used here: the 429 says the address has too many failed authentications",
            ));
        }
    }
    for (i, pr) in r.per_route.iter().enumerate() {
        let path = format!("rateLimit.perRoute[{i}]");
        if pr.path.is_none() {
            e.push(ConfigError::new(format!("{path}.path"), "is required"));
        }
        if pr.max == 0 {
            e.push(ConfigError::new(
                format!("{path}.max"),
                "must be greater than 0",
            ));
        }
        check_millis(e, format!("{path}.windowMs"), pr.window_ms);
    }
}
