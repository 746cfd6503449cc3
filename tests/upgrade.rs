//! Zero-downtime binary upgrade, black-box with the real binary: a
//! daemonised gateway (`start -d`) under continuous traffic (keep-alive and
//! fresh connections) is replaced three times by `start -u -d` with the same
//! config plus `SIGQUIT` to the old process (read from the pid file), in the
//! order the systemd unit's `ExecReload=` uses: the new process first, the
//! signal once it waits on the upgrade socket. No request may fail and no
//! connection may be refused; a slow request in flight across the hand-off
//! completes; each old process exits after draining. An upgrade with an
//! invalid config fails on its own and the old process keeps serving.
//!
//! Only one failure is forgiven (RFC 9112 §9.3.1): a reused keep-alive
//! connection that the server closed as the request was sent, with not one
//! response byte back, is retried once on a fresh connection. A failure on
//! a fresh connection, a 5xx, or a failed retry counts.

mod common;
mod daemon;

use common::{free_port, read_response, Behavior, Response, TestUpstream};
use daemon::*;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `proxy.gracePeriod` of these tests.
const GRACE_MS: u64 = 4000;
/// After `SIGQUIT` Pingora keeps accepting for 5 s (its `CLOSE_TIMEOUT`),
/// then drains for the grace period, then gives the runtimes the grace period again.
const OLD_EXIT_BOUND: Duration = Duration::from_secs(5 + 2 * GRACE_MS / 1000 + 10);
/// How long the slow upstream holds a request: past the 5 s after which the
/// old process stops accepting, within the grace period that follows.
const SLOW: Duration = Duration::from_secs(6);

fn routes(app: &TestUpstream, slow: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\n  - name: slow\n    url: \"{}\"\nroutes:\n  - path: /slow/*\n    upstream: slow\n  - path: /*\n    upstream: app\nlogging:\n  sampling:\n    successRate: 0.0\n    errorRate: 1.0\n",
        app.url(),
        slow.url()
    )
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

enum Failure {
    /// The connection was closed or reset before one response byte came back.
    NothingBack(String),
    /// Anything else: a timeout, a cut response.
    Broken(String),
}

impl Failure {
    fn text(self) -> String {
        match self {
            Failure::NothingBack(e) | Failure::Broken(e) => e,
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    )
}

/// One GET on `conn`, telling apart "nothing came back" from other failures.
fn exchange(conn: &mut BufReader<TcpStream>, path: &str) -> Result<Response, Failure> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n");
    if let Err(e) = conn.get_mut().write_all(req.as_bytes()) {
        return Err(if retryable(&e) {
            Failure::NothingBack(format!("write: {e}"))
        } else {
            Failure::Broken(format!("write: {e}"))
        });
    }
    match conn.fill_buf() {
        Ok([]) => {
            return Err(Failure::NothingBack(
                "closed before any response byte".into(),
            ))
        }
        Err(e) if retryable(&e) => return Err(Failure::NothingBack(format!("read: {e}"))),
        Err(e) => return Err(Failure::Broken(format!("read: {e}"))),
        Ok(_) => {}
    }
    read_response(conn, false).map_err(|e| Failure::Broken(format!("response cut: {e}")))
}

#[derive(Default)]
struct Stats {
    ok: AtomicUsize,
    refused: AtomicUsize,
    retried: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, start: Instant, what: String) {
        let mut f = self.failures.lock().unwrap();
        f.push(format!("{:.2}s: {what}", start.elapsed().as_secs_f64()));
    }

    /// Counts a response; true when the connection may be reused.
    fn record(&self, start: Instant, conn: &str, r: Result<Response, Failure>) -> bool {
        match r {
            Ok(r) if r.status == 200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                !r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            }
            Ok(r) => {
                self.fail(start, format!("{conn}: status {}: {}", r.status, r.text()));
                false
            }
            Err(f) => {
                self.fail(start, format!("{conn}: {}", f.text()));
                false
            }
        }
    }
}

/// Continuous GETs from two threads: one on a keep-alive connection, one
/// opening a fresh connection per request.
struct Load {
    started: Instant,
    port: u16,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let start = Instant::now();
        let keepalive = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let mut conn: Option<(BufReader<TcpStream>, usize)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let (c, uses) = match conn.as_mut() {
                        Some(c) => c,
                        None => match connect(port) {
                            Ok(c) => conn.insert((c, 0)),
                            Err(e) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                stats.fail(start, format!("keep-alive connect: {e}"));
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        },
                    };
                    let reused = *uses > 0;
                    let r = exchange(c, "/load");
                    let (label, r) = match r {
                        Err(Failure::NothingBack(_)) if reused => {
                            // The server closed the idle connection as we sent: retry once, fresh.
                            stats.retried.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                            match connect(port) {
                                Ok(c) => {
                                    let (c, _) = conn.insert((c, 0));
                                    ("keep-alive retry", exchange(c, "/load"))
                                }
                                Err(e) => {
                                    stats.refused.fetch_add(1, Ordering::Relaxed);
                                    (
                                        "keep-alive retry",
                                        Err(Failure::Broken(format!("connect: {e}"))),
                                    )
                                }
                            }
                        }
                        r => ("keep-alive", r),
                    };
                    if stats.record(start, label, r) {
                        if let Some((_, uses)) = conn.as_mut() {
                            *uses += 1;
                        }
                    } else {
                        conn = None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let fresh = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connect(port) {
                        Ok(mut c) => {
                            let r = exchange(&mut c, "/load");
                            stats.record(start, "fresh", r);
                        }
                        Err(e) => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            stats.fail(start, format!("fresh connect: {e}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Load {
            started: start,
            port,
            stop,
            stats,
            threads: vec![keepalive, fresh],
        }
    }

    /// Also sends fresh-connection requests to the admin port.
    fn with_admin(mut self, admin_port: u16) -> Load {
        let (stop, stats, start) = (self.stop.clone(), self.stats.clone(), self.started);
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match connect(admin_port) {
                    Ok(mut c) => {
                        let r = exchange(&mut c, "/health/live");
                        stats.record(start, "admin", r);
                    }
                    Err(e) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        stats.fail(start, format!("admin connect: {e}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
        self
    }

    fn ok(&self) -> usize {
        self.stats.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded.
    fn wait_more(&self, n: usize) -> bool {
        let target = self.ok() + n;
        wait_for(Duration::from_secs(20), || self.ok() >= target)
    }

    fn finish(mut self) -> Arc<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread panicked");
        }
        assert_eq!(
            connect(self.port)
                .ok()
                .and_then(|mut c| exchange(&mut c, "/after").ok())
                .map(|r| r.status),
            Some(200),
            "served after the load"
        );
        self.stats
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// `flexgate start -u -d -c config`, waiting on the upgrade socket (a guard kills it on panic).
fn spawn_upgrade(d: &Daemons, config: &Path) -> ChildGuard {
    let _ = std::fs::remove_file(d.upgrade_sock());
    let log = d.log_file();
    let child = Command::new(flexgate())
        .args(["start", "-u", "-d", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env_remove("PORT")
        .env_remove("FLEXGATE_CONFIG")
        .spawn()
        .expect("spawn flexgate start -u -d");
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        is_socket(&d.upgrade_sock()) || matches!(child.try_wait(), Ok(Some(_)))
    });
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "the new process exited ({status}) before taking over\n{}",
            d.log()
        );
    }
    assert!(
        ready,
        "the new process never opened the upgrade socket\n{}",
        d.log()
    );
    guard
}

/// SIGQUIT to `old`; the new process takes the listeners and daemonises.
/// Returns the new pid (from the pid file).
fn hand_over(d: &mut Daemons, mut new: ChildGuard, old: i32) -> i32 {
    signal(old, "QUIT");
    let status = wait_child(new.0.as_mut().unwrap(), Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "start -u -d: {status:?}\n{}",
        d.log()
    );
    let pid = d.wait_new_pid(old);
    assert_eq!(
        read_pid(&d.dir.join("flexgate.pid.old")),
        Some(old),
        "the previous pid is kept in flexgate.pid.old"
    );
    assert!(!is_socket(&d.upgrade_sock()), "upgrade socket removed");
    pid
}

#[test]
fn three_binary_upgrades_under_load_drop_nothing() {
    let app = TestUpstream::start("app", Behavior::Ok);
    let slow = TestUpstream::start("slow", Behavior::Delay(SLOW));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let config = dir.path().join("flexgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            proxy_section(port, dir.path(), GRACE_MS)
                .replace("127.0.0.1:0", &format!("127.0.0.1:{admin_port}")),
            routes(&app, &slow)
        ),
    )
    .unwrap();
    let mut d = Daemons::new(dir.path(), port);
    let mut current = d.start(&config);

    // Proxy traffic on keep-alive and fresh connections, and admin traffic.
    let load = Load::start(port).with_admin(admin_port);
    assert!(load.wait_more(50), "traffic flows before the upgrades");

    for round in 1..=3 {
        let old = current;
        let new = spawn_upgrade(&d, &config);

        // A slow request to the old process (the only one accepting until the signal).
        let slow_seen = slow.requests.lock().unwrap().len();
        let path = format!("/slow/{round}");
        let in_flight = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = connect(port).map_err(|e| format!("connect: {e}"))?;
                exchange(&mut c, &path).map_err(Failure::text)
            })
        };
        assert!(
            wait_for(Duration::from_secs(3), || slow
                .requests
                .lock()
                .unwrap()
                .len()
                > slow_seen),
            "round {round}: the slow request did not reach the upstream"
        );

        let quit_at = Instant::now();
        eprintln!(
            "round {round}: SIGQUIT to {old} at {:.2}s of load",
            load.started.elapsed().as_secs_f64()
        );
        current = hand_over(&mut d, new, old);
        assert!(
            load.wait_more(50),
            "round {round}: traffic flows after the hand-off"
        );

        let r = in_flight.join().unwrap().unwrap_or_else(|e| {
            panic!(
                "round {round}: the in-flight request failed: {e}\n{}",
                d.log()
            )
        });
        let completed_after = quit_at.elapsed();
        assert_eq!(
            r.status,
            200,
            "round {round}: in-flight request: {}",
            r.text()
        );
        assert_eq!(r.text(), format!("slow {path}"));

        let exited = wait_for(OLD_EXIT_BOUND, || !alive(old));
        assert!(
            exited,
            "round {round}: old process {old} still running {OLD_EXIT_BOUND:?} after SIGQUIT\n{}",
            d.log()
        );
        eprintln!(
            "round {round}: {old} -> {current}; slow request done {:.1}s after SIGQUIT, old exited by {:.1}s",
            completed_after.as_secs_f64(),
            quit_at.elapsed().as_secs_f64()
        );
        assert!(alive(current), "round {round}: the new process runs");
    }

    let stats = load.finish();
    let failures = stats.failures.lock().unwrap();
    eprintln!(
        "{} requests ok, {} keep-alive retries after a server close, {} refused, {} failed",
        stats.ok.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
        failures.len()
    );
    assert_eq!(
        stats.refused.load(Ordering::Relaxed),
        0,
        "refused connections: {failures:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        d.log()
    );
}

#[test]
fn an_upgrade_with_an_invalid_config_fails_and_the_old_process_keeps_serving() {
    let app = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let section = proxy_section(port, dir.path(), GRACE_MS);
    let config = dir.path().join("flexgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{section}upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
            app.url()
        ),
    )
    .unwrap();
    let mut d = Daemons::new(dir.path(), port);
    let old = d.start(&config);
    let mut keepalive = connect(port).unwrap();
    assert!(matches!(exchange(&mut keepalive, "/before"), Ok(r) if r.status == 200));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{section}routes:\n  - path: /*\n    upstream: nowhere\n"),
    )
    .unwrap();
    let mut child = Command::new(flexgate())
        .args(["start", "-u", "-d", "-c"])
        .arg(&bad)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("PORT")
        .env_remove("FLEXGATE_CONFIG")
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(20));
    let mut guard = ChildGuard(Some(child));
    let status = status.expect("the new process with a bad config did not exit");
    let mut err = String::new();
    std::io::Read::read_to_string(guard.0.as_mut().unwrap().stderr.as_mut().unwrap(), &mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("routes[0].upstream: unknown upstream \"nowhere\""),
        "the error names the key: {err}"
    );
    assert!(
        !is_socket(&d.upgrade_sock()),
        "no upgrade socket was opened"
    );

    // The old process is untouched: still current, still serving, on old and new connections.
    assert_eq!(read_pid(&d.pid_file()), Some(old));
    assert!(alive(old));
    assert!(matches!(exchange(&mut keepalive, "/after"), Ok(r) if r.status == 200));
    let mut fresh = connect(port).unwrap();
    let r = exchange(&mut fresh, "/fresh").map_err(Failure::text);
    assert_eq!(r.map(|r| r.status), Ok(200));
}

/// Clients that connect and send their request a moment later (TLS set-up, a
/// slow network) across a hand-off: a connection the old process accepted
/// just before its listener stops must still be answered. Four such clients
/// always have a connection in that state.
#[test]
fn connections_whose_request_is_in_transit_when_the_old_listener_stops_are_served() {
    let app = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("flexgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{}upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
            proxy_section(port, dir.path(), GRACE_MS),
            app.url()
        ),
    )
    .unwrap();
    let mut d = Daemons::new(dir.path(), port);
    let old = d.start(&config);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connect(port) {
                        Ok(mut c) => {
                            std::thread::sleep(Duration::from_millis(200));
                            let r = exchange(&mut c, "/late");
                            stats.record(start, "request sent 200 ms after connecting", r);
                        }
                        Err(e) => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            stats.fail(start, format!("connect: {e}"));
                        }
                    }
                }
            })
        })
        .collect();
    assert!(wait_for(Duration::from_secs(10), || stats
        .ok
        .load(Ordering::Relaxed)
        >= 8));

    let new = spawn_upgrade(&d, &config);
    let quit = start.elapsed();
    hand_over(&mut d, new, old);
    assert!(
        wait_for(OLD_EXIT_BOUND, || !alive(old)),
        "old process {old} still running\n{}",
        d.log()
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = stats.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "SIGQUIT at {:.2}s; {} ok; failed: {:?}",
        quit.as_secs_f64(),
        stats.ok.load(Ordering::Relaxed),
        *failures
    );
}
