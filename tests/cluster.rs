//! Database mode through the running binary: nodes sharing PostgreSQL
//! (and NATS) converge on one config; a database that stops under traffic
//! costs no proxied request; a node starting with the database down serves
//! its cached config.
//!
//! Uses the PostgreSQL at 127.0.0.1:5432 (a fresh database per test) and
//! NATS at 127.0.0.1:4222; the outage test starts its own PostgreSQL
//! cluster (`initdb`/`pg_ctl` as user `postgres`) on another port and stops
//! that one. Outside CI a missing service skips the test with a loud
//! message; with `CI=true` it fails.

mod common;
use common::pg::TestDb;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn nats_reachable() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_secs(1))
        .is_ok()
}

fn body(up: &TestUpstream, db_url: &str, nats: &str) -> String {
    format!(
        "database:\n  url: \"{db_url}\"\nnats:\n  url: \"{nats}\"\nupstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: first\n    path: /first\n    upstream: app\n",
        up.url()
    )
}

fn create_route(admin: u16, id: &str, path: &str) -> Response {
    let route = serde_json::json!({"id": id, "path": path, "upstream": "app"});
    request(
        admin,
        "POST",
        "/api/routes",
        &[AUTH, JSON],
        route.to_string().as_bytes(),
    )
}

/// Time until `node` serves `path` with 200.
fn time_to_serve(node: &Gateway, path: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if request(node.port, "GET", path, &[], b"").status == 200 {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn two_nodes_converge(nats: &str) {
    let Some(db) = TestDb::create() else { return };
    let up = TestUpstream::start("app", Behavior::Ok);
    let a = Gateway::start("", &body(&up, &db.url(), nats));
    let mut b = Gateway::start("", &body(&up, &db.url(), nats));
    // The first node imported the file once; the second loaded it.
    let la = request(a.admin_port, "GET", "/api/routes", &[AUTH], b"").json();
    let lb = request(b.admin_port, "GET", "/api/routes", &[AUTH], b"").json();
    assert_eq!(la["version"], 1, "{la}");
    assert_eq!(lb["version"], 1, "{lb}");
    let imports = request(a.admin_port, "GET", "/api/logs?action=import", &[AUTH], b"").json();
    assert_eq!(imports["entries"].as_array().unwrap().len(), 1, "{imports}");

    let r = create_route(a.admin_port, "from-a", "/from-a/*");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(request(a.port, "GET", "/from-a/x", &[], b"").status, 200);
    let took = time_to_serve(&b, "/from-a/x", Duration::from_secs(5));
    let took = took.unwrap_or_else(|| panic!("node B never served the route; log:\n{}", b.log()));
    assert!(took < Duration::from_secs(2), "node B took {took:?}");
    assert_eq!(
        request(b.admin_port, "GET", "/api/routes/from-a", &[AUTH], b"").json()["version"],
        2
    );
    // A write on B based on a stale view of A's change still lands (retried on the fresh state).
    let r = create_route(b.admin_port, "from-b", "/from-b/*");
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(time_to_serve(&a, "/from-b/x", Duration::from_secs(2)).is_some());
    // Stale If-Match is a conflict.
    let r = request(
        a.admin_port,
        "DELETE",
        "/api/routes/from-a",
        &[AUTH, ("If-Match", "\"1\"")],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // Restarted, a node loads the database's config.
    b.kill_and_restart();
    let r = request(b.admin_port, "GET", "/api/routes/from-b", &[AUTH], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(request(b.port, "GET", "/from-a/y", &[], b"").status, 200);
    // Both writes are in the shared audit log.
    let logs = request(
        b.admin_port,
        "GET",
        "/api/logs?resource=route",
        &[AUTH],
        b"",
    )
    .json();
    let resources: Vec<&str> = logs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["route/from-b", "route/from-a"]);
}

#[test]
fn a_route_created_on_one_node_serves_on_the_other_within_2s() {
    if !nats_reachable() {
        skip_or_fail("NATS not reachable at 127.0.0.1:4222");
        return;
    }
    two_nodes_converge("nats://127.0.0.1:4222");
}

#[test]
fn without_nats_polling_converges_within_2s() {
    // A NATS URL nobody listens on: notices are lost, polling remains.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    two_nodes_converge(&dead);
}

/// A `nats-server` of this test's own.
struct PrivateNats(std::process::Child, u16);

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        let port = free_port();
        let child = match Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run nats-server: {e}"));
                return None;
            }
        };
        let up = eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nats-server did not listen on {port}");
        Some(PrivateNats(child, port))
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nats_stopping_leaves_polling_to_converge() {
    let Some(db) = TestDb::create() else { return };
    let Some(mut nats) = PrivateNats::start() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", nats.1);
    let up = TestUpstream::start("app", Behavior::Ok);
    let a = Gateway::start("", &body(&up, &db.url(), &url));
    let b = Gateway::start("", &body(&up, &db.url(), &url));
    let r = create_route(a.admin_port, "with-nats", "/with-nats");
    assert_eq!(r.status, 201, "{}", r.text());
    let took = time_to_serve(&b, "/with-nats", Duration::from_secs(5)).expect("converged");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let _ = nats.0.kill();
    let _ = nats.0.wait();
    let r = create_route(a.admin_port, "without-nats", "/without-nats");
    assert_eq!(r.status, 201, "{}", r.text());
    let took = time_to_serve(&b, "/without-nats", Duration::from_secs(5)).expect("converged");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A PostgreSQL cluster of this test's own, on its own port.
struct PrivatePg {
    dir: tempfile::TempDir,
    port: u16,
}

fn bin(name: &str) -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser")
}

impl PrivatePg {
    fn start() -> Option<PrivatePg> {
        let (Some(initdb), Some(_)) = (bin("initdb"), bin("pg_ctl")) else {
            skip_or_fail("initdb/pg_ctl not found under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip_or_fail("cannot hand a directory to user postgres (needs root)");
            return None;
        }
        let data = dir.path().join("data");
        let out = as_postgres(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        if !out.status.success() {
            skip_or_fail(&format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let pg = PrivatePg {
            dir,
            port: free_port(),
        };
        pg.ctl_start();
        Some(pg)
    }

    fn ctl_start(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let out = as_postgres(&[
            bin("pg_ctl").unwrap().to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&[
            bin("pg_ctl").unwrap().to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_database_stopping_under_traffic_costs_no_request() {
    let Some(pg) = PrivatePg::start() else { return };
    let up = TestUpstream::start("app", Behavior::Ok);
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let mut gw = Gateway::start("", &body(&up, &pg.url(), &dead_nats));
    let r = create_route(gw.admin_port, "before", "/before/*");
    assert_eq!(r.status, 201, "{}", r.text());

    // Traffic on two threads for the whole outage.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = gw.port;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, 0u32);
                let mut c = Client::connect(port);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.request("GET", "/before/x", &[], b"") {
                        Ok(r) if r.status == 200 => {
                            ok += 1;
                            // The keep-alive request limit ends connections.
                            if r.header("connection") == Some("close") {
                                c = Client::connect(port);
                            }
                        }
                        _ => {
                            failed += 1;
                            c = Client::connect(port);
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    pg.stop();
    // Writes fail cleanly and fast; reads come from the live snapshot.
    let t = Instant::now();
    let r = create_route(gw.admin_port, "during", "/during/*");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "store_unavailable");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let r = request(gw.admin_port, "GET", "/api/routes", &[AUTH], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["routes"].as_array().unwrap().len(), 2);
    let ready = request(gw.admin_port, "GET", "/health/ready", &[], b"");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["checks"]["database"]["status"], "DOWN");
    let postgres_gauge = || {
        request(gw.admin_port, "GET", "/metrics", &[], b"")
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("flexgate_dependency_up{dependency=\"postgres\"} "))
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(5), || postgres_gauge().as_deref()
            == Some("0")),
        "the postgres gauge shows the outage: {:?}",
        postgres_gauge()
    );
    std::thread::sleep(Duration::from_millis(1500));

    // Recovery is automatic.
    pg.ctl_start();
    let recovered = eventually(Duration::from_secs(15), || {
        create_route(gw.admin_port, "after", "/after/*").status == 201
    });
    assert!(recovered, "writes never recovered; log:\n{}", gw.log());
    // The database is back; the NATS nobody listens on keeps the node unready.
    let ready = request(gw.admin_port, "GET", "/health/ready", &[], b"").json();
    assert_eq!(ready["checks"]["database"]["status"], "UP", "{ready}");
    assert_eq!(ready["checks"]["jetstream"]["status"], "DOWN", "{ready}");
    assert!(
        eventually(Duration::from_secs(5), || postgres_gauge().as_deref()
            == Some("1")),
        "the postgres gauge shows the recovery"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "traffic ran: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} proxied requests failed during the outage"
    );

    // A node starting while the database is down serves its cached config.
    pg.stop();
    gw.kill_and_restart();
    assert_eq!(
        request(gw.port, "GET", "/after/x", &[], b"").status,
        200,
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("serving the cached config"));
    pg.ctl_start();
    let r = create_route(gw.admin_port, "later", "/later/*");
    let ok = r.status == 201
        || eventually(Duration::from_secs(15), || {
            create_route(gw.admin_port, "later", "/later/*").status == 201
        });
    assert!(ok, "writes after a cached start never recovered");
}
