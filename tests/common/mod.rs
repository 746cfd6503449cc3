//! Black-box test harness: real sockets on ephemeral ports.
//!
//! - [`TestUpstream`]: a scriptable HTTP/1.1 origin that records every request
//!   (raw head, body) and counts connections, on its own thread and runtime.
//! - [`Gateway`]: the real `flexgate` binary started on a temp config, with
//!   readiness by polling its port (no fixed sleeps), killed on drop.
//! - [`Client`]/[`request`]: a raw HTTP/1.1 client that can send anything,
//!   including malformed requests, and parses the response.
//! - [`pg::TestDb`]: a PostgreSQL database of its own per test.
#![allow(dead_code)]

pub mod pg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the test upstream answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with body `<name>` (or `<name> <path>` for echo).
    Ok,
    /// Answer with this status (body = name).
    Status(u16),
    /// Wait this long before answering 200.
    Delay(Duration),
    /// Read the request, then close without answering.
    CloseWithoutResponse,
    /// Send headers announcing 1000 bytes, send 10, then close.
    DieMidBody,
    /// Answer with extra response headers.
    Headers(Vec<(String, String)>),
    /// Health endpoint returns this status, everything else 200.
    HealthStatus(u16),
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw_head: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A recording HTTP/1.1 origin.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    behavior: Arc<Mutex<Behavior>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TestUpstream {
    pub fn start(name: &str, behavior: Behavior) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let behavior = Arc::new(Mutex::new(behavior));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, r, c, s, n) = (
            behavior.clone(),
            requests.clone(),
            connections.clone(),
            stop.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::Relaxed);
                let (b, r, n) = (b.clone(), r.clone(), n.clone());
                std::thread::spawn(move || serve_connection(conn, b, r, n));
            }
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            behavior,
            requests,
            connections,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behavior(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    /// Requests received (excluding health checks).
    pub fn hits(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.path.starts_with("/health"))
            .count()
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| !r.path.starts_with("/health"))
            .cloned()
            .expect("no request recorded")
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_connection(
    conn: TcpStream,
    behavior: Arc<Mutex<Behavior>>,
    log: Arc<Mutex<Vec<Recorded>>>,
    name: String,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut headers_buf = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers_buf);
        if req.parse(head.as_bytes()).is_err() {
            return;
        }
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("").to_string();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(cl) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
            body.resize(cl, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size_line = String::new();
                if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
                    return;
                }
                let size =
                    usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        log.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            headers,
            body,
            raw_head: head.clone(),
        });
        let b = behavior.lock().unwrap().clone();
        let (status, extra, delay) = match &b {
            Behavior::Ok => (200, vec![], None),
            Behavior::Status(s) => (*s, vec![], None),
            Behavior::Delay(d) => (200, vec![], Some(*d)),
            Behavior::CloseWithoutResponse => return,
            Behavior::DieMidBody => {
                let _ =
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
                let _ = conn.flush();
                return;
            }
            Behavior::Headers(h) => (200, h.clone(), None),
            Behavior::HealthStatus(s) => (
                if path.starts_with("/health") { *s } else { 200 },
                vec![],
                None,
            ),
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let body_out = format!("{name} {path}");
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n",
            body_out.len()
        );
        for (k, v) in extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&body_out);
        if conn.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one response from a buffered stream. `head_request` = no body expected.
pub fn read_response(
    reader: &mut BufReader<TcpStream>,
    head_request: bool,
) -> std::io::Result<Response> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed; got {head:?}"),
            ));
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut hb = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut hb);
    resp.parse(head.as_bytes())
        .map_err(|e| std::io::Error::other(format!("{e}: {head}")))?;
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(cl, 0);
        reader.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "chunked body cut",
                ));
            }
            let size =
                usize::from_str_radix(size_line.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A keep-alive client connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to gateway");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    pub fn send_raw(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).unwrap();
    }

    pub fn read(&mut self, head_request: bool) -> std::io::Result<Response> {
        read_response(&mut self.reader, head_request)
    }

    /// GET-style request with extra headers on this connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.reader.get_mut().write_all(&bytes)?;
        self.read(method == "HEAD")
    }

    /// True when the server closed the connection (read returns EOF).
    pub fn is_closed(&mut self, within: Duration) -> bool {
        let s = self.reader.get_mut();
        s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0))
            || matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// One request on a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Client::connect(port)
        .request(method, path, headers, body)
        .expect("response")
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(port: u16, bytes: &[u8]) -> std::io::Result<Response> {
    let mut c = Client::connect(port);
    c.send_raw(bytes);
    c.read(false)
}

/// A port nothing listens on, never handed out twice in this test process
/// (tests run in parallel), and below Linux's ephemeral range
/// (32768–60999), so no outgoing connection takes it before the server
/// under test binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = fastrand::u16(20_000..32_000);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// A running `flexgate start`.
pub struct Gateway {
    pub port: u16,
    /// Admin service port (token `test-admin-token`).
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub child: Child,
    pub log_path: PathBuf,
}

/// The proxy part of a test config (listener on `port`, short grace period),
/// with the admin service on an ephemeral port.
pub fn proxy_section(port: u16, dir: &std::path::Path) -> String {
    proxy_section_with_admin(port, dir, 0)
}

/// As [`proxy_section`], with the admin service on `admin_port`.
pub fn proxy_section_with_admin(port: u16, dir: &std::path::Path, admin_port: u16) -> String {
    format!(
        "admin:\n  listen: \"127.0.0.1:{admin_port}\"\n  token: test-admin-token\nproxy:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n  gracePeriod: 2000\n  upgradeSock: {}/upgrade.sock\n  pidFile: {}/flexgate.pid\n",
        dir.display(),
        dir.display()
    )
}

impl Gateway {
    /// Starts the gateway with `body` appended after a generated `proxy:` section.
    /// `extra_proxy` lines (indented two spaces) are added under `proxy:`.
    pub fn start(extra_proxy: &str, body: &str) -> Gateway {
        Self::start_with_env(extra_proxy, body, &[])
    }

    pub fn start_with_env(extra_proxy: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_edited(&|section| format!("{section}{extra_proxy}"), body, env, &[])
    }

    /// Starts the gateway on the generated `admin:`/`proxy:` sections as
    /// changed by `edit`, then `body`, with `files` written beside the
    /// config and `env` set (`FLEXGATE_ADMIN_TOKEN` is never inherited).
    pub fn start_edited(
        edit: &dyn Fn(String) -> String,
        body: &str,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let section = edit(proxy_section_with_admin(port, dir.path(), admin_port));
        let config_path = dir.path().join("flexgate.yaml");
        std::fs::write(&config_path, format!("{section}{body}")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let log_path = dir.path().join("flexgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flexgate"));
        cmd.args(["start", "-c"])
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("PORT")
            .env_remove("FLEXGATE_CONFIG")
            .env_remove("FLEXGATE_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn flexgate");
        let mut gw = Gateway {
            port,
            admin_port,
            dir,
            config_path,
            child,
            log_path,
        };
        gw.wait_ready(port);
        gw.wait_ready(admin_port);
        gw
    }

    /// Waits until `port` accepts connections; fails at once, with the log,
    /// when the process has exited.
    pub fn wait_ready(&mut self, port: u16) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not listen on {port}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Replaces the config file content (keeps the generated proxy section).
    pub fn rewrite_config(&self, body: &str) {
        let config = format!(
            "{}{}",
            proxy_section_with_admin(self.port, self.dir.path(), self.admin_port),
            body
        );
        let tmp = self.dir.path().join("flexgate.yaml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Polls until `cond` holds (bounded), for state changes that happen in the background.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}; gateway log:\n{}", self.log());
    }

    /// Access-log lines parsed as JSON.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "access")
            .collect()
    }
}

impl Gateway {
    /// Kills the process (`SIGKILL`: no chance to tidy up) and starts it
    /// again on the same config file and ports.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_flexgate"))
            .args(["start", "-c"])
            .arg(&self.config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("PORT")
            .env_remove("FLEXGATE_CONFIG")
            .spawn()
            .expect("spawn flexgate");
        self.wait_ready(self.port);
        self.wait_ready(self.admin_port);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Counts of the `X-Upstream` of many GETs.
pub fn distribution(
    port: u16,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut c = Client::connect(port);
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c.request("GET", path, headers, b"").expect("response");
        assert_eq!(r.status, 200, "{}", r.text());
        *out.entry(r.header("x-upstream").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    out
}

/// The path of the flexgate binary.
pub fn flexgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flexgate")
}

/// Runs `flexgate` with args; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(flexgate_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A required service is missing: outside CI, skip the test with a loud
/// message; with `CI=true`, fail it.
pub fn skip_or_fail(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true: required)");
    }
    let msg = format!("\n*** SKIPPED: {what} ***\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
}
