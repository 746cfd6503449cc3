//! TLS termination: the `proxy.tls` listener serves HTTP/1.1 and HTTP/2
//! (ALPN) with the configured certificate, and tells the upstream the
//! original scheme in `X-Forwarded-Proto`. Uses the system `openssl` and
//! `curl` as the certificate maker and the client.

mod common;
use common::*;
use std::process::Command;

#[test]
fn tls_listener_serves_http1_and_http2() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = free_port();
    let extra = format!(
        "  tls:\n    listen: \"127.0.0.1:{tls_port}\"\n    cert: {}\n    key: {}\n",
        cert.display(),
        key.display()
    );
    let mut gw = Gateway::start(
        &extra,
        &format!("upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n", up.url()),
    );
    gw.wait_ready(tls_port);
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args([
                "-sk",
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg(format!("https://localhost:{tls_port}/secure"))
            .output()
            .expect("curl is installed");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}"),
            "{}",
            gw.log()
        );
        assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    }
    // Plain HTTP on the other listener still says http.
    assert_eq!(request(gw.port, "GET", "/plain", &[], b"").status, 200);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn unreadable_or_bad_tls_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (cert, expected) in [
        (
            "/nonexistent/cert.pem".to_string(),
            "proxy.tls.cert: cannot read /nonexistent/cert.pem",
        ),
        (
            junk.display().to_string(),
            "do not hold a PEM certificate chain and private key",
        ),
    ] {
        std::fs::write(
            &path,
            format!("proxy:\n  tls:\n    listen: \"127.0.0.1:{}\"\n    cert: {cert}\n    key: {}\nupstreams:\n  - name: a\n    url: http://127.0.0.1:9\nroutes:\n  - path: /*\n    upstream: a\n", free_port(), junk.display()),
        )
        .unwrap();
        let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(err.contains(expected), "{err}");
        let (code, _, err) = run_cli(&["start", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "start refuses before taking any socket");
        assert!(err.contains(expected), "{err}");
    }
}
