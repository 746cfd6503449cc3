//! Authentication cost per request: `cargo bench --bench auth`.
//!
//! API-key lookup (SHA-256 + hash map), and JWT verification uncached
//! (HS256, ES256 signature checks) versus cached (a client reusing its
//! token: the common case the verifier's cache serves).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flexgate::config::JwtSection;
use flexgate::jwt::JwtVerifier;
use flexgate::keys::{digest, ApiKey, KeyIndex};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let mut keys = KeyIndex::new(None);
    for i in 0..1000 {
        let secret = format!("key-{i}");
        keys.insert(
            ApiKey {
                id: secret.clone(),
                name: Arc::from(secret.as_str()),
                digest: digest(secret.as_bytes()),
                scopes: vec![],
                routes: vec![],
                expires_at: None,
                revoked: false,
                usage: Arc::default(),
            },
            None,
        );
    }
    c.bench_function("api key verify (1000 keys)", |b| {
        b.iter(|| keys.verify(black_box(b"key-500"), "api", &[], 1).is_ok())
    });

    let settings = JwtSection {
        secret: Some("a-shared-secret-of-32-bytes-long".into()),
        ..Default::default()
    };
    let exp = flexgate::clock::unix_now() + 3600;
    let claims = serde_json::json!({"sub": "u", "exp": exp});
    let hs = format!(
        "Bearer {}",
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"a-shared-secret-of-32-bytes-long")
        )
        .unwrap()
    );
    let now = flexgate::clock::unix_now();
    c.bench_function("jwt HS256 verify, cached", |b| {
        let v = JwtVerifier::new(&settings).unwrap();
        b.iter(|| v.verify(black_box(hs.as_bytes()), now).is_ok())
    });
    c.bench_function("jwt HS256 verify, uncached", |b| {
        b.iter_batched(
            || JwtVerifier::new(&settings).unwrap(),
            |v| v.verify(black_box(hs.as_bytes()), now).is_ok(),
            criterion::BatchSize::SmallInput,
        )
    });

    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    // SubjectPublicKeyInfo for P-256 = fixed prefix + the uncompressed point.
    let mut spki = hex_prefix();
    spki.extend_from_slice(&public);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        b64(&spki)
    );
    let es_settings = JwtSection {
        public_keys: vec![flexgate::config::JwtPublicKey {
            kid: None,
            algorithm: Some(flexgate::config::KeyAlgorithm::Es256),
            pem: Some(pem.parse().unwrap()),
        }],
        ..Default::default()
    };
    let es = format!(
        "Bearer {}",
        encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(pkcs8.as_ref())
        )
        .unwrap()
    );
    c.bench_function("jwt ES256 verify, cached", |b| {
        let v = JwtVerifier::new(&es_settings).unwrap();
        assert!(v.verify(es.as_bytes(), now).is_ok());
        b.iter(|| v.verify(black_box(es.as_bytes()), now).is_ok())
    });
    c.bench_function("jwt ES256 verify, uncached", |b| {
        b.iter_batched(
            || JwtVerifier::new(&es_settings).unwrap(),
            |v| v.verify(black_box(es.as_bytes()), now).is_ok(),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn hex_prefix() -> Vec<u8> {
    // DER header of an id-ecPublicKey / prime256v1 SubjectPublicKeyInfo.
    let h = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

criterion_group!(benches, bench);
criterion_main!(benches);
