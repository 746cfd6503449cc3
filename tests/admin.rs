//! The admin service on its own port: probes without a token, `/api/*`
//! behind the bearer token (compared in constant time), one JSON error
//! shape.

mod common;
use common::*;

fn body(up: &TestUpstream) -> String {
    format!("upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: api\n    path: /api/*\n    upstream: app\n", up.url())
}

#[test]
fn probes_are_open_and_the_api_needs_the_token() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &body(&up));
    let admin = gw.admin_port;
    let h = request(admin, "GET", "/health", &[], b"");
    assert_eq!(h.status, 200);
    let j = h.json();
    assert_eq!(j["status"], "UP");
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert!(j["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        request(admin, "GET", "/health/live", &[], b"").json()["status"],
        "UP"
    );
    assert_eq!(
        request(admin, "GET", "/health/ready", &[], b"").json()["checks"]["config"]["status"],
        "UP"
    );

    let r = request(admin, "GET", "/api/routes", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(
        request(
            admin,
            "GET",
            "/api/routes",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    let r = request(
        admin,
        "GET",
        "/api/routes",
        &[("Authorization", "Bearer test-admin-token")],
        b"",
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["version"], 1);
    assert_eq!(j["routes"][0]["id"], "api");
    assert_eq!(j["routes"][0]["path"], "/api/*");
    let r = request(
        admin,
        "GET",
        "/api/upstreams",
        &[("Authorization", "Bearer test-admin-token")],
        b"",
    );
    assert_eq!(r.json()["upstreams"][0]["name"], "app");
    let r = request(admin, "GET", "/nothing", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
}

#[test]
fn without_a_configured_token_the_api_refuses_and_says_why() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = proxy_section_with_admin(port, dir.path(), admin)
        .replace("  token: test-admin-token\n", "")
        + &body(&up);
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = std::process::Command::new(flexgate_bin())
        .args(["start", "-c", path.to_str().unwrap()])
        .env_remove("FLEXGATE_ADMIN_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let up_ok = eventually(std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    let r = up_ok.then(|| {
        request(
            admin,
            "GET",
            "/api/routes",
            &[("Authorization", "Bearer anything")],
            b"",
        )
    });
    let logged = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let r = r.expect("admin port listening");
    assert_eq!(r.status, 403);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("no admin token is configured"));
    assert!(logged.contains("no admin token configured"), "{logged}");
}
