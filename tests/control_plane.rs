//! The control plane through the running binary (embedded store): a route
//! created over the admin API serves traffic at once and survives a
//! restart; `kill -9` in the middle of a burst of writes leaves a config
//! that loads.

mod common;
use common::*;
use std::time::Duration;

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn body(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: first\n    path: /first\n    upstream: app\n",
        up.url()
    )
}

#[test]
fn a_route_created_over_the_api_serves_at_once_and_after_a_restart() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let mut gw = Gateway::start("", &body(&up));
    assert_eq!(
        request(gw.port, "GET", "/made/by/api", &[], b"").status,
        404
    );

    let route = serde_json::json!({"id": "api-made", "path": "/made/*", "upstream": "app"});
    let r = request(
        gw.admin_port,
        "POST",
        "/api/routes",
        &[AUTH, JSON],
        route.to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    // Live before the answer returned: no waiting.
    let p = request(gw.port, "GET", "/made/by/api", &[], b"");
    assert_eq!(p.status, 200);
    assert_eq!(up.last().path, "/made/by/api");

    gw.kill_and_restart();
    let r = request(gw.admin_port, "GET", "/api/routes/api-made", &[AUTH], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(request(gw.port, "GET", "/made/again", &[], b"").status, 200);
    // The audit log survived too.
    let logs = request(gw.admin_port, "GET", "/api/logs", &[AUTH], b"").json();
    assert_eq!(logs["entries"][0]["resource"], "route/api-made");
    // And the file is one `flexgate check` accepts.
    let (code, out, err) = run_cli(&["check", "-c", gw.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn kill_9_during_a_burst_of_writes_leaves_a_loadable_config() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let mut gw = Gateway::start("", &body(&up));
    let admin = gw.admin_port;
    let writer = std::thread::spawn(move || {
        let mut created = 0;
        for i in 0..400 {
            let route = serde_json::json!({"id": format!("r{i}"), "path": format!("/r{i}"), "upstream": "app"});
            let Ok(mut c) =
                std::net::TcpStream::connect(("127.0.0.1", admin)).map(|_| Client::connect(admin))
            else {
                break;
            };
            match c.request(
                "POST",
                "/api/routes",
                &[AUTH, JSON],
                route.to_string().as_bytes(),
            ) {
                Ok(r) if r.status == 201 => created += 1,
                _ => break,
            }
        }
        created
    });
    std::thread::sleep(Duration::from_millis(700));
    gw.kill_and_restart();
    let created = writer.join().unwrap();
    assert!(created > 0, "some writes landed before the kill");
    // The restarted gateway loaded the file: every acknowledged route is
    // there (at most one more, whose answer the kill cut off).
    let routes = request(gw.admin_port, "GET", "/api/routes", &[AUTH], b"").json();
    let n = routes["routes"].as_array().unwrap().len() - 1;
    assert!(
        n == created || n == created + 1,
        "{n} routes stored, {created} acknowledged"
    );
    assert_eq!(request(gw.port, "GET", "/first", &[], b"").status, 200);
    let (code, out, err) = run_cli(&["check", "-c", gw.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // No temp file left behind as a config.
    assert!(gw.config_path.exists());
}
