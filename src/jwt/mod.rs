//! JWT bearer authentication (`auth: jwt` routes, `security.jwt`).
//!
//! Verification: HS256 (shared secret), RS256 and ES256 (inline PEM keys
//! or a JWKS fetched in the background by `jwks.rs`); `iss`, `aud`, `exp`,
//! `nbf` with a clock-skew leeway. The verifier survives reloads while its
//! settings are unchanged (the fetched JWKS is kept).
//!
//! Cost: a verified token is cached (keyed by a hash of the token, until
//! its `exp`, bounded to [`CACHE_ENTRIES`] per shard, 16 shards), so a
//! client reusing its token pays the signature check once; the cache holds
//! only the claims that are forwarded, never the token.

pub mod jwks;

use crate::config::credentials::verification_key;
use crate::config::{JwtAlgorithm, JwtSection, KeyAlgorithm, OneOrMany};
use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Verified tokens kept per shard.
pub const CACHE_ENTRIES: usize = 4096;
const SHARDS: usize = 16;

/// What a verified token gives the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `sub` (the consumer for limits and logs).
    pub subject: Arc<str>,
    /// (header, value) pairs from `forwardClaims`.
    pub headers: Arc<Vec<(http::HeaderName, http::HeaderValue)>>,
    exp: u64,
}

/// Keys by `kid` (`""` = keys without a kid).
pub type KeySet = HashMap<String, Vec<(Algorithm, Arc<DecodingKey>)>>;

/// A configured verifier.
pub struct JwtVerifier {
    pub settings: JwtSection,
    secret: Option<DecodingKey>,
    inline: KeySet,
    /// Keys from the JWKS URL, replaced whole on each fetch.
    pub fetched: ArcSwap<KeySet>,
    algorithms: Vec<Algorithm>,
    forward: Vec<(String, http::HeaderName)>,
    leeway_secs: u64,
    cache: [Mutex<HashMap<u64, Verified>>; SHARDS],
    /// Asks the JWKS task for an early refresh (unknown `kid`).
    pub refresh: tokio::sync::Notify,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

/// The inline keys by `kid` (the config parsed their PEM); errors name the entry.
pub fn inline_keys(settings: &JwtSection) -> Result<KeySet, String> {
    let mut set = KeySet::new();
    for (i, k) in settings.public_keys.iter().enumerate() {
        let (alg, key) = verification_key(k.algorithm, k.pem.as_ref())
            .map_err(|(field, m)| format!("security.jwt.publicKeys[{i}].{field}: {m}"))?;
        let alg = match alg {
            KeyAlgorithm::Rs256 => Algorithm::RS256,
            KeyAlgorithm::Es256 => Algorithm::ES256,
        };
        set.entry(k.kid.clone().unwrap_or_default())
            .or_default()
            .push((alg, key));
    }
    Ok(set)
}

/// Why a token was refused (the message goes to the client).
#[derive(Debug, PartialEq, Eq)]
pub struct JwtRejection(pub String);

impl JwtVerifier {
    pub fn new(settings: &JwtSection) -> Result<JwtVerifier, String> {
        let inline = inline_keys(settings)?;
        let mut algorithms: Vec<Algorithm> =
            settings.algorithms.iter().map(|a| algorithm(*a)).collect();
        if algorithms.is_empty() {
            if settings.secret.is_some() {
                algorithms.push(Algorithm::HS256);
            }
            if !inline.is_empty() || settings.jwks_url.is_some() {
                algorithms.extend([Algorithm::RS256, Algorithm::ES256]);
            }
        }
        let forward = settings
            .forward_claims
            .iter()
            .map(|(claim, header)| (claim.clone(), header.value().clone()))
            .collect();
        Ok(JwtVerifier {
            secret: settings
                .secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            inline,
            fetched: ArcSwap::from_pointee(KeySet::new()),
            algorithms,
            forward,
            leeway_secs: settings.leeway.map_or(60, |m| m.0 / 1000),
            cache: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refresh: tokio::sync::Notify::new(),
            settings: settings.clone(),
        })
    }

    /// Header names this verifier sets (removed from clients' requests).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.forward.iter().map(|(_, h)| h)
    }

    /// Verifies an `Authorization` header value.
    pub fn verify(&self, authorization: &[u8], now: u64) -> Result<Verified, JwtRejection> {
        let token = authorization
            .strip_prefix(b"Bearer ")
            .or_else(|| authorization.strip_prefix(b"bearer "))
            .ok_or_else(|| JwtRejection("expected Authorization: Bearer <token>".into()))?;
        let token = std::str::from_utf8(token)
            .map_err(|_| JwtRejection("malformed token".into()))?
            .trim();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        let key = h.finish();
        let shard = &self.cache[(key as usize) % SHARDS];
        if let Some(v) = shard.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if v.exp > now {
                return Ok(v.clone());
            }
        }
        let verified = self.verify_uncached(token)?;
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_ENTRIES {
            map.retain(|_, v| v.exp > now);
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, verified.clone());
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, JwtRejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtRejection("malformed token".into()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtRejection(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let fetched = self.fetched.load();
        let key: Arc<DecodingKey> = if header.alg == Algorithm::HS256 {
            match &self.secret {
                Some(s) => Arc::new(s.clone()),
                None => return Err(JwtRejection("HS256 tokens are not accepted".into())),
            }
        } else {
            let kid = header.kid.clone().unwrap_or_default();
            let pick = |set: &KeySet| {
                set.get(&kid)
                    .or_else(|| if kid.is_empty() { None } else { set.get("") })
                    .and_then(|v| {
                        v.iter()
                            .find(|(a, _)| *a == header.alg)
                            .map(|(_, k)| k.clone())
                    })
            };
            match pick(&self.inline).or_else(|| pick(&fetched)) {
                Some(k) => k,
                None => {
                    self.refresh.notify_one();
                    return Err(JwtRejection(format!("unknown signing key {kid:?}")));
                }
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.settings.audience {
            Some(OneOrMany::One(a)) => v.set_audience(&[a]),
            Some(OneOrMany::Many(list)) => v.set_audience(list),
            None => v.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind::*;
                    JwtRejection(
                        match e.kind() {
                            ExpiredSignature => "the token has expired",
                            ImmatureSignature => "the token is not valid yet",
                            InvalidAudience => "the token is not meant for this audience",
                            InvalidIssuer => "the token has the wrong issuer",
                            InvalidSignature => "the token signature is invalid",
                            MissingRequiredClaim(_) => "the token lacks a required claim",
                            _ => "the token is not valid",
                        }
                        .into(),
                    )
                })?;
        let claims = data.claims;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let headers = self
            .forward
            .iter()
            .filter_map(|(claim, header)| {
                let value = claims.get(claim)?;
                Some((
                    header.clone(),
                    http::HeaderValue::from_str(&text(value)).ok()?,
                ))
            })
            .collect();
        Ok(Verified {
            subject: Arc::from(claims.get("sub").map(text).unwrap_or_default().as_str()),
            headers: Arc::new(headers),
            exp: claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0),
        })
    }
}

/// The JWKS refresh period of a verifier.
pub fn refresh_period(settings: &JwtSection) -> Duration {
    settings
        .jwks_refresh
        .map_or(Duration::from_secs(300), |m| m.duration())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn settings() -> JwtSection {
        JwtSection {
            issuer: Some("https://issuer.test".into()),
            audience: Some(OneOrMany::One("api".into())),
            secret: Some("s3cret".into()),
            forward_claims: [("sub".to_string(), "X-User-Id".parse().unwrap())]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn token(claims: serde_json::Value, secret: &str) -> Vec<u8> {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn hs256_checks_claims() {
        let v = JwtVerifier::new(&settings()).unwrap();
        let now = crate::clock::unix_now();
        let good = serde_json::json!({"sub": "u1", "iss": "https://issuer.test", "aud": "api", "exp": now + 600});
        let ok = v.verify(&token(good.clone(), "s3cret"), now).unwrap();
        assert_eq!(&*ok.subject, "u1");
        assert_eq!(ok.headers[0].1, "u1");
        // Cached: the same token verifies again without a signature check.
        assert_eq!(v.verify(&token(good, "s3cret"), now).unwrap(), ok);
        let reason = |claims: serde_json::Value, secret: &str| {
            v.verify(&token(claims, secret), now).unwrap_err().0
        };
        assert_eq!(
            reason(
                serde_json::json!({"sub": "u", "iss": "https://issuer.test", "aud": "api", "exp": now - 600}),
                "s3cret"
            ),
            "the token has expired"
        );
        assert_eq!(
            reason(
                serde_json::json!({"sub": "u", "iss": "https://issuer.test", "aud": "other", "exp": now + 600}),
                "s3cret"
            ),
            "the token is not meant for this audience"
        );
        assert_eq!(
            reason(
                serde_json::json!({"sub": "u", "iss": "https://evil", "aud": "api", "exp": now + 600}),
                "s3cret"
            ),
            "the token has the wrong issuer"
        );
        assert_eq!(
            reason(
                serde_json::json!({"sub": "u", "iss": "https://issuer.test", "aud": "api", "exp": now + 600}),
                "wrong"
            ),
            "the token signature is invalid"
        );
        assert_eq!(
            reason(
                serde_json::json!({"sub": "u", "iss": "https://issuer.test", "aud": "api", "exp": now + 600, "nbf": now + 600}),
                "s3cret"
            ),
            "the token is not valid yet"
        );
        assert!(v.verify(b"Basic abc", now).is_err());
        // Leeway: expired 30 s ago is still accepted with the default 60 s.
        assert!(v.verify(&token(serde_json::json!({"sub": "u", "iss": "https://issuer.test", "aud": "api", "exp": now - 30}), "s3cret"), now).is_ok());
    }

    #[test]
    fn unknown_kid_asks_for_a_refresh() {
        let mut s = settings();
        s.secret = None;
        s.jwks_url = Some("https://idp.test/jwks".into());
        let v = JwtVerifier::new(&s).unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        // Any ES256-shaped token: the kid lookup fails before the signature.
        let fake = format!(
            "Bearer {}.{}.{}",
            b64(&serde_json::to_vec(&h).unwrap()),
            b64(b"{}"),
            b64(b"sig")
        );
        assert_eq!(
            v.verify(fake.as_bytes(), 0).unwrap_err().0,
            "unknown signing key \"k1\""
        );
    }

    fn b64(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}
