//! Background JWKS fetching: for the live verifier with a `jwksUrl`, fetch
//! the key set at start, every `jwksRefresh`, and early (at most every 10 s)
//! when a token names an unknown `kid`.
//!
//! The URL passes the SSRF policy twice: its host against
//! `security.allowedHosts` at config time, and the address it resolves to
//! against `blockedIPs` (plus the metadata block) right before connecting;
//! the connection goes to exactly that checked address.
//!
//! The service does not know where the live config lives: whoever runs it
//! hands it a function that answers, each round, the live verifier and
//! the outbound-address policy ([`JwksTarget`]). Fetched keys go into the
//! verifier itself.

use super::{JwtVerifier, KeySet};
use crate::config::{host_allowed, parse_target_url, SsrfPolicy};
use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Splits `https://host[:port]/path` into (target URL, path).
fn split_url(url: &str) -> Result<(String, String), String> {
    let scheme_end = url
        .find("://")
        .ok_or("jwksUrl must start with http:// or https://")?
        + 3;
    match url[scheme_end..].find('/') {
        Some(i) => Ok((
            url[..scheme_end + i].to_string(),
            url[scheme_end + i..].to_string(),
        )),
        None => Ok((url.to_string(), "/".to_string())),
    }
}

/// Fetches and parses a JWKS document, enforcing the SSRF policy on the resolved address.
pub async fn fetch(
    url: &str,
    policy: &SsrfPolicy,
    allowed_hosts: &[String],
) -> Result<KeySet, String> {
    let (base, path) = split_url(url)?;
    let target = parse_target_url(&base)?;
    if !allowed_hosts.is_empty() && !host_allowed(allowed_hosts, &target.host) {
        return Err(format!(
            "host {:?} is not in security.allowedHosts",
            target.host
        ));
    }
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {:?}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{:?} resolved to no address", target.host))?;
    policy.check_ip(addr.ip())?;
    let mut peer = HttpPeer::new(addr, target.tls, target.host.clone());
    peer.options.connection_timeout = Some(Duration::from_secs(3));
    peer.options.read_timeout = Some(Duration::from_secs(5));
    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("Host", target.host.as_str())
        .map_err(|e| e.to_string())?;
    req.insert_header("Accept", "application/json")
        .map_err(|e| e.to_string())?;
    req.insert_header("User-Agent", "flexgate-jwks")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("send: {e}"))?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("read: {e}"))?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| format!("read: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS document is larger than 1 MiB".into());
        }
    }
    parse(&body)
}

/// Parses a JWKS document into decoding keys (unusable keys are skipped).
pub fn parse(body: &[u8]) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = KeySet::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.entry(jwk.common.key_id.clone().unwrap_or_default())
                .or_default()
                .push((alg, Arc::new(key)));
        }
    }
    if out.is_empty() {
        return Err("the JWKS document holds no usable RS256/ES256 key".into());
    }
    Ok(out)
}

/// What the live config gives the refresher each round.
pub struct JwksTarget {
    /// The live JWT verifier (fetched only when it has a `jwksUrl`).
    pub verifier: Arc<JwtVerifier>,
    /// The outbound-address policy the fetch obeys.
    pub ssrf: SsrfPolicy,
    /// `security.allowedHosts` (empty: any host).
    pub allowed_hosts: Vec<String>,
}

/// The live config's [`JwksTarget`], or `None` when it has no JWT verifier.
type LiveTarget = Box<dyn Fn() -> Option<JwksTarget> + Send + Sync>;

/// Background service keeping the live verifier's JWKS fresh.
pub struct JwksService {
    live: LiveTarget,
}

impl JwksService {
    /// A refresher reading the live config through `live` each round.
    pub fn new(live: impl Fn() -> Option<JwksTarget> + Send + Sync + 'static) -> JwksService {
        JwksService {
            live: Box::new(live),
        }
    }
}

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_fetch: Option<(Arc<JwtVerifier>, Instant)> = None;
        loop {
            let target = (self.live)().filter(|t| t.verifier.settings.jwks_url.is_some());
            let wait = match &target {
                None => Duration::from_secs(1),
                Some(target) => {
                    let v = &target.verifier;
                    let due = match &last_fetch {
                        Some((prev, at)) if Arc::ptr_eq(prev, v) => {
                            at.elapsed() >= super::refresh_period(&v.settings)
                        }
                        _ => true,
                    };
                    if due {
                        let url = v.settings.jwks_url.clone().unwrap_or_default();
                        match fetch(&url, &target.ssrf, &target.allowed_hosts).await {
                            Ok(keys) => {
                                tracing::info!(url = %crate::config::redact::url(&url), keys = keys.values().map(Vec::len).sum::<usize>(), "JWKS fetched");
                                v.fetched.store(Arc::new(keys));
                                last_fetch = Some((v.clone(), Instant::now()));
                            }
                            Err(e) => {
                                tracing::warn!(url = %crate::config::redact::url(&url), "JWKS fetch failed: {e}; keeping the previous keys");
                                // Retry sooner than the refresh period.
                                last_fetch = Some((
                                    v.clone(),
                                    Instant::now() - super::refresh_period(&v.settings)
                                        + Duration::from_secs(5),
                                ));
                            }
                        }
                    }
                    Duration::from_secs(1)
                }
            };
            let early = async {
                match &target {
                    Some(t) => t.verifier.refresh.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = early => {
                    // Unknown kid: refetch now unless we fetched in the last 10 s.
                    if let Some((_, at)) = &mut last_fetch {
                        if at.elapsed() >= Duration::from_secs(10) {
                            *at = Instant::now() - Duration::from_secs(86_400 * 365);
                        }
                    }
                }
            }
        }
    }
}
