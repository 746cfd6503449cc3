//! Process lifecycle and the CLI: `check` on the original example configs
//! and on broken ones, `init`, `version`, `PORT`, hot reload (file change
//! and SIGHUP, valid and invalid, under traffic) and graceful shutdown.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_minimal_example_and_the_default_config() {
    let (code, out, err) = run_cli(&["check", "-c", &fixture("seed-minimal.yaml")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is valid (1 upstreams, 1 routes)"), "{out}");
    let default = format!("{}/conf/flexgate.yaml", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run_cli(&["check", "-c", &default]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_names_the_allowed_hosts_contradiction_of_the_full_example() {
    let (code, _, err) = run_cli(&["check", "-c", &fixture("seed-full.yaml")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstreams[0].url: host \"api.primary.com\" is not in security.allowedHosts"),
        "{err}"
    );
    assert!(
        err.contains("upstreams[1].url: host \"api.fallback.com\""),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("  ")).count(),
        2,
        "only that problem: {err}"
    );
}

#[test]
fn check_rejects_placeholder_key_digests_of_the_quickstart_example() {
    let (code, _, err) = run_cli(&["check", "-c", &fixture("seed-quickstart.yaml")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("security.auth.keys[0].key: is not a SHA-256 digest"),
        "{err}"
    );
    assert!(err.contains("security.auth.keys[1].key"), "{err}");
    assert!(
        !err.contains("client-a-key-sha256-hash"),
        "the value (maybe a key) is not echoed: {err}"
    );
}

#[test]
fn check_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"upstreams:
  - name: api
    url: "http://127.0.0.1:9"
    retries: 50
  - name: api
    url: "ftp://x"
routes:
  - path: /a
    upstream: api
  - path: /b
    upstream: billing
  - path: "no-slash"
    upstream: api
    methods: [GRAB]
logging:
  level: loud
"#,
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    for expected in [
        "routes[1].upstream: unknown upstream \"billing\"",
        "upstreams[0].retries: must be at most 10",
        "upstreams[1].name: duplicate upstream name \"api\"",
        "upstreams[1].url: \"ftp://x\" must start with http:// or https://",
        "routes[2].path: \"no-slash\" must start with /",
        "routes[2].methods[0]: \"GRAB\" is not an HTTP method",
        "logging.level: \"loud\" is not one of",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    std::fs::write(
        &path,
        "routes:\n  - path: /a\n    upstrem: x\n    colour: red\nproxi: {}\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].upstrem: unknown key"), "{err}");
    assert!(err.contains("routes[0].colour: unknown key"), "{err}");
    assert!(err.contains("proxi: unknown key"), "{err}");

    std::fs::write(&path, "upstreams:\n  - name: a\n    timeout: [1\n").unwrap();
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line"),
        "syntax errors carry a position: {err}"
    );

    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/flexgate.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /nonexistent/flexgate.yaml"),
        "{err}"
    );
}

#[test]
fn a_route_to_our_own_listener_is_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.yaml");
    std::fs::write(&path, "proxy:\n  port: 3000\nupstreams:\n  - name: self\n    url: http://127.0.0.1:3000\nroutes:\n  - path: /*\n    upstream: self\n").unwrap();
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstreams[0].url: \"http://127.0.0.1:3000\" is FlexGate's own listener"),
        "{err}"
    );
}

#[test]
fn init_writes_a_valid_starter_config_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.yaml");
    let p = path.to_str().unwrap();
    let (code, out, _) = run_cli(&["init", p]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(
            "# yaml-language-server: $schema=flexgate.schema.json\n# FlexGate configuration"
        ),
        "commented starter, pointing editors at its schema"
    );
    assert_eq!(run_cli(&["check", "-c", p]).0, 0);
    std::fs::write(&path, "mine").unwrap();
    let (code, _, err) = run_cli(&["init", p]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
}

#[test]
fn version_and_key_hash() {
    let (code, out, _) = run_cli(&["version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("flexgate {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let (code, out, _) = run_cli(&["keys", "hash", "abc"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn start_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "routes:\n  - path: /a\n    upstream: nowhere\n").unwrap();
    let (code, _, err) = run_cli(&["start", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[0].upstream: unknown upstream \"nowhere\""),
        "{err}"
    );
}

#[test]
fn start_refuses_a_proxy_port_already_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "{}{}",
            proxy_section(port, dir.path()),
            one_route(&TestUpstream::start("app", Behavior::Ok))
        ),
    )
    .unwrap();
    // Bounded: a gateway that kept running on its admin port alone would hang here.
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(flexgate_bin())
        .args(["start", "-c", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("proxy.listen: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

fn one_route(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - path: /*\n    upstream: app\n",
        up.url()
    )
}

#[test]
fn port_variable_overrides_the_listener() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "{}{}",
            proxy_section(free_port(), dir.path()),
            one_route(&up)
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(flexgate_bin())
        .args(["start", "-c", path.to_str().unwrap()])
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ok = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let status = if ok {
        request(port, "GET", "/x", &[], b"").status
    } else {
        0
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "gateway did not listen on PORT {port}");
    assert_eq!(status, 200);
}

fn ready_version(port: u16) -> u64 {
    request(port, "GET", "/health/ready", &[], b"").json()["checks"]["config"]["version"]
        .as_u64()
        .unwrap()
}

/// Sends requests from two threads (keep-alive and fresh connections) until
/// stopped; returns (successes, failures with reasons).
fn traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut keepalive = Client::connect(port);
                    while !stop.load(Ordering::Relaxed) {
                        let r = if w == 0 {
                            // A reused idle connection may be closed by the server
                            // as we send (RFC 9112 §9.3.1): retry once on a fresh one.
                            keepalive.request("GET", "/load", &[], b"").or_else(|_| {
                                keepalive = Client::connect(port);
                                keepalive.request("GET", "/load", &[], b"")
                            })
                        } else {
                            Client::connect(port).request("GET", "/load", &[], b"")
                        };
                        match r {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if w == 0
                                    && r.header("connection")
                                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                {
                                    keepalive = Client::connect(port);
                                }
                            }
                            Ok(r) => failures.lock().unwrap().push(format!(
                                "status {}: {}",
                                r.status,
                                r.text()
                            )),
                            Err(e) => {
                                failures.lock().unwrap().push(format!("io: {e}"));
                                keepalive = Client::connect(port);
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let f = failures.lock().unwrap().clone();
        (ok.load(Ordering::Relaxed), f)
    })
}

#[test]
fn file_change_reloads_under_traffic_and_a_bad_file_keeps_the_old_config() {
    let a = TestUpstream::start("a", Behavior::Ok);
    let b = TestUpstream::start("b", Behavior::Ok);
    let gw = Gateway::start("", &one_route(&a));
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(gw.port, stop.clone());
    gw.wait_until("traffic to reach a", Duration::from_secs(5), || {
        a.hits() > 20
    });

    gw.rewrite_config(&one_route(&b));
    gw.wait_until("reload to b", Duration::from_secs(10), || {
        request(gw.port, "GET", "/probe", &[], b"").header("x-upstream") == Some("b")
    });
    assert_eq!(ready_version(gw.port), 2);
    let b_before = b.hits();
    gw.wait_until("traffic on the new config", Duration::from_secs(5), || {
        b.hits() > b_before + 20
    });

    // A broken file: the old config stays live, the log says exactly why.
    gw.rewrite_config("routes:\n  - path: /*\n    upstream: missing\n");
    gw.wait_until("rejection in the log", Duration::from_secs(10), || {
        gw.log().contains("config reload rejected")
    });
    assert!(
        gw.log()
            .contains("routes[0].upstream: unknown upstream \\\"missing\\\""),
        "{}",
        gw.log()
    );
    assert_eq!(
        request(gw.port, "GET", "/still", &[], b"").header("x-upstream"),
        Some("b")
    );
    assert_eq!(ready_version(gw.port), 2);

    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.join().unwrap();
    assert!(ok > 50, "traffic ran ({ok} requests)");
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn sighup_reloads_even_when_the_file_did_not_change() {
    let a = TestUpstream::start("a", Behavior::Ok);
    let gw = Gateway::start("", &one_route(&a));
    assert_eq!(ready_version(gw.port), 1);
    gw.signal("HUP");
    gw.wait_until("version 2 after SIGHUP", Duration::from_secs(10), || {
        ready_version(gw.port) == 2
    });
    gw.wait_until("SIGHUP in the log", Duration::from_secs(5), || {
        gw.log().contains("SIGHUP received")
    });
    assert_eq!(request(gw.port, "GET", "/x", &[], b"").status, 200);
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits() {
    let slow = TestUpstream::start("slow", Behavior::Delay(Duration::from_millis(1500)));
    let mut gw = Gateway::start("", &one_route(&slow));
    let port = gw.port;
    let in_flight = std::thread::spawn(move || request(port, "GET", "/slow", &[], b""));
    gw.wait_until(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || slow.requests.lock().unwrap().len() == 1,
    );
    let sent = Instant::now();
    gw.signal("TERM");
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        r.text()
    );
    assert_eq!(r.text(), "slow /slow");
    // The process exits within the grace period (2 s) plus the drain timeout.
    let exited = eventually(Duration::from_secs(10), || {
        matches!(gw.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "process exited after SIGTERM");
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
}

#[test]
fn flexgate_config_variable_names_the_file() {
    let out = std::process::Command::new(flexgate_bin())
        .arg("check")
        .env("FLEXGATE_CONFIG", fixture("seed-minimal.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("seed-minimal.yaml is valid"));
}

mod daemon;

/// `flexgate <args>` with `XDG_RUNTIME_DIR` set to `xdg` (and no systemd
/// `RUNTIME_DIRECTORY`), bounded by `timeout`; returns (exit code, output).
/// The output goes through a file: a daemon would hold a pipe open.
fn start_with_runtime_dir(args: &[&str], xdg: &std::path::Path) -> (Option<i32>, String) {
    let log_path = xdg.join("start.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let status = std::process::Command::new("timeout")
        .arg("20")
        .arg(flexgate_bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("PORT")
        .env_remove("FLEXGATE_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    (
        status.code(),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

/// A config with no `proxy.upgradeSock` / `proxy.pidFile`: the defaults.
fn config_with_default_runtime_paths(
    dir: &std::path::Path,
    port: u16,
    up: &TestUpstream,
) -> String {
    let path = dir.join("flexgate.yaml");
    std::fs::write(
        &path,
        format!(
            "admin:\n  listen: \"127.0.0.1:0\"\nproxy:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n  gracePeriod: 1000\n{}",
            one_route(up)
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn default_pid_file_and_upgrade_socket_live_in_xdg_runtime_dir_flexgate() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let up = TestUpstream::start("app", Behavior::Ok);
    let xdg = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_with_default_runtime_paths(xdg.path(), port, &up);
    let run = xdg.path().join("flexgate");
    let pid_file = run.join("flexgate.pid");
    let sock = run.join("upgrade.sock");
    // Every process this test starts, killed by pid when it ends (also on panic).
    struct Kill(Vec<i32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for pid in &self.0 {
                if daemon::alive(*pid) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
    }
    let mut started = Kill(Vec::new());

    let (code, err) = start_with_runtime_dir(&["start", "-d", "-c", &config], xdg.path());
    assert_eq!(code, Some(0), "{err}");
    let mut old = None;
    assert!(
        daemon::wait_for(Duration::from_secs(20), || {
            old = daemon::read_pid(&pid_file).filter(|p| daemon::alive(*p));
            old.is_some()
        }),
        "no live pid in {}: {err}",
        pid_file.display()
    );
    let old = old.unwrap();
    started.0.push(old);
    assert_eq!(mode(&run), 0o700, "created private: {}", run.display());
    assert_eq!(
        std::fs::metadata(&run).unwrap().uid(),
        std::fs::metadata(xdg.path()).unwrap().uid(),
        "owned by the gateway's user"
    );
    assert!(eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    assert_eq!(request(port, "GET", "/before", &[], b"").status, 200);

    // The binary upgrade finds the same default socket.
    let mut upgrade = daemon::ChildGuard(Some(
        std::process::Command::new(flexgate_bin())
            .args(["start", "-u", "-d", "-c", &config])
            .env("XDG_RUNTIME_DIR", xdg.path())
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("PORT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(
        daemon::wait_for(Duration::from_secs(20), || std::fs::symlink_metadata(&sock)
            .is_ok_and(|m| m.file_type().is_socket())),
        "start -u waits on {}",
        sock.display()
    );
    daemon::signal(old, "QUIT");
    let status = daemon::wait_child(upgrade.0.as_mut().unwrap(), Duration::from_secs(30));
    upgrade.0 = None;
    assert!(
        status.is_some_and(|s| s.success()),
        "start -u -d: {status:?}"
    );
    let mut new = None;
    assert!(daemon::wait_for(Duration::from_secs(20), || {
        new = daemon::read_pid(&pid_file).filter(|p| *p != old && daemon::alive(*p));
        new.is_some()
    }));
    started.0.push(new.unwrap());
    assert_eq!(request(port, "GET", "/after", &[], b"").status, 200);
    assert!(
        daemon::wait_for(Duration::from_secs(25), || !daemon::alive(old)),
        "the old process drains and exits"
    );
}

#[test]
fn start_refuses_a_socket_or_pid_directory_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let up = TestUpstream::start("app", Behavior::Ok);
    let xdg = tempfile::tempdir().unwrap();
    let port = free_port();
    let open = xdg.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let private = xdg.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let explicit = |sock_dir: &std::path::Path, pid_dir: &std::path::Path| {
        let path = xdg.path().join("explicit.yaml");
        std::fs::write(
            &path,
            format!(
                "admin:\n  listen: \"127.0.0.1:0\"\nproxy:\n  listen: \"127.0.0.1:{port}\"\n  upgradeSock: {}/upgrade.sock\n  pidFile: {}/flexgate.pid\n{}",
                sock_dir.display(),
                pid_dir.display(),
                one_route(&up)
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };

    // Explicit paths: the socket's directory is world-writable (mode 0777), for `start`, `-d` and `-u`.
    let config = explicit(&open, &private);
    for args in [
        vec!["start", "-c", &config],
        vec!["start", "-d", "-c", &config],
        vec!["start", "-u", "-c", &config],
    ] {
        let (code, err) = start_with_runtime_dir(&args, xdg.path());
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "proxy.upgradeSock: {}/upgrade.sock: its directory {} is writable by its group or by other users (mode 0777)",
                open.display(),
                open.display()
            )),
            "{args:?}: {err}"
        );
    }
    // The pid file's directory: group-writable.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, err) =
        start_with_runtime_dir(&["start", "-c", &explicit(&private, &open)], xdg.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("proxy.pidFile:") && err.contains("(mode 0770)"),
        "{err}"
    );
    assert!(!err.contains("proxy.upgradeSock"), "{err}");

    // A directory that belongs to another user (root can hand it over).
    let theirs = xdg.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&theirs, Some(65534), None).is_ok() {
        let (code, err) =
            start_with_runtime_dir(&["start", "-c", &explicit(&theirs, &private)], xdg.path());
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("proxy.upgradeSock:") && err.contains("belongs to uid 65534"),
            "{err}"
        );
    } else {
        eprintln!("\n*** SKIPPED (not root): a directory of another user ***\n");
    }

    // The default directory, $XDG_RUNTIME_DIR/flexgate, when someone made it world-writable...
    let defaults = config_with_default_runtime_paths(xdg.path(), port, &up);
    let run = xdg.path().join("flexgate");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = start_with_runtime_dir(&["start", "-c", &defaults], xdg.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "proxy.upgradeSock: {}/upgrade.sock: its directory {} is writable by its group or by other users (mode 0777)",
            run.display(),
            run.display()
        )),
        "{err}"
    );
    // ... or a symbolic link to somewhere else.
    std::fs::remove_dir(&run).unwrap();
    std::os::unix::fs::symlink(&private, &run).unwrap();
    let (code, err) = start_with_runtime_dir(&["start", "-c", &defaults], xdg.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("proxy.upgradeSock:") && err.contains("is a symbolic link"),
        "{err}"
    );
}

#[test]
fn without_runtime_directories_the_default_is_a_private_directory_under_tmp() {
    use std::os::unix::fs::MetadataExt;
    let up = TestUpstream::start("app", Behavior::Ok);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_with_default_runtime_paths(dir.path(), port, &up);
    // Our uid, as the owner of a file this process creates.
    let me = std::fs::metadata(&config).unwrap().uid();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = std::process::Command::new(flexgate_bin())
        .args(["start", "-c", &config])
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("PORT")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ok = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(ok, "the gateway starts: {out}");
    let tmp = std::path::PathBuf::from(format!("/tmp/flexgate-{me}"));
    let meta = std::fs::symlink_metadata(&tmp).expect("/tmp/flexgate-<uid> exists");
    assert!(meta.is_dir(), "{} is a directory", tmp.display());
    assert_eq!(meta.uid(), me, "{} is ours", tmp.display());
    assert_eq!(mode(&tmp), 0o700, "{}", tmp.display());
}
