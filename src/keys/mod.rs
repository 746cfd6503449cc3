//! API keys: the index the proxy looks keys up in, and the embedded key
//! store that `flexgate keys create|list|revoke` (and later the admin API)
//! write.
//!
//! A key is never stored in plaintext: config-file keys are given as the
//! lowercase hex SHA-256 of the key, generated keys are stored the same way
//! and their plaintext is shown once. Lookup hashes the presented key and
//! finds it in a hash map (O(1)); the found digest is compared again in
//! constant time. Usage counters live beside each key and are carried over
//! reloads by digest.
//!
//! The store is a JSON file (`security.auth.keyStore`, default
//! `flexgate-keys.json` beside the config file) written atomically (temp
//! file, fsync, rename); the running gateway reloads it within a second of a
//! change, like the config file. `lifetime.rs` reads the lifetime a new
//! key is given (`30d`, `12h`, …) for the CLI and the admin API alike.

pub mod lifetime;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Per-key usage, kept across reloads.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pub requests: AtomicU64,
    /// Unix seconds of the last accepted request (0 = never).
    pub last_used: AtomicU64,
}

/// One usable key.
#[derive(Debug)]
pub struct ApiKey {
    pub id: String,
    /// Consumer name (logs, `X-Consumer-Name`, per-consumer limits).
    pub name: Arc<str>,
    pub digest: [u8; 32],
    /// Scopes the key carries.
    pub scopes: Vec<String>,
    /// Route ids the key may call (empty = all).
    pub routes: Vec<String>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
    pub revoked: bool,
    pub usage: Arc<KeyUsage>,
}

/// Why a key was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRejection {
    /// 401: unknown, expired or revoked.
    Unauthorized(&'static str),
    /// 403: valid key without the scope or route.
    Forbidden(&'static str),
}

/// Keys by digest.
#[derive(Default)]
pub struct KeyIndex {
    pub header: Option<http::HeaderName>,
    keys: HashMap<[u8; 32], Arc<ApiKey>>,
}

/// SHA-256 of a presented key.
pub fn digest(key: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares without an early exit (timing does not depend on where they differ).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lowercase hex of a digest.
pub fn to_hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes 64 lowercase hex characters.
pub fn from_hex(text: &str) -> Option<[u8; 32]> {
    let b = text.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = val(b[2 * i])? << 4 | val(b[2 * i + 1])?;
    }
    Some(out)
}

impl KeyIndex {
    pub fn new(header: Option<http::HeaderName>) -> KeyIndex {
        KeyIndex {
            header,
            keys: HashMap::new(),
        }
    }

    /// Adds a key, keeping the usage counters of the same digest in `previous`.
    pub fn insert(&mut self, mut key: ApiKey, previous: Option<&KeyIndex>) {
        if let Some(prev) = previous.and_then(|p| p.keys.get(&key.digest)) {
            key.usage = prev.usage.clone();
        }
        self.keys.insert(key.digest, Arc::new(key));
    }

    /// Usage counters of the key with this digest.
    pub fn usage(&self, digest: &[u8; 32]) -> Option<&Arc<KeyUsage>> {
        self.keys.get(digest).map(|k| &k.usage)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a presented key for a route needing `scopes`; counts usage on success.
    pub fn verify(
        &self,
        presented: &[u8],
        route_id: &str,
        scopes: &[String],
        now: u64,
    ) -> Result<Arc<ApiKey>, KeyRejection> {
        let d = digest(presented);
        let key = self
            .keys
            .get(&d)
            .ok_or(KeyRejection::Unauthorized("the API key is not valid"))?;
        if !constant_time_eq(&key.digest, &d) {
            return Err(KeyRejection::Unauthorized("the API key is not valid"));
        }
        if key.revoked {
            return Err(KeyRejection::Unauthorized("the API key has been revoked"));
        }
        if key.expires_at.is_some_and(|t| now >= t) {
            return Err(KeyRejection::Unauthorized("the API key has expired"));
        }
        if !key.routes.is_empty() && !key.routes.iter().any(|r| r == route_id) {
            return Err(KeyRejection::Forbidden(
                "the API key may not call this route",
            ));
        }
        if !scopes.iter().all(|s| key.scopes.contains(s)) {
            return Err(KeyRejection::Forbidden(
                "the API key lacks a scope this route requires",
            ));
        }
        key.usage.requests.fetch_add(1, Ordering::Relaxed);
        if key.usage.last_used.load(Ordering::Relaxed) != now {
            key.usage.last_used.store(now, Ordering::Relaxed);
        }
        Ok(key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        secret: &str,
        scopes: &[&str],
        routes: &[&str],
        expires_at: Option<u64>,
        revoked: bool,
    ) -> ApiKey {
        ApiKey {
            id: secret.into(),
            name: Arc::from(secret),
            digest: digest(secret.as_bytes()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
            expires_at,
            revoked,
            usage: Arc::default(),
        }
    }

    #[test]
    fn verify_rules() {
        let mut idx = KeyIndex::new(None);
        idx.insert(key("good", &["read", "write"], &[], None, false), None);
        idx.insert(key("old", &[], &[], Some(100), false), None);
        idx.insert(key("gone", &[], &[], None, true), None);
        idx.insert(key("narrow", &[], &["billing"], None, false), None);
        let read = vec!["read".to_string()];
        assert!(idx.verify(b"good", "api", &read, 50).is_ok());
        assert_eq!(
            idx.verify(b"nope", "api", &[], 50).unwrap_err(),
            KeyRejection::Unauthorized("the API key is not valid")
        );
        assert!(idx.verify(b"old", "api", &[], 99).is_ok());
        assert_eq!(
            idx.verify(b"old", "api", &[], 100).unwrap_err(),
            KeyRejection::Unauthorized("the API key has expired")
        );
        assert_eq!(
            idx.verify(b"gone", "api", &[], 1).unwrap_err(),
            KeyRejection::Unauthorized("the API key has been revoked")
        );
        assert!(matches!(
            idx.verify(b"narrow", "api", &[], 1),
            Err(KeyRejection::Forbidden(_))
        ));
        assert!(idx.verify(b"narrow", "billing", &[], 1).is_ok());
        let admin = vec!["admin".to_string()];
        assert!(matches!(
            idx.verify(b"good", "api", &admin, 1),
            Err(KeyRejection::Forbidden(_))
        ));
    }

    #[test]
    fn usage_survives_a_rebuild() {
        let mut a = KeyIndex::new(None);
        a.insert(key("k", &[], &[], None, false), None);
        a.verify(b"k", "r", &[], 7).unwrap();
        a.verify(b"k", "r", &[], 8).unwrap();
        let mut b = KeyIndex::new(None);
        b.insert(key("k", &[], &[], None, false), Some(&a));
        let k = b.verify(b"k", "r", &[], 9).unwrap();
        assert_eq!(k.usage.requests.load(Ordering::Relaxed), 3);
        assert_eq!(k.usage.last_used.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn hex_round_trip() {
        let d = digest(b"abc");
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex("zz"), None);
    }
}
