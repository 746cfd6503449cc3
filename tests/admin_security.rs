//! The admin service's defences and the handling of secrets, through the
//! real binary: weak tokens, failed sign-in limits, body and connection
//! limits, host checks, the key store's location, YAML aliases, redaction
//! of secrets everywhere they could leak, and secrets kept out of the YAML
//! (`${VAR}`, `…File`).

mod common;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token";
const BEARER: (&str, &str) = ("Authorization", "Bearer test-admin-token");
const JSON: (&str, &str) = ("Content-Type", "application/json");
const YAML: (&str, &str) = ("Content-Type", "application/yaml");

fn app(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: api\n    path: /api/*\n    upstream: app\n",
        up.url()
    )
}

/// `flexgate start` on a config whose `admin:` section gets `admin_extra`
/// lines (indented two spaces), with `files` written beside the config.
fn start_custom(
    admin_extra: &str,
    body: &str,
    env: &[(&str, &str)],
    files: &[(&str, &str)],
) -> Gateway {
    let edit = |section: String| {
        section.replace(
            "  token: test-admin-token\n",
            &format!("  token: test-admin-token\n{admin_extra}"),
        )
    };
    Gateway::start_edited(&edit, body, env, files)
}

/// `flexgate check` on `config` (written to a temp folder with `files`),
/// with `env`: (exit code, stderr).
fn check(config: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(&path, config).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut cmd = Command::new(flexgate_bin());
    cmd.args(["check", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .env_remove("FLEXGATE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn session(admin: u16, body: &str) -> Response {
    request(admin, "POST", "/api/session", &[JSON], body.as_bytes())
}

// A. Weak admin tokens.

#[test]
fn check_warns_about_weak_admin_tokens_naming_their_source() {
    let (code, err) = check("admin:\n  token: short\n", &[], &[]);
    assert_eq!(code, 0, "a weak token is a warning: {err}");
    assert!(
        err.contains("warning") && err.contains("admin.token") && err.contains("16"),
        "{err}"
    );
    let (code, err) = check(
        "admin:\n  token: a-long-enough-token-0123\n",
        &[("FLEXGATE_ADMIN_TOKEN", "   ")],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("FLEXGATE_ADMIN_TOKEN"), "{err}");
    let (code, err) = check("admin:\n  token: a-long-enough-token-0123\n", &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_weak_token_starts_the_proxy_but_leaves_the_admin_api_disabled() {
    let up = TestUpstream::start("app", Behavior::Ok);
    for weak in ["", "short"] {
        let gw = start_custom("", &app(&up), &[("FLEXGATE_ADMIN_TOKEN", weak)], &[]);
        // The proxy serves.
        assert_eq!(request(gw.port, "GET", "/api/x", &[], b"").status, 200);
        // Probes and metrics answer.
        assert_eq!(
            request(gw.admin_port, "GET", "/health", &[], b"").status,
            200
        );
        assert_eq!(
            request(gw.admin_port, "GET", "/metrics", &[], b"").status,
            200
        );
        // Nothing else does, whatever the token.
        let bearer = format!("Bearer {weak}");
        for headers in [vec![], vec![("Authorization", bearer.as_str())]] {
            let r = request(gw.admin_port, "GET", "/api/routes", &headers, b"");
            assert_eq!(r.status, 403, "{}", r.text());
            assert_eq!(r.json()["error"], "admin_disabled");
            assert!(r.json()["message"].as_str().unwrap().contains("weak"));
        }
        let r = session(gw.admin_port, &format!("{{\"token\":\"{weak}\"}}"));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(
            r.header("set-cookie").is_none(),
            "no session with a weak token"
        );
        assert!(r.json()["message"].as_str().unwrap().contains("weak"));
        let log = gw.log();
        assert!(
            log.contains("FLEXGATE_ADMIN_TOKEN") && log.contains("admin API stays disabled"),
            "{log}"
        );
    }
}

#[test]
fn failed_sign_ins_are_limited_per_address() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &app(&up));
    let admin = gw.admin_port;
    // Successful calls count nothing.
    let mut c = Client::connect(admin);
    for _ in 0..15 {
        let r = c.request("GET", "/api/routes", &[BEARER], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    // Ten failures, bearer and sign-in mixed, are answered 401 ...
    for i in 0..10 {
        let r = if i % 2 == 0 {
            request(
                admin,
                "GET",
                "/api/routes",
                &[("Authorization", "Bearer nope")],
                b"",
            )
        } else {
            session(admin, "{\"token\":\"guess-guess-guess\"}")
        };
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
    }
    // ... then the address waits, even with the right token.
    for r in [
        session(admin, &format!("{{\"token\":\"{TOKEN}\"}}")),
        request(admin, "GET", "/api/routes", &[BEARER], b""),
        request(
            admin,
            "GET",
            "/api/routes",
            &[("Authorization", "Bearer nope")],
            b"",
        ),
    ] {
        assert_eq!(r.status, 429, "{}", r.text());
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(r.json()["error"], "too_many_failures");
    }
    // Probes are not affected.
    assert_eq!(request(admin, "GET", "/health", &[], b"").status, 200);
}

// B. Admin request bodies and connections.

#[test]
fn the_sign_in_body_is_capped_and_a_stalled_body_times_out() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &app(&up));
    let admin = gw.admin_port;
    let big = format!("{{\"token\":\"{}\"}}", "x".repeat(2000));
    let r = session(admin, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "payload_too_large");

    // Headers and part of the body, then nothing: answered or closed
    // within the body timeout, not held.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    s.write_all(
        b"POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"token\":",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(took < Duration::from_secs(9), "held for {took:?}");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "408 or a closed connection: {text}"
    );
    // The same for a slow import body behind the token.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    s.write_all(
        format!("POST /api/config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/yaml\r\nContent-Length: 5000\r\n\r\nroutes:\n").as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(start.elapsed() < Duration::from_secs(9));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(request(admin, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn admin_connections_are_capped() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = start_custom("  maxConnections: 3\n", &app(&up), &[], &[]);
    let admin = gw.admin_port;
    // Three keep-alive connections, each proven served.
    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(admin);
            assert_eq!(c.request("GET", "/health", &[], b"").unwrap().status, 200);
            c
        })
        .collect();
    // A fourth is refused at once.
    let start = Instant::now();
    let mut c = Client::connect(admin);
    let r = c.read(false).expect("an answer without asking");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too_many_connections");
    assert!(c.is_closed(Duration::from_secs(2)));
    assert!(start.elapsed() < Duration::from_secs(2));
    // The held ones still work; closing one frees a place.
    assert_eq!(
        held[0].request("GET", "/health", &[], b"").unwrap().status,
        200
    );
    held.pop();
    assert!(eventually(Duration::from_secs(5), || {
        Client::connect(admin)
            .request("GET", "/health", &[], b"")
            .is_ok_and(|r| r.status == 200)
    }));
}

// C. The key store stays a regular file in its folders.

#[test]
fn the_key_store_cannot_point_outside_its_folder_or_at_a_device() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &app(&up));
    let admin = gw.admin_port;
    let before = std::fs::read_to_string(&gw.config_path).unwrap();
    let exported = request(admin, "GET", "/api/config?format=json", &[BEARER], b"").json();
    for bad in ["/dev/zero", "../../etc/passwd", "/etc/passwd"] {
        let mut doc = exported.clone();
        doc["security"] = serde_json::json!({"auth": {"keyStore": bad}});
        for query in ["", "?dryRun=true"] {
            let start = Instant::now();
            let r = request(
                admin,
                "POST",
                &format!("/api/config{query}"),
                &[BEARER, JSON],
                doc.to_string().as_bytes(),
            );
            assert!(start.elapsed() < Duration::from_secs(3));
            assert_eq!(r.status, 422, "{bad}: {}", r.text());
            let j = r.json();
            assert_eq!(j["details"][0]["path"], "security.auth.keyStore", "{j}");
        }
    }
    // A symbolic link out of the folder, and a FIFO in it, are refused too.
    std::os::unix::fs::symlink("/etc/passwd", gw.dir.path().join("link.json")).unwrap();
    let fifo = gw.dir.path().join("fifo.json");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for name in ["link.json", "fifo.json"] {
        let mut doc = exported.clone();
        doc["security"] = serde_json::json!({"auth": {"keyStore": name}});
        let start = Instant::now();
        let body = doc.to_string();
        let r = request(
            admin,
            "POST",
            "/api/config",
            &[BEARER, JSON],
            body.as_bytes(),
        );
        assert!(start.elapsed() < Duration::from_secs(3), "{name}: blocked");
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(r.json()["details"][0]["path"], "security.auth.keyStore");
    }
    assert_eq!(std::fs::read_to_string(&gw.config_path).unwrap(), before);
    assert_eq!(request(admin, "GET", "/health", &[], b"").status, 200);
    // A key store in a folder beside the config is fine.
    std::fs::create_dir(gw.dir.path().join("state")).unwrap();
    let mut doc = exported.clone();
    doc["security"] = serde_json::json!({"auth": {"keyStore": "state/keys.json"}});
    let body = doc.to_string();
    let r = request(
        admin,
        "POST",
        "/api/config",
        &[BEARER, JSON],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    for bad in ["/dev/zero", "../../etc/passwd"] {
        let (code, err) = check(
            &format!("security:\n  auth:\n    keyStore: {bad}\n"),
            &[],
            &[],
        );
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(err.contains("security.auth.keyStore"), "{err}");
    }
}

// D. YAML aliases.

#[test]
fn a_billion_laughs_import_is_refused_fast_and_the_gateway_stays_healthy() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &app(&up));
    let admin = gw.admin_port;
    let mut doc = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let mut prev = "a";
    for n in names {
        doc.push_str(&format!(
            "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = n;
    }
    doc.push_str("routes: *i\n");
    let start = Instant::now();
    let r = request(
        admin,
        "POST",
        "/api/config",
        &[BEARER, YAML],
        doc.as_bytes(),
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("anchors and aliases"), "{msg}");
    // A plain alias is refused too.
    let r = request(
        admin,
        "POST",
        "/api/config?dryRun=true",
        &[BEARER, YAML],
        b"upstreams: &u []\nroutes: *u\n",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(request(admin, "GET", "/health", &[], b"").status, 200);
    assert_eq!(
        request(admin, "GET", "/api/routes", &[BEARER], b"").status,
        200
    );
    assert_eq!(request(gw.port, "GET", "/api/x", &[], b"").status, 200);
}

// E. Secrets redacted everywhere they could leak.

const JWT_SECRET: &str = "jwt-secret-value-0123456789abcdef";
const HOOK_SECRET: &str = "whsec-abcdef-987654321";
const HOOK_HEADER: &str = "Bearer hook-header-secret-42";
const NATS_PASS: &str = "nats-pass-123456";

fn jwt(secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": "u", "exp": exp});
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

fn secrets_config(up: &TestUpstream) -> String {
    format!(
        r#"upstreams:
  - name: app
    url: "{}"
routes:
  - id: secure
    path: /secure/*
    upstream: app
    auth: jwt
security:
  jwt:
    secret: "{JWT_SECRET}"
webhooks:
  - id: hook
    url: "http://127.0.0.1:9/hook"
    events: [config.changed]
    secret: "{HOOK_SECRET}"
    headers:
      Authorization: "{HOOK_HEADER}"
nats:
  url: "nats://flex:{NATS_PASS}@127.0.0.1:9"
"#,
        up.url()
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for s in [JWT_SECRET, HOOK_SECRET, HOOK_HEADER, NATS_PASS, TOKEN] {
        assert!(!text.contains(s), "{what} shows {s:?}:\n{text}");
    }
}

#[test]
fn secrets_are_redacted_and_an_export_import_round_trip_keeps_them() {
    let up = TestUpstream::start("app", Behavior::Ok);
    // An audit entry written before secrets were redacted in the log.
    let old_entry = serde_json::json!({
        "id": 1, "time": "2026-01-01T00:00:00Z", "actor": "admin-token", "action": "update",
        "resource": "webhook/hook", "version": 1,
        "before": null,
        "after": {"id": "hook", "url": "http://127.0.0.1:9/hook", "secret": HOOK_SECRET},
    });
    let gw = start_custom(
        "",
        &secrets_config(&up),
        &[],
        &[("flexgate-audit.jsonl", &format!("{old_entry}\n"))],
    );
    let admin = gw.admin_port;
    assert_eq!(
        request(
            gw.port,
            "GET",
            "/secure/a",
            &[("Authorization", &jwt(JWT_SECRET))],
            b""
        )
        .status,
        200
    );

    let yaml = request(admin, "GET", "/api/config", &[BEARER], b"");
    assert_eq!(yaml.status, 200);
    assert_no_secret("the YAML export", &yaml.text());
    assert!(yaml.text().contains("<redacted>"), "{}", yaml.text());
    let json = request(admin, "GET", "/api/config?format=json", &[BEARER], b"");
    assert_no_secret("the JSON export", &json.text());
    assert_eq!(json.json()["security"]["jwt"]["secret"], "<redacted>");
    assert_eq!(json.json()["webhooks"][0]["secret"], "<redacted>");
    assert_eq!(
        json.json()["webhooks"][0]["headers"]["Authorization"],
        "<redacted>"
    );
    for path in ["/api/webhooks", "/api/webhooks/hook"] {
        let r = request(admin, "GET", path, &[BEARER], b"");
        assert_eq!(r.status, 200);
        assert_no_secret(path, &r.text());
        assert!(r.text().contains("<redacted>"));
    }

    // Import the YAML export back with one more route: the secrets stay.
    let changed = format!(
        "{}\n",
        yaml.text().replacen(
            "routes:\n",
            "routes:\n- id: extra\n  path: /extra\n  upstream: app\n",
            1
        )
    );
    let r = request(
        admin,
        "POST",
        "/api/config",
        &[BEARER, YAML],
        changed.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], true, "{}", r.text());
    assert_eq!(
        request(
            gw.port,
            "GET",
            "/secure/a",
            &[("Authorization", &jwt(JWT_SECRET))],
            b""
        )
        .status,
        200,
        "a JWT signed with the secret still verifies"
    );
    assert_eq!(
        request(
            gw.port,
            "GET",
            "/secure/a",
            &[("Authorization", &jwt("<redacted>"))],
            b""
        )
        .status,
        401,
        "the marker did not become the secret"
    );
    // The JSON export re-imported, and a webhook PUT with the marker.
    let r = request(
        admin,
        "POST",
        "/api/config",
        &[BEARER, JSON],
        json.text().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut hook =
        request(admin, "GET", "/api/webhooks/hook", &[BEARER], b"").json()["webhook"].clone();
    hook["events"] = serde_json::json!(["config.changed", "upstream.failure"]);
    let r = request(
        admin,
        "PUT",
        "/api/webhooks/hook",
        &[BEARER, JSON],
        hook.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_secret("the PUT answer", &r.text());
    // The store (the config file) still holds the real secrets.
    let file = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(
        file.contains(HOOK_SECRET) && file.contains(HOOK_HEADER) && file.contains(JWT_SECRET),
        "{file}"
    );
    assert!(!file.contains("<redacted>"), "{file}");
    // A new webhook cannot carry the marker: nothing to keep.
    let r = request(
        admin,
        "POST",
        "/api/webhooks",
        &[BEARER, JSON],
        br#"{"url": "http://127.0.0.1:9/x", "secret": "<redacted>"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["details"][0]["path"], "secret");

    // The audit log shows no secret.
    let audit = request(admin, "GET", "/api/logs?limit=500", &[BEARER], b"");
    assert_eq!(audit.status, 200);
    assert!(audit.text().contains("webhook/hook"), "{}", audit.text());
    assert!(
        audit.text().contains("2026-01-01T00:00:00Z"),
        "the older entry is listed: {}",
        audit.text()
    );
    assert_no_secret("the audit log", &audit.text());
    // On disk, new entries hold no secret either.
    let on_disk = std::fs::read_to_string(gw.dir.path().join("flexgate-audit.jsonl")).unwrap();
    let new_entries: Vec<&str> = on_disk.lines().skip(1).collect();
    assert!(!new_entries.is_empty());
    assert_no_secret("the stored audit entries", &new_entries.join("\n"));
    // Nor does any line the gateway wrote.
    assert_no_secret("the gateway log", &gw.log());
}

// F. The session cookie's Secure flag.

#[test]
fn the_session_cookie_secure_flag_ignores_x_forwarded_proto() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &app(&up));
    let r = request(
        gw.admin_port,
        "POST",
        "/api/session",
        &[JSON, ("X-Forwarded-Proto", "https")],
        format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("flexgate_session="), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "a plain-HTTP admin listener sets no Secure flag, whatever the client says: {cookie}"
    );
}

// G. admin.allowedHosts.

#[test]
fn admin_allowed_hosts_refuse_other_host_names() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = start_custom(
        "  allowedHosts: [admin.example, 127.0.0.1]\n",
        &app(&up),
        &[],
        &[],
    );
    let admin = gw.admin_port;
    let send = |host: &str, path: &str| {
        let mut c = Client::connect(admin);
        c.send_raw(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        );
        c.read(false).unwrap()
    };
    // `Client::request` says `Host: test.local`: not in the list.
    let r = request(admin, "GET", "/api/routes", &[BEARER], b"");
    assert_eq!(r.status, 421, "{}", r.text());
    assert_eq!(r.json()["error"], "host_not_allowed");
    assert_eq!(
        send("rebind.attacker.example:9180", "/api/routes").status,
        421
    );
    assert_eq!(send("ADMIN.Example:9180", "/api/routes").status, 200);
    assert_eq!(send("admin.example", "/health").status, 200);
    assert_eq!(
        send(&format!("127.0.0.1:{admin}"), "/api/routes").status,
        200
    );
}

// H. Secrets out of the YAML.

#[test]
fn env_variables_and_secret_files_are_read_at_load_and_written_back_as_such() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = format!(
        r#"upstreams:
  - name: app
    url: "{}"
routes:
  - id: secure
    path: /secure/*
    upstream: app
    auth: jwt
  - id: price
    path: /price
    upstream: app
    requestHeaders:
      add:
        X-Price: "$${{NOT_EXPANDED}}"
security:
  jwt:
    secretFile: jwt.txt
webhooks:
  - id: hook
    url: "http://127.0.0.1:9/hook"
    secret: "${{HOOK_SECRET_FOR_TEST}}"
history:
  nodeId: "${{NODE_FOR_TEST}}"
"#,
        up.url()
    );
    let gw = start_custom(
        "",
        &body,
        &[
            ("HOOK_SECRET_FOR_TEST", HOOK_SECRET),
            ("NODE_FOR_TEST", "node-a"),
        ],
        &[("jwt.txt", &format!("{JWT_SECRET}\n"))],
    );
    let admin = gw.admin_port;
    // The JWT secret came from the file, newline trimmed.
    assert_eq!(
        request(
            gw.port,
            "GET",
            "/secure/a",
            &[("Authorization", &jwt(JWT_SECRET))],
            b""
        )
        .status,
        200
    );
    // `$${` is a literal `${`.
    assert_eq!(request(gw.port, "GET", "/price", &[], b"").status, 200);
    assert_eq!(up.last().header("x-price"), Some("${NOT_EXPANDED}"));
    // An admin write rewrites the file: the variable and the file are
    // written back as such, never their secrets.
    let r = request(
        admin,
        "POST",
        "/api/routes",
        &[BEARER, JSON],
        br#"{"id": "more", "path": "/more", "upstream": "app"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let file = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(file.contains("${HOOK_SECRET_FOR_TEST}"), "{file}");
    assert!(file.contains("secretFile: jwt.txt"), "{file}");
    assert!(file.contains("$${NOT_EXPANDED}"), "{file}");
    // Boot sections are kept as written.
    assert!(
        file.contains("nodeId: ${NODE_FOR_TEST}") && !file.contains("$${NODE_FOR_TEST}"),
        "{file}"
    );
    assert!(
        !file.contains(HOOK_SECRET) && !file.contains(JWT_SECRET),
        "{file}"
    );
    // A value sent through the API is never expanded later.
    let r = request(
        admin,
        "POST",
        "/api/webhooks",
        &[BEARER, JSON],
        br#"{"id": "exfil", "url": "http://127.0.0.1:9/x", "headers": {"X-Leak": "${HOOK_SECRET_FOR_TEST}"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let file = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(file.contains("X-Leak: $${HOOK_SECRET_FOR_TEST}"), "{file}");
    // The rewritten file still loads with the same secrets.
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        request(
            gw.port,
            "GET",
            "/secure/a",
            &[("Authorization", &jwt(JWT_SECRET))],
            b""
        )
        .status,
        200
    );
    // The API cannot read files.
    let r = request(
        admin,
        "POST",
        "/api/webhooks",
        &[BEARER, JSON],
        br#"{"url": "http://127.0.0.1:9/y", "secretFile": "/etc/passwd"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("secretFile"), "{}", r.text());
}

#[test]
fn the_admin_token_can_come_from_a_file() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let file_token = "token-from-a-file-0123456789";
    std::fs::write(
        dir.path().join("admin-token.txt"),
        format!("{file_token}\n"),
    )
    .unwrap();
    let cfg = proxy_section_with_admin(port, dir.path(), admin).replace(
        "  token: test-admin-token\n",
        "  tokenFile: admin-token.txt\n",
    ) + &app(&up);
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut gw = Gateway {
        port,
        admin_port: admin,
        child: Command::new(flexgate_bin())
            .args(["start", "-c", path.to_str().unwrap()])
            .env_remove("FLEXGATE_ADMIN_TOKEN")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        log_path: dir.path().join("log"),
        config_path: path,
        dir,
    };
    gw.wait_ready(port);
    gw.wait_ready(admin);
    let bearer = format!("Bearer {file_token}");
    let r = request(
        admin,
        "GET",
        "/api/routes",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        request(admin, "GET", "/api/routes", &[BEARER], b"").status,
        401
    );
    assert_no_secret("the log", &gw.log().replace(file_token, ""));
    assert!(!gw.log().contains(file_token));
}

#[test]
fn check_names_unset_variables_missing_files_and_double_settings() {
    let (code, err) = check(
        "webhooks:\n  - url: http://127.0.0.1:9/h\n    secret: \"${FLEXGATE_TEST_UNSET_VAR}\"\n",
        &[],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("webhooks[0].secret") && err.contains("FLEXGATE_TEST_UNSET_VAR"),
        "{err}"
    );
    let (code, err) = check("security:\n  jwt:\n    secretFile: missing.txt\n", &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("security.jwt.secretFile") && err.contains("missing.txt"),
        "{err}"
    );
    let (code, err) = check(
        "security:\n  jwt:\n    secret: abc\n    secretFile: s.txt\n",
        &[],
        &[("s.txt", "x\n")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not both"), "{err}");
    let (code, err) = check(
        "admin:\n  maxConnections: 0\n  allowedHosts: [\"*.example\"]\n",
        &[],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("admin.maxConnections") && err.contains("admin.allowedHosts[0]"),
        "{err}"
    );
    let (code, err) = check("database:\n  urlFile: /dev/zero\n", &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("database.urlFile"), "{err}");
    let (code, err) = check(
        "redis:\n  urlFile: redis.txt\nrateLimit:\n  backend: redis\n  redis:\n    urlFile: redis.txt\n",
        &[("FLEXGATE_TEST_SET_VAR", "x")],
        &[("redis.txt", "redis://:pw@127.0.0.1:6379\n")],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn url_passwords_never_reach_the_log() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = format!(
        "{}rateLimit:\n  backend: redis\n  redis:\n    url: \"redis://:redis-pass-7890@127.0.0.1:1\"\nnats:\n  url: \"nats://flex:{NATS_PASS}@127.0.0.1:1\"\n",
        app(&up)
    );
    let gw = Gateway::start("", &body);
    // Let the background clients try (and fail) a few times.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(request(gw.port, "GET", "/api/x", &[], b"").status, 200);
    let json = request(
        gw.admin_port,
        "GET",
        "/api/config?format=json",
        &[BEARER],
        b"",
    );
    assert_eq!(
        json.json()["rateLimit"]["redis"]["url"],
        "redis://:<redacted>@127.0.0.1:1"
    );
    // A refused URL is quoted without its password.
    let r = request(
        gw.admin_port,
        "POST",
        "/api/upstreams",
        &[BEARER, JSON],
        br#"{"name": "creds", "url": "http://bob:upstream-pass-55@127.0.0.1:9"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("bob:<redacted>@127.0.0.1:9"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("upstream-pass-55"), "{}", r.text());
    let log = gw.log();
    assert!(!log.contains("upstream-pass-55"), "{log}");
    assert!(!log.contains("redis-pass-7890"), "{log}");
    assert!(!log.contains(NATS_PASS), "{log}");
    // The addresses themselves are logged, masked.
    assert!(log.contains("redis://:<redacted>@127.0.0.1:1"), "{log}");
    assert!(log.contains("nats://flex:<redacted>@127.0.0.1:1"), "{log}");
}
