//! Standard Webhooks signatures: `webhook-signature: v1,<base64>` where the
//! base64 is HMAC-SHA256 (ring), keyed by the subscription's secret, over
//! `<webhook-id>.<webhook-timestamp>.<body>`.
//!
//! Secrets: `whsec_<base64>` (the Standard Webhooks form) is keyed by the
//! decoded bytes; any other text by its UTF-8 bytes. During a rotation
//! (`previousSecret`), the header carries one signature per secret,
//! space-separated, and receivers accept a message if any one matches.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;

pub use crate::config::webhook_secret_key as secret_key;

/// The signing keys of a subscription: its secret, then the one being
/// rotated out. Secrets that do not decode are skipped (validation refuses them).
pub fn keys(secret: Option<&str>, previous: Option<&str>) -> Vec<hmac::Key> {
    [secret, previous]
        .into_iter()
        .flatten()
        .filter_map(|s| secret_key(s).ok())
        .map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k))
        .collect()
}

/// The `webhook-signature` value for one attempt: `v1,<sig>` per key,
/// space-separated. Empty when there is no key (an unsigned subscription).
pub fn signature(keys: &[hmac::Key], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut out = String::new();
    for key in keys {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&STANDARD.encode(ctx.sign().as_ref()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference vector (from its specification's
    /// test suite): secret, id, timestamp, body and the expected signature.
    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let keys = keys(Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
        let sig = signature(
            &keys,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_both_secrets() {
        let keys = keys(
            Some("a-new-secret-of-enough-bytes"),
            Some("the-old-secret-still-valid"),
        );
        let sig = signature(&keys, "evt_1", 1, b"{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn weak_or_malformed_secrets_are_refused() {
        assert!(secret_key("short").unwrap_err().contains("16 bytes"));
        assert!(secret_key("whsec_***").unwrap_err().contains("base64"));
        assert_eq!(
            secret_key("whsec_AAAAAAAAAAAAAAAAAAAAAA==").unwrap().len(),
            16
        );
    }
}
