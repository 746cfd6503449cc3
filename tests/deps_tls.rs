//! TLS to the dependencies, each against a TLS-only server this file starts
//! itself on a free port, with certificates from a test CA (`openssl`):
//!
//! - PostgreSQL (`initdb`/`pg_ctl` as user `postgres`, `ssl = on`, only
//!   `hostssl` lines in `pg_hba.conf`, SCRAM passwords): `sslmode`
//!   `disable` is refused by the server, `prefer`/`require` encrypt,
//!   `verify-ca` checks the chain, `verify-full` the chain and the host
//!   name; the gateway's config store, request history and `flexgate
//!   migrate` all go through TLS.
//! - Redis (`redis-server --port 0 --tls-port …`): `rediss://` shared rate
//!   limits across two gateways; a wrong CA falls back to local limits.
//! - NATS (`nats-server -js` with a `tls` block): `tls://` carries the
//!   cluster feed; a wrong CA leaves it down with the cause in the log.
//!
//! Outside CI a missing tool skips the test with a loud message; with
//! `CI=true` it fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");
const JSON: (&str, &str) = ("Content-Type", "application/json");
const PG_PASSWORD: &str = "pg-Secret-9f2";
const REDIS_PASSWORD: &str = "redis-Secret-4c1";

/// A test CA, a second CA that signed nothing here, and server
/// certificates signed by the first.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Pki {
    fn create() -> Option<Pki> {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let made = pki
            .ca("ca")
            .and_then(|()| pki.ca("wrong-ca"))
            // PostgreSQL's certificate names a host only (verify-full checks it).
            .and_then(|()| pki.server("pg", "DNS:db.flexgate.test"))
            .and_then(|()| pki.server("server", "IP:127.0.0.1,DNS:localhost"));
        match made {
            Ok(()) => Some(pki),
            Err(e) => {
                skip_or_fail(&format!("cannot make test certificates: {e}"));
                None
            }
        }
    }

    fn ca(&self, name: &str) -> Result<(), String> {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=flexgate test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
    }

    fn server(&self, name: &str, san: &str) -> Result<(), String> {
        let dir = self.dir.path();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        )
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// A PostgreSQL cluster of this test's own that accepts TLS connections only.
struct TlsPg {
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bin(name: &str) -> Option<PathBuf> {
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

fn chown_postgres(path: &Path) -> bool {
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

impl TlsPg {
    fn start(pki: &Pki) -> Option<TlsPg> {
        let (Some(initdb), Some(pg_ctl)) = (pg_bin("initdb"), pg_bin("pg_ctl")) else {
            skip_or_fail("initdb/pg_ctl not found under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if !chown_postgres(dir.path()) {
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
        for (from, to) in [("pg.pem", "server.crt"), ("pg.key", "server.key")] {
            std::fs::copy(pki.path(from), data.join(to)).unwrap();
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
              password_encryption = 'scram-sha-256'\n",
        )
        .unwrap();
        // TLS only over TCP: a plain connection matches no line and is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostssl all all ::1/128 scram-sha-256\n",
        )
        .unwrap();
        assert!(chown_postgres(&data));
        let key = data.join("server.key");
        assert!(Command::new("chmod")
            .arg("600")
            .arg(&key)
            .status()
            .unwrap()
            .success());
        let pg = TlsPg {
            dir,
            port: free_port(),
        };
        let log = pg.dir.path().join("pg.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.dir.path().display()
        );
        let out = as_postgres(&[
            pg_ctl.to_str().unwrap(),
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
        // The password, over the Unix socket (trust).
        pg.local_sql(&format!("ALTER USER postgres PASSWORD '{PG_PASSWORD}'"));
        Some(pg)
    }

    fn local_sql(&self, statement: &str) {
        let rt = runtime();
        rt.block_on(async {
            let url = format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            );
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("unix socket connection");
            tokio::spawn(conn);
            client.batch_execute(statement).await.expect(statement);
        });
    }

    /// A URL naming the host in the server's certificate, connecting to 127.0.0.1.
    fn url(&self, params: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@db.flexgate.test:{}/postgres?hostaddr=127.0.0.1&{params}",
            self.port
        )
    }

    /// A URL with the IP address as host (not in the certificate).
    fn ip_url(&self, params: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for TlsPg {
    fn drop(&mut self) {
        if let Some(pg_ctl) = pg_bin("pg_ctl") {
            let data = self.dir.path().join("data");
            let _ = as_postgres(&[
                pg_ctl.to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Rows of a query through the gateway's own connector (`sslmode` as in `url`).
fn query_strings(url: &str, ca: Option<&str>, sql: &str) -> Result<Vec<String>, String> {
    runtime().block_on(async {
        let (cfg, tls) = flexgate::pg::tls::resolve(url, ca)?;
        let (client, conn) = cfg.connect(tls).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    })
}

/// `flexgate migrate --database-url <url>`: (exit code, stdout + stderr).
fn migrate(url: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("none.yaml");
    let (code, out, err) = run_cli(&[
        "migrate",
        "-c",
        config.to_str().unwrap(),
        "--database-url",
        url,
    ]);
    (code, format!("{out}{err}"))
}

fn upstream_body(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: first\n    path: /first\n    upstream: app\n",
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

#[test]
fn postgres_verify_full_carries_the_config_store_and_the_history() {
    let Some(pki) = Pki::create() else { return };
    let Some(pg) = TlsPg::start(&pki) else { return };
    let url = pg.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.path("ca.pem")
    ));
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "database:\n  url: \"{url}\"\nhistory:\n  flushInterval: 100\n{}",
            upstream_body(&up)
        ),
    );
    let ready = request(gw.admin_port, "GET", "/health/ready", &[], b"").json();
    assert_eq!(ready["checks"]["database"]["status"], "UP", "{ready}");

    let r = create_route(gw.admin_port, "over-tls", "/over-tls/*");
    assert_eq!(r.status, 201, "{}\n{}", r.text(), gw.log());
    assert_eq!(request(gw.port, "GET", "/over-tls/x", &[], b"").status, 200);

    // Persisted: read back over TLS (a plain connection would be refused).
    let ids = query_strings(&url, None, "SELECT id FROM routes ORDER BY position")
        .expect("routes over verify-full");
    assert_eq!(ids, ["first", "over-tls"]);

    // The request-history writer uses the same connector.
    let recorded = eventually(Duration::from_secs(10), || {
        query_strings(
            &url,
            None,
            "SELECT path FROM flexgate_request_log WHERE path = '/over-tls/x'",
        )
        .is_ok_and(|rows| !rows.is_empty())
    });
    assert!(recorded, "no history row over TLS; log:\n{}", gw.log());

    // The CA may come from database.caFile instead of the URL.
    let store_ca = query_strings(
        &pg.url("sslmode=verify-full"),
        Some(&pki.path("ca.pem")),
        "SELECT 'ok'",
    );
    assert_eq!(store_ca, Ok(vec!["ok".to_string()]));

    let log = gw.log();
    assert!(
        !log.contains(PG_PASSWORD),
        "the password reached the log:\n{log}"
    );
}

#[test]
fn postgres_sslmodes_are_enforced() {
    let Some(pki) = Pki::create() else { return };
    let Some(pg) = TlsPg::start(&pki) else { return };
    let ca = pki.path("ca.pem");
    let wrong = pki.path("wrong-ca.pem");

    // disable: plain, refused by the server (hostssl lines only).
    let (code, out) = migrate(&pg.url("sslmode=disable"));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("no pg_hba.conf entry") && out.contains("no encryption"),
        "{out}"
    );

    // prefer (the default) and require: encrypted without verification.
    for params in ["sslmode=prefer", "application_name=x", "sslmode=require"] {
        let (code, out) = migrate(&pg.ip_url(params));
        assert_eq!(code, 0, "{params}: {out}");
    }

    // verify-full: the chain and the name; SCRAM bound to the TLS session.
    let (code, out) = migrate(&pg.url(&format!(
        "sslmode=verify-full&sslrootcert={ca}&channel_binding=require"
    )));
    assert_eq!(code, 0, "{out}");
    let (code, out) = migrate(&pg.url(&format!("sslmode=verify-full&sslrootcert={wrong}")));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("not signed by the configured CA") && out.contains("sslmode=verify-full"),
        "{out}"
    );
    let (code, out) = migrate(&pg.ip_url(&format!("sslmode=verify-full&sslrootcert={ca}")));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not name the host"), "{out}");

    // verify-ca: the chain only, so the IP address is fine; a wrong CA is not.
    let (code, out) = migrate(&pg.ip_url(&format!("sslmode=verify-ca&sslrootcert={ca}")));
    assert_eq!(code, 0, "{out}");
    let (code, out) = migrate(&pg.ip_url(&format!("sslmode=verify-ca&sslrootcert={wrong}")));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not signed by the configured CA"), "{out}");
    // require with a CA verifies the chain, as libpq does.
    let (code, out) = migrate(&pg.ip_url(&format!("sslmode=require&sslrootcert={wrong}")));
    assert_ne!(code, 0, "{out}");

    // Without a CA, verify-* is refused before connecting.
    let (code, out) = migrate(&pg.url("sslmode=verify-full"));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("sslrootcert") && out.contains("database.caFile"),
        "{out}"
    );
    for (_, out) in [
        migrate(&pg.url("sslmode=disable")),
        migrate(&pg.url(&format!("sslmode=verify-full&sslrootcert={wrong}"))),
    ] {
        assert!(!out.contains(PG_PASSWORD), "{out}");
    }

    // A gateway given the wrong CA: writes fail with the cause, readiness
    // says so, and the log names it; the node still serves its file's routes.
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "database:\n  url: \"{}\"\n  caFile: \"{wrong}\"\n{}",
            pg.url("sslmode=verify-full"),
            upstream_body(&up)
        ),
    );
    assert_eq!(request(gw.port, "GET", "/first", &[], b"").status, 200);
    let r = create_route(gw.admin_port, "refused", "/refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "store_unavailable", "{}", r.text());
    assert!(
        r.text().contains("not signed by the configured CA"),
        "{}",
        r.text()
    );
    let ready = request(gw.admin_port, "GET", "/health/ready", &[], b"").json();
    assert_eq!(ready["checks"]["database"]["status"], "DOWN", "{ready}");
    let log = gw.log();
    assert!(log.contains("not signed by the configured CA"), "{log}");
    assert!(log.contains("database.caFile"), "{log}");
    assert!(!log.contains(PG_PASSWORD), "{log}");
}

// ---------------------------------------------------------------------- Redis

/// A `redis-server` of this test's own, TLS only, with a password.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Option<TlsRedis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &pki.path("server.pem"),
                "--tls-key-file",
                &pki.path("server.key"),
                "--tls-ca-cert-file",
                &pki.path("ca.pem"),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                REDIS_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run redis-server: {e}"));
                return None;
            }
        };
        let mut r = TlsRedis { child, port };
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let exited = r.child.try_wait().ok().flatten();
            skip_or_fail(&format!(
                "redis-server with --tls-port did not listen on {port} (exit: {exited:?}; \
                 built without TLS?)"
            ));
            return None;
        }
        Some(r)
    }

    fn url(&self) -> String {
        format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn limited_body(up: &TestUpstream, id: &str, redis_url: &str, ca: &str) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: {id}\n    path: /api/*\n    upstream: app\n    rateLimit:\n      max: 10\n      windowMs: 60000\n      by: all\nrateLimit:\n  backend: redis\n  redis:\n    url: \"{redis_url}\"\n    caFile: \"{ca}\"\n",
        up.url()
    )
}

#[test]
fn rediss_shares_one_limit_between_two_gateways() {
    let Some(pki) = Pki::create() else { return };
    let Some(redis) = TlsRedis::start(&pki) else {
        return;
    };
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = limited_body(&up, "shared-tls", &redis.url(), &pki.path("ca.pem"));
    let a = Gateway::start("", &body);
    let b = Gateway::start("", &body);
    for gw in [&a, &b] {
        gw.wait_until(
            "redis limiter connected over TLS",
            Duration::from_secs(10),
            || gw.log().contains("redis rate limiter connected"),
        );
    }
    let mut allowed = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let status = request(gw.port, "GET", "/api/x", &[], b"").status;
        assert!(status == 200 || status == 429, "{status}");
        if status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "one combined limit of 10 over both nodes");
    for gw in [&a, &b] {
        let log = gw.log();
        assert!(!log.contains(REDIS_PASSWORD), "{log}");
    }
}

#[test]
fn rediss_with_a_wrong_ca_falls_back_to_local_limits() {
    let Some(pki) = Pki::create() else { return };
    let Some(redis) = TlsRedis::start(&pki) else {
        return;
    };
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = limited_body(&up, "wrong-ca", &redis.url(), &pki.path("wrong-ca.pem"));
    let gw = Gateway::start("", &body);
    gw.wait_until(
        "the TLS failure in the log",
        Duration::from_secs(10),
        || gw.log().contains("redis rate limiter cannot connect"),
    );
    // Local limits, never a 5xx.
    let statuses: Vec<u16> = (0..15)
        .map(|_| request(gw.port, "GET", "/api/x", &[], b"").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("redis rate limiter cannot connect"))
        .unwrap();
    assert!(line.contains("not signed by the configured CA"), "{line}");
    assert!(line.contains("rateLimit.redis.caFile"), "{line}");
    assert!(line.contains("rediss://:<redacted>@127.0.0.1"), "{line}");
    assert!(!log.contains(REDIS_PASSWORD), "{log}");
    assert!(!log.contains("redis rate limiter connected"), "{log}");
}

// ----------------------------------------------------------------------- NATS

/// A `nats-server -js` of this test's own, TLS only.
struct TlsNats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsNats {
    fn start(pki: &Pki) -> Option<TlsNats> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  timeout: 2\n}}\n",
                dir.path().join("js").display(),
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run nats-server: {e}"));
                return None;
            }
        };
        let n = TlsNats {
            child,
            port,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nats-server did not listen on {port}");
        Some(n)
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nats_over_tls_carries_the_cluster_feed() {
    let Some(pki) = Pki::create() else { return };
    let Some(nats) = TlsNats::start(&pki) else {
        return;
    };
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca = pki.path("ca.pem");
    let up = TestUpstream::start("app", Behavior::Ok);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The subscription is dropped (unsubscribing) inside the runtime.
    let _runtime = rt.enter();
    // A client of the test's own, through the same TLS settings.
    let mut summaries = rt.block_on(async {
        let client = flexgate::deps_tls::nats_connect(&url, Some(&ca), "test".into())
            .await
            .expect("test client over TLS");
        client.subscribe("flexgate.metrics.>").await.unwrap()
    });
    // caFile relative to the config file's folder (a sibling temporary folder).
    let relative_ca = format!(
        "../{}/ca.pem",
        pki.dir.path().file_name().unwrap().to_str().unwrap()
    );
    let gw = Gateway::start(
        "",
        &format!(
            "nats:\n  url: \"{url}\"\n  caFile: \"{relative_ca}\"\n{}",
            upstream_body(&up)
        ),
    );
    let ready = || {
        request(gw.admin_port, "GET", "/health/ready", &[], b"").json()["checks"]["jetstream"]
            ["status"]
            == "UP"
    };
    assert!(
        eventually(Duration::from_secs(10), ready),
        "JetStream never came up over TLS; log:\n{}",
        gw.log()
    );
    // The node's live summary reaches a subscriber through the TLS server.
    let summary = rt.block_on(async {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(12), summaries.next()).await
    });
    let msg = summary
        .expect("a summary within 12 s")
        .expect("subscription open");
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert!(body["node"].is_string(), "{body}");
    assert!(!gw.log().contains("cannot connect"), "{}", gw.log());
}

#[test]
fn nats_with_a_wrong_ca_stays_down_with_the_cause_in_the_log() {
    let Some(pki) = Pki::create() else { return };
    let Some(nats) = TlsNats::start(&pki) else {
        return;
    };
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "nats:\n  url: \"tls://flexgate:nats-Secret@127.0.0.1:{}\"\n  caFile: \"{}\"\n{}",
            nats.port,
            pki.path("wrong-ca.pem"),
            upstream_body(&up)
        ),
    );
    gw.wait_until(
        "the NATS TLS failure in the log",
        Duration::from_secs(10),
        || gw.log().contains("NATS: cannot connect"),
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("NATS: cannot connect"))
        .unwrap();
    assert!(line.contains("not signed by the configured CA"), "{line}");
    assert!(line.contains("nats.caFile"), "{line}");
    assert!(
        line.contains("tls://flexgate:<redacted>@127.0.0.1"),
        "{line}"
    );
    assert!(!log.contains("nats-Secret"), "{log}");
    let ready = request(gw.admin_port, "GET", "/health/ready", &[], b"").json();
    assert_eq!(ready["checks"]["jetstream"]["status"], "DOWN", "{ready}");
    // The data plane does not care.
    assert_eq!(request(gw.port, "GET", "/first", &[], b"").status, 200);
}
