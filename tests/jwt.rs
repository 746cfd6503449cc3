//! JWT bearer auth through the running gateway: HS256 with an inline
//! secret, RS256 and ES256 from a JWKS served by a local test server (with
//! rotation), claim checks, claim forwarding, and the SSRF policy on the
//! JWKS address.

mod common;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serves a JWKS document that the test can replace.
struct JwksServer {
    port: u16,
    body: Arc<Mutex<String>>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new(body));
        let served = body.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let b = served.lock().unwrap().clone();
                let mut conn = conn;
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len());
            }
        });
        JwksServer { port, body }
    }
}

/// An ES256 key: (encoding key, JWK JSON).
fn es256_key(kid: &str) -> (EncodingKey, serde_json::Value) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig", "x": b64(&public[1..33]), "y": b64(&public[33..65])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

/// An RS256 key made with openssl: (encoding key, JWK JSON).
fn rs256_key(kid: &str, dir: &std::path::Path) -> (EncodingKey, serde_json::Value) {
    let path = dir.join(format!("{kid}.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&path)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwk = serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&n), "e": "AQAB"});
    (
        EncodingKey::from_rsa_pem(&std::fs::read(&path).unwrap()).unwrap(),
        jwk,
    )
}

fn token(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    format!("Bearer {}", encode(&h, &claims, key).unwrap())
}

fn claims(sub: &str, aud: &str, exp_in: i64) -> serde_json::Value {
    serde_json::json!({"sub": sub, "iss": "https://idp.test", "aud": aud, "exp": (now() as i64 + exp_in), "email": format!("{sub}@example.com")})
}

fn config(up: &TestUpstream, jwks_port: u16) -> String {
    format!(
        r#"upstreams:
  - name: app
    url: "{}"
routes:
  - id: secure
    path: /secure/*
    upstream: app
    auth: jwt
  - id: open
    path: /open/*
    upstream: app
security:
  auth:
    # Bad tokens are sent on purpose, many from one address.
    failureLimit: {{max: 0}}
  jwt:
    issuer: https://idp.test
    audience: api
    secret: "a-shared-secret-of-32-bytes-long"
    jwksUrl: "http://127.0.0.1:{jwks_port}/.well-known/jwks.json"
    jwksRefresh: 1000
    forwardClaims:
      sub: X-User-Id
      email: X-User-Email
"#,
        up.url()
    )
}

#[test]
fn tokens_are_verified_and_claims_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let up = TestUpstream::start("app", Behavior::Ok);
    let (es_key, es_jwk) = es256_key("k-ec");
    let (rs_key, rs_jwk) = rs256_key("k-rsa", dir.path());
    let jwks = JwksServer::start(serde_json::json!({"keys": [es_jwk, rs_jwk]}).to_string());
    let gw = Gateway::start("", &config(&up, jwks.port));
    gw.wait_until("JWKS fetched", Duration::from_secs(10), || {
        gw.log().contains("JWKS fetched")
    });
    let call = |auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        request(gw.port, "GET", "/secure/x", &h, b"")
    };
    let hs = EncodingKey::from_secret(b"a-shared-secret-of-32-bytes-long");
    let r = call(Some(&token(
        Algorithm::HS256,
        None,
        &hs,
        claims("alice", "api", 600),
    )));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-user-id"), Some("alice"));
    assert_eq!(up.last().header("x-user-email"), Some("alice@example.com"));

    assert_eq!(
        call(Some(&token(
            Algorithm::RS256,
            Some("k-rsa"),
            &rs_key,
            claims("rob", "api", 600)
        )))
        .status,
        200
    );
    assert_eq!(up.last().header("x-user-id"), Some("rob"));
    assert_eq!(
        call(Some(&token(
            Algorithm::ES256,
            Some("k-ec"),
            &es_key,
            claims("eve", "api", 600)
        )))
        .status,
        200
    );

    let refuse = |auth: Option<String>, why: &str| {
        let r = call(auth.as_deref());
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(r.json()["message"], why);
        let challenge = r.header("www-authenticate").unwrap();
        if auth.is_none() {
            // No credentials: a plain challenge (RFC 6750 §3.1).
            assert_eq!(challenge, "Bearer", "{why}");
        } else {
            let description = challenge
                .strip_prefix("Bearer error=\"invalid_token\", error_description=\"")
                .and_then(|d| d.strip_suffix('"'));
            assert!(
                description.is_some_and(|d| !d.contains('"')),
                "{why}: {challenge}"
            );
        }
    };
    refuse(None, "a bearer token is required");
    refuse(
        Some(token(Algorithm::HS256, None, &hs, claims("a", "api", -600))),
        "the token has expired",
    );
    refuse(
        Some(token(
            Algorithm::HS256,
            None,
            &hs,
            claims("a", "other", 600),
        )),
        "the token is not meant for this audience",
    );
    let forged = EncodingKey::from_secret(b"another-secret-of-32-bytes-long!");
    refuse(
        Some(token(
            Algorithm::HS256,
            None,
            &forged,
            claims("a", "api", 600),
        )),
        "the token signature is invalid",
    );
    let (other_key, _) = es256_key("k-ec");
    refuse(
        Some(token(
            Algorithm::ES256,
            Some("k-ec"),
            &other_key,
            claims("a", "api", 600),
        )),
        "the token signature is invalid",
    );
    refuse(
        Some(token(
            Algorithm::ES256,
            Some("k-unknown"),
            &es_key,
            claims("a", "api", 600),
        )),
        "unknown signing key \"k-unknown\"",
    );

    // Clients cannot inject the forwarded claim headers.
    let r = request(gw.port, "GET", "/open/x", &[("X-User-Id", "admin")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-user-id"), None);
}

#[test]
fn rotated_jwks_keys_are_picked_up() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let (old_key, old_jwk) = es256_key("k-old");
    let jwks = JwksServer::start(serde_json::json!({"keys": [old_jwk]}).to_string());
    let gw = Gateway::start("", &config(&up, jwks.port));
    gw.wait_until("JWKS fetched", Duration::from_secs(10), || {
        gw.log().contains("JWKS fetched")
    });
    let send = |t: &str| request(gw.port, "GET", "/secure/x", &[("Authorization", t)], b"").status;
    assert_eq!(
        send(&token(
            Algorithm::ES256,
            Some("k-old"),
            &old_key,
            claims("a", "api", 600)
        )),
        200
    );
    let (new_key, new_jwk) = es256_key("k-new");
    let new_token = token(
        Algorithm::ES256,
        Some("k-new"),
        &new_key,
        claims("a", "api", 600),
    );
    assert_eq!(send(&new_token), 401);
    *jwks.body.lock().unwrap() = serde_json::json!({"keys": [new_jwk]}).to_string();
    gw.wait_until(
        "the rotated key to be accepted",
        Duration::from_secs(10),
        || send(&new_token) == 200,
    );
}

#[test]
fn jwks_address_is_checked_against_the_ssrf_policy() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let (_, jwk) = es256_key("k");
    let jwks = JwksServer::start(serde_json::json!({"keys": [jwk]}).to_string());
    // `localhost` passes the config-time host check but resolves into a blocked range.
    let body = config(&up, jwks.port).replace("127.0.0.1", "localhost")
        + "  blockedIPs: [\"127.0.0.0/8\", \"::1/128\"]\n";
    let body = body.replace(
        &format!("url: \"http://localhost:{}\"", up.addr.port()),
        &format!("url: \"http://127.0.0.2:{}\"", up.addr.port()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!("{}{}", proxy_section(free_port(), dir.path()), body),
    )
    .unwrap();
    assert_eq!(
        run_cli(&["check", "-c", path.to_str().unwrap()]).0,
        1,
        "127.0.0.2 upstream is blocked too"
    );
    // Same policy without the upstream problem: the gateway starts, the JWKS fetch is refused.
    let body = body.replace(
        &format!("http://127.0.0.2:{}", up.addr.port()),
        "http://192.0.2.1:9",
    );
    let gw = Gateway::start("", &body);
    gw.wait_until("refused JWKS fetch", Duration::from_secs(10), || {
        gw.log().contains("JWKS fetch failed")
    });
    assert!(
        gw.log().contains("blocked by the SSRF policy"),
        "{}",
        gw.log()
    );
    assert!(!gw.log().contains("JWKS fetched"));
}
