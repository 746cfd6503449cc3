//! Credentials written in a config, parsed when it is read: API-key
//! digests (`security.auth.keys[].key`), JWT algorithms and public keys
//! (`security.jwt.algorithms`, `security.jwt.publicKeys[]`). The features
//! (`keys`, `jwt`) take the parsed values; none of them reads the text again.

use super::text::{text_enum, FromText, Written};
use std::fmt;
use std::sync::Arc;

text_enum! {
    /// A JWT signature algorithm (`security.jwt.algorithms`).
    pub enum JwtAlgorithm {
        Hs256 = "HS256",
        Rs256 = "RS256",
        Es256 = "ES256",
    }
}

text_enum! {
    /// The algorithm of an inline public key (`security.jwt.publicKeys[].algorithm`).
    pub enum KeyAlgorithm {
        Rs256 = "RS256",
        Es256 = "ES256",
    }
}

/// The SHA-256 of an API key, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest(pub [u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

impl FromText for KeyDigest {
    fn from_text(text: &str) -> Result<Self, String> {
        // The value is not repeated: it may be a key pasted in by mistake,
        // and this message is logged.
        let refuse = || {
            "is not a SHA-256 digest: give the lowercase hex SHA-256 of the key (64 characters; `flexgate keys hash KEY` prints it)".to_string()
        };
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(refuse());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = digit(pair[0]).ok_or_else(refuse)? << 4 | digit(pair[1]).ok_or_else(refuse)?;
        }
        Ok(KeyDigest(out))
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the lowercase hex SHA-256 of the key")
    }
}

/// What kind of public key a PEM holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
}

/// A PEM public key, ready to verify signatures.
#[derive(Clone)]
pub struct PublicKeyPem {
    pub kind: KeyKind,
    pub key: Arc<jsonwebtoken::DecodingKey>,
}

impl FromText for PublicKeyPem {
    fn from_text(text: &str) -> Result<Self, String> {
        use jsonwebtoken::DecodingKey;
        let (kind, key) = match DecodingKey::from_rsa_pem(text.as_bytes()) {
            Ok(k) => (KeyKind::Rsa, k),
            Err(_) => match DecodingKey::from_ec_pem(text.as_bytes()) {
                Ok(k) => (KeyKind::Ec, k),
                Err(e) => return Err(format!("not a usable RSA or EC public key: {e}")),
            },
        };
        Ok(PublicKeyPem {
            kind,
            key: Arc::new(key),
        })
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the PEM text of an RSA or EC public key")
    }
}

/// An inline JWT key (`security.jwt.publicKeys[]`) ready to verify
/// signatures: its algorithm and its key, which must be of the algorithm's
/// kind (RSA for RS256, EC for ES256). `Err`: the field at fault
/// (`algorithm` or `pem`) and why.
pub fn verification_key(
    algorithm: Option<KeyAlgorithm>,
    pem: Option<&Written<PublicKeyPem>>,
) -> Result<(KeyAlgorithm, Arc<jsonwebtoken::DecodingKey>), (&'static str, String)> {
    let Some(algorithm) = algorithm else {
        return Err(("algorithm", "is required (RS256 or ES256)".into()));
    };
    let Some(pem) = pem else {
        return Err(("pem", "is required".into()));
    };
    let (wanted, name) = match algorithm {
        KeyAlgorithm::Rs256 => (KeyKind::Rsa, "an RSA"),
        KeyAlgorithm::Es256 => (KeyKind::Ec, "an EC"),
    };
    if pem.value().kind != wanted {
        return Err((
            "pem",
            format!("not a usable {algorithm} public key: {algorithm} needs {name} key"),
        ));
    }
    Ok((algorithm, pem.value().key.clone()))
}

/// The HMAC key of a webhook secret as written in the config
/// (`whsec_<base64>`: the decoded bytes; other text: its UTF-8 bytes); `Err` says why it
/// cannot be used.
pub fn webhook_secret_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let bytes = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "a whsec_ secret must be followed by base64".to_string())?,
        None => secret.as_bytes().to_vec(),
    };
    if bytes.len() < 16 {
        return Err(format!(
            "must be at least 16 bytes (got {}); e.g. whsec_ followed by 32 random bytes in base64",
            bytes.len()
        ));
    }
    if bytes.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_hex_and_never_echoed() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(KeyDigest::from_text(hex).unwrap().0[..2], [0xba, 0x78]);
        for bad in [&hex.to_uppercase(), &hex[1..], "client-a-key-sha256-hash"] {
            let e = KeyDigest::from_text(bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
    }

    #[test]
    fn pems_say_their_kind() {
        let e = PublicKeyPem::from_text("not a pem").err().unwrap();
        assert!(e.starts_with("not a usable RSA or EC public key"), "{e}");
    }
}
